"""The generator seam: what the server calls to turn eye poses + world time into images.

A generator is anything with ``render_views``; the geometric one splats the world state, a neural one
(InSpatio) may refine those splats. The server only ever sees :class:`Views`-like results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from gen_server.cameras import Fov


@dataclass
class Views:
    """Per-eye images, numpy or torch (the codec takes either).

    Convention: ``color`` (B, H, W, 3) uint8; ``depth`` (B, H, W) float32 z-depth in *world* metres
    (the server rescales to stage metres); ``valid`` (B, H, W) bool, True where a real surface was hit.
    """

    color: Any
    depth: Any
    valid: Any


@runtime_checkable
class Generator(Protocol):
    """``render_views(world_from_eye (B, 4, 4) float64 OpenXR poses, fovs (B OpenXR Fov), width, height,
    tau seconds) -> Views-like`` (anything with ``color``, ``depth``, ``valid``)."""

    def render_views(self, world_from_eye: np.ndarray, fovs: list[Fov], width: int, height: int, tau: float) -> Views:
        ...


def check_views(out, batch: int, width: int, height: int) -> None:
    """Shape check at the seam (kornia style): a generator returning the wrong shapes fails loudly here."""
    color, depth, valid = out.color, out.depth, out.valid
    if tuple(color.shape) != (batch, height, width, 3):
        raise ValueError(f"generator: color must be ({batch}, {height}, {width}, 3), got {tuple(color.shape)}")
    if tuple(depth.shape) != (batch, height, width) or tuple(valid.shape) != (batch, height, width):
        raise ValueError(f"generator: depth/valid must be ({batch}, {height}, {width}), got {tuple(depth.shape)} {tuple(valid.shape)}")
