"""What the learner service needs of the sim-first gate, as protocols: learn and gate are siblings that never
import each other, so the command app (apps/learner.py) hands the learner the gate's implementation
(`robot-wsrl validate` run by gate.worker's ValidationWorker, verdicts read by gate.registry)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Verdict(Protocol):
    """The gate's decision on one version; `reasons` say why it was held back (or notes, when passed)."""

    @property
    def version(self) -> int: ...

    @property
    def status(self) -> str: ...  # passed | failed | superseded | error

    @property
    def reasons(self) -> list[str]: ...

    @property
    def passed(self) -> bool: ...


class Validator(Protocol):
    """Validates submitted versions beside the learner's loop (never blocking it)."""

    @property
    def busy(self) -> bool: ...

    def submit(self, version: int, directory: Path) -> None: ...

    def poll(self) -> list[Verdict]: ...

    def close(self) -> None: ...


class PolicyGate(Protocol):
    """The gate as the learner meets it: which exported version already passed (a restart keeps what
    hardware may run), and the validator of later versions against the deployed one."""

    def passed(self, directory: Path) -> bool: ...

    def start(self, deployed: int, directory: Path) -> Validator: ...
