"""Renderer geometry: known points on known pixels, stereo disparity sign, footprints closing near
surfaces, tau cross-fade, hole filling, determinism."""

import numpy as np
import pytest
import torch

from gen_server import cameras
from gen_server.render.renderer import RenderConfig, Renderer
from gen_server.render.splat import SplatConfig
from gen_server.world.state import PointLayer, WorldState


def _layer(points, color, radius):
    n = len(points)
    colors = np.broadcast_to(np.asarray(color, np.uint8), (n, 3)).copy()
    radii = np.broadcast_to(np.asarray(radius, np.float32), (n,)).copy()
    return PointLayer(np.asarray(points, np.float32), colors, radii, np.ones(n, np.float32))


def _world(static, dynamic_frames=(), fps=10.0):
    frames = max(len(dynamic_frames), 1)
    dyn = PointLayer.concatenate(list(dynamic_frames)) if dynamic_frames else PointLayer.empty()
    sizes = [len(d) for d in dynamic_frames] or [0]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    poses = np.repeat(np.eye(4)[None], frames, 0)
    ks = np.repeat(np.eye(3)[None], frames, 0)
    return WorldState(static, dyn, offsets, np.arange(frames) / fps, fps, poses, ks, (64, 48))


def _plane(depth_m, width, height, k, pose, color=(40, 90, 200), hole=None):
    """Points of a fronto-parallel plane: one per source pixel, radius = half the pixel spacing."""
    depth = np.full((height, width), depth_m)
    pts = cameras.unproject_depth(depth, k, pose)
    keep = np.ones((height, width), bool)
    if hole is not None:
        (y0, y1), (x0, x1) = hole
        keep[y0:y1, x0:x1] = False
    return _layer(pts[keep], color, depth_m * 0.5 / k[0, 0])


def test_known_world_point_lands_on_expected_pixel_for_head_pose():
    w, h, ipd = 80, 60, 0.064
    fov = cameras.Fov.symmetric(np.radians(70), w / h)
    k = cameras.fov_to_intrinsics(fov, w, h)
    head = cameras.pose_to_matrix(np.array([1.0, 1.6, 2.0]), np.array([0, 0, 0, 1.0]))
    left, right = cameras.eye_poses(head, ipd)
    # 0.5 m right, 0.25 m up, 2 m ahead of the left eye: u = cx + fx*0.25, v = cy - fy*0.125
    target = np.array([1.0 - ipd / 2 + 0.5, 1.6 + 0.25, 2.0 - 2.0])
    world = _world(_layer(target[None], (255, 0, 0), 1e-5))
    out = Renderer(world, "cpu", RenderConfig(fill_holes=False)).render_fov(left[None], [fov], w, h, 0.0)
    ys, xs = np.nonzero(out.valid[0].numpy())
    expected = (k[0, 2] + k[0, 0] * 0.25, k[1, 2] - k[1, 1] * 0.125)
    assert len(xs) == 1
    assert abs(xs[0] - expected[0]) <= 0.5 and abs(ys[0] - expected[1]) <= 0.5
    assert out.depth[0, ys[0], xs[0]].item() == pytest.approx(2.0, abs=1e-5)
    assert tuple(out.color[0, ys[0], xs[0]].tolist()) == (255, 0, 0)


def test_stereo_disparity_sign_and_size():
    w, h, ipd, dist = 200, 100, 0.064, 1.5
    fov = cameras.Fov.symmetric(np.radians(60), w / h)
    k = cameras.fov_to_intrinsics(fov, w, h)
    head = cameras.look_at([0.3, 1.5, 0.0], [0.3 + 1.0, 1.5, 0.0])  # looking along +X
    target = np.array([0.3 + dist, 1.5, 0.0])
    world = _world(_layer(target[None], (0, 255, 0), 1e-5))
    left, right = cameras.eye_poses(head, ipd)
    out = Renderer(world, "cpu", RenderConfig(fill_holes=False)).render_fov(np.stack([left, right]), [fov, fov], w, h, 0.0)
    u_left = np.nonzero(out.valid[0].numpy())[1][0]
    u_right = np.nonzero(out.valid[1].numpy())[1][0]
    # an object straight ahead is right of centre in the left eye, left of centre in the right eye
    assert u_left > k[0, 2] > u_right
    assert u_left - u_right == pytest.approx(k[0, 0] * ipd / dist, abs=1.0)


def test_near_plane_closes_at_high_resolution():
    sw, sh = 64, 48
    k = cameras.fov_to_intrinsics(cameras.Fov.symmetric(np.radians(60), sw / sh), sw, sh)
    world = _world(_plane(2.0, sw, sh, k, np.eye(4)))
    w, h = 256, 192
    # 0.8 m towards the plane with a narrower lens at 4x the pixels: each source point now spans ~10 px
    k_hi = cameras.fov_to_intrinsics(cameras.Fov.symmetric(np.radians(40), w / h), w, h)
    closer = np.eye(4)
    closer[2, 3] = -0.8
    out = Renderer(world, "cpu", RenderConfig(fill_holes=False)).render(closer, k_hi, w, h, 0.0)
    assert bool(out.valid.all())
    assert torch.allclose(out.depth, torch.full_like(out.depth, 1.2), atol=1e-5)
    # without the depth-aware footprint (one pixel per point) the same view is full of holes
    tiny = Renderer(world, "cpu", RenderConfig(splat=SplatConfig(max_half_px=0.5), fill_holes=False))
    sparse = tiny.render(closer, k_hi, w, h, 0.0)
    assert sparse.valid.float().mean().item() < 0.2


def test_fractional_tau_cross_fades_neighbouring_frames():
    w, h = 48, 32
    k = cameras.fov_to_intrinsics(cameras.Fov.symmetric(np.radians(60), w / h), w, h)
    background = _plane(3.0, w, h, k, np.eye(4), color=(0, 0, 200))
    # frame 0: a red patch left of centre, frame 1: the same patch right of centre, 1 m ahead
    grid = np.stack(np.meshgrid(np.linspace(-0.1, 0.1, 9), np.linspace(-0.1, 0.1, 9)), -1).reshape(-1, 2)
    patch = lambda x: _layer(np.c_[grid[:, 0] + x, grid[:, 1], np.full(len(grid), -1.0)], (240, 0, 0), 0.02)
    world = _world(background, [patch(-0.3), patch(0.3)], fps=10.0)
    r = Renderer(world, "cpu")
    u_left, v = int(round(k[0, 2] - 0.3 * k[0, 0])), int(round(k[1, 2]))
    u_right = int(round(k[0, 2] + 0.3 * k[0, 0]))
    at = lambda tau, u: r.render(np.eye(4), k, w, h, tau).color[0, v, u].tolist()
    assert at(0.0, u_left) == [240, 0, 0] and at(0.0, u_right) == [0, 0, 200]
    assert at(0.05, u_left) == [120, 0, 100] and at(0.05, u_right) == [120, 0, 100]
    assert at(0.025, u_left) == [180, 0, 50]
    assert at(0.1, u_right) == [240, 0, 0] and at(0.1, u_left) == [0, 0, 200]
    # depth is cross-faded the same way
    assert r.render(np.eye(4), k, w, h, 0.05).depth[0, v, u_left].item() == pytest.approx(0.5 * 1.0 + 0.5 * 3.0, abs=1e-4)


def test_hole_fill_marks_invalid_and_fills_from_surroundings():
    w, h = 64, 48
    k = cameras.fov_to_intrinsics(cameras.Fov.symmetric(np.radians(60), w / h), w, h)
    world = _world(_plane(2.0, w, h, k, np.eye(4), color=(10, 200, 30), hole=((20, 28), (30, 40))))
    out = Renderer(world, "cpu").render(np.eye(4), k, w, h, 0.0)
    valid = out.valid[0].numpy()
    assert not valid[20:28, 30:40].any() and valid.sum() == w * h - 8 * 10
    assert (out.color[0].numpy() == (10, 200, 30)).all()
    assert np.allclose(out.depth[0].numpy(), 2.0, atol=1e-5)
    unfilled = Renderer(world, "cpu", RenderConfig(fill_holes=False)).render(np.eye(4), k, w, h, 0.0)
    assert (unfilled.color[0].numpy()[~valid] == 0).all() and torch.equal(unfilled.valid, out.valid)


def test_render_is_deterministic_and_devices_agree():
    rng = np.random.default_rng(3)
    pts = rng.uniform([-1, -1, -4], [1, 1, -1], (4000, 3)).astype(np.float32)
    world = _world(PointLayer(pts, rng.integers(0, 256, (4000, 3), dtype=np.uint8), rng.uniform(0.002, 0.05, 4000).astype(np.float32), np.ones(4000, np.float32)))
    k = cameras.fov_to_intrinsics(cameras.Fov.symmetric(np.radians(70), 1.0), 64, 64)
    r = Renderer(world, "cpu")
    a, b = r.render(np.eye(4), k, 64, 64, 0.0), r.render(np.eye(4), k, 64, 64, 0.0)
    assert torch.equal(a.color, b.color) and torch.equal(a.depth, b.depth) and torch.equal(a.valid, b.valid)
    if torch.cuda.is_available():
        g = Renderer(world, "cuda").render(np.eye(4), k, 64, 64, 0.0)
        assert torch.equal(g.valid.cpu(), a.valid)
        assert (g.color.cpu().int() - a.color.int()).abs().max() <= 1


def test_bad_inputs_raise():
    world = _world(_layer(np.zeros((1, 3)), (1, 2, 3), 0.01))
    r = Renderer(world, "cpu")
    with pytest.raises(ValueError, match="world_from_camera"):
        r.render(np.eye(3), np.eye(3), 8, 8, 0.0)
    with pytest.raises(ValueError, match="tau"):
        r.render(np.eye(4), np.eye(3), 8, 8, float("nan"))
