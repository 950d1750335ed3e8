"""The `robot-wsrl` command: one entry point, one module per subcommand.

Subcommand modules are imported lazily so that robot-side commands (runner) never import torch.
Each module (named below relative to `robot_wsrl.`) exposes `cli(argv: list[str]) -> int` (or the function
named after "module:"). The base install is the robot image, so every command's `--help` works there: a
command's module imports no extra's package at module level, and its `cli` parses the arguments before it
imports what its extra provides. A command whose extra is missing then says which one to install, in one
line, and exits 2 (`ROBOT_WSRL_DEBUG=1` shows the traceback). tests/test_base_install.py holds them to it.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("apps.collect", "behaviour SAC on a sim task -> medium, medium-replay datasets"),
    "pretrain": ("apps.pretrain", "offline CQL / Cal-QL pre-training on a dataset -> checkpoint"),
    "ship": ("apps.ship", "package a pre-trained checkpoint as policies/NAME with measured returns"),
    "finetune": ("apps.finetune", "in-process warm-start fine-tuning (warmup, then online-only SAC)"),
    "export": ("apps.export", "export a checkpoint's actor to ONNX + JSON sidecar (sha256, metadata)"),
    "runner": ("apps.runner", "run an ONNX policy on a driver behind the safety envelope (no torch)"),
    "validate": ("apps.validate", "sim-first gate: a policy vs thresholds and the deployed one"),
    "policies": ("apps.policies", "shipped and produced policies: validation, sha256, signature"),
    "rollback": ("apps.rollback", "one runner back to its previous validated policy"),
    "learner": ("apps.learner", "the off-board WSRL learner that runners feed over ZeroMQ"),
    "link-runner": ("apps.link_runner", "a runner fed and updated by a learner over ZeroMQ (no torch)"),
    "keys": ("apps.keys", "make and list CURVE key pairs and the learner's policy-signing key"),
    "session": ("apps.session", "emulated robot + learner + linked runner on this machine, live"),
    "demo": ("apps.demo", "the method in one process on a small sim task (session is the main job)"),
    "bench": ("bench", "benchmarks that print one JSON line (learner, runner, finetune)"),
    "console": ("apps.console", "the operator's safety-stop console (terminal UI, Textual)"),
    "stop": ("apps.operator:stop_cli", "e-stop runners now; exit 0 only if every one confirmed"),
    "status": ("apps.operator:status_cli", "every runner's and the learner's state, for scripts"),
    "release": ("apps.operator:release_cli", "release one runner's e-stop (typed confirmation)"),
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


def missing_extra(exc: BaseException) -> str | None:
    """`needs the 'sim' extra (...): pip install ...` when `exc` says an extra's package is missing.

    None for any other error. Also for a command that reports its own import errors in one line (the
    driver `--driver` names is imported by name at run time).
    """
    missing = (getattr(exc, "name", None) or "").partition(".")[0]
    if not isinstance(exc, ModuleNotFoundError) or missing not in EXTRAS:
        return None
    extra = EXTRAS[missing]
    return f"needs the {extra!r} extra ({missing} is not installed): pip install 'robot-wsrl[{extra}]'"


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: robot-wsrl COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "`robot-wsrl COMMAND --help` describes a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        return _dispatch(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # `robot-wsrl ... | head`: the reader has gone, nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _dispatch(argv: list[str]) -> int:
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
    try:
        # A thin app module parses first and imports its extra's packages after (`--help` needs none).
        return int(getattr(importlib.import_module(f"robot_wsrl.{module}"), function or "cli")(rest) or 0)
    except ModuleNotFoundError as exc:
        line = missing_extra(exc)
        if line is None or os.environ.get("ROBOT_WSRL_DEBUG"):
            raise
        print(f"robot-wsrl {name}: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
