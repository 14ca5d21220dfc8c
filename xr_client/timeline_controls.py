"""Controller state -> timeline and world controls: a pure, testable mapping shared by every front-end.

Right trigger plays forward at a rate that grows with the pull (squared: a light pull is slow motion, a
full pull ``max_rate``); left trigger plays backward the same way; the right thumbstick's x jogs (scrubs)
through time; A/X toggles pause; B/Y drops a bookmark; a haptic tick on pause and bookmark; the left
menu button or a thumbstick click toggles the HUD. One grip grabs the world (moves and yaws it with the
hand); both grips scale it by the change of the distance between the hands.

No OpenXR here: input_actions.py reads the runtime's actions into :class:`HandState`; the desktop and
headless viewers build HandStates from keys and scripts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gen_server import cameras


@dataclass(frozen=True)
class HandState:
    """One controller this frame. ``aim`` is stage_from_aim (4, 4) OpenXR, or None when not tracked."""

    trigger: float = 0.0
    grip: float = 0.0
    thumbstick: tuple[float, float] = (0.0, 0.0)
    primary: bool = False      # A (right) / X (left)
    secondary: bool = False    # B (right) / Y (left)
    menu: bool = False
    stick_click: bool = False
    aim: np.ndarray | None = None


@dataclass(frozen=True)
class ControlsConfig:
    max_rate: float = 4.0       # full trigger pull
    dead_zone: float = 0.08     # trigger / stick values below this are noise
    rate_quantum: float = 0.05  # send a new rate only when it changes by a quantum (no message storm)
    base_rate: float = 1.0      # playback rate with no trigger held
    grip_threshold: float = 0.5


@dataclass
class ControlOutput:
    """What one update asks for: protocol controls (command, value, name), haptic ticks ('left'/'right'),
    a HUD toggle, and the current world grab (stage_from_virtual (4, 4); identity when untouched)."""

    controls: list[tuple[str, float | None, str | None]] = field(default_factory=list)
    haptics: list[str] = field(default_factory=list)
    toggle_hud: bool = False
    stage_from_virtual: np.ndarray = field(default_factory=lambda: np.eye(4))


def _shaped(value: float, dead_zone: float) -> float:
    """[0, 1] analog value -> [0, 1] past the dead zone, squared (fine control at light pulls)."""
    s = (abs(value) - dead_zone) / (1.0 - dead_zone)
    return min(max(s, 0.0), 1.0) ** 2


def trigger_rate(right: float, left: float, config: ControlsConfig = ControlsConfig()) -> float | None:
    """Playback rate asked for by the triggers, or None when neither is pulled past the dead zone.

    right alone: +max_rate * s^2 (s = pull past the dead zone, 0..1); left alone: the same, negative;
    both: the difference.
    """
    if right < config.dead_zone and left < config.dead_zone:
        return None
    return config.max_rate * (_shaped(right, config.dead_zone) - _shaped(left, config.dead_zone))


def stick_rate(x: float, config: ControlsConfig = ControlsConfig()) -> float | None:
    """Jog rate from a thumbstick's x (-1..1), or None inside the dead zone."""
    if abs(x) < config.dead_zone:
        return None
    return math.copysign(config.max_rate * _shaped(x, config.dead_zone), x)


def yaw_only(matrix: np.ndarray) -> np.ndarray:
    """The yaw (rotation about +Y) and translation of a pose (4, 4), dropping pitch and roll.

    Convention: OpenXR (+Y up, -Z forward).
    """
    forward = -np.asarray(matrix)[:3, 2]
    yaw = math.atan2(-forward[0], -forward[2])
    out = np.eye(4)
    out[:3, :3] = cameras.yaw_pitch_to_matrix(yaw, 0.0)
    out[:3, 3] = np.asarray(matrix)[:3, 3]
    return out


class TimelineControls:
    """Edge detection and state across frames; :meth:`update` maps one frame of input to outputs."""

    def __init__(self, config: ControlsConfig = ControlsConfig(), paused: bool = False, rate: float | None = None):
        self.config = config
        self.paused = paused
        self.rate = config.base_rate if rate is None else rate  # the rate last sent (or the server's)
        self.bookmarks = 0
        self.stage_from_virtual = np.eye(4)
        self.scale = 1.0
        self._prev: dict[str, HandState] = {"left": HandState(), "right": HandState()}
        self._held = False         # a trigger/stick is overriding the rate
        self._grab: tuple[str, np.ndarray, np.ndarray] | None = None  # hand, aim at start, offset at start
        self._pinch: tuple[float, float] | None = None                # hand distance at start, scale at start

    def update(self, left: HandState, right: HandState) -> ControlOutput:
        out = ControlOutput()
        hands = {"left": left, "right": right}
        cfg = self.config
        for name, hand in hands.items():
            prev = self._prev[name]
            if hand.primary and not prev.primary:
                self.paused = not self.paused
                out.controls.append(("toggle_pause", None, None))
                out.haptics.append(name)
            if hand.secondary and not prev.secondary:
                self.bookmarks += 1
                out.controls.append(("bookmark", None, f"bookmark-{self.bookmarks}"))
                out.haptics.append(name)
            if (hand.menu and not prev.menu) or (hand.stick_click and not prev.stick_click):
                out.toggle_hud = True

        wanted = trigger_rate(right.trigger, left.trigger, cfg)
        if wanted is None:
            wanted = stick_rate(right.thumbstick[0], cfg)
        held = wanted is not None
        if held and not self._held and self.paused:
            out.controls.append(("play", None, None))      # holding a trigger plays even when paused ...
        if not held and self._held and self.paused:
            out.controls.append(("pause", None, None))     # ... and letting go restores the pause
        self._held = held
        target = wanted if held else cfg.base_rate
        target = round(target / cfg.rate_quantum) * cfg.rate_quantum
        if abs(target - self.rate) > 0.5 * cfg.rate_quantum:
            self.rate = target
            out.controls.append(("rate", float(target), None))

        self._update_grab(hands, out)
        out.stage_from_virtual = self.stage_from_virtual.copy()
        self._prev = dict(hands)
        return out

    def _update_grab(self, hands: dict[str, HandState], out: ControlOutput) -> None:
        cfg = self.config
        gripping = [n for n, h in hands.items() if h.grip >= cfg.grip_threshold and h.aim is not None]
        if len(gripping) == 2:
            dist = float(np.linalg.norm(hands["left"].aim[:3, 3] - hands["right"].aim[:3, 3]))
            if self._pinch is None:
                self._pinch = (max(dist, 1e-3), self.scale)
            else:
                # Hands apart -> the world grows: fewer world metres per stage metre.
                scale = float(np.clip(self._pinch[1] * self._pinch[0] / max(dist, 1e-3), 1e-3, 1e3))
                if abs(scale / self.scale - 1.0) > 0.01:
                    self.scale = scale
                    out.controls.append(("scale", scale, None))
            self._grab = None
            return
        self._pinch = None
        if len(gripping) == 1:
            name = gripping[0]
            aim = yaw_only(hands[name].aim)
            if self._grab is None or self._grab[0] != name:
                self._grab = (name, aim, self.stage_from_virtual.copy())
            else:
                _, start_aim, start_offset = self._grab
                # The world follows the hand: what was at the hand stays at the hand.
                self.stage_from_virtual = aim @ cameras.invert_rigid(start_aim) @ start_offset
        else:
            self._grab = None
