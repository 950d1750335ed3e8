"""Which environment a run or a validation uses: the `env` group of `configs/` (configs/env/*.yaml).

A plain dataclass below the learner and the gate, so both read the same schema and the gate needs nothing
of the learner's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EnvConfig:
    name: str = "hopper"
    driver: str = "gym:Hopper-v5"  # see robot_wsrl.robot.drivers.make_driver
    max_episode_steps: int | None = 1000
    shift: str = "nominal"  # dynamics shift preset in configs/shift/
