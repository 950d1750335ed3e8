"""The `robot-wsrl` command: one entry point, one module per subcommand.

Subcommand modules are imported lazily so that robot-side commands (runner) never import torch.
Each module (named below relative to `robot_wsrl.`) exposes `cli(argv: list[str]) -> int` (or the function
named after "module:"). The base install is the robot image, so a command whose optional dependencies
are missing says which extra to install, in one line, and exits 2 (`ROBOT_WSRL_DEBUG=1` shows the traceback).
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("learn.collect", "behaviour SAC on a sim task -> medium, medium-replay datasets"),
    "pretrain": ("learn.pretrain", "offline CQL / Cal-QL pre-training on a dataset -> checkpoint"),
    "ship": ("learn.ship", "package a pre-trained checkpoint as policies/NAME with measured returns"),
    "finetune": ("learn.finetune", "in-process warm-start fine-tuning (warmup, then online-only SAC)"),
    "export": ("learn.export", "export a checkpoint's actor to ONNX + JSON sidecar (sha256, metadata)"),
    "runner": ("robot.runner", "run an ONNX policy on a driver behind the safety envelope (no torch)"),
    "validate": ("gate.validate", "sim-first gate: a policy vs thresholds and the deployed one"),
    "policies": ("gate.registry", "shipped and produced policies: validation, sha256, signature"),
    "rollback": ("gate.registry:rollback_cli", "one runner back to its previous validated policy"),
    "learner": ("learn.learner", "the off-board WSRL learner that runners feed over ZeroMQ"),
    "link-runner": ("robot.link", "a runner fed and updated by a learner over ZeroMQ (no torch)"),
    "keys": ("wire.keys", "make and list CURVE key pairs and the learner's policy-signing key"),
    "session": ("apps.session", "emulated robot + learner + linked runner on this machine, live"),
    "demo": ("apps.demo", "the main job on a small sim task, end to end"),
    "bench": ("bench", "benchmarks that print one JSON line (learner, runner, finetune)"),
    "console": ("console.app:cli", "the operator's safety-stop console (terminal UI, Textual)"),
    "stop": ("console.operator:stop_cli", "e-stop runners now; exit 0 only if every one confirmed"),
    "status": ("console.operator:status_cli", "every runner's and the learner's state, for scripts"),
    "release": ("console.operator:release_cli", "release one runner's e-stop (typed confirmation)"),
}


# Top-level packages of the optional dependencies -> the extra that installs them (pyproject.toml).
EXTRAS: dict[str, str] = {
    "torch": "learner",
    "onnx": "learner",
    "onnxscript": "learner",
    "hydra": "learner",
    "omegaconf": "learner",
    "h5py": "learner",
    "tensorboard": "learner",
    "tqdm": "learner",
    "matplotlib": "learner",
    "mujoco": "sim",
    "dm_control": "sim",
    "gymnasium": "sim",
    "textual": "console",
    "rich": "console",
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: robot-wsrl COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "`robot-wsrl COMMAND --help` describes a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"robot-wsrl: unknown command {name!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, _, function = COMMANDS[name][0].partition(":")
    module = f"robot_wsrl.{module}"
    try:
        entry = getattr(importlib.import_module(module), function or "cli")
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in EXTRAS or os.environ.get("ROBOT_WSRL_DEBUG"):
            raise
        extra = EXTRAS[missing]
        print(
            f"robot-wsrl {name}: needs the {extra!r} extra ({missing} is not installed): "
            f"pip install 'robot-wsrl[{extra}]'",
            file=sys.stderr,
        )
        return 2
    return int(entry(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
