"""Fast z-buffered point splatting in torch: the renderer's inner kernels.

GPU layout (16 bytes per point): ``xyz`` float32 (3, N) world metres (coordinate-major, so projection
is one batched matmul producing contiguous u/v/z rows) + ``attrs`` int32 (N,) holding
sRGB colour in the low 24 bits and an 8-bit log-quantised world radius in the high byte.

The z-buffer is one int64 per pixel: ``(float32 depth bits << 32) | point id``. Positive float32 bit
patterns sort like the floats, so a single ``scatter_reduce(amin)`` performs the depth test and breaks
ties by the lower point id, deterministically on CPU and CUDA; colour is resolved afterwards by gathering
the winner's attributes.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass

import sys

import numpy as np
import torch

EMPTY_KEY = torch.iinfo(torch.int64).max
_ID_MASK = 0xFFFFFFFF
_RADIUS_LEVELS = 255
assert sys.byteorder == "little", "resolve_planes reads packed colours byte-wise"


@dataclass(frozen=True)
class SplatConfig:
    """Footprint rules. ``radius_scale`` > 1 slightly overlaps neighbouring splats so float rounding at
    abutting edges cannot open cracks; ``max_half_px`` clamps the footprint of points very near the eye."""

    radius_scale: float = 1.1
    max_half_px: float = 8.0
    near: float = 1e-3
    # How footprints become pixels (same z-buffer either way: amin does not depend on fragment order):
    # "groups" sorts landing points by footprint shape and expands each shape with one broadcast add of
    # an offset table (fewest memory passes, one host sync + a few ops per shape: measured fastest on CPU);
    # "flat" expands all points at once with per-fragment index arithmetic (fixed ~20 kernels per layer).
    # "auto": groups on CPU, flat on CUDA. (On CUDA the renderer normally bypasses this module for the
    # fused kernels of triton_render.)
    expansion: str = "auto"

    def __post_init__(self) -> None:
        if not 0.5 <= self.max_half_px <= 31.0:  # footprint width is packed in 6 bits
            raise ValueError(f"SplatConfig.max_half_px: must be in [0.5, 31], got {self.max_half_px}")
        if not (self.radius_scale > 0 and self.near > 0):
            raise ValueError("SplatConfig: radius_scale and near must be positive")
        if self.expansion not in ("auto", "groups", "flat"):
            raise ValueError(f"SplatConfig.expansion: must be auto, groups or flat, got {self.expansion!r}")

    def use_groups(self, device: torch.device) -> bool:
        return self.expansion == "groups" or (self.expansion == "auto" and device.type == "cpu")


@dataclass
class PackedPoints:
    """Points in the 16-bytes-per-point device layout (see module docstring)."""

    xyz: torch.Tensor  # (3, N) float32
    attrs: torch.Tensor  # (N,) int32: rgb8 | radius code << 24
    radius_log2_min: float
    radius_log2_step: float

    def __len__(self) -> int:
        return int(self.xyz.shape[1])

    def bytes_per_point(self) -> float:
        n = max(len(self), 1)
        return (self.xyz.numel() * self.xyz.element_size() + self.attrs.numel() * self.attrs.element_size()) / n

    def radii(self, sl: slice = slice(None)) -> torch.Tensor:
        """Decoded world radii (float32) of ``attrs[sl]``."""
        code = ((self.attrs[sl] >> 24) & 0xFF).to(torch.float32)
        return torch.exp2(self.radius_log2_min + code * self.radius_log2_step)

    def radii_at(self, ids: torch.Tensor) -> torch.Tensor:
        """Decoded world radii (float32) of the points ``ids``."""
        code = ((self.attrs[ids] >> 24) & 0xFF).to(torch.float32)
        return torch.exp2(self.radius_log2_min + code * self.radius_log2_step)

    def colors(self, ids: torch.Tensor) -> torch.Tensor:
        """(…,) point ids -> (…, 3) uint8 colours."""
        a = self.attrs[ids]
        return torch.stack([a & 0xFF, (a >> 8) & 0xFF, (a >> 16) & 0xFF], -1).to(torch.uint8)


def quantise_radii(radii: np.ndarray) -> tuple[np.ndarray, float, float]:
    """World radii (N,) -> (8-bit codes, log2 min, log2 step); relative error <= step/2 in log2."""
    r = np.maximum(np.nan_to_num(np.asarray(radii, np.float64), nan=1e-6), 1e-6)
    if len(r) == 0:
        return np.zeros(0, np.int64), 0.0, 0.0
    lo, hi = float(np.log2(r.min())), float(np.log2(r.max()))
    step = (hi - lo) / _RADIUS_LEVELS if hi > lo else 0.0
    codes = np.zeros(len(r), np.int64) if step == 0 else np.rint((np.log2(r) - lo) / step).astype(np.int64)
    return np.clip(codes, 0, _RADIUS_LEVELS), lo, step


def pack_points(positions: np.ndarray, colors: np.ndarray, radii: np.ndarray, device: torch.device) -> PackedPoints:
    """Numpy layer arrays -> :class:`PackedPoints` on ``device``.

    Convention: positions (N, 3) OpenXR world metres, colors (N, 3) uint8, radii (N,) metres.
    """
    positions = np.asarray(positions, np.float32)
    colors = np.asarray(colors, np.uint8)
    if positions.ndim != 2 or positions.shape[1] != 3 or colors.shape != positions.shape or len(radii) != len(positions):
        raise ValueError(f"pack_points: expected (N,3) positions/colors and (N,) radii, got {positions.shape} {colors.shape} {np.shape(radii)}")
    codes, lo, step = quantise_radii(radii)
    c = colors.astype(np.int64)
    attrs = (c[:, 0] | (c[:, 1] << 8) | (c[:, 2] << 16) | (codes << 24)).astype(np.uint32).view(np.int32)
    return PackedPoints(
        torch.from_numpy(np.ascontiguousarray(positions.T)).to(device),
        torch.from_numpy(np.ascontiguousarray(attrs)).to(device),
        lo,
        step,
    )


def projection_matrices(cv_from_world: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """K [R | t]: (B, 4, 4) OpenCV extrinsics (``cameras.cv_camera_from_world``) and (B, 3, 3) OpenCV
    intrinsics -> (B, 3, 4) float64 pixel-from-world projections (composed in float64 on the host)."""
    return np.asarray(intrinsics, np.float64) @ np.asarray(cv_from_world, np.float64)[:, :3, :]


def project(xyz: torch.Tensor, proj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """World points xyz (3, N) -> pixel u, v and z-depth, each (B, N).

    Convention: ``proj`` (B, 3, 4) from :func:`projection_matrices`; OpenCV pixels, centres at integers.
    """
    h = torch.baddbmm(proj[:, :, 3:], proj[:, :, :3], xyz.unsqueeze(0).expand(proj.shape[0], -1, -1))
    z = h[:, 2]
    return h[:, 0] / z, h[:, 1] / z, z


def splat_into(
    zbuf: torch.Tensor,
    points: PackedPoints,
    sel: slice | torch.Tensor,
    proj: torch.Tensor,
    intrinsics: torch.Tensor,
    width: int,
    height: int,
    config: SplatConfig,
    chunk_size: int = 1,
) -> None:
    """Depth-test points ``sel`` (a slice, or int64 indices of ``chunk_size``-point chunks starting at 0) of ``points`` into ``zbuf`` (B*H*W,) int64 in place; ``proj`` (B, 3, 4)
    from :func:`projection_matrices`, ``intrinsics`` (B, 3, 3) (for the focal lengths).

    Convention: each point is a camera-facing square of half-size ``radius * f / z`` pixels (clamped to
    [0.5, max_half_px]); it covers the pixel centres inside it, at the point's centre depth.
    """
    if isinstance(sel, slice):
        start, ids = (sel.start or 0), None
        xyz = points.xyz[:, sel]
    else:  # whole chunks (those that survived frustum culling), gathered as contiguous blocks
        start = 0
        chunks = points.xyz.shape[1] // chunk_size
        # Row by row: each coordinate row's chunks are contiguous blocks (block copies, no strided gather).
        xyz = torch.empty((3, len(sel) * chunk_size), dtype=points.xyz.dtype, device=points.xyz.device)
        for c in range(3):
            torch.index_select(points.xyz[c, : chunks * chunk_size].view(chunks, chunk_size), 0, sel, out=xyz[c].view(len(sel), chunk_size))
        ids = (sel[:, None] * chunk_size + torch.arange(chunk_size, device=sel.device)).view(-1)
    if xyz.shape[1] == 0:
        return
    u, v, z = project(xyz, proj)  # (B, M)
    gid = torch.arange(start, start + xyz.shape[1], device=xyz.device) if ids is None else ids
    # Footprint maths densely over (B, M) (M is already frustum-culled by chunks), in place where possible.
    radius = points.radii_at(gid)[None, :] * config.radius_scale / z
    rx = (radius * intrinsics[:, 0, 0, None]).clamp_(0.5, config.max_half_px)
    square = zbuf.device.type == "cpu" and torch.equal(intrinsics[:, 0, 0], intrinsics[:, 1, 1])  # fx == fy: ry is rx
    ry = rx if square else (radius * intrinsics[:, 1, 1, None]).clamp_(0.5, config.max_half_px)
    x0 = (u - rx).ceil_().clamp_(min=0)
    y0 = (v - ry).ceil_().clamp_(min=0)
    nx = (u + rx).floor_().clamp_(max=width - 1).sub_(x0).add_(1)  # footprint width/height in pixels, <= 63
    ny = (v + ry).floor_().clamp_(max=height - 1).sub_(y0).add_(1)
    # NaN points and points behind the near plane fail these comparisons and never land (class 0).
    keep = z > config.near
    keep &= nx >= 1
    keep &= ny >= 1
    if config.use_groups(zbuf.device):
        # Non-landing points may hold NaN/huge values whose int16 conversion is arbitrary: the AND with
        # the landing mask zeroes them; landing points hold exact small integers (65 .. 4095).
        shape_class = ny.mul_(64).add_(nx).to(torch.int16).view(-1)
        shape_class &= keep.view(-1).to(torch.int16).neg_()
        _splat_by_shape(zbuf, shape_class, x0, y0, z, gid, width, height)
    else:
        _splat_flat(zbuf, keep, x0, y0, nx, ny, z, gid, width, height)


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401, PLC0415 - probe only
    except ImportError:
        return False
    return True


def _footprint_offsets(width: int, nx: int, ny: int, device: torch.device) -> torch.Tensor:
    """(ny*nx,) int64 pixel offsets of an nx-by-ny footprint from its top-left pixel, row-major (cached)."""
    key = (width, nx, ny, str(device))
    off = _OFFSETS.get(key)
    if off is None:
        off = (torch.arange(ny)[:, None] * width + torch.arange(nx)[None, :]).view(-1).to(device)
        if len(_OFFSETS) > 4096:
            _OFFSETS.clear()
        _OFFSETS[key] = off
    return off


_OFFSETS: dict = {}


def _splat_by_shape(zbuf: torch.Tensor, shape_class: torch.Tensor, x0, y0, z, gid, width: int, height: int) -> None:
    """Expand every landing point (B*M flattened, ``shape_class`` = ny*64 + nx, 0 = does not land) to its
    footprint pixels and depth-test them into ``zbuf`` (one scatter-amin per footprint shape).

    Points are grouped by footprint shape (one sort), so each group expands with one broadcast add of a
    precomputed offset table instead of per-fragment index arithmetic; the group sizes are the one host
    sync of the layer.
    """
    m = x0.shape[1]
    # Stable: within a shape the points stay in (Morton) order, so the gathers below and the z-buffer
    # writes walk memory coherently.
    order = torch.argsort(shape_class, stable=True)
    counts = torch.bincount(shape_class, minlength=64 * 64).tolist()
    kept = order[counts[0]:]
    if kept.numel() == 0:
        return
    batch = x0.shape[0]
    if batch * height * width <= 2**24:  # pixel indices are exact in float32: cheaper dense maths, one gather
        first = (y0 * width).add_(x0).add_(torch.arange(batch, device=x0.device, dtype=x0.dtype)[:, None] * (height * width))
        base = first.view(-1).index_select(0, kept).long()
    else:
        b_idx = torch.div(kept, m, rounding_mode="floor")
        base = b_idx * (height * width) + y0.view(-1).index_select(0, kept).long() * width + x0.view(-1).index_select(0, kept).long()
    key = z.reshape(-1).index_select(0, kept).view(torch.int32).long().bitwise_left_shift_(32)
    key |= gid.repeat(batch).index_select(0, kept)
    p = 0
    for c in range(1, len(counts)):
        n = counts[c]
        if not n:
            continue
        nx, ny = c & 63, c >> 6
        if nx * ny == 1:  # single-pixel footprints (most points of dense worlds) need no expansion
            zbuf.scatter_reduce_(0, base[p:p + n], key[p:p + n], reduce="amin")
        else:
            pix = (base[p:p + n, None] + _footprint_offsets(width, nx, ny, zbuf.device)[None, :]).view(-1)
            zbuf.scatter_reduce_(0, pix, key[p:p + n, None].expand(n, nx * ny).reshape(-1), reduce="amin")
        p += n


def _splat_flat(zbuf: torch.Tensor, keep, x0, y0, nx, ny, z, gid, width: int, height: int) -> None:
    """Like :func:`_splat_by_shape`, all footprints in one flat expansion (one host sync: the compaction)."""
    m = x0.shape[1]
    lin = keep.view(-1).nonzero().squeeze(1)
    if lin.numel() == 0:
        return
    b_idx = torch.div(lin, m, rounding_mode="floor")
    take = lambda t: t.reshape(-1).index_select(0, lin)  # noqa: E731
    x0, y0, nx, ny = take(x0).long(), take(y0).long(), take(nx).long(), take(ny).long()
    zbits = take(z).contiguous().view(torch.int32).long()
    key = (zbits << 32) | gid.index_select(0, lin - b_idx * m)
    # Per point: first pixel (< 2**40) and footprint width (< 2**6) packed in one int64, so each
    # fragment needs three gathers (meta, key, first) to find its pixel.
    meta = ((b_idx * (height * width) + y0 * width + x0) << 6) | nx
    counts = nx * ny
    src = torch.repeat_interleave(torch.arange(len(counts), device=zbuf.device), counts)
    first = torch.cumsum(counts, 0) - counts
    k = (torch.arange(src.numel(), device=zbuf.device) - first.index_select(0, src)).int()  # < 2**12
    fm = meta.index_select(0, src)
    n = (fm & 63).int()
    row = torch.div(k, n, rounding_mode="floor")
    pix = (fm >> 6) + (row * width + (k - row * n)).long()
    zbuf.scatter_reduce_(0, pix, key.index_select(0, src), reduce="amin")


def resolve_planes(zbuf: torch.Tensor, points: PackedPoints, batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """z-buffer (B*H*W,) int64 -> (planes (B, 4, H, W) float32 = r, g, b (0..255), z-depth metres;
    valid (B, H, W) bool). Convention: empty pixels are 0 in every plane and not valid."""
    empty = zbuf == EMPTY_KEY
    keep = empty.to(torch.int32).sub_(1)  # int32 all ones where valid, 0 where empty (bit ops beat masked_fill on CPU)
    planes = torch.empty((batch, 4, height * width), dtype=torch.float32, device=zbuf.device)
    if len(points):
        # Empty keys carry id 0xFFFFFFFF: clamp to a real id, then zero those attributes.
        ids = (zbuf & _ID_MASK).clamp_(max=len(points) - 1)
        attrs = points.attrs.index_select(0, ids).bitwise_and_(keep)
        # int32 rgb8|radius -> its 4 bytes (r, g, b, radius code on little-endian hosts): one strided copy.
        planes[:, :3] = attrs.view(torch.uint8).view(batch, height * width, 4)[..., :3].transpose(1, 2)
    else:
        planes[:, :3] = 0.0
    depth = (zbuf >> 32).to(torch.int32).bitwise_and_(keep).view(torch.float32)  # empty keys would decode to NaN: 0
    planes[:, 3] = depth.view(batch, height * width)
    return planes.view(batch, 4, height, width), ~empty.view(batch, height, width)
