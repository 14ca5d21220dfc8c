"""The headless viewer against a real `timewalk serve` on loopback (offscreen Mesa GL, real mp4 out)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from tests.xr.server_process import ServerProcess
from tests.xr.tiny_world import WALL_COLOURS, save_tiny_world
from xr_client.hud import HudState, render_hud
from xr_client.viewer import ScriptStep, head_pose, keys_to_hands

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.gl


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    world = save_tiny_world(tmp_path_factory.mktemp("viewer_world") / "room")
    srv = ServerProcess(world, tmp_path_factory.mktemp("viewer_logs"))
    yield srv
    srv.stop()


def turn_script(t: float, total: float) -> ScriptStep:
    """First half looking at the left wall (yaw +90 deg), second half at the right wall (-90 deg)."""
    return ScriptStep(head_pose([0.0, 1.6, 0.0], math.radians(90 if t < total / 2 else -90)))


def dominant(rgb: np.ndarray) -> np.ndarray:
    return rgb.reshape(-1, 3).astype(float).mean(0)


def read_video(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_headless_walk_writes_what_the_eyes_saw(server, tmp_path):
    from xr_client.viewer import ViewerConfig, run_headless

    out, stats_path = tmp_path / "walk.mp4", tmp_path / "stats.json"
    result = run_headless(server.address, 5.0, out, stats_path, 96, 64, script=turn_script,
                          config=ViewerConfig(fps=10.0, hud=False))
    assert result["frames_shown"] >= 3, server.log()[-2000:]
    assert json.loads(stats_path.read_text())["ticks"] == result["ticks"]
    assert result["latency_ms"]["n"] >= 3 and 0 < result["latency_ms"]["p50"] < 5000
    frames = read_video(out)
    assert len(frames) == result["ticks"] and 40 <= len(frames) <= 51
    assert frames[0].shape == (64, 192, 3)
    # Looking left shows the green wall, looking right the blue one, in both eyes (walls are 3 m away).
    green, blue = np.array(WALL_COLOURS["left"], float), np.array(WALL_COLOURS["right"], float)
    for frame, want, other in ((frames[len(frames) // 2 - 3], green, blue), (frames[-2], blue, green)):
        for half in (frame[:, :96], frame[:, 96:]):
            mean = dominant(half[:40])  # above the floor line
            assert np.linalg.norm(mean - want * 0.8) < np.linalg.norm(mean - other * 0.8), mean
    # The two eyes are 6.3 cm apart: their images differ.
    assert np.abs(frames[-2][:, :96].astype(int) - frames[-2][:, 96:].astype(int)).mean() > 1.0


def test_server_gone_keeps_last_frame_and_says_reconnecting(server, tmp_path):
    from xr_client.viewer import ViewerConfig, run_headless

    world = save_tiny_world(tmp_path / "room2")
    doomed = ServerProcess(world, tmp_path)
    from xr_client.stream_client import StreamClient

    with StreamClient(doomed.address) as probe:  # the server is up and answering
        assert probe.wait_connected(60), doomed.log()[-2000:]
    killer = threading.Timer(3.0, doomed.kill)
    killer.start()
    try:
        result = run_headless(doomed.address, 8.0, tmp_path / "gone.mp4", None, 64, 64,
                              script=lambda t, total: ScriptStep(head_pose([0, 1.6, 0], 0.3 * math.sin(t))),
                              config=ViewerConfig(fps=10.0, hud=True))
    finally:
        killer.cancel()
        doomed.kill()
    records = result["records"]
    assert result["frames_shown"] >= 1, doomed.log()[-2000:]
    late = [r for r in records if r["t"] > records[-1]["t"] - 0.8]
    assert late and all(r["state"] == "reconnecting" for r in late), [r["state"] for r in late]
    assert all("seq" in r for r in late), "lost the last frame"
    last = read_video(tmp_path / "gone.mp4")[-1]
    assert last.reshape(-1, 3).std(0).max() > 20, "the last frame is a flat colour: not the world"
    # The HUD's red RECONNECTING text is on screen.
    red = (last[..., 0] > 200) & (last[..., 1] < 130) & (last[..., 2] < 130)
    assert red.sum() > 5


def test_hud_image_says_what_it_should():
    base = render_hud(HudState(tau=5.0, duration=10.0, rate=2.0))
    gone = render_hud(HudState(tau=5.0, duration=10.0, rate=2.0, reconnecting=True))
    assert gone.shape[0] > base.shape[0]                       # one more line
    red = (gone[..., 0] == 255) & (gone[..., 1] == 80)
    assert red.any() and not ((base[..., 0] == 255) & (base[..., 1] == 80)).any()
    # The timeline marker sits at tau / duration along the bar.
    marker = np.nonzero((base[..., 0] == 80) & (base[..., 1] == 200) & (base[..., 2] == 255))[1]
    x0, x1 = 2, base.shape[1] - 2
    assert abs(marker.mean() - (x0 + 0.5 * (x1 - x0 - 1))) <= 1.5
    hidden = render_hud(HudState(visible=False))
    assert hidden[..., 3].max() == 0                           # hidden and connected: nothing drawn
    assert render_hud(HudState(visible=False, reconnecting=True))[..., 3].max() > 0


def test_desktop_keys_map_to_controllers():
    left, right = keys_to_hands({"right"})
    assert right.trigger == pytest.approx(0.7) and left.trigger == 0
    left, right = keys_to_hands({"left", "shift", "space", "b", "h"})
    assert left.trigger == 1.0 and right.primary and right.secondary and left.menu


@pytest.mark.parametrize("args, message", [
    (["--headless", "--server", "tcp://127.0.0.1:1"], "--headless needs --seconds"),
    (["--headless", "--server", "tcp://127.0.0.1:1", "--seconds", "1", "--out", "x.txt"], "--out x.txt"),
    (["--headless", "--server", "tcp://127.0.0.1:1", "--seconds", "1", "--width", "63"], "even"),
])
def test_bad_arguments_exit_2_with_one_line(args, message):
    proc = subprocess.run([sys.executable, "-m", "gen_server.cli", "view", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_desktop_window_under_xvfb(server, tmp_path):
    import os
    import shutil

    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb not installed (scripts/bootstrap.sh installs it as root)")
    read_fd, write_fd = os.pipe()  # Xvfb picks a free display and writes its number here
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "640x480x24", "-nolisten", "tcp",
                             "-noreset"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(write_fd,))
    os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as f:
            display = ":" + f.readline().decode().strip()
        assert display != ":", "Xvfb did not start"
        stats = tmp_path / "desktop.json"
        proc = subprocess.run([sys.executable, "-m", "gen_server.cli", "view", "--server", server.address,
                               "--seconds", "4", "--width", "160", "--height", "120", "--stats", str(stats)],
                              cwd=REPO, env={**os.environ, "DISPLAY": display}, capture_output=True, text=True,
                              timeout=120)
    finally:
        xvfb.terminate()
        xvfb.wait(10)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(stats.read_text())
    assert result["frames_shown"] >= 2, result
    assert 10 <= result["fps"] <= 95          # paced (max 90 fps), never a busy loop
