"""The 12-frame block loop: prefill [reference | previous block], then 4 flow-matching denoising steps.

Latent layout here is NTCHW (B, frames, channels, h, w) like TAEHV; the DiT takes (B, C, F, h, w).
Per block (3 latent frames):
  context = [reference latents at the block's times | previous block's output] (only the reference for
  the first block), each padded to 36 channels with zeros for mask/render, prefilled at timestep 0 with RoPE
  frames 0..5; then x = noise and for each t in the schedule: flow = DiT([x | mask | render], t) with RoPE
  frames 6..8 attending to the context, x0 = x - sigma*flow, re-noise to the next sigma.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from .config import StreamConfig
from .dit import CausalWanDiT, KVCache, TextContext
from .schedule import FlowMatchSchedule


class DiTRunner(Protocol):
    """What the block loop needs from an engine (eager, compiled, CUDA-graphed or TensorRT)."""

    def prefill(self, context36: torch.Tensor) -> None: ...

    def step(self, x36: torch.Tensor, t: torch.Tensor, context_frames: int) -> torch.Tensor: ...


class EagerRunner:
    """Plain PyTorch runner: the DiT plus its KV cache (capacity = context + one block)."""

    def __init__(self, dit: CausalWanDiT, text: TextContext, stream: StreamConfig, batch: int) -> None:
        self.dit, self.text, self.stream = dit, text, stream
        h, w = stream.latent_hw
        self.tokens_per_frame = dit.tokens_per_frame(h, w)
        p = next(dit.parameters())
        cap = (stream.context_latent_frames + stream.latent_frames_per_block) * self.tokens_per_frame
        self.cache = KVCache.allocate(dit.cfg, batch, cap, p.device, p.dtype)

    @torch.no_grad()
    def prefill(self, context36: torch.Tensor) -> None:
        t = torch.zeros(context36.shape[0], device=context36.device)
        self.dit(context36, t, self.text, self.cache, write_at=0, frame_offset=0, with_head=False)

    @torch.no_grad()
    def step(self, x36: torch.Tensor, t: torch.Tensor, context_frames: int) -> torch.Tensor:
        return self.dit(x36, t, self.text, self.cache, write_at=context_frames * self.tokens_per_frame,
                        frame_offset=self.stream.block_rope_offset)


def pad_context(latents: torch.Tensor) -> torch.Tensor:
    """(B, F, 16, h, w) clean latents -> (B, 36, F, h, w) with zero mask and zero render channels."""
    b, f, c, h, w = latents.shape
    z = latents.new_zeros(b, f, 20, h, w)
    return torch.cat([latents, z], dim=2).transpose(1, 2)


def pack_mask(valid: torch.Tensor, latent_hw: tuple[int, int], frames_per_latent: int = 4) -> torch.Tensor:
    """Validity masks (B, T, H, W) at video resolution -> (B, T/4, 4, h, w) DiT mask channels.

    Each latent frame's 4 mask channels are its 4 video frames, bilinearly resized to latent resolution.
    """
    if valid.ndim != 4 or valid.shape[1] % frames_per_latent:
        raise ValueError(f"valid {tuple(valid.shape)}: expected (B, T, H, W) with T a multiple of {frames_per_latent}")
    b, t, hgt, wid = valid.shape
    small = F.interpolate(valid.float().reshape(b * t, 1, hgt, wid), size=latent_hw, mode="bilinear",
                          align_corners=False)
    return small.reshape(b, t // frames_per_latent, frames_per_latent, *latent_hw)


class BlockStreamer:
    """Stateful block loop over one stream (batch = views); `reset` starts a new stream."""

    def __init__(self, runner: DiTRunner, stream: StreamConfig, schedule: FlowMatchSchedule | None = None,
                 seed: int = 0) -> None:
        self.runner, self.stream = runner, stream
        self.schedule = schedule or FlowMatchSchedule()
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self.previous: torch.Tensor | None = None
        self.blocks_done = 0
        self._gen: torch.Generator | None = None

    def _randn(self, like: torch.Tensor) -> torch.Tensor:
        if self._gen is None or self._gen.device != like.device:
            self._gen = torch.Generator(device=like.device).manual_seed(self.seed)
        return torch.randn(like.shape, generator=self._gen, device=like.device, dtype=torch.float32)

    def denoise_block(self, reference: torch.Tensor, render: torch.Tensor, mask: torch.Tensor,
                      noises: list[torch.Tensor] | None = None) -> torch.Tensor:
        """One block. reference/render (B, 3, 16, h, w), mask (B, 3, 4, h, w) -> clean latents (B, 3, 16, h, w).

        noises: optional explicit [initial, renoise_1, ..., renoise_{steps-1}] for reproducible comparisons.
        """
        n = self.stream.latent_frames_per_block
        if reference.shape[1] != n or render.shape[:2] != reference.shape[:2] or mask.shape[2] != 4:
            raise ValueError(f"block shapes reference {tuple(reference.shape)} render {tuple(render.shape)} "
                             f"mask {tuple(mask.shape)}: expected (B, {n}, 16|16|4, h, w)")
        context = reference if self.previous is None else torch.cat([reference, self.previous], dim=1)
        self.runner.prefill(pad_context(context))
        cond = torch.cat([mask, render], dim=2)
        x = noises[0].float() if noises is not None else self._randn(reference)
        sigmas, ts = self.schedule.sigmas, self.schedule.timesteps
        x0 = x
        for i, (sigma, t) in enumerate(zip(sigmas, ts)):
            x36 = torch.cat([x.to(cond.dtype), cond], dim=2).transpose(1, 2)
            tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.float32)
            flow = self.runner.step(x36, tt, context.shape[1]).transpose(1, 2)
            x0 = self.schedule.x0_from_flow(x, flow, sigma)
            if i + 1 < len(sigmas):
                noise = noises[i + 1] if noises is not None else self._randn(x0)
                x = self.schedule.renoise(x0, noise, sigmas[i + 1])
        self.previous = x0.to(reference.dtype)
        self.blocks_done += 1
        return x0
