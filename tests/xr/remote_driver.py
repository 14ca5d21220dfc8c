"""Scripted head and controllers for Monado's remote driver (``P_OVERRIDE_ACTIVE_CONFIG=remote``).

Monado 25 listens on TCP 127.0.0.1:4242 for ``struct r_remote_data`` packets (drivers/remote/r_interface.h):
header "mndrmt3\\0"; the head (two optional per-view fov+pose, the centre pose, a per-view-valid flag);
then left and right Index-style controllers (pose, linear/angular velocity, hand-tracking curls, trigger,
squeeze, squeeze force, thumbstick, trackpad force, trackpad, then 13 bools: hand_tracking_active,
active, system click/touch, a click/touch, b click/touch, trigger click/touch, thumbstick click/touch,
trackpad touch). 376 bytes in all. Poses: quaternion xyzw then position, OpenXR axes.
"""

from __future__ import annotations

import math
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

HEADER = b"mndrmt3\0"
_POSE = "4f3f"
_VIEW = "4f" + _POSE + "I"
_HEAD = _VIEW * 2 + _POSE + "?3x"
_CTRL = _POSE + "3f3f5f" + "fff2ff2f" + "?" * 13 + "3x"
PACKET = struct.Struct("<8s" + _HEAD + _CTRL + _CTRL)
assert PACKET.size == 376, PACKET.size


@dataclass
class Controller:
    position: tuple[float, float, float] = (0.0, 1.2, -0.4)
    trigger: float = 0.0
    squeeze: float = 0.0
    thumbstick: tuple[float, float] = (0.0, 0.0)
    a: bool = False
    b: bool = False

    def values(self) -> list:
        vals = [0.0, 0.0, 0.0, 1.0, *self.position] + [0.0] * 6 + [0.0] * 5
        vals += [self.trigger, self.squeeze, 0.0, *self.thumbstick, 0.0, 0.0, 0.0]
        vals += [False, True, False, False, self.a, self.a, self.b, self.b, self.trigger > 0.9, self.trigger > 0.0,
                 False, False, False]
        return vals


@dataclass
class RigState:
    """What the driver reports at one instant: head yaw (radians, + = left) and position, controllers."""

    yaw: float = 0.0
    head_position: tuple[float, float, float] = (0.0, 1.6, 0.0)
    left: Controller = field(default_factory=lambda: Controller((-0.2, 1.2, -0.4)))
    right: Controller = field(default_factory=lambda: Controller((0.2, 1.2, -0.4)))


def pack(state: RigState) -> bytes:
    view = [0.0] * 4 + [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0] + [0]
    q = (0.0, math.sin(state.yaw / 2), 0.0, math.cos(state.yaw / 2))
    head = view + view + [*q, *state.head_position] + [False]
    return PACKET.pack(HEADER, *head, *state.left.values(), *state.right.values())


class RemoteFeeder:
    """Sends ``script(t)`` (t = seconds since :meth:`start`) to the driver at ``hz`` from a thread; logs
    (time.monotonic(), state) of everything sent so tests can compare what the client saw."""

    def __init__(self, script: Callable[[float], RigState], port: int = 4242, hz: float = 100.0):
        self.script, self.port, self.hz = script, port, hz
        self.sent: list[tuple[float, RigState]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="remote-feeder", daemon=True)
        self.t0 = 0.0

    def start(self, connect_timeout: float = 20.0) -> "RemoteFeeder":
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self._sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Monado remote driver not listening on 127.0.0.1:{self.port}: {e}") from None
                time.sleep(0.1)
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                state = self.script(now - self.t0)
                self._sock.sendall(pack(state))
                self.sent.append((now, state))
                time.sleep(1.0 / self.hz)
        except OSError as e:
            self.error = str(e)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        try:
            self._sock.close()
        except (OSError, AttributeError):
            pass
