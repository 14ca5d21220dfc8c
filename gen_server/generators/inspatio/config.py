"""Dataclass configs for the InSpatio-World-compatible generator (DiT, TAEHV, streaming).

The full-size numbers are the published Wan2.1-T2V-1.3B / InSpatio-World-1.3B architecture; the tiny ones
are for CPU tests (same structure, small widths).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DiTConfig:
    """Causal Wan2.1 DiT hyper-parameters.

    Input channels 36 = [16 noisy latent | 4 mask | 16 render latent]; output 16 (flow prediction).
    """
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 36
    out_dim: int = 16
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_max_positions: int = 1024

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Complex rotary pairs for (time, height, width): 22/21/21 at head_dim 128."""
        c = self.head_dim // 2
        return (c - 2 * (c // 3), c // 3, c // 3)

    def __post_init__(self) -> None:
        if self.dim % self.num_heads or self.head_dim % 2:
            raise ValueError(f"dim {self.dim} must split into an even head_dim over {self.num_heads} heads")
        if self.in_dim != 2 * self.out_dim + 4:
            raise ValueError(f"in_dim {self.in_dim} must be 2*out_dim+4 (noisy | 4 mask | render)")


@dataclass(frozen=True)
class TAEHVConfig:
    """TAEHV tiny autoencoder (taew2_1: Wan 2.1 latent space, 16 channels, 8x space, 4x time)."""
    latent_channels: int = 16
    image_channels: int = 3
    encoder_width: int = 64
    decoder_widths: tuple[int, int, int, int] = (256, 128, 64, 64)
    encoder_time_downscale: tuple[bool, bool, bool] = (True, True, False)
    decoder_time_upscale: tuple[bool, bool, bool] = (False, True, True)

    @property
    def time_factor(self) -> int:
        return 2 ** sum(self.encoder_time_downscale)


@dataclass(frozen=True)
class StreamConfig:
    """Block loop geometry: 3 latent frames (12 video frames) per block, 480x832 video."""
    height: int = 480
    width: int = 832
    latent_frames_per_block: int = 3
    frames_per_latent: int = 4
    vae_stride: int = 8
    #: RoPE frame index of the denoised block (context frames occupy 0..5), as the published model was trained.
    block_rope_offset: int = 6
    #: Context frames kept in the KV cache: reference block + previous output block.
    context_latent_frames: int = 6

    @property
    def video_frames_per_block(self) -> int:
        return self.latent_frames_per_block * self.frames_per_latent

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // self.vae_stride, self.width // self.vae_stride


def full_dit_config() -> DiTConfig:
    return DiTConfig()


def tiny_dit_config() -> DiTConfig:
    """2 layers, dim 64, 4 heads x 16 (rope split 4/2/2), small text width: for CPU tests."""
    return DiTConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, freq_dim=32, text_dim=32, text_len=8)


def tiny_taehv_config() -> TAEHVConfig:
    return TAEHVConfig(encoder_width=8, decoder_widths=(16, 8, 8, 8))


def tiny_stream_config() -> StreamConfig:
    """Same block structure at 32x48 video (4x6 latents, 2x3 tokens per latent frame)."""
    return StreamConfig(height=32, width=48)
