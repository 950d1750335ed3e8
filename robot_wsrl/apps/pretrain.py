"""`robot-wsrl pretrain KEY=VALUE ...`: offline CQL / Cal-QL pre-training (learn/pretrain.py)."""

from __future__ import annotations

from robot_wsrl.apps.errors import reports_errors
from robot_wsrl.apps.overrides import OverridesCommand

COMMAND = OverridesCommand(
    "pretrain",
    "pretrain",
    "Offline CQL (agent=cql, default) or Cal-QL (agent=calql) pre-training on a dataset.\n"
    "e.g.: robot-wsrl pretrain env=hopper run.dataset=data/hopper-medium.hdf5 run.steps=250000",
)


@reports_errors("pretrain")
def cli(argv: list[str]) -> int:
    cfg = COMMAND.compose(COMMAND.parse(argv))
    from robot_wsrl.learn.config import refuse_overwrite
    from robot_wsrl.learn.pretrain import pretrain

    refuse_overwrite(cfg)

    summary = pretrain(cfg)
    print(f"pre-training done: {summary['steps']} updates on {summary['dataset_size']} transitions")
    print(f"checkpoint: {summary['checkpoint']}")
    return 0
