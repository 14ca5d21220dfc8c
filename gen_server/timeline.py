"""World-time playback: maps the server's clock to world time tau under play/pause/rate/seek/step commands.

Deterministic: the state after a sequence of ``apply(command, now_s)`` calls depends only on the commands
and the clock values given. Between commands tau moves linearly with the clock; ``end_mode`` decides
what happens at the ends of [0, duration]:

* ``loop``: wrap around (tau in [0, duration)),
* ``bounce``: reflect, playing back and forth (the direction flips at each end),
* ``hold``: stop at the end reached (and stay there until a command moves away from it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

END_MODES = ("loop", "bounce", "hold")
MAX_RATE = 4.0
COMMANDS = ("play", "pause", "toggle_pause", "rate", "seek", "step", "bookmark", "goto_bookmark")


class TimelineError(ValueError):
    """An invalid timeline command (unknown name, wrong type, NaN, out of range)."""


@dataclass(frozen=True)
class TimelineCommand:
    """``name`` one of COMMANDS; ``value``: rate (x real time, [-4, 4]), seek (seconds), step (+1/-1 frames),
    goto_bookmark (index); unused by the others."""

    name: str
    value: float | int | None = None


@dataclass(frozen=True)
class TimelineState:
    tau: float
    rate: float
    paused: bool
    end_mode: str
    bookmarks: tuple[float, ...]


def _finite_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TimelineError(f"timeline command {name!r}: value must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise TimelineError(f"timeline command {name!r}: value must be finite, got {value}")
    return value


def _as_command(command) -> TimelineCommand:
    if isinstance(command, TimelineCommand):
        return command
    if not isinstance(command, dict):
        raise TimelineError(f"timeline command: expected a TimelineCommand or dict, got {type(command).__name__}")
    unknown = set(command) - {"name", "value"}
    if unknown:
        raise TimelineError(f"timeline command: unknown field(s) {sorted(unknown)}")
    if "name" not in command:
        raise TimelineError("timeline command: missing 'name'")
    return TimelineCommand(command["name"], command.get("value"))


class Timeline:
    """Playback state for world time tau in [0, duration] seconds (source time, frame f at f / fps)."""

    def __init__(self, duration: float, fps: float, end_mode: str = "loop"):
        if not (isinstance(duration, (int, float)) and math.isfinite(duration) and duration > 0):
            raise TimelineError(f"timeline: duration must be a positive number of seconds, got {duration!r}")
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise TimelineError(f"timeline: fps must be positive, got {fps!r}")
        if end_mode not in END_MODES:
            raise TimelineError(f"timeline: end_mode must be one of {END_MODES}, got {end_mode!r}")
        self.duration = float(duration)
        self.fps = float(fps)
        self.end_mode = end_mode
        self._phase = 0.0  # unwrapped position at _anchor_s (bounce keeps its direction in it)
        self._anchor_s = 0.0
        self._rate = 1.0
        self._paused = False
        self._bookmarks: list[float] = []

    # ------------------------------------------------------------------------------------------------
    def _phase_at(self, now_s: float) -> float:
        if self._paused:
            return self._phase
        return self._phase + self._rate * (now_s - self._anchor_s)

    def _fold(self, phase: float) -> float:
        d = self.duration
        if self.end_mode == "loop":
            return phase % d
        if self.end_mode == "hold":
            return min(max(phase, 0.0), d)
        p = phase % (2 * d)
        return p if p <= d else 2 * d - p

    def _reanchor(self, now_s: float) -> None:
        """Fix the current position as the new anchor, keeping only what matters for the future."""
        phase = self._phase_at(now_s)
        if self.end_mode == "bounce":
            phase %= 2 * self.duration  # keeps the direction of travel
        else:
            phase = self._fold(phase)  # hold: forget time spent at an end; loop: wrap
        self._phase, self._anchor_s = phase, now_s

    @staticmethod
    def _check_now(now_s) -> float:
        if isinstance(now_s, bool) or not isinstance(now_s, (int, float)) or not math.isfinite(now_s):
            raise TimelineError(f"timeline: clock value must be a finite number of seconds, got {now_s!r}")
        return float(now_s)

    # ------------------------------------------------------------------------------------------------
    def tau(self, now_s: float) -> float:
        """World time (seconds) at clock time ``now_s``."""
        return self._fold(self._phase_at(self._check_now(now_s)))

    def state(self, now_s: float) -> TimelineState:
        return TimelineState(self.tau(now_s), self._rate, self._paused, self.end_mode, tuple(self._bookmarks))

    def apply(self, command: TimelineCommand | dict, now_s: float) -> TimelineState:
        """Apply one command at clock time ``now_s``; returns the new state. Raises :class:`TimelineError`
        (leaving the state unchanged) for invalid commands."""
        now_s = self._check_now(now_s)
        cmd = _as_command(command)
        if not isinstance(cmd.name, str) or cmd.name not in COMMANDS:
            raise TimelineError(f"timeline: unknown command {cmd.name!r} (expected one of {', '.join(COMMANDS)})")
        handler = getattr(self, f"_cmd_{cmd.name}")
        handler(cmd.value, now_s)
        return self.state(now_s)

    # ------------------------------------------------------------------------------------------------
    def _cmd_play(self, value, now_s: float) -> None:
        self._reanchor(now_s)
        self._paused = False

    def _cmd_pause(self, value, now_s: float) -> None:
        self._reanchor(now_s)
        self._paused = True

    def _cmd_toggle_pause(self, value, now_s: float) -> None:
        self._reanchor(now_s)
        self._paused = not self._paused

    def _cmd_rate(self, value, now_s: float) -> None:
        rate = _finite_number("rate", value)
        if not -MAX_RATE <= rate <= MAX_RATE:
            raise TimelineError(f"timeline command 'rate': must be in [-{MAX_RATE:g}, {MAX_RATE:g}], got {rate}")
        self._reanchor(now_s)
        self._rate = rate

    def _cmd_seek(self, value, now_s: float) -> None:
        target = _finite_number("seek", value)
        if not 0.0 <= target <= self.duration:
            raise TimelineError(f"timeline command 'seek': {target} s is outside [0, {self.duration:g}]")
        self._phase, self._anchor_s = target, now_s

    def _cmd_step(self, value, now_s: float) -> None:
        frames = 1 if value is None else _finite_number("step", value)
        if frames not in (-1.0, 1.0):
            raise TimelineError(f"timeline command 'step': value must be +1 or -1 frames, got {value}")
        tau = self.tau(now_s)
        self._phase, self._anchor_s = self._fold(tau + frames / self.fps), now_s
        self._paused = True

    def _cmd_bookmark(self, value, now_s: float) -> None:
        self._bookmarks.append(self.tau(now_s))

    def _cmd_goto_bookmark(self, value, now_s: float) -> None:
        index = _finite_number("goto_bookmark", value)
        if index != int(index) or not 0 <= index < len(self._bookmarks):
            raise TimelineError(f"timeline command 'goto_bookmark': no bookmark {value!r} ({len(self._bookmarks)} set)")
        self._phase, self._anchor_s = self._bookmarks[int(index)], now_s
