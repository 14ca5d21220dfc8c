"""Flow-matching schedule, Wan latent normalisation and the TensorRT engine cache key."""
from __future__ import annotations

import pytest
import torch

from gen_server.generators.inspatio.engines import engine_cache_key
from gen_server.generators.inspatio.latent_norm import (WAN21_LATENT_MEAN, WAN21_LATENT_STD, denormalize_latents,
                                                        normalize_latents)
from gen_server.generators.inspatio.schedule import FlowMatchSchedule


def test_published_four_step_schedule():
    s = FlowMatchSchedule()
    assert s.timesteps == pytest.approx((1000.0, 937.5, 2500 / 3, 625.0))
    assert s.sigmas == pytest.approx((1.0, 0.9375, 5 / 6, 0.625))
    x0, noise = torch.randn(2, 3), torch.randn(2, 3)
    for sigma in s.sigmas:
        xt = s.renoise(x0, noise, sigma)
        flow = noise - x0  # what a perfect model predicts
        torch.testing.assert_close(s.x0_from_flow(xt, flow, sigma), x0)


def test_latent_normalisation_roundtrip_and_values():
    z = torch.randn(1, 2, 16, 3, 4)
    torch.testing.assert_close(denormalize_latents(normalize_latents(z)), z, rtol=1e-5, atol=1e-5)
    raw = torch.tensor(WAN21_LATENT_MEAN).view(1, 1, 16, 1, 1) + torch.tensor(WAN21_LATENT_STD).view(1, 1, 16, 1, 1)
    torch.testing.assert_close(normalize_latents(raw), torch.ones(1, 1, 16, 1, 1))  # mean + 1 std -> 1
    with pytest.raises(ValueError, match="16 channels"):
        normalize_latents(torch.zeros(1, 2, 8, 3, 4))


def test_engine_cache_key_covers_shapes_precision_and_checkpoint():
    base = dict(graph="step", shapes={"batch": 1, "context_frames": 6}, precision="bf16", checkpoint_hash="a" * 64,
                trt_version="10.0")
    k = engine_cache_key(**base)
    assert k == engine_cache_key(**base)
    for change in ({"shapes": {"batch": 2, "context_frames": 6}}, {"precision": "fp16"},
                   {"checkpoint_hash": "b" * 64}, {"graph": "prefill"}, {"trt_version": "10.1"}):
        assert engine_cache_key(**{**base, **change}) != k, change
