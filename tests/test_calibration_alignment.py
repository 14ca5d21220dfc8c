"""world_from_stage algebra, stereo at scale, grip gestures, RANSAC floor, and the automatic alignment
against the synthetic scene's known floor (y = 0), up (+Y) and scale (metres)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calibration.adjust import apply_grab, grab_matrix, set_floor_offset, set_scale, set_yaw
from calibration.alignment import (
    WorldFromStage, apply_to_points, eye_separation_in_world, heading_of, invert_similarity, level_rotation,
    split_similarity, world_eye_poses)
from calibration.auto_align import AutoAlignConfig, auto_calibration, scale_from_points
from calibration.floor import FloorConfig, fit_floor, up_prior
from calibration.record import Calibration
from gen_server import cameras
from gen_server.world.state import PointLayer, WorldState
from gen_server.world.synth import CAMERA_HEIGHT, FLOOR_Y, UP, SyntheticScene


def _random_rotation(rng, max_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    return cameras.axis_angle_to_matrix(axis / np.linalg.norm(axis), math.radians(rng.uniform(0.5, 1.0) * max_deg))


def _angle_deg(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return math.degrees(math.acos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))


# ---------------------------------------------------------------------------------------------------
# Algebra
# ---------------------------------------------------------------------------------------------------
def test_world_from_stage_parts_and_inverse():
    rng = np.random.default_rng(3)
    up = level_rotation(np.array([0.3, 1.0, -0.2])) @ np.array([0, 1.0, 0])
    t = WorldFromStage(scale=2.5, heading=0.7, yaw_offset=-0.2, origin=(1.0, -2.0, 3.0), up=tuple(up), floor_offset=0.3)
    m = t.matrix()
    rigid, s = split_similarity(m)
    assert s == pytest.approx(2.5)
    assert np.allclose(rigid[:3, :3] @ rigid[:3, :3].T, np.eye(3), atol=1e-12)
    # Stage +Y is the floor normal; the stage point (0, floor_offset, 0) lands on the floor origin.
    assert np.allclose(rigid[:3, 1], t.up / np.linalg.norm(t.up))
    assert np.allclose(apply_to_points(m, [0.0, 0.3, 0.0]), t.origin)
    # Stage -Z points along heading + yaw_offset about the floor normal.
    assert heading_of(-rigid[:3, 2], np.array(t.up)) == pytest.approx(0.5)
    p = rng.normal(size=(20, 3))
    assert np.allclose(apply_to_points(invert_similarity(m), apply_to_points(m, p)), p)
    assert np.allclose(t.inverse_matrix() @ m, np.eye(4), atol=1e-12)
    # Changing only yaw / scale / translation round-trips through with_matrix.
    other = WorldFromStage(scale=0.4, heading=0.7, yaw_offset=1.9, origin=(0.5, 0.1, 0.2), up=t.up, floor_offset=0.3)
    back = t.with_matrix(other.matrix())
    assert back.scale == pytest.approx(0.4) and back.yaw_offset == pytest.approx(1.9)
    assert np.allclose(back.origin, other.origin) and np.allclose(back.matrix(), other.matrix())
    with pytest.raises(ValueError):
        WorldFromStage(scale=0.0)
    with pytest.raises(ValueError):
        t.with_matrix(np.diag([1.0, 1.0, 1.0, 1.0]) @ np.block([[cameras.axis_angle_to_matrix([1, 0, 0], 0.3), np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]]))


def test_level_rotation_is_minimal_and_handles_poles():
    for up in ([0, 1, 0], [0, -1, 0], [1, 0, 0], [0.2, 0.9, 0.1]):
        r = level_rotation(np.array(up, float))
        assert np.allclose(r @ [0, 1, 0], np.array(up) / np.linalg.norm(up))
        assert np.allclose(r @ r.T, np.eye(3)) and np.linalg.det(r) == pytest.approx(1.0)
    # Minimal: the rotation axis is horizontal, so a direction perpendicular to both keeps its place.
    r = level_rotation(np.array([0.0, 1.0, 1.0]))
    assert np.allclose(r @ [1, 0, 0], [1, 0, 0])


def test_stereo_at_scale_giant_view():
    """A world rendered with scale s inside world_from_stage gives the same images as the stage-metre
    scene seen with the true ipd: a world shrunk s times looks s times nearer, disparity s times larger."""
    rng = np.random.default_rng(0)
    k = cameras.fov_to_intrinsics(cameras.Fov.symmetric(math.radians(90), 1.0), 200, 200)
    ipd = 0.064
    head = cameras.look_at([0.1, 1.6, 0.2], [0.3, 1.2, -3.0])
    for scale in (1.0, 10.0, 0.1):
        wfs = WorldFromStage(scale=scale, heading=0.4, origin=(3.0, -1.0, 2.0), up=(0.1, 1.0, 0.05)).matrix()
        left, right, s = world_eye_poses(wfs, head, ipd)
        assert s == pytest.approx(scale)
        assert np.linalg.norm(left[:3, 3] - right[:3, 3]) == pytest.approx(eye_separation_in_world(ipd, scale))
        stage_pts = np.array([0.1, 1.6, 0.2]) + rng.uniform([-1, -1, -6], [1, 1, -2], size=(50, 3))
        world_pts = apply_to_points(wfs, stage_pts)
        for world_eye, stage_eye in zip((left, right), cameras.eye_poses(head, ipd)):
            uv_w, z_w = cameras.project_points(world_pts, world_eye, k)
            uv_s, z_s = cameras.project_points(stage_pts, stage_eye, k)
            assert np.allclose(uv_w, uv_s, atol=1e-8)
            assert np.allclose(z_w / scale, z_s)  # world depth / scale = stage metres
    # Disparity of a world point D world units ahead, with scale s: f * ipd * s / D (appears at D / s metres).
    wfs = WorldFromStage(scale=10.0).matrix()
    head = np.eye(4)
    left, right, _ = world_eye_poses(wfs, head, ipd)
    point = np.array([[0.0, 0.0, -20.0]])  # world units
    d = cameras.project_points(point, left, k)[0][0, 0] - cameras.project_points(point, right, k)[0][0, 0]
    assert d == pytest.approx(k[0, 0] * ipd / (20.0 / 10.0))
    assert eye_separation_in_world(ipd, 1.0) == ipd


def test_apply_grab_pivot_scale_and_yaw():
    base = Calibration(WorldFromStage(scale=1.5, heading=0.3, origin=(1.0, 0.0, -2.0), up=(0.0, 1.0, 0.1), floor_offset=0.2),
                       {"scale": "x"})
    pivot = np.array([0.4, 1.1, -0.7])
    grabbed = apply_grab(base, (0.0, 0.0, 0.0), math.radians(30), 2.0, pivot)
    assert grabbed is not base and base.scale == 1.5  # pure
    old, new = base.world_from_stage, grabbed.world_from_stage
    assert np.allclose(new, old @ invert_similarity(grab_matrix((0, 0, 0), math.radians(30), 2.0, pivot)))
    # The world point under the pivot stays under it; the world looks twice as big (half the scale).
    assert np.allclose(apply_to_points(new, pivot), apply_to_points(old, pivot))
    assert grabbed.scale == pytest.approx(0.75)
    # A world point seen at pivot + v (stage) is now seen at pivot + 2 Ry(30deg) v.
    v = np.array([0.2, 0.0, -0.1])
    w = apply_to_points(old, pivot + v)
    seen = apply_to_points(invert_similarity(new), w)
    assert np.allclose(seen, pivot + 2.0 * cameras.yaw_pitch_to_matrix(math.radians(30)) @ v)
    assert grabbed.transform.yaw_offset == pytest.approx(-math.radians(30))
    assert np.allclose(grabbed.transform.up, base.transform.up) and grabbed.transform.floor_offset == 0.2
    # Pure translation moves what the user sees by exactly delta.
    moved = apply_grab(base, (0.5, 0.0, -0.25), 0.0, 1.0, pivot)
    x = np.array([1.0, 0.0, 1.0])
    assert np.allclose(apply_to_points(invert_similarity(moved.world_from_stage), apply_to_points(old, x)), x + [0.5, 0, -0.25])
    with pytest.raises(ValueError):
        apply_grab(base, (0, 0, 0), 0.0, 0.0, pivot)


def test_settings_edit_one_part():
    base = Calibration(WorldFromStage(scale=1.0, heading=0.3, origin=(1.0, 0.0, -2.0)), {})
    assert set_scale(base, 2.0).scale == 2.0
    assert set_scale(base, 2.0).transform.origin == base.transform.origin
    raised = set_floor_offset(base, 0.5)
    assert np.allclose(apply_to_points(raised.world_from_stage, [0, 0.5, 0]), base.transform.origin)
    turned = set_yaw(base, 90.0)
    fwd = turned.world_from_stage[:3, :3] @ [0, 0, -1]
    assert _angle_deg(fwd, base.world_from_stage[:3, :3] @ [-1, 0, 0]) < 1e-6  # forward turned left 90 deg
    assert turned.sources["yaw"] != base.sources.get("yaw")
    with pytest.raises(ValueError):
        set_scale(base, -1.0)


# ---------------------------------------------------------------------------------------------------
# Floor
# ---------------------------------------------------------------------------------------------------
def _reference_floor_lsq(points, normal, offset):
    """Slow obviously-correct reference: least-squares plane z = a x + b y + c in the plane's own frame."""
    r = level_rotation(normal)
    local = points @ r  # coordinates with the normal as +Y
    a = np.c_[local[:, 0], local[:, 2], np.ones(len(local))]
    coef = np.linalg.lstsq(a, local[:, 1], rcond=None)[0]
    n_local = np.array([-coef[0], 1.0, -coef[1]]) / np.linalg.norm([-coef[0], 1.0, -coef[1]])
    return r @ n_local, -coef[2] / np.linalg.norm([-coef[0], 1.0, -coef[1]])


def test_ransac_floor_with_clutter_ceiling_and_table():
    rng = np.random.default_rng(7)
    rot = _random_rotation(rng, 20.0)
    up_true = rot @ [0, 1, 0]
    floor = rng.uniform(-4, 4, (3000, 3)) * [1, 0, 1] + rng.normal(0, 0.003, (3000, 3)) * [0, 1, 0]
    ceiling = rng.uniform(-4, 4, (5000, 3)) * [1, 0, 1] + [0, 2.8, 0]  # more points than the floor, above cameras
    table = rng.uniform(-0.5, 0.5, (800, 3)) * [1, 0, 1] + [1.0, 0.75, -1.0]
    wall = rng.uniform(-4, 4, (2000, 3)) * [1, 0.35, 0] + [0, 1.4, -4.0]
    clutter = rng.uniform([-4, 0, -4], [4, 2.8, 4], (1500, 3))
    cams_true = np.c_[rng.uniform(-1, 1, 10), np.full(10, 1.6), rng.uniform(-1, 1, 10)]
    offset = np.array([3.0, -7.0, 2.0])
    to_world = lambda p: p @ rot.T + offset  # noqa: E731
    pts = to_world(np.concatenate([floor, ceiling, table, wall, clutter]))
    prior = rot @ cameras.axis_angle_to_matrix([1, 0, 0], math.radians(8)) @ [0, 1, 0]  # cameras pitched 8 deg
    plane = fit_floor(pts, prior, to_world(cams_true), FloorConfig(seed=1))
    assert _angle_deg(plane.normal, up_true) < 0.2
    assert np.abs(plane.height(to_world(floor))).max() < 0.02
    assert plane.height(to_world(cams_true)) == pytest.approx(np.full(10, 1.6), abs=0.01)
    assert plane.inliers >= 2900
    ref_n, ref_d = _reference_floor_lsq(to_world(floor), plane.normal, plane.offset)
    assert _angle_deg(plane.normal, ref_n) < 0.05 and plane.offset == pytest.approx(ref_d, abs=2e-3)
    with pytest.raises(ValueError):  # only a ceiling: nothing below the cameras
        fit_floor(to_world(ceiling), prior, to_world(cams_true))


def test_up_prior_is_mean_camera_up():
    poses = np.stack([cameras.look_at([x, 1.6, 0.0], [x, 1.6 + dy, -3.0]) for x, dy in ((0, 0.5), (1, -0.5))])
    assert np.allclose(up_prior(poses), [0, 1, 0], atol=1e-9)


# ---------------------------------------------------------------------------------------------------
# Automatic alignment against the synthetic scene
# ---------------------------------------------------------------------------------------------------
W, H = 96, 72
TIMES = (0.0, 1.0, 2.0, 3.0)


def _synthetic_world(similarity: np.ndarray, depth_noise: float = 0.0, seed: int = 0) -> WorldState:
    """A WorldState from exactly rendered frames: static points = unprojected non-moving pixels, all then
    moved into a 'reconstruction frame' by ``similarity`` (world_recon_from_world_true, scale inside).
    ``depth_noise``: relative Gaussian depth error, plus 2 % of pixels at random depths (a depth model's
    flying pixels)."""
    scene = SyntheticScene(0)
    rng = np.random.default_rng(seed)
    k = SyntheticScene.default_intrinsics(W, H)
    rigid, s = split_similarity(similarity)
    pts, poses = [], []
    for t in TIMES:
        pose = SyntheticScene.camera_path(t)
        _, depth, moving = scene.render(pose, k, W, H, t)
        if depth_noise:
            depth = depth * (1.0 + rng.normal(0.0, depth_noise, depth.shape))
            wild = rng.random(depth.shape) < 0.02
            depth[wild] = rng.uniform(0.5, 8.0, int(wild.sum()))
        p = cameras.unproject_depth(np.where(moving, 0.0, depth), k, pose).reshape(-1, 3)
        pts.append(p[np.all(np.isfinite(p), axis=1)])
        recon_pose = rigid @ pose
        recon_pose[:3, 3] = apply_to_points(similarity, pose[:3, 3])
        poses.append(recon_pose)
    pts = apply_to_points(similarity, np.concatenate(pts)).astype(np.float32)
    n = len(pts)
    static = PointLayer(pts, np.full((n, 3), 128, np.uint8), np.full(n, 0.01, np.float32), np.ones(n, np.float32))
    f = len(TIMES)
    return WorldState(static, PointLayer.empty(), np.zeros(f + 1, np.int64), np.array(TIMES), 1.0,
                      np.stack(poses), np.repeat(k[None], f, 0), (W, H), {"depth_source": "synthetic exact"})


@pytest.mark.parametrize("seed,depth_noise", [(0, 0.0), (1, 0.01), (2, 0.02)])
def test_auto_alignment_recovers_floor_origin_yaw_and_scale(seed, depth_noise):
    rng = np.random.default_rng(seed)
    s_w = float(rng.uniform(0.3, 3.0))  # reconstruction units per true metre
    sim = np.eye(4)
    sim[:3, :3] = s_w * _random_rotation(rng, 25.0)
    sim[:3, 3] = rng.uniform(-5, 5, 3)
    world = _synthetic_world(sim, depth_noise, seed)
    cal = auto_calibration(world, AutoAlignConfig(camera_height=CAMERA_HEIGHT))
    assert "camera height" in cal.sources["scale"]
    # Scale within 1 %.
    assert abs(cal.scale / s_w - 1) < 0.01
    # Floor within 1 deg and 2 cm: stage y = 0 over a 6 m square maps onto the true floor y = FLOOR_Y.
    true_from_recon = invert_similarity(sim)
    true_up = np.asarray(UP)
    stage_up_in_true = true_from_recon[:3, :3] @ cal.world_from_stage[:3, :3] @ [0, 1, 0]
    assert _angle_deg(stage_up_in_true, true_up) < 1.0
    grid = np.stack(np.meshgrid(np.linspace(-3, 3, 7), [0.0], np.linspace(-3, 3, 7)), -1).reshape(-1, 3)
    floor_true = apply_to_points(true_from_recon @ cal.world_from_stage, grid)
    assert np.abs(floor_true[:, 1] - FLOOR_Y).max() < 0.02
    # Stage in true metres: the source camera at tau = 0 stands at the stage origin at its true height,
    # looking along stage -Z (horizontally), and stage distances are true distances.
    stage_from_true = invert_similarity(true_from_recon @ cal.world_from_stage)
    cam0 = SyntheticScene.camera_path(0.0)
    stage_cam = stage_from_true @ cam0
    assert np.allclose(stage_cam[:3, 3], [0.0, CAMERA_HEIGHT, 0.0], atol=0.02)
    fwd = stage_cam[:3, :3] @ [0, 0, -1] / split_similarity(stage_cam)[1]
    assert math.degrees(math.atan2(fwd[0], -fwd[2])) == pytest.approx(0.0, abs=1.0)
    assert fwd[2] < 0
    a, b = apply_to_points(stage_from_true, [[0, 0, 0], [1, 0, 0]])
    assert np.linalg.norm(a - b) == pytest.approx(1.0, rel=0.01)


def test_auto_alignment_scale_sources():
    rng = np.random.default_rng(5)
    sim = np.eye(4)
    sim[:3, :3] = 2.0 * _random_rotation(rng, 10.0)
    world = _synthetic_world(sim)
    metric = auto_calibration(world)
    assert metric.scale == 1.0 and "metric depth" in metric.sources["scale"]
    user = auto_calibration(world, AutoAlignConfig(scale=0.5))
    assert user.scale == 0.5 and user.sources["scale"] == "user setting"
    a, b = apply_to_points(sim, [[0.0, 0.0, 0.0], [0.0, 0.0, -2.5]])
    picked = auto_calibration(world, AutoAlignConfig(known_distance=(a, b, 2.5)))
    assert picked.scale == pytest.approx(2.0, rel=1e-9)
    assert scale_from_points(a, b, 1.25) == pytest.approx(4.0)


def test_auto_alignment_without_a_floor_falls_back():
    """No floor in view (a back wall only): the floor goes through the lowest points, facing camera up;
    no points at all: the assumed eye height below the reference camera."""
    rng = np.random.default_rng(2)
    wall = np.c_[rng.uniform(-3, 3, 4000), rng.uniform(0.4, 3.0, 4000), np.full(4000, -5.0)].astype(np.float32)
    poses = np.stack([cameras.look_at([x, 1.6, 0.0], [x, 1.6, -5.0]) for x in (0.0, 0.5)])
    k = SyntheticScene.default_intrinsics(W, H)

    def world_of(points):
        n = len(points)
        layer = PointLayer(points, np.zeros((n, 3), np.uint8), np.full(n, 0.01, np.float32), np.ones(n, np.float32))
        return WorldState(layer, PointLayer.empty(), np.zeros(3, np.int64), np.array([0.0, 0.5]), 2.0, poses,
                          np.repeat(k[None], 2, 0), (W, H))

    cal = auto_calibration(world_of(wall))
    assert cal.sources["floor"].startswith("fallback: lowest points")
    stage_cam = invert_similarity(cal.world_from_stage) @ poses[0]
    assert stage_cam[1, 3] == pytest.approx(1.6 - np.percentile(wall[:, 1], 1.0), abs=1e-4)
    assert np.allclose(cal.transform.up, [0, 1, 0])
    empty = auto_calibration(world_of(np.zeros((0, 3), np.float32)))
    assert "assumed 1.6 m" in empty.sources["floor"]
    assert (invert_similarity(empty.world_from_stage) @ poses[0])[1, 3] == pytest.approx(1.6)
