"""The console's widgets: each renders one part of a client `Snapshot` and holds no state of its own.

A stale peer is never drawn as fine: its state cell reads STALE in red with how long it has been silent,
and its last known values are dimmed. A runner whose e-stop is not confirmed reads STOP NOT CONFIRMED
over everything else, and the deadman is claimed for a runner only where its own status lists this
console as a supervisor with a deadline.
"""

from __future__ import annotations

import math
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, Static

from robot_wsrl.console.client import HARDWARE_ESTOP, PeerView, Snapshot, armed_deadman

BARS = "▁▂▃▄▅▆▇█"
UNCONFIRMED = "STOP NOT CONFIRMED — use the hardware e-stop"
ALARM_STYLE = "bold white on red"
CAUSE_WIDTH = 56  # characters of the last stop's cause in the table (the event log has all of it)
STATE_STYLES = {
    "fine_tuning": "bold green",
    "running": "bold green",  # a standalone runner: no learner, so no fine-tuning phase
    "warmup": "bold cyan",
    "paused": "bold yellow",
    "idle": "dim",
    "estopped": "bold white on red",
    "faulted": "bold white on dark_red",
}
COLUMNS = (
    ("runner", "Runner"),
    ("state", "State"),
    ("cause", "Last stop / fault"),
    ("policy", "Policy"),
    ("rate", "Loop Hz"),
    ("jitter", "Jitter p99 µs"),
    ("return", "Ep. return"),
    ("age", "Heartbeat"),
    ("deadman", "Deadman"),
)


def _num(value: Any, fmt: str) -> str:
    return "-" if not isinstance(value, (int, float)) or not math.isfinite(value) else format(value, fmt)


def _armed(view: PeerView, console: str) -> float | None:
    """The deadline `view`'s runner holds for `console`, from a current status only."""
    return None if view.stale else armed_deadman(view.status, console)


def deadman_cell(view: PeerView, console: str, supervising: bool) -> Text | str:
    """ARMED only where the runner lists `console` as a supervisor; a supervising console that is not
    listed says NOT armed in red. A watching console shows the runner's deadline and supervisor count."""
    if supervising:
        armed = _armed(view, console)
        if armed is None:
            return Text("NOT armed", style="bold red")
        return Text(f"ARMED ({armed!r} s)", style="bold green")
    control = (view.status or {}).get("control") or {}
    deadline, supervisors = control.get("deadman_s"), control.get("supervisors") or []
    return "off" if deadline is None else f"{deadline:g} s, {len(supervisors)} console(s)"


def runner_cells(view: PeerView, console: str, supervising: bool) -> dict[str, Text | str]:
    """The table row of one runner (column key -> cell), as console `console` sees it."""
    s = view.status or {}
    age = "never" if view.age_s is None else f"{view.age_s:.1f} s"
    if view.stop_unconfirmed_s is not None:
        state, age_cell = Text(UNCONFIRMED, style=ALARM_STYLE), Text(age, style="bold red")
    elif view.stale:
        last = s.get("state")
        state = Text("STALE" + (f" (was {last})" if last else ""), style="bold red")
        age_cell: Text | str = Text(age, style="bold red")
    elif not s.get("attached", True) or "state" not in s:
        state, age_cell = Text("starting", style="yellow"), age
    else:
        state, age_cell = Text(s["state"], style=STATE_STYLES.get(s["state"], "")), age
    cause = view.auth_error or ""
    if not cause and s.get("last_stop_cause"):
        cause = f"{s['last_stop_cause']}: {s.get('last_stop_detail', '')}"
    if s.get("state") == "faulted" and s.get("last_fault"):
        cause = f"{cause} | {s['last_fault']}"
    if len(cause) > CAUSE_WIDTH:
        cause = cause[: CAUSE_WIDTH - 1] + "…"
    cells: dict[str, Text | str] = {
        "runner": view.name,
        "state": state,
        "cause": cause,
        "policy": "-" if "policy_version" not in s else f"v{s['policy_version']}",
        "rate": _num(s.get("loop_rate_hz"), ".1f"),
        "jitter": _num(s.get("jitter_p99_us"), ".0f"),
        "return": _num(s.get("episode_return"), ".1f"),
        "age": age_cell,
        "deadman": deadman_cell(view, console, supervising),
    }
    if view.stale:
        for key in ("cause", "policy", "rate", "jitter", "return"):
            cells[key] = Text(str(cells[key]), style="dim")
    return cells


def deadman_text(snap: Snapshot) -> Text:
    """The banner's deadman line: per runner ARMED with its deadline, or NOT armed in red (never a claim
    the runner's status does not back)."""
    text = Text(f"console {snap.console}  ", style="bold")
    if not snap.supervising:
        return text.append("deadman off (watching only)", style="dim")
    for view in snap.runners:
        armed = _armed(view, snap.console)
        if armed is None:
            text.append(f"deadman NOT armed on {view.name}", style="bold white on red")
        else:
            text.append(f"{view.name}: deadman ARMED ({armed!r} s)", style="bold yellow")
        text.append("  ")
    return text


def alarm_text(snap: Snapshot) -> Text | None:
    """What the operator must act on now: e-stops not confirmed, runners that refused this console's key;
    None when there is nothing."""
    lines = [
        f"{v.name}: E-STOP NOT CONFIRMED for {v.stop_unconfirmed_s:.1f} s (still resending): {HARDWARE_ESTOP}"
        for v in snap.runners
        if v.stop_unconfirmed_s is not None
    ]
    lines += [f"{v.name}: this console cannot stop it: {v.auth_error}" for v in snap.runners if v.auth_error]
    return Text("\n".join(lines), style=ALARM_STYLE) if lines else None


class RunnerTable(DataTable):
    """One row per runner, updated in place so the cursor (the selected runner) stays put."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        for key, label in COLUMNS:
            self.add_column(label, key=key)

    def show(self, snap: Snapshot) -> None:
        for view in snap.runners:
            cells = runner_cells(view, snap.console, snap.supervising)
            if view.name not in self.rows:
                self.add_row(*(cells[key] for key, _ in COLUMNS), key=view.name)
                continue
            for key, _ in COLUMNS:
                self.update_cell(view.name, key, cells[key], update_width=True)

    @property
    def selected(self) -> str | None:
        if not self.row_count:
            return None
        return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)


def learner_text(view: PeerView | None) -> Text:
    """The learner's phase, step, updates, effective UTD, buffer size, mean Q and losses."""
    text = Text("Learner\n", style="bold")
    if view is None:
        return text.append("not configured (--learner or endpoints.json)", style="dim")
    if view.stale:
        why = view.auth_error or ("never reported" if view.age_s is None else f"silent {view.age_s:.1f} s")
        return text.append(f"{view.name}: STALE ({why})", style="bold red")
    s = view.status or {}
    text.append(f"{view.name}  phase ", style="dim").append(str(s.get("phase")), style="bold cyan")
    text.append(f"   policy v{s.get('policy_version')}\n")
    text.append(f"step {s.get('step')}  updates {s.get('updates')}  ")
    text.append(f"UTD {_num(s.get('effective_utd'), '.2f')}  buffer {s.get('buffer')}\n")
    text.append(f"mean Q {_num(s.get('mean_q'), '.2f')}\n")
    gate = s.get("gate") or {}
    if gate.get("enabled"):
        text.append(f"hardware runs v{gate.get('deployed_version')} (validated)", style="green")
        held = [v for v in gate.get("verdicts", []) if v.get("status") in ("failed", "error")]
        if held:
            last = held[-1]
            reason = "; ".join(last.get("reasons", [])[:1]) or last.get("status")
            text.append(f"   held back v{last.get('version')}: {reason}", style="yellow")
        text.append("\n")
    losses = s.get("losses") or {}
    text.append("  ".join(f"{k} {_num(v, '.3g')}" for k, v in sorted(losses.items())) or "no update yet")
    return text


def sparkline(points: list[tuple[int, float]], width: int) -> tuple[str, float, float]:
    """Returns over steps as `width` bars (mean return of each step bin; gaps where no episode ended)."""
    steps = [p[0] for p in points]
    values = [p[1] for p in points]
    low, high = min(values), max(values)
    first, span = min(steps), max(max(steps) - min(steps), 1)
    bins: list[list[float]] = [[] for _ in range(width)]
    for step, value in points:
        bins[min(width - 1, (step - first) * width // span)].append(value)
    bars = []
    for values_in_bin in bins:
        if not values_in_bin:
            bars.append(" ")
            continue
        level = (sum(values_in_bin) / len(values_in_bin) - low) / (high - low) if high > low else 0.5
        bars.append(BARS[min(len(BARS) - 1, int(level * len(BARS)))])
    return "".join(bars), low, high


def returns_text(returns: dict[str, list[tuple[int, float]]], width: int) -> Text:
    text = Text("Episode return over steps\n", style="bold")
    if not returns:
        return text.append("no episode finished yet", style="dim")
    for name, points in sorted(returns.items()):
        bars, low, high = sparkline(points, max(8, width))
        text.append(f"{name:<10}", style="bold").append(bars, style="green")
        text.append(f"  {low:.0f}..{high:.0f}, steps {points[0][0]}..{points[-1][0]}\n", style="dim")
    return text


class ReturnPlot(Static):
    def show(self, returns: dict[str, list[tuple[int, float]]]) -> None:
        self.update(returns_text(returns, self.size.width - 48))


class ReleaseScreen(ModalScreen[bool]):
    """A deliberate release: the operator types the runner's id; only then does Release do anything."""

    def __init__(self, runner: str) -> None:
        super().__init__()
        self.runner = runner

    def compose(self) -> ComposeResult:
        with Vertical(id="release-dialog"):
            yield Label(f"Release the e-stop of [b]{self.runner}[/b]? The robot may move once released.")
            yield Label(f"Type the runner id ({self.runner}) to confirm:")
            yield Input(placeholder=self.runner, id="release-id")
            with Horizontal(id="release-buttons"):
                yield Button("Release", variant="warning", id="release-confirm", disabled=True)
                yield Button("Cancel", variant="primary", id="release-cancel")

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#release-confirm", Button).disabled = event.value.strip() != self.runner

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip() == self.runner:
            self.dismiss(True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()  # the console's own buttons are not under this dialog
        self.dismiss(event.button.id == "release-confirm")

    def key_escape(self) -> None:
        self.dismiss(False)
