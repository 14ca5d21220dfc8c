"""CUDA-only renderer checks (run on the GPU machine; skipped elsewhere): every footprint-expansion
strategy gives the same image as the flat CUDA path, and CUDA matches the CPU render."""

import math

import numpy as np
import pytest
import torch

from gen_server import cameras
from gen_server.benchmarks.render_bench import random_world
from gen_server.render.renderer import Renderer, RenderConfig
from gen_server.render.splat import SplatConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")


def _render(world, device, expansion, tau=0.37):
    r = Renderer(world, device, RenderConfig(splat=SplatConfig(expansion=expansion)))
    head = cameras.look_at([0.2, 1.5, 0.4], [0.0, 1.2, -3.0])
    fov = cameras.Fov.symmetric(math.radians(100), 320 / 360)
    out = r.render_fov(np.stack(cameras.eye_poses(head, 0.064)), [fov, fov], 320, 360, tau)
    return out.color.cpu(), out.depth.cpu(), out.valid.cpu()


@pytest.mark.parametrize("expansion", ["groups", "triton"])
def test_expansions_match_flat_on_cuda(expansion):
    world = random_world(200_000, 20_000, 3)
    ref = _render(world, "cuda", "flat")
    got = _render(world, "cuda", expansion)
    assert torch.equal(got[2], ref[2])
    assert torch.equal(got[0], ref[0])
    assert torch.allclose(got[1], ref[1], atol=1e-5)


def test_cuda_matches_cpu():
    world = random_world(100_000, 10_000, 3)
    cpu = _render(world, "cpu", "auto")
    gpu = _render(world, "cuda", "auto")
    assert (gpu[2] == cpu[2]).float().mean() > 0.999
    agree = gpu[2] & cpu[2]
    assert (gpu[0][agree].int() - cpu[0][agree].int()).abs().max() <= 1
