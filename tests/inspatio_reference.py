"""Slow, obviously-correct float64 reference of the causal Wan DiT, written from the published maths
(complex RoPE, dense masked softmax, explicit patchify/unpatchify) over a raw state dict. Tests compare the
fast cached implementation against it."""
from __future__ import annotations

import math

import torch

from gen_server.generators.inspatio.config import DiTConfig


def _lin(sd, name, x):
    return x @ sd[name + ".weight"].double().T + sd[name + ".bias"].double()


def _rms(sd, name, x, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * sd[name + ".weight"].double()


def _ln(x, eps, w=None, b=None):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + eps)
    return y if w is None else y * w.double() + b.double()


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _complex_freqs(cfg: DiTConfig, frame_pos: list[int], hp: int, wp: int) -> torch.Tensor:
    d = cfg.head_dim
    dims = (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))
    tables = []
    for ad in dims:
        pos = torch.arange(1024, dtype=torch.float64)
        ang = torch.outer(pos, 1.0 / cfg.rope_theta ** (torch.arange(0, ad, 2, dtype=torch.float64) / ad))
        tables.append(torch.polar(torch.ones_like(ang), ang))
    rows = []
    for f in frame_pos:
        for i in range(hp):
            for j in range(wp):
                rows.append(torch.cat([tables[0][f], tables[1][i], tables[2][j]]))
    return torch.stack(rows)  # (N, d/2) complex


def _rope(x, freqs):  # x (N, H, D)
    xc = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(xc * freqs[:, None]).flatten(-2)


def reference_forward(sd: dict, cfg: DiTConfig, x: torch.Tensor, frame_t: list[float], frame_pos: list[int],
                      allowed: torch.Tensor, prompt: torch.Tensor):
    """x (36, F, h, w) one sample; frame_t/frame_pos per latent frame; allowed (N, N) bool query x key.

    Returns flow (16, F, h, w) and per-layer roped keys/values [(N, H, D)].
    """
    sd = {k: v.double() for k, v in sd.items()}
    c, f, h, w = x.shape
    hp, wp = h // 2, w // 2
    n = f * hp * wp
    patches = x.double().view(c, f, hp, 2, wp, 2).permute(1, 2, 4, 0, 3, 5).reshape(n, c * 4)
    tok = patches @ sd["patch_embedding.weight"].reshape(cfg.dim, -1).T + sd["patch_embedding.bias"]
    half = cfg.freq_dim // 2
    per_tok_t = torch.tensor([frame_t[fi] for fi in range(f) for _ in range(hp * wp)], dtype=torch.float64)
    arg = per_tok_t[:, None] * 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    sinus = torch.cat([torch.cos(arg), torch.sin(arg)], 1)
    e = _lin(sd, "time_embedding.2", torch.nn.functional.silu(_lin(sd, "time_embedding.0", sinus)))
    e6 = _lin(sd, "time_projection.1", torch.nn.functional.silu(e)).view(n, 6, cfg.dim)
    ctx = torch.zeros(cfg.text_len, cfg.text_dim, dtype=torch.float64)
    ctx[: prompt.shape[0]] = prompt.double()
    ctx = _lin(sd, "text_embedding.2", _gelu_tanh(_lin(sd, "text_embedding.0", ctx)))
    freqs = _complex_freqs(cfg, frame_pos, hp, wp)
    nh, hd = cfg.num_heads, cfg.head_dim
    kvs = []
    for li in range(cfg.num_layers):
        p = f"blocks.{li}."
        m = sd[p + "modulation"][0][None] + e6  # (N, 6, C)
        y = _ln(tok, cfg.eps) * (1 + m[:, 1]) + m[:, 0]
        q = _rope(_rms(sd, p + "self_attn.norm_q", _lin(sd, p + "self_attn.q", y), cfg.eps).view(n, nh, hd), freqs)
        k = _rope(_rms(sd, p + "self_attn.norm_k", _lin(sd, p + "self_attn.k", y), cfg.eps).view(n, nh, hd), freqs)
        v = _lin(sd, p + "self_attn.v", y).view(n, nh, hd)
        kvs.append((k, v))
        s = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
        s = s.masked_fill(~allowed[None], float("-inf"))
        a = torch.einsum("hqk,khd->qhd", torch.softmax(s, -1), v).reshape(n, -1)
        tok = tok + _lin(sd, p + "self_attn.o", a) * m[:, 2]
        y = _ln(tok, cfg.eps, sd[p + "norm3.weight"], sd[p + "norm3.bias"])
        q = _rms(sd, p + "cross_attn.norm_q", _lin(sd, p + "cross_attn.q", y), cfg.eps).view(n, nh, hd)
        k = _rms(sd, p + "cross_attn.norm_k", _lin(sd, p + "cross_attn.k", ctx), cfg.eps).view(-1, nh, hd)
        vv = _lin(sd, p + "cross_attn.v", ctx).view(-1, nh, hd)
        s = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
        a = torch.einsum("hqk,khd->qhd", torch.softmax(s, -1), vv).reshape(n, -1)
        tok = tok + _lin(sd, p + "cross_attn.o", a)
        y = _ln(tok, cfg.eps) * (1 + m[:, 4]) + m[:, 3]
        tok = tok + _lin(sd, p + "ffn.2", _gelu_tanh(_lin(sd, p + "ffn.0", y))) * m[:, 5]
    hm = sd["head.modulation"][0][None] + e[:, None]  # (N, 2, C)
    out = _lin(sd, "head.head", _ln(tok, cfg.eps) * (1 + hm[:, 1]) + hm[:, 0])
    out = out.view(f, hp, wp, 1, 2, 2, cfg.out_dim)
    flow = torch.einsum("fhwpqrc->cfphqwr", out).reshape(cfg.out_dim, f, h, w)
    return flow, kvs


def block_step_reference(sd, cfg, context36, x36, t, prompt, rope_offset=6):
    """One denoising step as one uncached pass over [context | block] with the block-causal mask."""
    fc, fb = context36.shape[1], x36.shape[1]
    tpf = (x36.shape[2] // 2) * (x36.shape[3] // 2)
    nc, nb = fc * tpf, fb * tpf
    allowed = torch.zeros(nc + nb, nc + nb, dtype=torch.bool)
    allowed[:nc, :nc] = True          # context sees only context (prefill)
    allowed[nc:, :] = True            # block sees context and itself
    full = torch.cat([context36, x36], dim=1)
    frame_t = [0.0] * fc + [t] * fb
    frame_pos = list(range(fc)) + list(range(rope_offset, rope_offset + fb))
    flow, kvs = reference_forward(sd, cfg, full, frame_t, frame_pos, allowed, prompt)
    return flow[:, fc:], kvs
