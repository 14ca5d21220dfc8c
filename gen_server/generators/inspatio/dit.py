"""Causal Wan2.1-architecture DiT with a KV cache (InSpatio-World-1.3B compatible).

Module and parameter names follow the published checkpoint layout (patch_embedding, text_embedding.0/.2,
time_embedding.0/.2, time_projection.1, blocks.N.{self_attn,cross_attn}.{q,k,v,o,norm_q,norm_k}, blocks.N.norm3,
blocks.N.ffn.0/.2, blocks.N.modulation, head.head, head.modulation) so `load_state_dict` takes the file as is.

Attention pattern (as the published model was trained): a block of context frames is *prefilled* (timestep 0,
full attention among themselves, K/V written to the cache), then each denoising step's frames attend to the
cached context plus themselves. The step's own K/V go to a scratch slot right after the context, so no cache
re-concatenation happens per layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import DiTConfig


def sinusoidal_time_embedding(dim: int, t: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(B,) timesteps in [0, 1000] -> (B, dim) [cos | sin] features (Wan ordering), computed in `dtype`."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, device=t.device, dtype=dtype) / half)
    arg = t.to(dtype)[:, None] * freqs[None]
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)


def rope_angles(cfg: DiTConfig, frames: int, height: int, width: int, frame_offset: int,
                device: torch.device) -> torch.Tensor:
    """Rotary angles (N, head_dim/2) float32 for tokens ordered (frame, row, col).

    Convention: pairs split time/height/width as cfg.rope_split (22/21/21 at head_dim 128); each axis uses
    theta^(-2i/axis_dim) with axis_dim = 2*pairs; frames are numbered from `frame_offset`.
    """
    def axis(pairs: int, positions: torch.Tensor) -> torch.Tensor:
        inv = 1.0 / torch.pow(cfg.rope_theta, torch.arange(0, 2 * pairs, 2, dtype=torch.float64, device=device)
                              / (2 * pairs))
        return torch.outer(positions.to(torch.float64), inv)

    pt, ph, pw = cfg.rope_split
    at = axis(pt, torch.arange(frame_offset, frame_offset + frames, device=device))
    ah = axis(ph, torch.arange(height, device=device))
    aw = axis(pw, torch.arange(width, device=device))
    grid = torch.cat([
        at[:, None, None].expand(frames, height, width, pt),
        ah[None, :, None].expand(frames, height, width, ph),
        aw[None, None, :].expand(frames, height, width, pw),
    ], dim=-1)
    return grid.reshape(frames * height * width, pt + ph + pw).to(torch.float32)


def rope_tables(cfg: DiTConfig, frames: int, height: int, width: int, frame_offset: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (N, 1, head_dim/2) float32, for `apply_rope`."""
    ang = rope_angles(cfg, frames, height, width, frame_offset, device)[:, None]
    return torch.cos(ang), torch.sin(ang)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of x (B, N, H, D) by angles given as cos/sin (N, 1, D/2); fp32 maths."""
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back (Wan's norms have no affine except norm3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


@dataclass
class KVCache:
    """Per-layer self-attention keys/values, (layers, B, heads, capacity_tokens, head_dim).

    k/v may also be lists of per-layer (B, heads, capacity, head_dim) tensors (functional ONNX graphs).
    """
    k: torch.Tensor
    v: torch.Tensor

    @classmethod
    def allocate(cls, cfg: DiTConfig, batch: int, capacity_tokens: int, device, dtype) -> "KVCache":
        shape = (cfg.num_layers, batch, cfg.num_heads, capacity_tokens, cfg.head_dim)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    @property
    def capacity(self) -> int:
        return self.k[0].shape[-2]


class SelfAttention(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(cfg.dim, cfg.dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(cfg.dim, cfg.eps), RMSNorm(cfg.dim, cfg.eps)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x (B,N,C) -> roped q, k and v, each (B, heads, N, head_dim)."""
        b, n, _ = x.shape
        q = apply_rope(self.norm_q(self.q(x)).view(b, n, self.heads, self.head_dim), cos, sin)
        k = apply_rope(self.norm_k(self.k(x)).view(b, n, self.heads, self.head_dim), cos, sin)
        v = self.v(x).view(b, n, self.heads, self.head_dim)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    @staticmethod
    def attend(q, k, v, cache_k: torch.Tensor, cache_v: torch.Tensor, write_at: int) -> torch.Tensor:
        """Write k/v (B,H,N,D) at [write_at, write_at+N) of the cache, attend to cache[:write_at+N] -> (B,N,C)."""
        b, h, n, d = q.shape
        end = write_at + n
        cache_k[:, :, write_at:end] = k
        cache_v[:, :, write_at:end] = v
        out = F.scaled_dot_product_attention(q, cache_k[:, :, :end], cache_v[:, :, :end])
        return out.transpose(1, 2).reshape(b, n, h * d)


class CrossAttention(nn.Module):
    """Text cross-attention; K/V of the (fixed) prompt are computed once per session by `text_kv`."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(cfg.dim, cfg.dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(cfg.dim, cfg.eps), RMSNorm(cfg.dim, cfg.eps)

    def text_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = context.shape
        k = self.norm_k(self.k(context)).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(context).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        return k.contiguous(), v.contiguous()

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.norm_q(self.q(x)).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o(out.transpose(1, 2).reshape(b, n, -1))


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.norm1 = LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(cfg)
        self.norm3 = LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(cfg)
        self.norm2 = LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / math.sqrt(cfg.dim))

    # pre_attention / post_attention are pure tensor functions (what torch.compile compiles, once for all
    # layers); the KV-cache write and self-attention between them stay outside compiled graphs.
    def pre_attention(self, x, e6, cos, sin):
        shift1, scale1 = (self.modulation[:, :2] + e6[:, :2]).chunk(2, dim=1)
        return self.self_attn.project(self.norm1(x) * (1 + scale1) + shift1, cos, sin)

    def post_attention(self, x, attn, e6, text_k, text_v):
        gate1, shift2, scale2, gate2 = (self.modulation[:, 2:] + e6[:, 2:]).chunk(4, dim=1)
        x = x + self.self_attn.o(attn) * gate1
        x = x + self.cross_attn(self.norm3(x), text_k, text_v)
        y = self.ffn(self.norm2(x) * (1 + scale2) + shift2)
        return x + y * gate2

    def forward(self, x, e6, cos, sin, cache_k, cache_v, write_at: int, text_k, text_v):
        q, k, v = self.pre_attention(x, e6, cos, sin)
        attn = SelfAttention.attend(q, k, v, cache_k, cache_v, write_at)
        return self.post_attention(x, attn, e6, text_k, text_v)


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.norm = LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / math.sqrt(cfg.dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation + e[:, None]).chunk(2, dim=1)
        return self.head(self.norm(x) * (1 + scale) + shift)


@dataclass
class TextContext:
    """Per-layer cross-attention K/V of the prompt, each (layers, B, heads, text_len, head_dim)."""
    k: torch.Tensor
    v: torch.Tensor


class CausalWanDiT(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        #: float64 like the published model; ONNX/TensorRT graphs switch to float32 (no FP64 there).
        self.time_dtype = torch.float64

    # -- setup ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def text_context(self, prompt_embedding: torch.Tensor) -> TextContext:
        """(B, L<=text_len, text_dim) umT5 embedding -> cached cross-attention K/V (zero-padded to text_len)."""
        b, n, c = prompt_embedding.shape
        if c != self.cfg.text_dim or n > self.cfg.text_len:
            raise ValueError(f"prompt embedding {tuple(prompt_embedding.shape)}: expected (B, <={self.cfg.text_len}, "
                             f"{self.cfg.text_dim})")
        padded = prompt_embedding.new_zeros(b, self.cfg.text_len, c)
        padded[:, :n] = prompt_embedding
        ctx = self.text_embedding(padded.to(self.patch_embedding.weight.dtype))
        kv = [blk.cross_attn.text_kv(ctx) for blk in self.blocks]
        return TextContext(torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv]))

    def tokens_per_frame(self, latent_h: int, latent_w: int) -> int:
        return (latent_h // self.cfg.patch_size[1]) * (latent_w // self.cfg.patch_size[2])

    # -- forward -------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, text: TextContext, cache: KVCache, write_at: int,
                frame_offset: int, with_head: bool = True,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor | None:
        """Run one chunk of latent frames through the DiT against the KV cache.

        x: (B, 36, F, h, w) [noisy | mask | render] latents; t: (B,) timesteps (0 for context prefill).
        The chunk's K/V are written at token `write_at` and it attends to cache[:write_at + F*h*w/4].
        rope: optional precomputed (cos, sin) (N, 1, head_dim/2) for this chunk (constants in exported graphs).
        Returns the flow prediction (B, 16, F, h, w), or None when with_head is False (prefill).
        """
        cfg = self.cfg
        b, c, f, h, w = x.shape
        if c != cfg.in_dim or h % cfg.patch_size[1] or w % cfg.patch_size[2]:
            raise ValueError(f"x {tuple(x.shape)}: expected (B, {cfg.in_dim}, F, h, w) with h, w even")
        hp, wp = h // cfg.patch_size[1], w // cfg.patch_size[2]
        if write_at + f * hp * wp > cache.capacity:
            raise ValueError(f"chunk of {f * hp * wp} tokens at {write_at} overflows KV cache of {cache.capacity}")
        dtype = self.patch_embedding.weight.dtype
        tokens = self.patch_embedding(x.to(dtype)).flatten(2).transpose(1, 2)
        e = self.time_embedding(sinusoidal_time_embedding(cfg.freq_dim, t, self.time_dtype).to(dtype))
        e6 = self.time_projection(e).unflatten(1, (6, cfg.dim))
        cos, sin = rope if rope is not None else rope_tables(cfg, f, hp, wp, frame_offset, x.device)
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens, e6, cos, sin, cache.k[i], cache.v[i], write_at, text.k[i], text.v[i])
        if not with_head:
            return None
        out = self.head(tokens, e)
        return unpatchify(out, cfg, f, hp, wp)


def unpatchify(tokens: torch.Tensor, cfg: DiTConfig, f: int, hp: int, wp: int) -> torch.Tensor:
    """(B, F*hp*wp, pt*ph*pw*C) -> (B, C, F*pt, hp*ph, wp*pw); patch channels ordered (pt, ph, pw, C)."""
    pt, ph, pw = cfg.patch_size
    b = tokens.shape[0]
    u = tokens.view(b, f, hp, wp, pt, ph, pw, cfg.out_dim)
    u = u.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return u.reshape(b, cfg.out_dim, f * pt, hp * ph, wp * pw)
