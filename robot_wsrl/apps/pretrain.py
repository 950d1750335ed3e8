"""`robot-wsrl pretrain KEY=VALUE ...`: offline CQL / Cal-QL pre-training (learn/pretrain.py)."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING

from robot_wsrl.apps.errors import reports_errors
from robot_wsrl.apps.overrides import OverridesCommand
from robot_wsrl.core.lifetime import stop_on_signals

if TYPE_CHECKING:
    from robot_wsrl.learn.config import Config

COMMAND = OverridesCommand(
    "pretrain",
    "pretrain",
    "Offline CQL (agent=cql, default) or Cal-QL (agent=calql) pre-training on a dataset.\n"
    "e.g.: robot-wsrl pretrain env=hopper run.dataset=data/hopper-medium.hdf5 run.steps=250000",
)


@reports_errors("pretrain")
def cli(argv: list[str]) -> int:
    overrides = COMMAND.parse(argv)
    cfg = COMMAND.compose(overrides)
    from robot_wsrl.learn.config import refuse_overwrite
    from robot_wsrl.learn.pretrain import pretrain

    refuse_overwrite(cfg)

    stop = threading.Event()
    handlers = stop_on_signals([stop])  # a stop (SIGTERM, Ctrl-C) checkpoints the update reached
    try:
        summary = pretrain(cfg, steps=resume_steps(cfg, overrides), stop=stop)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    if summary["stopped"]:
        print(
            f"pre-training stopped at {summary['steps']} updates: run.resume={summary['out_dir']} continues"
        )
    else:
        print(f"pre-training done: {summary['steps']} updates on {summary['dataset_size']} transitions")
    print(f"checkpoint: {summary['checkpoint']}")
    return 0


def resume_steps(cfg: Config, overrides: list[str]) -> int | None:
    """With run.resume the run continues with its saved config.yaml (dataset included): run.steps given
    with it extends the run to that many updates; any other override would be ignored, so it is refused."""
    if not cfg.run.resume:
        return None
    given = {override.split("=", 1)[0].lstrip("+~") for override in overrides}
    ignored = sorted(given - {"run.resume", "run.steps"})
    if ignored:
        raise ValueError(
            f"run.resume continues {cfg.run.resume} with its saved config.yaml, so {', '.join(ignored)} "
            "would be ignored: give only run.steps (the updates in all) with it"
        )
    return cfg.run.steps if "run.steps" in given else None
