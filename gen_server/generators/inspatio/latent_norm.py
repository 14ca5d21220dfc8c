"""Wan2.1 VAE latent normalisation (per-channel mean/std of the 16 latent channels).

The DiT and TAEHV (taew2_1) both work in the *normalised* space z_n = (z - mean) / std; the full Wan VAE
produces raw z. Convert here and nowhere else.
"""
from __future__ import annotations

import torch

WAN21_LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


def _stats(z: torch.Tensor, channel_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    if z.shape[channel_dim] != 16:
        raise ValueError(f"latent {tuple(z.shape)}: expected 16 channels at dim {channel_dim}")
    shape = [1] * z.ndim
    shape[channel_dim] = 16
    mean = torch.tensor(WAN21_LATENT_MEAN, dtype=torch.float32, device=z.device).view(shape)
    std = torch.tensor(WAN21_LATENT_STD, dtype=torch.float32, device=z.device).view(shape)
    return mean, std


def normalize_latents(z: torch.Tensor, channel_dim: int = 2) -> torch.Tensor:
    """Raw Wan VAE latents -> normalised (DiT/TAEHV) space. Default layout NTCHW (channels at dim 2)."""
    mean, std = _stats(z, channel_dim)
    return ((z.float() - mean) / std).to(z.dtype)


def denormalize_latents(z: torch.Tensor, channel_dim: int = 2) -> torch.Tensor:
    """Normalised latents -> raw Wan VAE latents (inverse of normalize_latents)."""
    mean, std = _stats(z, channel_dim)
    return (z.float() * std + mean).to(z.dtype)
