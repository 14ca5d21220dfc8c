"""Pipeline latency: per-frame timestamps -> per-stage and end-to-end percentiles, and the pose
prediction horizon the client asks the OpenXR runtime for.

A frame's life, in order (``STAMPS``): the client samples a head pose (``pose_sampled``), the server
receives it (``pose_received``), starts rendering (``render_start``), finishes (``rendered``) and
encoding (``encoded``); the client receives the frame (``frame_received``), decodes it (``decoded``) and
it is first shown (``displayed``). The server stamps its own clock; :func:`frame_stamps_on_client_clock`
maps them through :class:`calibration.clock_sync.ClockSync` so one timeline is on one clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Mapping

import numpy as np

STAMPS = ("pose_sampled", "pose_received", "render_start", "rendered", "encoded", "frame_received", "decoded", "displayed")
SERVER_STAMPS = ("pose_received", "render_start", "rendered", "encoded")
# Stage name -> (from stamp, to stamp): consecutive stamps.
STAGES = {
    "uplink": ("pose_sampled", "pose_received"),
    "queue": ("pose_received", "render_start"),
    "render": ("render_start", "rendered"),
    "encode": ("rendered", "encoded"),
    "downlink": ("encoded", "frame_received"),
    "decode": ("frame_received", "decoded"),
    "display_wait": ("decoded", "displayed"),
    "end_to_end": ("pose_sampled", "displayed"),
}
# gen_server.protocol Frame.timings key -> stamp name here.
PROTOCOL_TIMINGS = {"pose_received": "pose_received", "render_start": "render_start",
                    "render_end": "rendered", "encode_end": "encoded"}


@dataclass(frozen=True)
class Percentiles:
    """Seconds."""

    p50: float
    p90: float
    p99: float
    mean: float
    count: int


@dataclass(frozen=True)
class LatencyConfig:
    """``window``: frames kept; ``horizon_quantile``: which percentile of pose-sampled -> displayed the
    prediction horizon uses (0.5: the typical frame; higher over-predicts more often)."""

    window: int = 300
    horizon_quantile: float = 0.5


def frame_stamps_on_client_clock(client_stamps: Mapping[str, int], server_timings: Mapping[str, int],
                                 clock) -> dict[str, int]:
    """Merge client-clock stamps with a frame's server-clock ``timings`` (protocol names accepted)
    mapped to the client clock with ``clock.client_time`` (a ClockSync). Convention: int ns."""
    out = {k: int(v) for k, v in client_stamps.items() if k in STAMPS}
    for key, value in server_timings.items():
        name = PROTOCOL_TIMINGS.get(key, key)
        if name in SERVER_STAMPS:
            out[name] = int(clock.client_time(int(value)))
    return out


class LatencyTracker:
    """Sliding window of per-frame timelines (int ns on ONE clock, any subset of ``STAMPS``)."""

    def __init__(self, config: LatencyConfig | None = None):
        self.config = config or LatencyConfig()
        self._frames: deque[dict[str, int]] = deque(maxlen=self.config.window)

    def add_frame(self, stamps: Mapping[str, int]) -> None:
        """Record one frame. Raises ValueError for unknown names or stamps that go backwards in
        pipeline order (a mixed-up clock, not a slow frame)."""
        unknown = set(stamps) - set(STAMPS)
        if unknown:
            raise ValueError(f"latency: unknown stamp(s) {sorted(unknown)}; expected a subset of {STAMPS}")
        present = [(name, int(stamps[name])) for name in STAMPS if name in stamps]
        for (n0, v0), (n1, v1) in zip(present, present[1:]):
            if v1 < v0:
                raise ValueError(f"latency: {n1} ({v1}) is before {n0} ({v0})")
        self._frames.append(dict(present))

    def __len__(self) -> int:
        return len(self._frames)

    def durations_s(self, stage: str) -> np.ndarray:
        """Seconds spent in ``stage`` (a key of STAGES) by each frame in the window that has both stamps."""
        start, end = STAGES[stage]
        vals = [f[end] - f[start] for f in self._frames if start in f and end in f]
        return np.asarray(vals, np.float64) * 1e-9

    def stats(self) -> dict[str, Percentiles]:
        """Percentiles of every stage that has at least one frame."""
        out = {}
        for stage in STAGES:
            d = self.durations_s(stage)
            if len(d):
                p50, p90, p99 = np.percentile(d, [50, 90, 99])
                out[stage] = Percentiles(float(p50), float(p90), float(p99), float(d.mean()), len(d))
        return out

    def prediction_horizon_s(self, quantile: float | None = None) -> float:
        """Expected seconds from sampling a pose to displaying the frame that pose produces: the client
        asks the runtime for the head pose at ``now + horizon``. Uses whole timelines when frames have
        both ends; otherwise the sum of the per-stage percentiles that were measured.
        Raises ValueError when nothing has been measured."""
        q = 100.0 * (self.config.horizon_quantile if quantile is None else quantile)
        e2e = self.durations_s("end_to_end")
        if len(e2e):
            return float(np.percentile(e2e, q))
        parts = [self.durations_s(s) for s in STAGES if s != "end_to_end"]
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("latency: no frames measured yet")
        return float(sum(np.percentile(p, q) for p in parts))


_shared = LatencyTracker()


def shared_tracker() -> LatencyTracker:
    """The process-wide tracker the client's stream loop feeds and its pose prediction reads."""
    return _shared


def estimated_latency_s() -> float:
    """The shared tracker's prediction horizon (ValueError until it has measured a frame)."""
    return _shared.prediction_horizon_s()
