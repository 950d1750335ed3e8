"""Where an operator's tools find a session's peers: the runners' control endpoints and the learner.

A session writes `DIR/endpoints.json`:

    {"learner": {"name": "learner", "endpoint": "tcp://127.0.0.1:5555"},
     "runners": {"robot1": "tcp://127.0.0.1:5601"},
     "plain": false, "keys": "keys"}

`keys` may be relative to DIR. The console and `robot-wsrl stop/status/release` read it with
`--session DIR`, or take `--runner NAME=ENDPOINT` / `--learner [NAME=]ENDPOINT` on the command line.
Names are key names: a CURVE client needs the server's public key, found as KEYS/NAME.key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robot_wsrl.core.files import write_atomic

FILE_NAME = "endpoints.json"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
FORMS = "tcp://HOST:PORT or ipc://PATH"
MAX_PORT = 65535


class EndpointsError(ValueError):
    """An endpoints file or a NAME=ENDPOINT argument is missing or malformed."""


@dataclass(frozen=True)
class Endpoints:
    """The peers an operator tool talks to; `learner` is (name, endpoint) or None."""

    runners: dict[str, str] = field(default_factory=dict)
    learner: tuple[str, str] | None = None
    plain: bool = False
    keys: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "learner": None
            if self.learner is None
            else {"name": self.learner[0], "endpoint": self.learner[1]},
            "runners": dict(self.runners),
            "plain": self.plain,
            "keys": None if self.keys is None else str(self.keys),
        }


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise EndpointsError(f"{where}: name {name!r} must be 1-64 characters of [A-Za-z0-9_-]")
    return name


def endpoint_problem(endpoint: Any) -> str | None:
    """What is wrong with `endpoint`, with the form expected, or None when ZeroMQ can bind or connect it:
    tcp://HOST:PORT (a port 0-65535, or * to bind any), ipc://PATH, inproc://NAME."""
    if not isinstance(endpoint, str):
        return f"endpoint {endpoint!r} is not text: expected {FORMS}"
    what = f"endpoint {endpoint!r}"
    scheme, sep, address = endpoint.partition("://")
    if not sep:
        return f"{what} has no transport: expected {FORMS}, e.g. tcp://127.0.0.1:5555"
    if scheme in ("ipc", "inproc"):
        return None if address else f"{what} has no path: expected {FORMS}"
    if scheme != "tcp":
        return f"{what}: unsupported transport {scheme!r}: expected {FORMS}"
    host, colon, port = address.rpartition(":")
    if host.startswith("[") and not host.endswith("]"):  # an IPv6 address without a port
        host, colon, port = address, "", ""
    if not colon:
        return f"{what} has no port: expected tcp://HOST:PORT, e.g. tcp://{address or '127.0.0.1'}:5555"
    if not host:
        return f"{what} has no host: expected tcp://HOST:PORT (tcp://*:PORT binds every interface)"
    if port != "*" and not (port.isdigit() and int(port) <= MAX_PORT):
        return f"{what}: port {port!r} is not 0-{MAX_PORT} (or * to bind any): expected tcp://HOST:PORT"
    return None


def check_endpoint(endpoint: Any, where: str) -> str:
    """`endpoint` when well formed (see `endpoint_problem`); EndpointsError naming `where` if not."""
    problem = endpoint_problem(endpoint)
    if problem is not None:
        raise EndpointsError(f"{where}: {problem}")
    return endpoint


def parse_named(value: str, where: str) -> tuple[str, str]:
    """'NAME=ENDPOINT' -> (NAME, ENDPOINT)."""
    name, sep, endpoint = value.partition("=")
    if not sep:
        raise EndpointsError(f"{where}: {value!r} is not NAME=ENDPOINT")
    return _check_name(name, where), check_endpoint(endpoint, where)


def load_endpoints(path: str | Path) -> Endpoints:
    """Read DIR/endpoints.json (or the file itself); every problem names the file and the field."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    elif not path.exists():
        raise EndpointsError(f"{path}: no such session folder (a session's --out, holding its {FILE_NAME})")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EndpointsError(
            f"{path}: not found: not a session folder, or its session has not started its peers yet"
        ) from None
    except OSError as exc:
        raise EndpointsError(f"{path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise EndpointsError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise EndpointsError(f"{path}: must hold a JSON object")
    runners = data.get("runners", {})
    if not isinstance(runners, dict):
        raise EndpointsError(f"{path}: 'runners' must map runner names to endpoints")
    checked = {
        _check_name(name, f"{path} runners"): check_endpoint(endpoint, f"{path} runners.{name}")
        for name, endpoint in runners.items()
    }
    learner = data.get("learner")
    if learner is not None:
        if not isinstance(learner, dict):
            raise EndpointsError(f"{path}: 'learner' must be {{'name': ..., 'endpoint': ...}}")
        learner = (
            _check_name(learner.get("name", "learner"), f"{path} learner.name"),
            check_endpoint(learner.get("endpoint"), f"{path} learner.endpoint"),
        )
    plain = data.get("plain", False)
    if not isinstance(plain, bool):
        raise EndpointsError(f"{path}: 'plain' must be true or false")
    keys = data.get("keys")
    if keys is not None and not isinstance(keys, str):
        raise EndpointsError(f"{path}: 'keys' must be a path")
    return Endpoints(checked, learner, plain, None if keys is None else path.parent / keys)


def save_endpoints(directory: str | Path, endpoints: Endpoints) -> Path:
    """Write DIR/endpoints.json atomically (a console reading it never sees half a file)."""
    path = Path(directory) / FILE_NAME
    write_atomic(path, (json.dumps(endpoints.to_dict(), indent=2) + "\n").encode())
    return path
