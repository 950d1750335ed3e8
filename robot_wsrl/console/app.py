"""The operator's safety-stop console, a Textual terminal UI (works over SSH); `robot-wsrl console` runs it.

Everything it shows comes from the control client's latest snapshot, redrawn ten times a second; every
action goes through the client's thread, which the UI wakes at once. Space (or the red button) e-stops
every runner; the other keys act on the selected runner or the learner. Release opens a dialog that
needs the runner's id typed in. An e-stop not confirmed in time turns its runner's row and an alarm
banner red until it is (the client keeps resending it). With --deadman the console asks each runner to
hold its deadman: if the console closes, is killed or loses the network, those runners e-stop within
their deadline; the banner says ARMED only for runners whose status lists this console, and NOT armed
in red for the rest.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.css.query import NoMatches
from textual.widgets import Button, Footer, Header, RichLog, Static

from robot_wsrl.console.client import BackgroundClient, Event, tool_tag
from robot_wsrl.console.widgets import (
    ReleaseScreen,
    ReturnPlot,
    RunnerTable,
    alarm_text,
    deadman_text,
    learner_text,
)

REFRESH_S = 0.1
EVENT_STYLES = {
    "stop": "bold red",
    "fault": "bold red",
    "stale": "red",
    "auth": "bold red",
    "alarm": "bold white on red",
    "failed": "bold red",
    "confirmed": "green",
    "release": "yellow",
    "hold": "yellow",
    "promote": "green",
}


class ConsoleApp(App[None]):
    """The console over a running `BackgroundClient` (the caller starts and closes it)."""

    TITLE = "robot-wsrl console"
    CSS = """
    #banner { height: auto; padding: 0 1; }
    #alarm { height: auto; padding: 0 1; background: red; display: none; }
    RunnerTable { height: auto; max-height: 14; }
    #middle { height: auto; min-height: 7; }
    #learner { width: 60; padding: 0 1; border: round $primary; }
    ReturnPlot { width: 1fr; padding: 0 1; border: round $primary; }
    #buttons { height: 3; }
    #buttons Button { margin: 0 1 0 0; }
    RichLog { border: round $primary; }
    #release-dialog { width: 70; height: auto; padding: 1 2; border: thick $warning; background: $surface; }
    #release-buttons { height: 3; margin-top: 1; }
    ReleaseScreen { align: center middle; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "estop_all", "E-STOP ALL", priority=True),
        Binding("s", "estop_selected", "stop selected"),
        Binding("r", "release_selected", "release selected…"),
        Binding("b", "rollback_selected", "roll back selected"),
        Binding("p", "pause_learning", "pause learning"),
        Binding("u", "resume_learning", "resume learning"),
        Binding("ctrl+s", "save_svg", "screenshot"),
        Binding("q", "leave", "quit"),
    ]

    def __init__(self, client: BackgroundClient, snapshot: Path | None = None, after_s: float = 5.0) -> None:
        """With `snapshot`, save the screen there as SVG after `after_s` seconds and exit."""
        super().__init__()
        self.client = client
        self.snapshot, self.after_s = snapshot, after_s
        self._logged = 0
        self._tool = tool_tag("console")
        self._leave_warned = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="banner")
        yield Static(id="alarm")
        yield RunnerTable()
        with Horizontal(id="middle"):
            yield Static(id="learner")
            yield ReturnPlot()
        with Horizontal(id="buttons"):
            yield Button("E-STOP ALL [space]", variant="error", id="estop-all")
            yield Button("Stop selected [s]", variant="error", id="estop-selected")
            yield Button("Release… [r]", variant="warning", id="release")
            yield Button("Roll back [b]", id="rollback")
            yield Button("Pause learning [p]", id="pause")
            yield Button("Resume learning [u]", id="resume")
        yield RichLog(markup=False, wrap=True)
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_view()
        self.set_interval(REFRESH_S, self.refresh_view)
        if self.snapshot is not None:
            self.set_timer(self.after_s, self._save_and_exit)

    def _save_and_exit(self) -> None:
        assert self.snapshot is not None
        self.save_screenshot(self.snapshot.name, str(self.snapshot.parent))
        self.exit()

    def refresh_view(self) -> None:
        snap = self.client.snapshot
        try:
            banner = self.query_one("#banner", Static)
        except NoMatches:  # the interval can fire once more while the app tears its screen down
            return
        banner.update(deadman_text(snap))
        alarm = alarm_text(snap)
        alarm_widget = self.query_one("#alarm", Static)
        alarm_widget.display = alarm is not None
        alarm_widget.update(alarm or "")
        self.query_one(RunnerTable).show(snap)
        self.query_one("#learner", Static).update(learner_text(snap.learner))
        self.query_one(ReturnPlot).show(snap.returns)
        log = self.query_one(RichLog)
        new = min(snap.events_total - self._logged, len(snap.events))
        for event in snap.events[len(snap.events) - new :]:
            log.write(_event_text(event))
            if event.kind in ("alarm", "failed"):
                self.notify(f"{event.peer}: {event.text}", severity="error", timeout=10)
        self._logged = snap.events_total

    # ----- actions -----

    def _selected(self) -> str | None:
        selected = self.query_one(RunnerTable).selected
        if selected is None:
            self.notify("no runner selected", severity="warning")
        return selected

    def action_estop_all(self) -> None:
        self.client.request("estop", self.client.client.runner_names, {"reason": f"{self._tool} [all]"})

    def action_estop_selected(self) -> None:
        if (runner := self._selected()) is not None:
            self.client.request("estop", [runner], {"reason": f"{self._tool} [selected]"})

    def action_release_selected(self) -> None:
        runner = self._selected()
        if runner is None:
            return

        def confirmed(ok: bool | None) -> None:
            if ok:
                self.client.request("release", [runner])
            else:
                self.notify(f"{runner}: release cancelled")

        self.push_screen(ReleaseScreen(runner), confirmed)

    def action_rollback_selected(self) -> None:
        if (runner := self._selected()) is not None:
            self.client.request("rollback", [runner])

    def _learner(self, command: str) -> None:
        learner = self.client.client.learner_name
        if learner is None:
            self.notify("no learner configured", severity="warning")
        else:
            self.client.request(command, [learner])

    def action_pause_learning(self) -> None:
        self._learner("pause")

    def action_resume_learning(self) -> None:
        self._learner("resume")

    def action_leave(self) -> None:
        """Quit; but while an e-stop is unconfirmed, only on a second press: quitting stops resending it."""
        unconfirmed = [v.name for v in self.client.snapshot.runners if v.stop_unconfirmed_s is not None]
        if unconfirmed and not self._leave_warned:
            self._leave_warned = True
            self.notify(
                f"e-stop to {', '.join(unconfirmed)} NOT confirmed: quitting stops resending it. "
                "Press q again to quit anyway.",
                severity="error",
                timeout=10,
            )
            return
        self.exit()

    def action_save_svg(self) -> None:
        self.notify(f"saved {self.save_screenshot()}")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        actions = {
            "estop-all": self.action_estop_all,
            "estop-selected": self.action_estop_selected,
            "release": self.action_release_selected,
            "rollback": self.action_rollback_selected,
            "pause": self.action_pause_learning,
            "resume": self.action_resume_learning,
        }
        actions[str(event.button.id)]()


def _event_text(event: Event) -> Text:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.time)) + f".{int(event.time * 1000) % 1000:03d}"
    text = Text(f"{stamp} ", style="dim").append(f"{event.peer:<10} ", style="bold")
    return text.append(f"{event.kind:<9} {event.text}", style=EVENT_STYLES.get(event.kind, ""))
