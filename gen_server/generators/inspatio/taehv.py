"""TAEHV tiny autoencoder for the Wan 2.1 latent space (taew2_1), with streaming temporal memory.

Module indices follow the published nn.Sequential layout so taew2_1.pth loads as is (encoder.N.*, decoder.N.*;
MemBlock convs at .conv.0/.conv.2/.conv.4, TPool/TGrow 1x1 at .conv). Latents are NTCHW in the *normalised*
Wan space the DiT uses; pixels are NTCHW RGB in [0, 1].

Time: the encoder pools 4 frames into one latent, the decoder grows one latent into 4 frames. MemBlocks see
the previous frame's input at their level; `run_chunk` carries that memory across calls, so a stream of
12-frame blocks gives the same result as one pass over the whole video.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TAEHVConfig


def _conv(n_in: int, n_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=bias)


class Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """Residual block that also sees the same level's features of the previous frame."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(2 * n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(),
                                  _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TPool(nn.Module):
    """Merge `stride` consecutive frames (channel-stacked) with a 1x1 conv."""

    def __init__(self, n_f: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f * stride, n_f, 1, bias=False)


class TGrow(nn.Module):
    """Split each frame into `stride` frames with a 1x1 conv."""

    def __init__(self, n_f: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f, n_f * stride, 1, bias=False)


def run_chunk(seq: nn.Sequential, x: torch.Tensor, memory: list[torch.Tensor | None]
              ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Apply a TAEHV stage to a chunk x (N, T, C, H, W), all frames in parallel.

    memory[i] is MemBlock i's input for the frame before this chunk (N, 1, C, H, W), or None at stream
    start (zeros). Returns the output chunk and the updated memory. T must be divisible by the TPool strides.
    """
    n = x.shape[0]
    new_memory = list(memory)
    for i, layer in enumerate(seq):
        t, c, h, w = x.shape[1:]
        if isinstance(layer, MemBlock):
            prev = memory[i] if memory[i] is not None else torch.zeros_like(x[:, :1])
            past = torch.cat([prev, x[:, :-1]], dim=1)
            new_memory[i] = x[:, -1:]
            x = layer(x.reshape(n * t, c, h, w), past.reshape(n * t, c, h, w)).reshape(n, t, -1, h, w)
        elif isinstance(layer, TPool):
            if t % layer.stride:
                raise ValueError(f"TAEHV chunk of {t} frames is not divisible by the pool stride {layer.stride}")
            x = layer.conv(x.reshape(n * t // layer.stride, layer.stride * c, h, w))
            x = x.reshape(n, t // layer.stride, c, h, w)
        elif isinstance(layer, TGrow):
            x = layer.conv(x.reshape(n * t, c, h, w)).reshape(n, t * layer.stride, c, h, w)
        else:
            y = layer(x.reshape(n * t, c, h, w))
            x = y.reshape(n, t, *y.shape[1:])
    return x, new_memory


class TAEHV(nn.Module):
    def __init__(self, cfg: TAEHVConfig | None = None) -> None:
        super().__init__()
        cfg = self.cfg = cfg or TAEHVConfig()
        e, zc, ic = cfg.encoder_width, cfg.latent_channels, cfg.image_channels
        pools = [2 if d else 1 for d in cfg.encoder_time_downscale]
        self.encoder = nn.Sequential(
            _conv(ic, e), nn.ReLU(),
            TPool(e, pools[0]), _conv(e, e, stride=2, bias=False), MemBlock(e, e), MemBlock(e, e), MemBlock(e, e),
            TPool(e, pools[1]), _conv(e, e, stride=2, bias=False), MemBlock(e, e), MemBlock(e, e), MemBlock(e, e),
            TPool(e, pools[2]), _conv(e, e, stride=2, bias=False), MemBlock(e, e), MemBlock(e, e), MemBlock(e, e),
            _conv(e, zc),
        )
        d = cfg.decoder_widths
        grows = [2 if u else 1 for u in cfg.decoder_time_upscale]
        layers: list[nn.Module] = [Clamp(), _conv(zc, d[0]), nn.ReLU()]
        for lvl in range(3):
            layers += [MemBlock(d[lvl], d[lvl]), MemBlock(d[lvl], d[lvl]), MemBlock(d[lvl], d[lvl]),
                       nn.Upsample(scale_factor=2), TGrow(d[lvl], grows[lvl]), _conv(d[lvl], d[lvl + 1], bias=False)]
        layers += [nn.ReLU(), _conv(d[3], ic)]
        self.decoder = nn.Sequential(*layers)
        self.time_factor = 2 ** sum(p == 2 for p in pools)
        #: Raw decoder frames before the first real one (causal alignment with the Wan VAE's first frame).
        self.frames_to_trim = 2 ** sum(g == 2 for g in grows) - 1

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """Whole clip (N, T, 3, H, W) in [0, 1] -> latents (N, ceil(T/4), 16, H/8, W/8); pads with the last frame."""
        pad = (-frames.shape[1]) % self.time_factor
        if pad:
            frames = torch.cat([frames, frames[:, -1:].expand(-1, pad, -1, -1, -1)], dim=1)
        return run_chunk(self.encoder, frames, [None] * len(self.encoder))[0]

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Whole clip latents (N, L, 16, h, w) -> frames (N, 4L - 3, 3, 8h, 8w) in [0, 1]."""
        out = run_chunk(self.decoder, latents, [None] * len(self.decoder))[0]
        return out.clamp(0, 1)[:, self.frames_to_trim:]


class TAEHVStream:
    """Streaming encode/decode with temporal memory carried across chunks (one per view batch)."""

    def __init__(self, tae: TAEHV) -> None:
        self.tae = tae
        self.reset()

    def reset(self) -> None:
        self.enc_memory: list = [None] * len(self.tae.encoder)
        self.dec_memory: list = [None] * len(self.tae.decoder)
        self.frames_decoded = 0

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, T, 3, H, W) in [0, 1], T a multiple of 4 -> (N, T/4, 16, H/8, W/8)."""
        if frames.ndim != 5 or frames.shape[1] % self.tae.time_factor or frames.shape[2] != 3:
            raise ValueError(f"frames {tuple(frames.shape)}: expected (N, T, 3, H, W) with T a multiple of "
                             f"{self.tae.time_factor}")
        z, self.enc_memory = run_chunk(self.tae.encoder, frames, self.enc_memory)
        return z

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, L, 16, h, w) -> (N, 4L, 3, 8h, 8w) frames, except that the stream's first 3 raw frames are dropped."""
        out, self.dec_memory = run_chunk(self.tae.decoder, latents, self.dec_memory)
        out = out.clamp(0, 1)
        skip = max(0, self.tae.frames_to_trim - self.frames_decoded)
        self.frames_decoded += out.shape[1]
        return out[:, skip:]
