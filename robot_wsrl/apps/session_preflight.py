"""What `robot-wsrl session` checks before it starts any child: a mistake found here is one line and exit 2
in about a second, not a child's failure 20 s in, after the learner has imported torch and exported v0.

- The policy fits the robot: its spec (the sidecar's, else the checkpoint's) against the spec of the
  driver the emulated robot will run, on the session's preset; a camera policy's robot renders one frame
  here, so an unusable MUJOCO_GL is named before anything starts.
- The warmup the learner will really use: no update can come before the replay holds one batch, so the
  first update is at max(--warmup, agent.batch_size) transitions (robot_wsrl.learn.trainer.Trainer).
"""

from __future__ import annotations

import json
from pathlib import Path

from robot_wsrl.core.artifacts import CHECKPOINT, POLICY_SIDECAR
from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.robot.drivers import probe_driver
from robot_wsrl.robot.policy import spec_mismatches

LEARNER_RUN = "finetune"  # the run config the learner composes (robot_wsrl.apps.learner.COMMAND)


def policy_spec(policy_dir: Path) -> EnvSpec:
    """The spec the learner's v0 will have: the shipped sidecar's (no torch), else the checkpoint's."""
    sidecar = policy_dir / POLICY_SIDECAR
    if sidecar.is_file():
        return EnvSpec.from_dict(json.loads(sidecar.read_text())["spec"])
    from robot_wsrl.learn.checkpoint import load_checkpoint  # torch: only for a folder with no sidecar

    return EnvSpec.from_dict(load_checkpoint(policy_dir / CHECKPOINT)["spec"])


def driver_mismatches(policy: EnvSpec, driver: str, preset: str = "nominal", seed: int = 0) -> list[str]:
    """How a policy made for `policy` differs from what `driver` with `preset` takes (sizes, action bounds,
    control period, cameras, in the runner's words: the policy's value != the robot's); none if it fits.
    A camera robot renders one frame, what its first reset will do: one that cannot is a ValueError
    naming the robot (MUJOCO_GL, with gl.FIX in its words)."""
    try:
        spec = probe_driver(driver, seed=seed, shift_preset=preset)
    except ValueError as exc:
        raise ValueError(f"the robot {driver} cannot start: {exc}") from None
    return spec_mismatches(spec, policy)


def robot_problem(policy: EnvSpec, policy_dir: Path, driver: str, preset: str, seed: int) -> str | None:
    """Why the policy `policy` (in `policy_dir`) cannot run on the emulated robot `driver` with `preset`,
    with the fix; None if it can."""
    try:
        problems = driver_mismatches(policy, driver, preset, seed)
    except ValueError as exc:
        return str(exc)
    if not problems:
        return None
    return (
        f"the policy in {policy_dir} (made for {policy.name}) does not fit the robot {driver}: "
        f"{'; '.join(problems)}; leave out --env-id to run it on its own robot, or give a policy made for "
        f"{driver}"
    )


def learner_batch_size(env_name: str, overrides: list[str]) -> int | None:
    """The batch size of the learner the session starts (its config composed as the learner will), or
    None if the overrides do not compose: the learner then refuses them itself, in its own words."""
    from robot_wsrl.apps.errors import user_error
    from robot_wsrl.learn.config import compose_config

    try:
        return int(compose_config(LEARNER_RUN, [f"env={env_name}", *overrides]).agent.batch_size)
    except Exception as exc:
        if user_error(exc) is None:
            raise
        return None


def effective_warmup(warmup: int, batch_size: int | None) -> int:
    """The transitions before the learner's first update: `warmup`, but never fewer than one batch."""
    return max(warmup, batch_size or 0, 1)
