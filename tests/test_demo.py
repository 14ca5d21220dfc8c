"""`timewalk demo` headless, end to end: synthetic world -> build -> serve -> scripted tour -> files.

The tour drives time through the controllers as a user would; the recorded world time of every shown
frame must follow it: 1x play, a pause that holds tau, 1x reverse, 0.25x slow motion.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from gen_server.commands.demo import TOUR_PHASES

SECONDS = 8.0
SCENE_SECONDS = 3.0


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_out")
    cache = tmp_path_factory.mktemp("cache")
    cmd = [sys.executable, "-m", "gen_server.cli", "demo", "--frontend", "headless", "--out", str(out),
           "--cache", str(cache), "--seconds", str(SECONDS), "--eye-size", "192", "192",
           "--scene-size", "240", "136", "--scene-seconds", str(SCENE_SECONDS), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out, proc.stdout


def _phase_rate(records, start, end, duration):
    """Mean d(tau)/dt over frames rendered in [start, end) seconds of the tour, unwrapping the clip's loop.

    A frame's tau is fixed when the server renders it, so time is the server's render timestamp (same host,
    same monotonic clock as the client's records); each distinct frame counts once.
    """
    t0 = records[0]["t"]
    frames = {r["seq"]: (r["render_t"] - t0, r["tau"]) for r in records if "render_t" in r}
    pts = sorted(p for p in frames.values() if start <= p[0] < end)
    assert len(pts) >= 8, f"too few frames rendered between {start} and {end} s: {len(pts)}"
    t = np.array([p[0] for p in pts])
    tau = np.array([p[1] for p in pts])
    d = np.diff(tau)
    d = (d + duration / 2) % duration - duration / 2  # undo loop wraps
    return float(d.sum() / (t[-1] - t[0])), tau


def test_demo_writes_outputs_and_follows_the_time_script(demo_run):
    out, stdout = demo_run
    for name in ("walkthrough.mp4", "contact_sheet.png", "stats.json"):
        assert (out / name).stat().st_size > 1000, name
        assert str(out / name) in stdout
    stats = json.loads((out / "stats.json").read_text())
    assert stats["frames_shown"] >= 0.5 * SECONDS * 24 * 0.5  # at least half of 24 fps at the slow CPU
    records = stats["records"]
    duration = SCENE_SECONDS
    settle = 0.6  # control round trip + the frame in flight
    bounds = [p[0] * SECONDS for p in TOUR_PHASES] + [SECONDS]
    rates = []
    for i in range(len(TOUR_PHASES)):
        rate, tau = _phase_rate(records, bounds[i] + settle, bounds[i + 1] - 0.1, duration)
        rates.append(rate)
        if "pause" in TOUR_PHASES[i][1]:
            assert np.ptp(tau) < 1e-6, f"tau moved while paused: {tau.min()}..{tau.max()}"
    play, pause, reverse, slow = rates
    assert play == pytest.approx(1.0, abs=0.15)
    assert pause == pytest.approx(0.0, abs=1e-6)
    assert reverse == pytest.approx(-1.0, abs=0.15)
    assert slow == pytest.approx(0.25, abs=0.06)


def test_demo_video_has_both_eyes_and_real_content(demo_run):
    import av

    out, _ = demo_run
    with av.open(str(out / "walkthrough.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert frames[0].shape == (192, 384, 3)
    last = frames[-1].astype(float)
    left, right = last[:, :192], last[:, 192:]
    assert last.std() > 20  # a rendered scene, not a clear colour
    assert np.abs(left - right).mean() > 0.5  # stereo: the eyes differ
