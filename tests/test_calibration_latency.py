"""Latency percentiles and the prediction horizon from known timelines."""

from __future__ import annotations

import numpy as np
import pytest

from calibration import latency
from calibration.clock_sync import ClockSync
from calibration.latency import STAGES, LatencyConfig, LatencyTracker, frame_stamps_on_client_clock

MS = 1_000_000
# Known per-stage durations (ms) of every frame: uplink 2, queue 1, render 8, encode 3, downlink 4,
# decode 2, display wait = 0..10 ms depending on where the frame lands in the vsync period.
BASE = {"uplink": 2, "queue": 1, "render": 8, "encode": 3, "downlink": 4, "decode": 2}


def _timeline(start_ns: int, display_wait_ms: float) -> dict[str, int]:
    t, out = start_ns, {"pose_sampled": start_ns}
    for stage, name in zip(BASE, latency.STAMPS[1:]):
        t += BASE[stage] * MS
        out[name] = t
    out["displayed"] = t + int(display_wait_ms * MS)
    return out


def test_percentiles_and_horizon_from_known_timelines():
    tracker = LatencyTracker(LatencyConfig(window=100))
    # 50 stale frames that must slide out of the window, then 100 frames with waits 0, 0.1, ..., 9.9 ms.
    for i in range(50):
        tracker.add_frame(_timeline(i * 50 * MS, 500.0))
    for i in range(100):
        tracker.add_frame(_timeline(10**12 + i * 11 * MS, 0.1 * i))
    assert len(tracker) == 100
    stats = tracker.stats()
    for stage, ms in BASE.items():
        assert stats[stage].p50 == pytest.approx(ms * 1e-3) and stats[stage].p99 == pytest.approx(ms * 1e-3)
        assert stats[stage].count == 100
    waits = np.arange(100) * 0.1e-3
    assert stats["display_wait"].p50 == pytest.approx(np.percentile(waits, 50))
    assert stats["display_wait"].p90 == pytest.approx(np.percentile(waits, 90))
    e2e = sum(BASE.values()) * 1e-3 + waits
    assert stats["end_to_end"].p99 == pytest.approx(np.percentile(e2e, 99))
    assert stats["end_to_end"].mean == pytest.approx(e2e.mean())
    # Horizon: pose sampled -> displayed; the median frame is 20 ms + 4.95 ms.
    assert tracker.prediction_horizon_s() == pytest.approx(0.020 + 0.00495)
    assert tracker.prediction_horizon_s(0.9) == pytest.approx(np.percentile(e2e, 90))


def test_horizon_from_stages_when_display_is_not_stamped():
    tracker = LatencyTracker()
    with pytest.raises(ValueError):
        tracker.prediction_horizon_s()
    for i in range(10):
        stamps = _timeline(i * 20 * MS, 0)
        del stamps["displayed"]
        tracker.add_frame(stamps)
    assert "end_to_end" not in tracker.stats()
    assert tracker.prediction_horizon_s() == pytest.approx(0.020)


def test_bad_stamps_rejected():
    tracker = LatencyTracker()
    with pytest.raises(ValueError, match="unknown"):
        tracker.add_frame({"pose_sampled": 0, "teleported": 5})
    with pytest.raises(ValueError, match="before"):
        tracker.add_frame({"pose_sampled": 10, "rendered": 5})
    assert len(tracker) == 0


def test_server_timings_mapped_through_clock_sync():
    offset = 5_000_000_000  # server clock 5 s ahead
    sync = ClockSync()
    for i in range(10):
        t0 = i * 10 * MS
        sync.add_sample(t0, t0 + offset + MS, t0 + offset + MS + 100_000, t0 + 2 * MS + 100_000)
    truth = _timeline(100 * MS, 3.0)
    client = {k: truth[k] for k in ("pose_sampled", "frame_received", "decoded", "displayed")}
    server = {"pose_received": truth["pose_received"] + offset, "render_start": truth["render_start"] + offset,
              "render_end": truth["rendered"] + offset, "encode_end": truth["encoded"] + offset,
              "send": truth["encoded"] + offset}
    merged = frame_stamps_on_client_clock(client, server, sync)
    assert merged == truth
    tracker = LatencyTracker()
    tracker.add_frame(merged)
    assert tracker.stats()["render"].p50 == pytest.approx(0.008)
    assert set(tracker.stats()) == set(STAGES)


def test_shared_tracker_feeds_client_estimate():
    shared = latency.shared_tracker()
    before = len(shared)
    shared.add_frame({"pose_sampled": 0, "displayed": 37 * MS})
    try:
        if before == 0:  # a fresh process: the one frame decides the median
            assert latency.estimated_latency_s() == pytest.approx(0.037)
        else:
            assert latency.estimated_latency_s() > 0
    finally:
        shared._frames.pop()  # leave the process-wide tracker as found
    assert len(shared) == before
