"""Spatial chunks of the static layer for view-frustum culling.

At load the static points are put in Morton (Z-curve) order and cut into fixed-size chunks, each with an
axis-aligned bounding box. Per render, a chunk whose box lies entirely outside one of the (margin-widened)
frustum planes of every view is skipped, so projection and splatting touch only what can land.
"""

from __future__ import annotations

import warnings

import numpy as np

CHUNK_SIZE = 4096


def _spread_bits(v: np.ndarray) -> np.ndarray:
    """10-bit integers -> their bits spread to every third position (for 30-bit Morton codes)."""
    v = v.astype(np.uint64) & np.uint64(0x3FF)
    v = (v | (v << np.uint64(16))) & np.uint64(0x030000FF)
    v = (v | (v << np.uint64(8))) & np.uint64(0x0300F00F)
    v = (v | (v << np.uint64(4))) & np.uint64(0x030C30C3)
    v = (v | (v << np.uint64(2))) & np.uint64(0x09249249)
    return v


def morton_order(positions: np.ndarray) -> np.ndarray:
    """(N, 3) points -> permutation (N,) sorting them along a 1024^3 Z-curve over their bounds; NaN last."""
    positions = np.asarray(positions, np.float64)
    finite = np.isfinite(positions).all(1)
    if not finite.any():
        return np.arange(len(positions))
    lo, hi = positions[finite].min(0), positions[finite].max(0)
    q = np.zeros((len(positions), 3))
    q[finite] = (positions[finite] - lo) / np.maximum(hi - lo, 1e-9) * 1023.0
    code = _spread_bits(q[:, 0]) | (_spread_bits(q[:, 1]) << np.uint64(1)) | (_spread_bits(q[:, 2]) << np.uint64(2))
    code[~finite] = np.iinfo(np.uint64).max
    return np.argsort(code, kind="stable")


class ChunkBounds:
    """Bounding boxes of consecutive ``size``-point chunks of (already Morton-ordered) points.

    Convention: positions (N, 3) OpenXR world metres; boxes ignore NaN points (which never land).
    """

    def __init__(self, positions: np.ndarray, size: int = CHUNK_SIZE):
        positions = np.asarray(positions, np.float64)
        self.size, self.count = size, len(positions)
        n_chunks = -(-len(positions) // size)
        pad = n_chunks * size - len(positions)
        padded = np.concatenate([positions, np.full((pad, 3), np.nan)]).reshape(n_chunks, size, 3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN chunks: handled below
            lo, hi = np.nanmin(padded, 1), np.nanmax(padded, 1)
        empty = ~np.isfinite(lo).all(1)
        lo[empty], hi[empty] = 0.0, 0.0
        self.centre, self.half = 0.5 * (lo + hi), 0.5 * (hi - lo)
        self.empty = empty

    def __len__(self) -> int:
        return len(self.centre)

    def visible(self, proj: np.ndarray, width: int, height: int, margin_px: float, near: float) -> np.ndarray:
        """Indices of chunks that may land in any of the views ``proj`` (B, 3, 4) (pixel-from-world, OpenCV).

        Convention: a point lands only if z > near and its pixel is within ``margin_px`` of the image; each
        of those conditions is a half-space in world space, and a box is outside a half-space when its
        most-inside corner is.
        """
        keep = np.zeros(len(self), bool)
        for p in np.asarray(proj, np.float64):
            r0, r1, r2 = p
            planes = np.stack([
                r2 - np.array([0, 0, 0, near]),
                r0 + margin_px * r2,
                (width - 1 + margin_px) * r2 - r0,
                r1 + margin_px * r2,
                (height - 1 + margin_px) * r2 - r1,
            ])
            best = self.centre @ planes[:, :3].T + self.half @ np.abs(planes[:, :3]).T + planes[:, 3]
            keep |= (best >= 0).all(1)
        keep &= ~self.empty
        return np.nonzero(keep)[0]

    def point_ids(self, chunks: np.ndarray) -> np.ndarray:
        """Chunk indices -> the point indices they hold (int64)."""
        ids = (np.asarray(chunks, np.int64)[:, None] * self.size + np.arange(self.size)).reshape(-1)
        return ids[ids < self.count]
