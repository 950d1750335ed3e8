"""The `emulated:ENDPOINT` driver: the runner's client of the emulated robot (robot_wsrl.sim.emulated_robot).

It implements the Driver protocol with a deadline on every request, so the runner sees the failure modes
(late replies, lost link) it will see on hardware. It speaks the emulated robot's wire
(robot_wsrl.sim.emulated_wire) and never imports the simulator: a robot image without the sim extra runs it.
A camera robot's spec (from the server) carries its cameras; its observations arrive as raw parts (state,
then one uint8 frame per camera) and are checked against that spec before the runner sees them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq

from robot_wsrl.core.driver import DriverFault, StepResult
from robot_wsrl.core.spec import EnvSpec, Observation, ObservationError
from robot_wsrl.sim.emulated_wire import Channel


class EmulatedRobotDriver:
    """Driver-protocol client of an EmulatedRobotServer.

    Every request waits at most `timeout_s` per attempt and is retried `retries` times on a fresh socket
    (the server de-duplicates, so a retried step is never executed twice); after that it raises
    DriverFault, so one call blocks at most `worst_case_s`. `safe_stop` uses its own channel so it is not
    queued behind a step that is waiting out its deadline. `close()` releases the sockets only;
    `shutdown_server()` ends the server. `keeps_time` is true when the server runs on its own real-time
    clock: `step()` then returns at the robot's next tick (the runner follows that clock rather than
    its own) and `info["late"]` says whether the command missed its tick.
    """

    def __init__(
        self, endpoint: str, *, timeout_s: float = 0.1, retries: int = 1, context: zmq.Context | None = None
    ) -> None:
        if timeout_s <= 0 or retries < 0:
            raise ValueError("timeout_s must be > 0 and retries >= 0")
        self.endpoint = endpoint
        self.timeout_s, self.retries = float(timeout_s), int(retries)
        ctx = context or zmq.Context.instance()
        client = uuid.uuid4().hex
        self._link = Channel(ctx, endpoint, f"{client}/control", self.timeout_s, self.retries)
        self._stop_link = Channel(ctx, endpoint, f"{client}/stop", self.timeout_s, self.retries)
        self._closed = False
        header, _ = self._request(self._link, "spec")
        self.spec = EnvSpec.from_dict(header["spec"])
        self.server_params: dict[str, Any] = dict(header.get("params") or {})
        self.server_realtime = bool(header.get("realtime", False))
        self.keeps_time = self.server_realtime
        self.safe_stop_count = 0
        self.last_safe_stop_time: float | None = None

    @property
    def worst_case_s(self) -> float:
        """The longest any call blocks before it returns or raises DriverFault (plus socket set-up)."""
        return self.timeout_s * (self.retries + 1)

    @property
    def retries_used(self) -> int:
        return self._link.retries_used + self._stop_link.retries_used

    def _request(
        self, link: Channel, typ: str, fields: dict[str, Any] | None = None, arrays: Sequence[np.ndarray] = ()
    ) -> tuple[dict[str, Any], list[np.ndarray]]:
        if self._closed:
            raise RuntimeError("emulated robot driver is closed")
        header, out = link.request(typ, fields, arrays)
        if header.get("ok") is True:
            return header, out
        kind, err = header.get("kind"), f"emulated robot: {typ}: {header.get('error')}"
        if kind == "value":
            raise ValueError(err)
        if kind == "state":
            raise RuntimeError(err)
        raise DriverFault(err)

    def _observation(self, arrays: Sequence[np.ndarray], reply: str) -> Observation:
        """The observation parts of a reply (state, then each camera in spec order), checked against the
        spec: a part of the wrong shape or dtype is a DriverFault naming it."""
        names = list(self.spec.obs_parts())
        if len(arrays) != len(names):
            raise DriverFault(
                f"emulated robot: malformed {reply} reply: {len(arrays)} observation arrays "
                f"{[a.shape for a in arrays]}, expected the parts {names}"
            )
        obs: Observation = dict(zip(names, arrays, strict=True)) if self.spec.cameras else arrays[0]
        try:
            self.spec.check_observation(obs, f"emulated robot {reply} reply")
        except ObservationError as exc:
            raise DriverFault(str(exc)) from None
        return obs

    def reset(self, seed: int | None = None) -> tuple[Observation, dict[str, Any]]:
        header, arrays = self._request(self._link, "reset", {"seed": None if seed is None else int(seed)})
        return self._observation(arrays, "reset"), dict(header.get("info") or {})

    def step(self, action: np.ndarray) -> StepResult:
        """Send one command; the reply carries the action the robot applied this tick (after its latency)."""
        a = np.asarray(action, dtype=np.float32)
        if a.shape != (self.spec.act_dim,):
            raise ValueError(f"action shape {a.shape}, expected ({self.spec.act_dim},)")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"non-finite action {a}")
        header, arrays = self._request(self._link, "step", None, [a])
        if not arrays or arrays[-1].shape != (self.spec.act_dim,) or arrays[-1].dtype != np.float32:
            raise DriverFault(
                f"emulated robot: malformed step reply: executed action {[x.shape for x in arrays[-1:]]}, "
                f"expected float32 ({self.spec.act_dim},)"
            )
        obs = self._observation(arrays[:-1], "step")
        info = dict(header.get("info") or {})
        for key in ("applied_ctrl", "commanded_action"):
            if key in info:
                info[key] = np.asarray(info[key], dtype=np.float64)
        return StepResult(
            obs=obs,
            reward=float(header["reward"]),
            terminated=bool(header["terminated"]),
            truncated=bool(header["truncated"]),
            executed_action=arrays[-1],  # after the observation parts (one per camera too)
            info=info,
        )

    def safe_stop(self) -> None:
        """Tell the robot to hold (zero command, pending commands discarded); DriverFault if unreachable."""
        self.last_safe_stop_time = time.perf_counter()
        self.safe_stop_count += 1
        self._request(self._stop_link, "safe_stop")

    def ping(self) -> dict[str, Any]:
        """The server's counters (steps, drops, duplicates, late ticks, safe stops)."""
        header, _ = self._request(self._stop_link, "ping")
        return dict(header.get("stats") or {})

    def shutdown_server(self) -> None:
        """Ask the server process to exit (it replies first)."""
        self._request(self._stop_link, "close")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._link.close()
            self._stop_link.close()
