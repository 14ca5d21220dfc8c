"""Clock sync: simulated offset + drift + asymmetric jitter + outliers, and real loopback ZeroMQ."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from calibration.clock_sync import ClockSample, ClockSync, ClockSyncConfig
from gen_server import protocol as P


def _simulate(seed: int, offset0: float, drift: float, n: int = 400, period_ns: int = 50_000_000,
              outlier_rate: float = 0.1):
    """Exchanges against a server clock s(c) = c + offset0 + drift * c. One-way delays: 100 us base plus
    exponential jitter, larger on the uplink (asymmetric); some exchanges stall 5-50 ms on one leg."""
    rng = np.random.default_rng(seed)
    c_start = 7_000_000_000_000
    true = lambda c: c + offset0 + drift * (c - c_start)  # noqa: E731
    samples, outliers = [], 0
    for i in range(n):
        t0 = c_start + i * period_ns
        up = 100_000 + rng.exponential(30_000)
        down = 100_000 + rng.exponential(10_000)
        if rng.random() < outlier_rate:
            outliers += 1
            if rng.random() < 0.5:
                up += rng.uniform(5e6, 50e6)
            else:
                down += rng.uniform(5e6, 50e6)
        proc = 20_000 + rng.exponential(5_000)
        t1 = int(round(true(t0 + up)))
        t2 = t1 + int(proc)
        t3 = int(round(t0 + up + proc * (1 / (1 + drift)) + down))
        samples.append((t0, t1, t2, t3))
    return samples, true, outliers


@pytest.mark.parametrize("offset0,drift_ppm", [(3.2e9, 50.0), (-8.5e12, -120.0), (1234.0, 0.0)])
def test_simulated_offset_drift_jitter_outliers(offset0, drift_ppm):
    samples, true, n_out = _simulate(1, offset0, drift_ppm * 1e-6)
    sync = ClockSync()
    accepted = [sync.add_sample(*s) for s in samples]
    # Most stalled exchanges are rejected, most normal ones kept.
    assert sync.rejected >= 0.8 * n_out
    assert sum(accepted) >= 0.8 * (len(samples) - n_out)
    c_now = samples[-1][3]
    err = abs(sync.server_time(c_now) - true(c_now))
    # The asymmetry bias is ~ (30 - 10) us / 2 = 10 us: well inside the stated uncertainty.
    assert err <= sync.uncertainty_ns, (err, sync.uncertainty_ns)
    assert sync.uncertainty_ns < 200_000
    assert err < 50_000
    assert abs(sync.drift_ppm - drift_ppm) < 1.0
    assert 200_000 < sync.rtt_ns < 300_000  # 2 x 100 us base + jitter, stalls excluded
    # Mapping back and forth is consistent to a nanosecond; and an hour later the drift is still tracked.
    for c in (c_now, c_now + 3_600_000_000_000):
        assert abs(sync.client_time(sync.server_time(c)) - c) <= 1
    later = c_now + 60_000_000_000
    assert abs(sync.server_time(later) - true(later)) < 50_000 + 60e9 * 1e-6  # drift error < 1 ppm


def test_drift_not_fitted_over_short_span_and_bad_stamps():
    sync = ClockSync(ClockSyncConfig(min_drift_span_ns=10_000_000_000))
    with pytest.raises(ValueError):
        sync.offset_ns  # noqa: B018 - nothing yet
    for i in range(20):
        t0 = i * 10_000_000
        sync.add_sample(t0, t0 + 500_000 + 100_000, t0 + 500_000 + 120_000, t0 + 220_000)
    assert sync.drift_ppm == 0.0
    assert sync.offset_ns == pytest.approx(500_000, abs=1)
    assert ClockSample(0, 600_000, 620_000, 220_000).rtt_ns == 200_000
    with pytest.raises(ValueError):
        sync.add_sample(100, 50, 40, 200)  # server send before receive
    with pytest.raises(ValueError):
        sync.add_sample(100, 0, 1000, 150)  # negative round trip


def _pong_server(address_box: list, offset_ns: int, stop: threading.Event, ready: threading.Event):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    address_box.append(f"tcp://127.0.0.1:{port}")
    ready.set()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    try:
        while not stop.is_set():
            if not poller.poll(50):
                continue
            frames = sock.recv_multipart(copy=False)
            t1 = time.monotonic_ns() + offset_ns  # the "server" clock: a known offset from this host's
            ping = P.decode(frames)
            t2 = time.monotonic_ns() + offset_ns
            sock.send_multipart(P.encode(P.Pong(seq=ping.seq, t0_ns=ping.t0_ns, t1_ns=t1, t2_ns=t2)))
    finally:
        sock.close()


def test_real_loopback_zmq_recovers_known_offset():
    offset = 123_456_789_012  # server clock ahead by ~123 s
    box, stop, ready = [], threading.Event(), threading.Event()
    thread = threading.Thread(target=_pong_server, args=(box, offset, stop, ready), daemon=True)
    thread.start()
    assert ready.wait(5)
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 2000)
    sock.connect(box[0])
    sync = ClockSync()
    try:
        for seq in range(200):
            t0 = time.monotonic_ns()
            sock.send_multipart(P.encode(P.Ping(seq=seq, t0_ns=t0)))
            pong = P.decode(sock.recv_multipart())
            t3 = time.monotonic_ns()
            assert isinstance(pong, P.Pong) and pong.seq == seq
            sync.add_pong(pong, t3)
    finally:
        stop.set()
        sock.close()
        thread.join(5)
    assert abs(sync.offset_ns - offset) < 500_000  # 0.5 ms
    assert sync.uncertainty_ns < 500_000
    assert abs(sync.offset_ns - offset) <= sync.uncertainty_ns
    now = time.monotonic_ns()
    assert abs(sync.server_time(now) - (now + offset)) < 500_000
    assert abs(sync.drift_ppm) < 1000  # same physical clock: any fitted drift is noise, bounded by the config


def test_drift_fit_matches_polyfit_reference():
    """Clean samples (no stalls): the fitted line equals numpy's least-squares polyfit of offset vs time."""
    rng = np.random.default_rng(4)
    sync = ClockSync()
    t, y = [], []
    for i in range(100):
        t0 = 10**12 + i * 100_000_000
        half = 150_000
        off = 2.5e9 + 30e-6 * (t0 - 10**12) + rng.normal(0, 3_000)  # 30 ppm + 3 us noise in t1
        t1 = int(t0 + half + off)
        sample = (t0, t1, t1 + 10_000, t0 + 2 * half + 10_000)
        sync.add_sample(*sample)
        s = ClockSample(*sample)
        t.append(s.client_mid_ns - 10**12)
        y.append(s.offset_ns)
    slope, intercept = np.polyfit(np.array(t, float), np.array(y), 1)
    assert sync.rejected == 0
    assert sync.drift_ppm == pytest.approx(slope * 1e6, rel=1e-6)
    c = 10**12 + t[-1]
    assert sync.offset_at(c) == pytest.approx(intercept + slope * t[-1], abs=1.0)
    assert abs(sync.drift_ppm - 30.0) < 0.5


def test_calibration_imports_without_torch_or_scipy():
    code = "import sys, calibration, calibration.store; print(sorted(m for m in ('torch', 'scipy', 'gen_server.render') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
