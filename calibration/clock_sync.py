"""Client <-> server clock mapping from NTP-style ping/pong samples, with drift and outlier rejection.

Each side reads its own monotonic clock in integer nanoseconds. One exchange gives four stamps:
client send ``t0``, server receive ``t1``, server send ``t2``, client receive ``t3``. Then

    offset = ((t1 - t0) + (t2 - t3)) / 2      (server clock minus client clock)
    rtt    = (t3 - t0) - (t2 - t1)             (time on the wire, both ways)

and the true offset lies within ``offset ± rtt / 2`` (the unobservable path asymmetry). Slow exchanges
(queueing, scheduling) carry the largest asymmetry, so samples whose round trip is far above the
window's minimum are dropped, and a straight line ``offset(t) = a + b * (t - t_ref)`` over client time
is fitted to the rest: ``b`` is the drift of the server clock relative to the client's.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClockSyncConfig:
    """``window``: samples kept (older ones fall out, so the fit follows changing drift).
    A sample is an outlier when its rtt exceeds ``rtt_min + max(min_slack_ns, slack_factor *
    (rtt_median - rtt_min))`` over the window. Drift is fitted only once the kept samples span
    ``min_drift_span_ns`` of client time and number ``min_drift_samples``."""

    window: int = 256
    min_slack_ns: int = 50_000
    slack_factor: float = 2.0
    min_drift_span_ns: int = 2_000_000_000
    min_drift_samples: int = 8
    max_abs_drift_ppm: float = 1000.0


@dataclass(frozen=True)
class ClockSample:
    """One ping/pong exchange; ns on each side's own clock."""

    t0: int
    t1: int
    t2: int
    t3: int

    @property
    def rtt_ns(self) -> int:
        return (self.t3 - self.t0) - (self.t2 - self.t1)

    @property
    def offset_ns(self) -> float:
        """Server minus client clock, assuming a symmetric path."""
        return ((self.t1 - self.t0) + (self.t2 - self.t3)) / 2.0

    @property
    def client_mid_ns(self) -> int:
        return (self.t0 + self.t3) // 2


class ClockSync:
    """Running estimate of ``server_clock - client_clock`` as a line over client time.

    Convention: all times int ns; ``offset_ns`` is server minus client at the newest sample's client time;
    ``drift_ppm`` is d(offset)/d(client time) * 1e6; ``uncertainty_ns`` bounds the offset error (half the
    kept samples' median rtt for path asymmetry, plus twice the fit's standard error).
    """

    def __init__(self, config: ClockSyncConfig | None = None):
        self.config = config or ClockSyncConfig()
        self._samples: deque[ClockSample] = deque(maxlen=self.config.window)
        self._t_ref = 0  # client ns the line is anchored at (python int: no float rounding of big stamps)
        self._a = 0.0  # offset at t_ref, ns
        self._b = 0.0  # drift, ns per ns
        self._uncertainty = float("inf")
        self._rtt = 0.0
        self._kept = 0
        self.rejected = 0  # samples rejected as outliers when they arrived

    # --------------------------------------------------------------------------------------------
    def add_sample(self, t0: int, t1: int, t2: int, t3: int) -> bool:
        """Add one exchange; returns False when it was dropped as an outlier (slow round trip).

        Raises ValueError for impossible stamps (client receive before send, server send before receive,
        or a negative round trip), which mean a broken clock or a mismatched pong, not network delay.
        """
        sample = ClockSample(int(t0), int(t1), int(t2), int(t3))
        if sample.t3 < sample.t0 or sample.t2 < sample.t1 or sample.rtt_ns < 0:
            raise ValueError(f"clock sample: inconsistent stamps t0={t0} t1={t1} t2={t2} t3={t3}")
        accepted = not self._is_outlier(sample.rtt_ns)
        if not accepted:
            self.rejected += 1
        self._samples.append(sample)  # kept in the window either way: the threshold itself adapts
        self._refit()
        return accepted

    def add_pong(self, pong, t3_ns: int) -> bool:
        """Add a ``gen_server.protocol.Pong`` (t0 echoed, t1/t2 server clock) received at client ``t3_ns``."""
        return self.add_sample(pong.t0_ns, pong.t1_ns, pong.t2_ns, t3_ns)

    def _threshold(self, rtts: np.ndarray) -> float:
        lo, med = float(rtts.min()), float(np.median(rtts))
        return lo + max(float(self.config.min_slack_ns), self.config.slack_factor * (med - lo))

    def _is_outlier(self, rtt: int) -> bool:
        if len(self._samples) < 4:
            return False
        rtts = np.array([s.rtt_ns for s in self._samples], np.float64)
        return rtt > self._threshold(rtts)

    def _refit(self) -> None:
        samples = list(self._samples)
        rtts = np.array([s.rtt_ns for s in samples], np.float64)
        keep = rtts <= self._threshold(rtts) if len(samples) >= 4 else np.ones(len(samples), bool)
        kept = [s for s, k in zip(samples, keep) if k]
        t_ref = kept[-1].client_mid_ns  # anchor at the newest kept sample: a is the current offset
        t = np.array([s.client_mid_ns - t_ref for s in kept], np.float64)
        y = np.array([s.offset_ns for s in kept], np.float64)
        span = float(t.max() - t.min())
        cfg = self.config
        a, b, se = self._fit(t, y, span >= cfg.min_drift_span_ns and len(kept) >= cfg.min_drift_samples)
        self._t_ref, self._a, self._b, self._kept = t_ref, a, b, len(kept)
        self._rtt = float(np.median(rtts[keep]))
        self._uncertainty = 0.5 * self._rtt + 2.0 * se

    def _fit(self, t: np.ndarray, y: np.ndarray, with_drift: bool) -> tuple[float, float, float]:
        """(offset at t = 0, drift, standard error of the offset at t = 0)."""
        n = len(t)
        if not with_drift:
            a = float(np.median(y))
            se = float(np.std(y) / np.sqrt(n)) if n > 1 else 0.0
            return a, 0.0, se
        # Least squares on centred time; refit once without residuals beyond 3 robust sigmas.
        keep = np.ones(n, bool)
        for _ in range(2):
            tc, a_c, b = self._line(t[keep], y[keep])
            resid = y - (a_c + b * (t - tc))
            sigma = 1.4826 * float(np.median(np.abs(resid[keep]))) + 1.0
            keep = np.abs(resid) <= 3.0 * sigma
        tc, a_c, b = self._line(t[keep], y[keep])
        limit = self.config.max_abs_drift_ppm * 1e-6
        b = float(np.clip(b, -limit, limit))
        m = int(keep.sum())
        dt = t[keep] - tc
        resid = y[keep] - (a_c + b * dt)
        s2 = float((resid**2).sum() / max(m - 2, 1))
        se = float(np.sqrt(s2 * (1.0 / m + tc**2 / max(float((dt * dt).sum()), 1e-30))))
        return a_c - b * tc, b, se

    @staticmethod
    def _line(t: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
        """(mean t, mean y, slope) of the least-squares line through (t, y)."""
        tc, yc = float(t.mean()), float(y.mean())
        dt = t - tc
        denom = float((dt * dt).sum())
        return tc, yc, float((dt * (y - yc)).sum() / denom) if denom > 0 else 0.0

    # --------------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._kept > 0

    @property
    def sample_count(self) -> int:
        return len(self._samples)

    def _need(self) -> None:
        if not self._kept:
            raise ValueError("clock sync: no samples yet")

    def offset_at(self, client_ns: int) -> float:
        """Server minus client clock (ns) at client time ``client_ns``."""
        self._need()
        return self._a + self._b * float(int(client_ns) - self._t_ref)

    def server_time(self, client_ns: int) -> int:
        """Client monotonic ns -> the server's clock reading at that instant."""
        return int(client_ns) + int(round(self.offset_at(client_ns)))

    def client_time(self, server_ns: int) -> int:
        """Server monotonic ns -> the client's clock reading at that instant (inverse of server_time)."""
        self._need()
        # s = c + a + b (c - t_ref)  =>  c - t_ref = (s - t_ref - a) / (1 + b)
        rel = float(int(server_ns) - self._t_ref) - self._a
        return self._t_ref + int(round(rel / (1.0 + self._b)))

    @property
    def offset_ns(self) -> float:
        """Server minus client clock at the newest kept sample."""
        self._need()
        return self._a

    @property
    def drift_ppm(self) -> float:
        return self._b * 1e6

    @property
    def uncertainty_ns(self) -> float:
        return self._uncertainty

    @property
    def rtt_ns(self) -> float:
        """Median round trip of the kept samples."""
        self._need()
        return self._rtt
