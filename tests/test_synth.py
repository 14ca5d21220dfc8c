"""The synthetic scene: exact depth against analytic geometry, physical motion, moving masks, the dataset
writer (atomic, readable by the video reader) and the `timewalk synth` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from gen_server import cameras
from gen_server.cli import main as cli_main
from gen_server.errors import InputError
from gen_server.video_io import read_video_frames
from gen_server.world.synth import (
    CAMERA_HEIGHT, FLOOR_Y, GRAVITY, UP, BouncingBall, Pendulum, SyntheticScene, SyntheticSource,
    write_synthetic_dataset,
)

W, H = 96, 64


@pytest.fixture(scope="module")
def scene():
    return SyntheticScene(seed=0)


def test_floor_depth_matches_analytic_plane_distance(scene):
    pose = cameras.look_at([0.3, 1.6, 1.0], [0.3, 0.0, -1.0])  # pitched 38.7 deg down: floor fills the bottom
    k = scene.default_intrinsics(W, H)
    _, depth, mask = scene.render(pose, k, W, H, 0.0)
    # Analytic: the ray through pixel (u, v) with OpenCV z = 1 hits y = 0 at parameter t = z-depth.
    for u, v in [(48, 63), (10, 60), (90, 50), (48, 45)]:
        d_cv = np.array([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], 1.0])
        d_world = cameras.invert_rigid(cameras.cv_camera_from_world(pose))[:3, :3] @ d_cv
        t = (FLOOR_Y - 1.6) / d_world[1]
        assert depth[v, u] == pytest.approx(t, abs=1e-5)
    # Independent path: unproject the whole bottom band with cameras.unproject_depth -> y == 0.
    pts = cameras.unproject_depth(depth, k, pose)[48:]
    assert np.nanmax(np.abs(pts[..., 1] - FLOOR_Y)) < 1e-5
    assert not mask[48:].any()


def test_moving_pixels_lie_on_the_moving_objects(scene):
    k = scene.default_intrinsics(W, H)
    for t in (0.0, 0.7, 1.9):
        pose = scene.camera_path(t)
        _, depth, mask = scene.render(pose, k, W, H, t)
        assert mask.sum() > 15
        pts = cameras.unproject_depth(depth, k, pose)[mask]
        bob, ball = scene.pendulum.bob_center(t), scene.ball.center(t)
        pivot = np.asarray(scene.pendulum.pivot)
        axis = (bob - pivot) / np.linalg.norm(bob - pivot)
        s = np.clip((pts - pivot) @ axis, 0, scene.pendulum.length)
        r_rod = np.linalg.norm(pts - pivot - s[:, None] * axis, axis=1) - scene.pendulum.rod_radius
        r_bob = np.linalg.norm(pts - bob, axis=1) - scene.pendulum.bob_radius
        r_ball = np.linalg.norm(pts - ball, axis=1) - scene.ball.radius
        residual = np.min(np.abs(np.stack([r_rod, r_bob, r_ball])), axis=0)
        assert residual.max() < 1e-4
        # Every moving object's centre projects onto a moving pixel.
        uv, z = cameras.project_points(np.stack([bob, ball]), pose, k)
        for (u, v), zz in zip(uv, z):
            assert zz > 0 and mask[int(round(v)), int(round(u))]


def test_masks_move_between_frames(scene):
    pose = scene.camera_path(0.0)  # same camera: only the objects move
    k = scene.default_intrinsics(W, H)
    centroids = []
    masks = []
    for t in (0.0, 0.4, 0.8):
        _, _, m = scene.render(pose, k, W, H, t)
        masks.append(m)
        centroids.append(np.argwhere(m).mean(axis=0))
    assert (masks[0] ^ masks[1]).sum() > 20 and (masks[1] ^ masks[2]).sum() > 20
    assert np.linalg.norm(centroids[0] - centroids[2]) > 2.0


def test_pendulum_exact_motion():
    p = Pendulum()
    assert p.angle(0.0) == pytest.approx(p.amplitude, abs=1e-9)
    T = p.period()
    small_angle = 2 * np.pi * np.sqrt(p.length / GRAVITY)
    series = small_angle * (1 + p.amplitude**2 / 16 + 11 * p.amplitude**4 / 3072)
    assert T == pytest.approx(series, rel=1e-4) and T > small_angle * 1.02
    assert p.angle(T / 4) == pytest.approx(0.0, abs=1e-7)
    assert p.angle(T / 2) == pytest.approx(-p.amplitude, abs=1e-7)
    # Energy per unit mass is conserved: 0.5 L^2 theta'^2 - g L cos(theta).
    ts = np.linspace(0.05, 2.5, 25)
    h = 1e-5
    omega = np.array([(p.angle(t + h) - p.angle(t - h)) / (2 * h) for t in ts])
    energy = 0.5 * p.length**2 * omega**2 - GRAVITY * p.length * np.cos([p.angle(t) for t in ts])
    assert np.ptp(energy) < 1e-4 * abs(energy.mean())
    assert np.linalg.norm(p.bob_center(0.3) - np.asarray(p.pivot)) == pytest.approx(p.length)


def test_ball_ballistic_with_restitution():
    b = BouncingBall()
    assert b.height(0.0) == pytest.approx(b.drop_height)
    t_fall = np.sqrt(2 * b.drop_height / GRAVITY)
    assert b.height(t_fall) == pytest.approx(0.0, abs=1e-9)
    v1 = GRAVITY * t_fall * b.restitution
    apex = t_fall + v1 / GRAVITY
    assert b.height(apex) == pytest.approx(b.restitution**2 * b.drop_height, rel=1e-9)
    ts = np.linspace(0, b.cycle, 400)
    heights = np.array([b.height(t) for t in ts])
    assert heights.min() >= 0.0 and heights.max() <= b.drop_height + 1e-12
    assert b.center(0.0)[1] == pytest.approx(FLOOR_Y + b.radius + b.drop_height)
    assert b.center(3.9)[1] == pytest.approx(FLOOR_Y + b.radius)  # at rest before the next throw


def test_camera_path_height_motion_and_gentle_yaw(scene):
    poses = np.stack([scene.camera_path(t) for t in np.linspace(0, 3, 13)])
    assert np.allclose(poses[:, 1, 3], CAMERA_HEIGHT)
    travel = np.linalg.norm(poses[-1, :3, 3] - poses[0, :3, 3])
    assert 1.0 <= travel <= 2.0
    forward = -poses[:, :3, 2]
    yaw = np.degrees(np.arctan2(forward[:, 0], -forward[:, 2]))
    assert 3.0 < np.ptp(yaw) < 45.0
    assert np.allclose(poses[:, :3, :3] @ poses[:, :3, :3].transpose(0, 2, 1), np.eye(3), atol=1e-12)
    assert np.all(forward[:, 1] < 0)  # looking slightly down at the room
    assert UP == (0.0, 1.0, 0.0)


def test_render_deterministic_and_seeded(scene):
    pose, k = scene.camera_path(1.0), scene.default_intrinsics(W, H)
    a = scene.render(pose, k, W, H, 1.0)[0]
    b = SyntheticScene(seed=0).render(pose, k, W, H, 1.0)[0]
    c = SyntheticScene(seed=1).render(pose, k, W, H, 1.0)[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.std() > 20  # textured, not flat


def test_source_yields_exact_frames():
    src = SyntheticSource(width=32, height=24, seconds=0.25, fps=8)
    frames = list(src)
    assert src.info.frame_count == len(frames) == 2 and src.info.has_depth and src.info.kind == "synthetic"
    assert frames[1].time == pytest.approx(0.125) and frames[1].depth.dtype == np.float32
    np.testing.assert_allclose(frames[1].world_from_camera, SyntheticScene.camera_path(0.125))


def test_write_dataset_files_and_atomicity(tmp_path):
    out = write_synthetic_dataset(tmp_path / "ds", width=64, height=48, seconds=0.5, fps=12, seed=0)
    tj = json.loads((out / "transforms.json").read_text())
    assert (tj["w"], tj["h"], len(tj["frames"])) == (64, 48, 6) and tj["depth_unit_scale_factor"] == 0.001
    scene_json = json.loads((out / "scene.json").read_text())
    assert scene_json["floor_y"] == 0.0 and scene_json["up"] == [0, 1, 0] and scene_json["camera_height"] == 1.6
    assert {o["name"] for o in scene_json["dynamic_objects"]} == {"pendulum", "ball"}
    f = tj["frames"][3]
    assert f["time"] == pytest.approx(0.25)
    scene = SyntheticScene(0)
    pose = np.array(f["transform_matrix"])
    np.testing.assert_allclose(pose, scene.camera_path(0.25), atol=1e-12)
    rgb, depth, mask = scene.render(pose, scene.default_intrinsics(64, 48), 64, 48, 0.25)
    depth_png = np.asarray(Image.open(out / f["depth_file_path"])).astype(np.float64) * 0.001
    assert np.abs(depth_png - depth).max() <= 0.0005 + 1e-6
    assert np.array_equal(np.asarray(Image.open(out / f["file_path"])), rgb)
    assert np.array_equal(np.asarray(Image.open(out / f["dynamic_mask_path"])) > 127, mask)
    info, it = read_video_frames(out / "video.mp4")
    video = list(it)
    assert (info.width, info.height, len(video), info.fps) == (64, 48, 6, 12.0)
    assert np.abs(video[3][1].astype(float) - rgb).mean() < 12  # lossy H.264 of the same frame
    # Existing output is refused; nothing partial left behind.
    with pytest.raises(InputError, match="already exists"):
        write_synthetic_dataset(out, width=64, height=48, seconds=0.25, fps=12)
    with pytest.raises(InputError, match="even"):
        write_synthetic_dataset(tmp_path / "odd", width=63, height=48, seconds=0.25, fps=12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_synth_command(tmp_path, capsys):
    assert cli_main(["synth", str(tmp_path / "c"), "--width", "32", "--height", "24", "--seconds", "0.25",
                     "--fps", "8", "--seed", "3"]) == 0
    assert len(list((tmp_path / "c" / "images").iterdir())) == 2
    assert json.loads((tmp_path / "c" / "scene.json").read_text())["seed"] == 3
    assert cli_main(["synth", str(tmp_path / "c"), "--width", "32", "--height", "24"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_bounding_sphere_culling_matches_brute_force(scene, monkeypatch):
    """Fast path (rays pre-tested against bounding spheres) == every ray against every primitive."""
    from gen_server.world import synth

    k = scene.default_intrinsics(W, H)
    views = [(scene.camera_path(1.3), 1.3), (cameras.look_at([0.2, 1.0, -1.8], [0.0, 2.0, -2.6]), 0.4)]
    fast = [scene.render(p, k, W, H, t) for p, t in views]
    monkeypatch.setattr(synth, "_rays_near", lambda *args: None)
    slow = [scene.render(p, k, W, H, t) for p, t in views]
    for a, b in zip(fast, slow):
        for x, y in zip(a, b):
            assert np.array_equal(x, y)
