"""The fast splatting path against the slow loop reference (tests/_reference_render.py)."""

import numpy as np
import pytest

from gen_server import cameras
from gen_server.render.renderer import RenderConfig, Renderer
from gen_server.render.splat import quantise_radii
from gen_server.world.state import PointLayer, WorldState
from tests._reference_render import reference_render_at


def _random_layer(rng, n, lo, hi):
    # unique colours so equal colours mean equal z-buffer winners
    ids = rng.permutation(256**3 - 1)[:n] + 1
    colors = np.stack([ids & 255, (ids >> 8) & 255, ids >> 16], -1).astype(np.uint8)
    return PointLayer(rng.uniform(lo, hi, (n, 3)).astype(np.float32), colors, rng.uniform(0.005, 0.08, n).astype(np.float32), np.ones(n, np.float32))


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(7)
    static = _random_layer(rng, 1500, [-1.5, -1, -5], [1.5, 1, -1.5])
    frames = [_random_layer(rng, 80, [-0.5, -0.5, -2.5], [0.5, 0.5, -1.0]) for _ in range(3)]
    offsets = np.array([0, 80, 160, 240])
    poses = np.repeat(np.eye(4)[None], 3, 0)
    return WorldState(static, PointLayer.concatenate(frames), offsets, np.array([0.0, 0.1, 0.2]), 10.0, poses, np.repeat(np.eye(3)[None], 3, 0), (40, 30))


VIEWS = [
    (np.eye(4), 0.0),
    (cameras.look_at([0.4, 0.2, 0.5], [0.0, 0.0, -3.0]), 0.1),
    (cameras.look_at([-0.6, -0.1, 0.2], [0.2, 0.1, -3.0]), 0.137),  # fractional: cross-fade of frames 1 and 2
]


@pytest.mark.parametrize("view", range(len(VIEWS)))
def test_fast_path_matches_reference(world, view):
    w, h = 40, 30
    k = cameras.fov_to_intrinsics(cameras.Fov.symmetric(np.radians(75), w / h), w, h)
    pose, tau = VIEWS[view]
    r = Renderer(world, "cpu", RenderConfig(fill_holes=False))
    out = r.render(pose, k, w, h, tau)
    radii = r.stored_radii().astype(np.float64)  # 8-bit quantised as the renderer stores them
    color, depth, valid = reference_render_at(world, radii, pose, k, w, h, tau)
    assert valid.mean() > 0.25  # a meaningful comparison: plenty of covered, overlapping pixels
    np.testing.assert_array_equal(out.valid[0].numpy(), valid)
    np.testing.assert_array_equal(out.color[0].numpy().astype(np.int64), np.floor(color + 0.5).astype(np.int64))
    np.testing.assert_allclose(out.depth[0].numpy(), depth, rtol=1e-5, atol=1e-6)


def test_radius_quantisation_error_is_bounded():
    radii = np.random.default_rng(1).uniform(1e-4, 0.2, 5000)
    codes, lo, step = quantise_radii(radii)
    decoded = 2.0 ** (lo + codes * step)
    assert codes.min() == 0 and codes.max() == 255
    assert np.max(np.abs(np.log2(decoded / radii))) <= step / 2 + 1e-9


def test_chunk_culling_changes_nothing_but_work():
    """Frustum culling of Morton chunks must give bit-identical images to splatting every point."""
    rng = np.random.default_rng(11)
    n = 60_000
    pts = rng.uniform([-6, 0, -6], [6, 3, 6], (n, 3)).astype(np.float32)
    layer = PointLayer(pts, rng.integers(0, 256, (n, 3), dtype=np.uint8), rng.uniform(0.01, 0.06, n).astype(np.float32), np.ones(n, np.float32))
    world = WorldState(layer, PointLayer.empty(), np.zeros(2, np.int64), np.zeros(1), 10.0, np.eye(4)[None], np.eye(3)[None], (64, 48))
    k = cameras.fov_to_intrinsics(cameras.Fov.symmetric(np.radians(70), 4 / 3), 64, 48)
    poses = np.stack([cameras.look_at([0, 1.5, 0], [3, 1.2, -4]), cameras.look_at([0.064, 1.5, 0], [3, 1.2, -4])])
    culled = Renderer(world, "cpu")
    full = Renderer(world, "cpu", RenderConfig(cull_chunks=False))
    a, b = culled.render(poses, np.stack([k, k]), 64, 48, 0.0), full.render(poses, np.stack([k, k]), 64, 48, 0.0)
    sel = culled._static_selection(culled_proj(poses, k), 64, 48)
    assert not isinstance(sel, slice) and 0 < len(sel) < len(culled.chunks)  # culling really skipped chunks
    assert a.valid.float().mean() > 0.5
    assert np.array_equal(a.color.numpy(), b.color.numpy()) and np.array_equal(a.depth.numpy(), b.depth.numpy())


def culled_proj(poses, k):
    from gen_server.render.splat import projection_matrices

    return projection_matrices(cameras.cv_camera_from_world(poses), np.stack([k] * len(poses)))
