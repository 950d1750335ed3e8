"""`robot-wsrl finetune KEY=VALUE ...`: in-process warm-start fine-tuning (learn/finetune.py).

The guarded variant (`run.gate_every=N`) validates each candidate with `robot-wsrl validate`'s checks,
in this process: composed here, since the learner side does not know the gate.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from robot_wsrl.apps.errors import reports_errors
from robot_wsrl.apps.overrides import OverridesCommand

if TYPE_CHECKING:
    from robot_wsrl.learn.guarded import Judge

COMMAND = OverridesCommand(
    "finetune",
    "finetune",
    "Warm-start fine-tuning: warmup with the pre-trained policy, then online-only SAC.\n"
    "e.g.: robot-wsrl finetune env=hopper agent.utd=4 run.checkpoint=policies/hopper/checkpoint.pt "
    "run.warmup_steps=5000",
)


def sim_judge(gate_args: list[str]) -> Judge:
    """`robot-wsrl validate`'s verdict with these overrides, in this process. Unsigned candidates pass its
    signature check: they are made and judged here, nothing crossed a trust boundary."""
    from robot_wsrl.gate.validate import load_config, validate

    cfg = load_config(overrides=list(gate_args))
    return functools.partial(validate, cfg=cfg, allow_unsigned=True)


@reports_errors("finetune")
def cli(argv: list[str]) -> int:
    cfg = COMMAND.compose(COMMAND.parse(argv))
    from robot_wsrl.learn.config import refuse_overwrite
    from robot_wsrl.learn.finetune import finetune

    refuse_overwrite(cfg)

    summary = finetune(cfg, sim_judge(cfg.run.gate_args) if cfg.run.gate_every else None)
    print(
        f"fine-tuning done: {summary['steps']} steps, {summary['updates']} updates, "
        f"final eval return {summary['final_eval'].get('return_mean', float('nan')):.1f}"
    )
    print(f"outputs: {summary['out_dir']}")
    return 0
