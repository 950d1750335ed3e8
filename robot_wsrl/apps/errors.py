"""One-line errors for bad input, the same for every command: `robot-wsrl CMD: what is wrong`, exit 2.

A user's mistake (a malformed or unknown Hydra override, a config group option that does not exist, a
missing file, a value the project refuses) is reported as one line that names it and, where it can, the
fix; a traceback would bury that line. `--debug` anywhere on the command line (or ROBOT_WSRL_DEBUG=1,
which child processes inherit) shows the traceback above that line, with the same exit code 2, so a script
tells a user's mistake from a bug either way. Anything else (a bug) keeps its traceback.
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
import traceback
from collections.abc import Callable

DEBUG_ENV = "ROBOT_WSRL_DEBUG"
DEBUG_FLAG = "--debug"
# Errors a user can act on: the project's own (all ValueErrors), missing files and the like, the socket
# library's (an endpoint in use) and the config libraries' (a bad override, a value that does not parse).
USER_ERROR_MODULES = ("hydra.", "omegaconf.", "zmq.", "yaml.")

Command = Callable[[list[str]], int]


def user_error(exc: BaseException) -> str | None:
    """The one line that tells a user what to fix, or None when `exc` is not a user's mistake."""
    module = type(exc).__module__ + "."
    if not isinstance(exc, (ValueError, OSError)) and not module.startswith(USER_ERROR_MODULES):
        return None
    return _missing_option(exc) or _unknown_key(exc) or _unparsed(exc) or _first_line(exc)


def _missing_option(exc: BaseException) -> str | None:
    """Hydra's MissingConfigException (`env=hoper`): the options the group has, and the closest one."""
    options, missing = getattr(exc, "options", None), getattr(exc, "missing_cfg_file", None)
    if not (missing and options):
        return None
    group, _, name = str(missing).rpartition("/")
    if group.startswith("recipe/"):  # `recipe=NAME` is given as that, whatever run it selects for
        group = "recipe"
    close = difflib.get_close_matches(name, options, n=1)
    hint = f" (did you mean {group}={close[0]}?)" if close else ""
    return f"{group}={name}: no such {group} config; available: {', '.join(options)}{hint}"


def _unknown_key(exc: BaseException) -> str | None:
    """A key the config lacks: the closest key its section has, or all of them. Hydra's "Could not override"
    (`agent.uttd=4`) carries it as the cause; the typed schema's merge raises it itself, for a key added
    with `+` (`+run.foo=1`, which Hydra lets through) and for a validate override (`episode=4`)."""
    unknown = ("ConfigAttributeError", "ConfigKeyError")
    cause = next((e for e in (exc, exc.__cause__) if type(e).__name__ in unknown), None)
    parent = getattr(cause, "parent_node", None)
    if cause is None or parent is None:
        return None
    key = str(getattr(cause, "key", ""))
    full_key = str(getattr(cause, "full_key", None) or key)
    prefix = full_key[: len(full_key) - len(key)]
    known = [str(k) for k in parent]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else f"; known: {', '.join(known)}"
    return f"{full_key}: no such key{hint}"


def _unparsed(exc: BaseException) -> str | None:
    """A YAML error from an override's value (`variants=[real`): the value and what is wrong with it."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or problem is None or not type(exc).__module__.startswith("yaml."):
        return None
    value = str(getattr(mark, "buffer", None) or "").rstrip("\0")
    context = getattr(exc, "context", None)
    why = f"{context}: {problem}" if context else problem
    return f"value {value!r} does not parse ({why}): close its brackets or quote it"


def _first_line(exc: BaseException) -> str:
    """The message's first line, with the key it concerns (omegaconf) or the reason behind it (hydra)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    full_key = getattr(exc, "full_key", None)  # omegaconf: the key the value was for
    if full_key and not first.startswith(str(full_key)):
        first = f"{full_key}: {first}"
    if not type(exc).__module__.startswith("hydra."):
        return first
    if exc.__cause__ is not None and (why := str(exc.__cause__).strip().splitlines()):
        return f"{first.rstrip('.')}: {why[0]}"  # "Error merging override x=y" + why
    if len(lines) > 1 and not lines[1].startswith("See "):
        return f"{first.rstrip('.')}: {lines[1]}"  # an override that does not parse: where
    return first


def run(prog: str, command: Command, argv: list[str]) -> int:
    """`command(argv)` with `--debug` taken out; a user error becomes one line on stderr and exit 2."""
    debug = DEBUG_FLAG in argv
    if debug:
        os.environ[DEBUG_ENV] = "1"  # the command's children (a session's learner) show theirs too
        argv = [arg for arg in argv if arg != DEBUG_FLAG]
    try:
        return command(argv)
    except Exception as exc:
        line = user_error(exc)
        if line is None:
            raise
        return report(prog, exc, line)


def report(prog: str, exc: BaseException, line: str | None = None) -> int:
    """For a command that catches its own user errors: `robot-wsrl PROG: LINE` (default: `exc`'s message)
    on stderr, exit code 2; under --debug (ROBOT_WSRL_DEBUG=1) `exc`'s traceback first."""
    if os.environ.get(DEBUG_ENV):
        traceback.print_exception(exc, file=sys.stderr)
    print(f"robot-wsrl {prog}: {line or exc}", file=sys.stderr)
    return 2


def reports_errors(prog: str) -> Callable[[Command], Command]:
    """Decorate a command's `cli(argv)` with `run`."""

    def wrap(command: Command) -> Command:
        @functools.wraps(command)
        def cli(argv: list[str]) -> int:
            return run(prog, command, argv)

        return cli

    return wrap
