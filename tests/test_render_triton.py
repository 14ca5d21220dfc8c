"""The fused Triton render path (``RenderConfig(backend="triton")``) against the torch path and the slow
loop reference. On CUDA it runs compiled; elsewhere, when triton is installed (the dev extra), under
Triton's interpreter on CPU tensors - the same kernels, so CI checks them on every run."""

import importlib.util
import math
import os

import numpy as np
import pytest
import torch

from gen_server import cameras
from gen_server.benchmarks.render_bench import random_world
from gen_server.render.holes import push_pull
from gen_server.render.renderer import RenderConfig, Renderer
from tests._reference_render import reference_render_at
from tests.test_render_reference import VIEWS
from tests.test_render_reference import world as reference_world  # noqa: F401 - pytest fixture

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")

if not CUDA and importlib.util.find_spec("triton") is not None:
    # Read when the kernels are decorated (at import) and again while they run, so it stays set; on a
    # machine without CUDA nothing else in the suite runs Triton kernels.
    os.environ["TRITON_INTERPRET"] = "1"

DEVICE = "cuda" if CUDA else "cpu"


def _pair(world, backend, width, height, tau, fill=True, fov_deg=100.0):
    r = Renderer(world, DEVICE, RenderConfig(backend=backend, fill_holes=fill))
    head = cameras.look_at([0.2, 1.5, 0.4], [0.0, 1.2, -3.0])
    fov = cameras.Fov.symmetric(math.radians(fov_deg), width / height)
    out = r.render_fov(np.stack(cameras.eye_poses(head, 0.064)), [fov, fov], width, height, tau)
    assert r.backend == backend
    return out.color.cpu(), out.depth.cpu(), out.valid.cpu()


def _assert_same_winners_up_to_ties(got, ref):
    """Valid pixels agree; where the winners' colours differ, their depths tie to float32 rounding,
    except at a few footprint edges.

    The fused kernel projects with fused multiply-adds, the torch path with a batched matmul, so two
    points at (nearly) the same depth can swap, and a footprint's edge can move by one pixel where its
    centre or radius rounds the other way (on the H100: 10 of 184 k pixels at 320x360). A wrong depth
    test would show as depth differences over whole surfaces, far above these bounds."""
    assert (got[2] == ref[2]).float().mean() > 0.999  # footprint edges may move by one pixel
    both = got[2] & ref[2]
    differ = both & (got[0] != ref[0]).any(-1)
    assert differ.float().sum() <= 0.01 * both.float().sum()
    depth_tie = torch.isclose(got[1], ref[1], rtol=2e-5)
    assert (both & ~depth_tie).float().sum() <= 2e-4 * both.float().sum()  # edge pixels only
    assert (both & ~depth_tie & ~differ).sum() == 0  # same colour, same point: same depth


@pytest.mark.parametrize("tau", [1 / 24, 0.37 / 24 + 1 / 24])  # a dynamic frame exactly; a cross-fade of two
@pytest.mark.parametrize("size", [(64, 72), (37, 23)])  # odd sizes exercise the pyramid's padded edges
def test_triton_matches_torch_path(tau, size):
    world = random_world(200_000 if CUDA else 20_000, 20_000 if CUDA else 2_000, 3)
    width, height = (w * 5 for w in size) if CUDA else size
    ref = _pair(world, "torch", width, height, tau)
    got = _pair(world, "triton", width, height, tau)
    assert 0.5 < ref[2].float().mean() < 0.999  # splats and holes both present
    _assert_same_winners_up_to_ties(got, ref)


@pytest.mark.parametrize("tau", [1 / 24, 0.37 / 24 + 1 / 24])
def test_triton_hole_fill_is_push_pull(tau):
    """The fused push-pull fills holes as holes.push_pull does from the same splatted pixels."""
    world = random_world(200_000 if CUDA else 20_000, 20_000 if CUDA else 2_000, 3)
    width, height = (185, 115) if CUDA else (37, 23)
    color, depth, valid = _pair(world, "triton", width, height, tau, fill=False)
    filled = _pair(world, "triton", width, height, tau)
    assert torch.equal(filled[2], valid) and 0.5 < valid.float().mean() < 0.999
    planes = torch.cat([color.permute(0, 3, 1, 2).float(), depth[:, None]], 1)
    expected = push_pull(planes, valid, zero_invalid=True)
    holes = ~valid
    exp_color = (expected[:, :3] + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    # Cross-faded colours were rounded to uint8 before this re-fill: at most one level apart.
    assert (filled[0].int() - exp_color.int()).abs()[holes].max() <= 1
    assert torch.equal(filled[0][valid], color[valid])
    assert torch.allclose(filled[1][holes], expected[:, 3][holes], rtol=1e-4, atol=1e-5)


def test_triton_without_hole_fill_leaves_holes_empty():
    world = random_world(20_000, 2_000, 3)
    color, depth, valid = _pair(world, "triton", 48, 40, 0.02, fill=False)
    assert 0.3 < valid.float().mean() < 0.99
    assert color[~valid].max() == 0 and depth[~valid].max() == 0
    assert depth[valid].min() > 0


@pytest.mark.parametrize("view", range(len(VIEWS)))
def test_triton_matches_reference(reference_world, view):  # noqa: F811 - fixture
    w, h = 40, 30
    k = cameras.fov_to_intrinsics(cameras.Fov.symmetric(np.radians(75), w / h), w, h)
    k[1, 1] *= 1.25  # non-square pixels: the footprint's two half-sizes differ
    pose, tau = VIEWS[view]
    r = Renderer(reference_world, DEVICE, RenderConfig(backend="triton", fill_holes=False))
    out = r.render(pose, k, w, h, tau)
    color, depth, valid = reference_render_at(reference_world, r.stored_radii().astype(np.float64), pose, k, w, h, tau)
    assert valid.mean() > 0.25
    got_valid = out.valid[0].cpu().numpy()
    assert (got_valid == valid).mean() > 0.995
    both = got_valid & valid
    expected = np.floor(color + 0.5).astype(np.int64)[both]
    assert (out.color[0].cpu().numpy().astype(np.int64)[both] == expected).all(-1).mean() > 0.995
    np.testing.assert_allclose(out.depth[0].cpu().numpy()[both], depth[both], rtol=1e-5, atol=1e-6)


def test_cuda_matches_cpu():
    if not CUDA:
        pytest.skip("needs CUDA (run on the device machine)")
    world = random_world(100_000, 10_000, 3)
    r_cpu = Renderer(world, "cpu")
    r_gpu = Renderer(world, "cuda")
    assert r_gpu.backend == "triton"
    head = cameras.look_at([0.2, 1.5, 0.4], [0.0, 1.2, -3.0])
    fov = cameras.Fov.symmetric(math.radians(100), 320 / 360)
    args = (np.stack(cameras.eye_poses(head, 0.064)), [fov, fov], 320, 360, 0.37)
    cpu, gpu = r_cpu.render_fov(*args), r_gpu.render_fov(*args)
    _assert_same_winners_up_to_ties((gpu.color.cpu(), gpu.depth.cpu(), gpu.valid.cpu()), (cpu.color, cpu.depth, cpu.valid))


def _views(i: int):
    head = cameras.look_at([0.2 + 0.1 * i, 1.5, 0.4], [0.0, 1.2 - 0.05 * i, -3.0])
    return np.stack(cameras.eye_poses(head, 0.064))


def test_reused_plans_follow_poses_and_time():
    """One renderer's plans (one per shape, reused with new cameras, frames and weights; CUDA graphs on
    CUDA) render what a fresh renderer renders, and results of earlier calls stay as they were."""
    world = random_world(100_000 if CUDA else 10_000, 10_000 if CUDA else 1_000, 4)
    width, height = (160, 120) if CUDA else (37, 23)
    fov = cameras.Fov.symmetric(math.radians(90), width / height)
    kept = Renderer(world, DEVICE, RenderConfig(backend="triton", max_cuda_graphs=2))
    taus = [1 / 24, 0.3 / 24 + 1 / 24, 2 / 24, 2.8 / 24]  # exact frames and cross-fades, alternating shapes
    first = kept.render_fov(_views(0), [fov, fov], width, height, taus[0])
    first_copy = [t.clone() for t in (first.color, first.depth, first.valid)]
    for i, tau in enumerate(taus):
        got = kept.render_fov(_views(i), [fov, fov], width, height, tau)
        fresh = Renderer(world, DEVICE, RenderConfig(backend="triton", cuda_graphs=False)).render_fov(
            _views(i), [fov, fov], width, height, tau)
        for g, f in zip((got.color, got.depth, got.valid), (fresh.color, fresh.depth, fresh.valid)):
            assert torch.equal(g, f)
    for t, c in zip((first.color, first.depth, first.valid), first_copy):
        assert torch.equal(t, c)  # not overwritten by later renders of the same shape
    assert len(kept._plans) == 2  # (2 views, fade) and (2 views, no fade)
    kept.render_fov(_views(0)[:1], [fov], width, height, taus[0])  # a third shape evicts the oldest
    assert len(kept._plans) == 2 and (1, height, width, False) in kept._plans
    if CUDA:
        assert all(p.graph is not None for p in kept._plans.values())
