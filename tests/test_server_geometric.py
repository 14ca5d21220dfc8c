"""The server with the real geometric generator (Renderer) on a tiny world, and the `timewalk serve` command."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gen_server.cameras import Fov, fov_to_intrinsics
from gen_server.codec import CodecConfig, depth_error_bound
from gen_server.commands.serve import world_info
from gen_server.generators import make_generator
from gen_server.server import ServerConfig, StreamServer
from gen_server.world.state import PointLayer, WorldState
from gen_server.world.store import save_world
from xr_client.stream_client import StreamClient, StreamConfig
from gen_server.protocol import Pose

REPO = Path(__file__).resolve().parents[1]
FOV = Fov.symmetric(1.2, 1.0)
SIZE = 64
RED, GREEN = (220, 30, 30), (30, 220, 30)


def grid_layer(x0, x1, y0, y1, z, spacing, color) -> PointLayer:
    xs, ys = np.meshgrid(np.arange(x0, x1 + 1e-9, spacing), np.arange(y0, y1 + 1e-9, spacing))
    pos = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, z)], -1).astype(np.float32)
    n = len(pos)
    return PointLayer(pos, np.tile(np.array(color, np.uint8), (n, 1)), np.full(n, 0.75 * spacing, np.float32),
                      np.ones(n, np.float32))


def tiny_world() -> WorldState:
    """A red wall 2 m ahead (eye height 1.6 m) and a green square 1.5 m ahead: left at t=0, right at t=0.5."""
    wall = grid_layer(-1.5, 1.5, 0.1, 3.1, -2.0, 0.02, RED)
    frames = [grid_layer(x - 0.1, x + 0.1, 1.5, 1.7, -1.5, 0.01, GREEN) for x in (-0.3, 0.3)]
    dynamic = PointLayer.concatenate(frames)
    offsets = np.array([0, len(frames[0]), len(dynamic)], np.int64)
    k = fov_to_intrinsics(FOV, SIZE, SIZE)
    return WorldState(wall, dynamic, offsets, np.array([0.0, 0.5]), 2.0, np.stack([np.eye(4)] * 2),
                      np.stack([k, k]), (SIZE, SIZE), {"kind": "test"})


def u_of(x: float, z: float) -> int:
    k = fov_to_intrinsics(FOV, SIZE, SIZE)
    return int(round(k[0, 2] + k[0, 0] * x / z))


@pytest.fixture(scope="module")
def world():
    return tiny_world()


def test_geometric_generator_through_the_server(world, tmp_path):
    generator = make_generator("geometric", world, device="cpu")
    config = ServerConfig(bind="tcp://127.0.0.1:*", fps=60.0, status_line=False, codec=CodecConfig(jpeg_quality=95))
    server = StreamServer(generator, world_info(world, tmp_path), config).start()
    client = StreamClient(server.address, StreamConfig(eye_width=SIZE, eye_height=SIZE, fovs=(FOV, FOV))).start()
    try:
        assert client.wait_connected(10.0)
        client.send_control("pause")
        centre = SIZE // 2
        head = Pose((0.0, 1.6, 0.0))
        eyes = (head, head)  # both eyes at the head: the same image twice, exact geometry
        for tau, green_x, red_x in ((0.0, -0.3, 0.3), (0.5, 0.3, -0.3)):
            client.send_control("seek", tau)
            time.sleep(0.1)
            seq = client.send_pose(head, eyes)
            frame = client.wait_frame(pose_seq=seq, timeout=20.0)
            assert frame is not None and frame.tau == pytest.approx(tau)
            img, depth = frame.color[0].astype(int), frame.depth[0]
            k = SIZE // depth.shape[1]  # depth may come at a fraction of the colour size
            # The wall straight ahead: red, 2 m away.
            assert np.abs(img[centre, centre] - RED).max() < 40
            assert abs(depth[centre // k, centre // k] - 2.0) <= depth_error_bound(2.0, 0.05, 500.0) + 0.02
            # The dynamic square is where tau puts it, 1.5 m away; the other side shows the wall.
            row = SIZE // 2 - 1  # square centre height 1.6 m = eye height
            assert np.abs(img[row, u_of(green_x, 1.5)] - GREEN).max() < 40
            assert np.abs(img[row, u_of(red_x, 1.5)] - RED).max() < 40
            assert abs(depth[row // k, u_of(green_x, 1.5) // k] - 1.5) < 0.03
    finally:
        client.close()
        server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_streams_and_stops_cleanly(world, tmp_path):
    world_dir = tmp_path / "world"
    save_world(world, world_dir)
    stats = tmp_path / "stats.jsonl"
    address = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "gen_server.cli", "serve", str(world_dir), "--bind", address,
                             "--stats", str(stats), "--device", "cpu", "--width", "48", "--height", "48"],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    client = StreamClient(address, StreamConfig(eye_width=SIZE, eye_height=SIZE, fovs=(FOV, FOV))).start()
    try:
        assert client.wait_connected(60.0), "timewalk serve did not answer"
        assert client.welcome.eye_width == 48 and client.welcome.world["frame_count"] == 2
        for _ in range(3):
            seq = client.send_pose(Pose((0.0, 1.6, 0.0)), (Pose((-0.03, 1.6, 0.0)), Pose((0.03, 1.6, 0.0))))
            frame = client.wait_frame(pose_seq=seq, timeout=20.0)
            assert frame is not None and frame.color[0].shape == (48, 48, 3)
        time.sleep(1.2)  # at least one stats line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        lines = [json.loads(line) for line in stats.read_text().splitlines()]
        assert lines and lines[-1]["frames_sent"] >= 3 and "latency_ms_p99" in lines[-1]
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()


def test_serve_command_refuses_public_bind_without_keys(world, tmp_path):
    world_dir = tmp_path / "world"
    save_world(world, world_dir)
    out = subprocess.run([sys.executable, "-m", "gen_server.cli", "serve", str(world_dir), "--bind", "tcp://0.0.0.0:5555",
                          "--device", "cpu"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "CURVE keys are required" in lines[0] and "--bind tcp://0.0.0.0:5555" in lines[0]


def test_keys_command_writes_pairs_and_allow_list(tmp_path):
    from gen_server.cli import main

    assert main(["keys", "generate", str(tmp_path / "k"), "--clients", "quest", "laptop"]) == 0
    names = sorted(p.relative_to(tmp_path / "k").as_posix() for p in (tmp_path / "k").rglob("*") if p.is_file())
    assert names == ["authorized_clients/laptop.key", "authorized_clients/quest.key", "laptop.key", "laptop.key_secret",
                     "quest.key", "quest.key_secret", "server.key", "server.key_secret"]
    assert (tmp_path / "k" / "server.key_secret").stat().st_mode & 0o077 == 0
    assert main(["keys", "generate", str(tmp_path / "k")]) == 2  # refuses to overwrite
