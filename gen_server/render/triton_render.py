"""The CUDA render path as a handful of fused Triton kernels (the default on CUDA when triton imports).

Same maths as the torch path (``splat``, ``holes``, ``renderer._cross_fade``), restructured so every
pixel and point is touched by as few kernels as possible and nothing waits on the host:

1. ``_splat_kernel``: per (point, view): project, footprint rectangle, and one int64 ``atomic_min`` of
   ``depth bits << 32 | point id`` per covered pixel (skipped when the pixel already holds a nearer key,
   which is most of them behind the first surface). One launch per point range (static, each dynamic
   frame); no culling, sorting or compaction (a point outside the view costs its projection only).
2. ``_resolve_push_kernel``: per pixel of pyramid level 1: resolve the 2x2 full-resolution pixels under
   it (winner's colour and depth, cross-fade of the two dynamic frames) and push them down a level.
3. ``_push_kernel`` / ``_pull_kernel``: the rest of push-pull, one launch per level each way.
4. ``_final_kernel``: full resolution again: resolved pixel where a splat landed, else the bilinear pull
   from level 1; writes colour (planar uint8), depth and validity.

Floating-point results can differ from the torch path in the last bit (fused multiply-adds), so a
pixel on a footprint's exact edge may flip: tests/test_render_triton.py compares against the torch path
and the slow reference with that tolerance. :class:`RenderPlan` holds one render shape's launches and
replays them as a CUDA graph on the GPU. Importing this module imports triton: CUDA only.

Convention: as :mod:`gen_server.render.splat` (OpenCV pixels, centres at integers; z-depth metres).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from gen_server.render.splat import EMPTY_KEY, PackedPoints, SplatConfig

_POINT_BLOCK = 256
_PIXEL_BLOCK = 512
_CAMERA_FLOATS = 16  # per view: 3x4 projection (row-major), fx, fy, 2 unused


@triton.jit
def _splat_kernel(zbuf_ptr, xyz_ptr, attrs_ptr, cam_ptr, range_ptr, row_stride,
                  radius_lo, radius_step, radius_scale, max_half, near, width, height,
                  BLOCK: tl.constexpr):
    view = tl.program_id(1)
    # The point range [first_id, first_id + n_points) comes from device memory, so one launch shape
    # (grid sized for the largest range) serves every dynamic frame, and a CUDA graph can replay it.
    first_id = tl.load(range_ptr)
    n_points = tl.load(range_ptr + 1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n_points
    point = first_id + offs
    x = tl.load(xyz_ptr + point, mask=inside, other=float("nan"))
    y = tl.load(xyz_ptr + row_stride + point, mask=inside, other=float("nan"))
    z = tl.load(xyz_ptr + 2 * row_stride + point, mask=inside, other=float("nan"))
    attrs = tl.load(attrs_ptr + point, mask=inside, other=0)
    cam = cam_ptr + view * 16
    hu = tl.load(cam + 0) * x + tl.load(cam + 1) * y + tl.load(cam + 2) * z + tl.load(cam + 3)
    hv = tl.load(cam + 4) * x + tl.load(cam + 5) * y + tl.load(cam + 6) * z + tl.load(cam + 7)
    hz = tl.load(cam + 8) * x + tl.load(cam + 9) * y + tl.load(cam + 10) * z + tl.load(cam + 11)
    u = hu / hz
    v = hv / hz
    code = ((attrs >> 24) & 0xFF).to(tl.float32)
    radius = tl.exp2(radius_lo + code * radius_step) * radius_scale / hz
    rx = tl.minimum(tl.maximum(radius * tl.load(cam + 12), 0.5), max_half)
    ry = tl.minimum(tl.maximum(radius * tl.load(cam + 13), 0.5), max_half)
    x0 = tl.maximum(tl.ceil(u - rx), 0.0)
    y0 = tl.maximum(tl.ceil(v - ry), 0.0)
    nxf = tl.minimum(tl.floor(u + rx), width - 1.0) - x0 + 1.0
    nyf = tl.minimum(tl.floor(v + ry), height - 1.0) - y0 + 1.0
    # NaN points and points behind the near plane fail these comparisons and never land.
    live = inside & (hz > near) & (nxf >= 1.0) & (nyf >= 1.0)
    # Only landing points' rectangles are small exact integers; the others are zeroed before converting.
    nx = tl.where(live, nxf, 0.0).to(tl.int32)
    ny = tl.where(live, nyf, 0.0).to(tl.int32)
    base = (view * height + tl.where(live, y0, 0.0).to(tl.int64)) * width + tl.where(live, x0, 0.0).to(tl.int64)
    key = (hz.to(tl.int32, bitcast=True).to(tl.int64) << 32) | point.to(tl.int64)
    area = nx * ny
    for k in range(0, tl.max(area, axis=0)):
        on = k < area
        dy = k // tl.maximum(nx, 1)
        ptr = zbuf_ptr + base + (dy * width + (k - dy * nx)).to(tl.int64)
        # Reading first skips the atomic for fragments already behind the pixel's current winner (the
        # z-buffer only ever decreases, so a stale read can only cause a harmless extra atomic).
        current = tl.load(ptr, mask=on, other=0)
        tl.atomic_min(ptr, key, mask=on & (key < current), sem="relaxed")


@triton.jit
def _resolve(zbuf_ptr, attrs_ptr, idx, mask, max_id):
    """-> (valid, r, g, b, depth) of the pixels ``idx`` of one z-buffer; 0 where empty."""
    key = tl.load(zbuf_ptr + idx, mask=mask, other=0x7FFFFFFFFFFFFFFF)
    valid = key != 0x7FFFFFFFFFFFFFFF
    ids = tl.minimum(key & 0xFFFFFFFF, max_id)
    attrs = tl.load(attrs_ptr + ids, mask=mask & valid, other=0)
    r = (attrs & 0xFF).to(tl.float32)
    g = ((attrs >> 8) & 0xFF).to(tl.float32)
    b = ((attrs >> 16) & 0xFF).to(tl.float32)
    depth = tl.where(valid, (key >> 32).to(tl.int32).to(tl.float32, bitcast=True), 0.0)
    return valid, r, g, b, depth


@triton.jit
def _resolve_faded(zbuf_a_ptr, zbuf_b_ptr, attrs_ptr, idx, mask, max_id, weight_a, weight_b, FADE: tl.constexpr):
    """One output pixel: the z-buffer's winner, or (FADE) the cross-fade of two z-buffers' winners where a
    pixel covered by both takes ``weight_a * a + weight_b * b`` and one covered by either takes that one."""
    va, ra, ga, ba, da = _resolve(zbuf_a_ptr, attrs_ptr, idx, mask, max_id)
    if FADE:
        vb, rb, gb, bb, db = _resolve(zbuf_b_ptr, attrs_ptr, idx, mask, max_id)
        ka = tl.where(vb, weight_a, 1.0)
        kb = tl.where(va, weight_b, 1.0)
        return va | vb, ra * ka + rb * kb, ga * ka + gb * kb, ba * ka + bb * kb, da * ka + db * kb
    return va, ra, ga, ba, da


@triton.jit
def _flat_to_view_yx(offs, height, width):
    """Flat index over (B, height, width), row-major -> (view, y, x)."""
    return offs // (width * height), (offs // width) % height, offs % width


@triton.jit
def _resolve_push_kernel(zbuf_a_ptr, zbuf_b_ptr, attrs_ptr, max_id, fade_ptr,
                         out_v_ptr, out_w_ptr, height, width, coarse_h, coarse_w, n_coarse,
                         FADE: tl.constexpr, BLOCK: tl.constexpr):
    """Level 0 (resolved on the fly) -> level 1 of the push-pull pyramid: 2x2 sums of the premultiplied
    values (0 where not valid) over the sum of 0/1 weights; edge blocks padded with weight 0.
    ``fade_ptr``: the cross-fade's two weights (device memory, like the splat's ranges)."""
    weight_a, weight_b = tl.load(fade_ptr), tl.load(fade_ptr + 1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n_coarse
    view, cy, cx = _flat_to_view_yx(offs, coarse_h, coarse_w)
    sw = tl.zeros([BLOCK], tl.float32)
    sr = tl.zeros([BLOCK], tl.float32)
    sg = tl.zeros([BLOCK], tl.float32)
    sb = tl.zeros([BLOCK], tl.float32)
    sd = tl.zeros([BLOCK], tl.float32)
    for child in tl.static_range(4):  # row-major, the order torch's 2x2 sums add in
        fy = 2 * cy + child // 2
        fx = 2 * cx + child % 2
        ok = inside & (fy < height) & (fx < width)
        idx = (view.to(tl.int64) * height + fy) * width + fx
        valid, r, g, b, d = _resolve_faded(zbuf_a_ptr, zbuf_b_ptr, attrs_ptr, idx, ok, max_id, weight_a, weight_b, FADE)
        sw += tl.where(valid & ok, 1.0, 0.0)
        sr += r
        sg += g
        sb += b
        sd += d
    _store_level(out_v_ptr, out_w_ptr, offs, inside, view, cy * coarse_w + cx, coarse_h * coarse_w, sw, sr, sg, sb, sd)


@triton.jit
def _store_level(out_v_ptr, out_w_ptr, offs, inside, view, pixel, plane, sw, sr, sg, sb, sd):
    """Weighted means and clamped weights of one pyramid level: values (B, 4, h, w), weights (B, h, w)."""
    total = tl.maximum(sw, 1e-12)
    base = view.to(tl.int64) * 4 * plane + pixel
    tl.store(out_v_ptr + base, sr / total, mask=inside)
    tl.store(out_v_ptr + base + plane, sg / total, mask=inside)
    tl.store(out_v_ptr + base + 2 * plane, sb / total, mask=inside)
    tl.store(out_v_ptr + base + 3 * plane, sd / total, mask=inside)
    tl.store(out_w_ptr + offs, tl.minimum(sw, 1.0), mask=inside)


@triton.jit
def _push_kernel(v_ptr, w_ptr, out_v_ptr, out_w_ptr, height, width, coarse_h, coarse_w, n_coarse, BLOCK: tl.constexpr):
    """Level k (values (B, 4, h, w), weights (B, h, w)) -> level k + 1: 2x2 weighted means."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n_coarse
    view, cy, cx = _flat_to_view_yx(offs, coarse_h, coarse_w)
    plane = height * width
    sw = tl.zeros([BLOCK], tl.float32)
    sr = tl.zeros([BLOCK], tl.float32)
    sg = tl.zeros([BLOCK], tl.float32)
    sb = tl.zeros([BLOCK], tl.float32)
    sd = tl.zeros([BLOCK], tl.float32)
    for child in tl.static_range(4):
        fy = 2 * cy + child // 2
        fx = 2 * cx + child % 2
        ok = inside & (fy < height) & (fx < width)
        pix = fy * width + fx
        w = tl.load(w_ptr + view * plane + pix, mask=ok, other=0.0)
        base = view.to(tl.int64) * 4 * plane + pix
        sw += w
        sr += tl.load(v_ptr + base, mask=ok, other=0.0) * w
        sg += tl.load(v_ptr + base + plane, mask=ok, other=0.0) * w
        sb += tl.load(v_ptr + base + 2 * plane, mask=ok, other=0.0) * w
        sd += tl.load(v_ptr + base + 3 * plane, mask=ok, other=0.0) * w
    _store_level(out_v_ptr, out_w_ptr, offs, inside, view, cy * coarse_w + cx, coarse_h * coarse_w, sw, sr, sg, sb, sd)


@triton.jit
def _upsample(c_ptr, view, channel, y, x, coarse_h, coarse_w, mask):
    """Bilinear 2x upsampling of a coarse (B, 4, h, w) level at fine pixel (y, x), as
    ``F.interpolate(scale_factor=2, mode="bilinear", align_corners=False)``: source (y + .5) / 2 - .5,
    clamped at 0 below and to the last row/column above."""
    sy = tl.maximum((y.to(tl.float32) + 0.5) * 0.5 - 0.5, 0.0)
    sx = tl.maximum((x.to(tl.float32) + 0.5) * 0.5 - 0.5, 0.0)
    y0 = sy.to(tl.int32)
    x0 = sx.to(tl.int32)
    ly = sy - y0.to(tl.float32)
    lx = sx - x0.to(tl.float32)
    y1 = tl.minimum(y0 + 1, coarse_h - 1)
    x1 = tl.minimum(x0 + 1, coarse_w - 1)
    base = c_ptr + (view.to(tl.int64) * 4 + channel) * coarse_h * coarse_w
    c00 = tl.load(base + y0 * coarse_w + x0, mask=mask, other=0.0)
    c01 = tl.load(base + y0 * coarse_w + x1, mask=mask, other=0.0)
    c10 = tl.load(base + y1 * coarse_w + x0, mask=mask, other=0.0)
    c11 = tl.load(base + y1 * coarse_w + x1, mask=mask, other=0.0)
    return (1.0 - ly) * ((1.0 - lx) * c00 + lx * c01) + ly * ((1.0 - lx) * c10 + lx * c11)


@triton.jit
def _pull_kernel(v_ptr, w_ptr, coarse_ptr, height, width, coarse_h, coarse_w, n_pixels, BLOCK: tl.constexpr):
    """In place on level k: values = w * values + (1 - w) * upsampled filled level k + 1."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n_pixels
    view, y, x = _flat_to_view_yx(offs, height, width)
    plane = height * width
    w = tl.load(w_ptr + offs, mask=inside, other=0.0)
    for channel in tl.static_range(4):
        ptr = v_ptr + (view.to(tl.int64) * 4 + channel) * plane + y * width + x
        up = _upsample(coarse_ptr, view, channel, y, x, coarse_h, coarse_w, inside)
        tl.store(ptr, w * tl.load(ptr, mask=inside, other=0.0) + (1.0 - w) * up, mask=inside)


@triton.jit
def _final_kernel(zbuf_a_ptr, zbuf_b_ptr, attrs_ptr, max_id, fade_ptr, coarse_ptr, coarse_h, coarse_w,
                  color_ptr, depth_ptr, valid_ptr, height, width, n_pixels,
                  FADE: tl.constexpr, FILL: tl.constexpr, BLOCK: tl.constexpr):
    """Full resolution: the resolved pixel where a splat landed, else (FILL) the pull from level 1, else 0.
    Writes colour (B, 3, H, W) uint8 = floor(value + .5) clamped to 0..255, depth (B, H, W), valid (B, H, W)."""
    weight_a, weight_b = tl.load(fade_ptr), tl.load(fade_ptr + 1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n_pixels
    view, y, x = _flat_to_view_yx(offs, height, width)
    valid, r, g, b, d = _resolve_faded(zbuf_a_ptr, zbuf_b_ptr, attrs_ptr, offs.to(tl.int64), inside, max_id, weight_a, weight_b, FADE)
    if FILL:
        hole = inside & ~valid
        r = tl.where(valid, r, _upsample(coarse_ptr, view, 0, y, x, coarse_h, coarse_w, hole))
        g = tl.where(valid, g, _upsample(coarse_ptr, view, 1, y, x, coarse_h, coarse_w, hole))
        b = tl.where(valid, b, _upsample(coarse_ptr, view, 2, y, x, coarse_h, coarse_w, hole))
        d = tl.where(valid, d, _upsample(coarse_ptr, view, 3, y, x, coarse_h, coarse_w, hole))
    plane = height * width
    pixel = y * width + x
    cbase = view.to(tl.int64) * 3 * plane + pixel
    tl.store(color_ptr + cbase, tl.minimum(tl.maximum(r + 0.5, 0.0), 255.0).to(tl.uint8), mask=inside)
    tl.store(color_ptr + cbase + plane, tl.minimum(tl.maximum(g + 0.5, 0.0), 255.0).to(tl.uint8), mask=inside)
    tl.store(color_ptr + cbase + 2 * plane, tl.minimum(tl.maximum(b + 0.5, 0.0), 255.0).to(tl.uint8), mask=inside)
    tl.store(depth_ptr + offs, d, mask=inside)
    tl.store(valid_ptr + offs, valid.to(tl.uint8), mask=inside)


# ----------------------------------------------------------------------------------------------------
# Thin wrappers
# ----------------------------------------------------------------------------------------------------
def camera_table(proj: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """(B, 3, 4) pixel-from-world projections + (B, 3, 3) intrinsics -> (B, 16) float32 kernel table."""
    table = np.zeros((len(proj), _CAMERA_FLOATS), np.float32)
    table[:, :12] = np.asarray(proj, np.float64).reshape(len(proj), 12)
    table[:, 12] = np.asarray(intrinsics)[:, 0, 0]
    table[:, 13] = np.asarray(intrinsics)[:, 1, 1]
    return table


def splat_range(zbuf: torch.Tensor, points: PackedPoints, point_range: torch.Tensor, max_points: int,
                cams: torch.Tensor, width: int, height: int, config: SplatConfig) -> None:
    """Depth-test the points of ``point_range`` ((2,) int64 on the device: first index, count; at most
    ``max_points``) into ``zbuf`` (B*H*W,) int64 for every view of ``cams`` (B, 16)."""
    if max_points <= 0:
        return
    xyz = points.xyz
    grid = (triton.cdiv(max_points, _POINT_BLOCK), cams.shape[0])
    _splat_kernel[grid](zbuf, xyz, points.attrs, cams, point_range, xyz.stride(0),
                        points.radius_log2_min, points.radius_log2_step, config.radius_scale,
                        config.max_half_px, config.near, width, height, BLOCK=_POINT_BLOCK)


def fade_weights(weight_b: float) -> np.ndarray:
    """(2,) float32 weights of frames a and b, normalised by their float32 sum as renderer._cross_fade does."""
    wa, wb = np.float32(1.0 - weight_b), np.float32(weight_b)
    total = np.float32(max(wa + wb, np.float32(1e-12)))
    return np.array([wa / total, wb / total], np.float32)


def pyramid_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """Push-pull levels below full resolution: halve (rounding up) while both sides exceed 1 pixel, as
    ``holes.push_pull`` does."""
    shapes = []
    while min(height, width) > 1:
        height, width = -(-height // 2), -(-width // 2)
        shapes.append((height, width))
    return shapes


def resolve_and_fill(zbuf_a: torch.Tensor, zbuf_b: torch.Tensor | None, weights: torch.Tensor, points: PackedPoints,
                     batch: int, height: int, width: int, fill: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z-buffer(s) -> (colour (B, H, W, 3) uint8 as a view of planar (B, 3, H, W) memory, depth (B, H, W)
    float32, valid (B, H, W) bool). ``zbuf_b``: cross-fade, ``weights`` (2,) float32 on the device from
    :func:`fade_weights` (read only when fading)."""
    device = zbuf_a.device
    fade = zbuf_b is not None
    max_id = max(len(points) - 1, 0)
    zbuf_b = zbuf_b if fade else zbuf_a
    color = torch.empty((batch, 3, height, width), dtype=torch.uint8, device=device)
    depth = torch.empty((batch, height, width), dtype=torch.float32, device=device)
    valid = torch.empty((batch, height, width), dtype=torch.bool, device=device)
    shapes = pyramid_shapes(height, width) if fill else []
    levels = [(torch.empty((batch, 4, h, w), dtype=torch.float32, device=device),
               torch.empty((batch, h, w), dtype=torch.float32, device=device)) for h, w in shapes]
    if levels:
        (h1, w1), (v1, w1buf) = shapes[0], levels[0]
        n = batch * h1 * w1
        _resolve_push_kernel[(triton.cdiv(n, _PIXEL_BLOCK),)](zbuf_a, zbuf_b, points.attrs, max_id, weights, v1, w1buf,
                                                               height, width, h1, w1, n, FADE=fade, BLOCK=_PIXEL_BLOCK)
        for (h, w), (hc, wc), (v, wt), (vc, wtc) in zip(shapes, shapes[1:], levels, levels[1:]):
            n = batch * hc * wc
            _push_kernel[(triton.cdiv(n, _PIXEL_BLOCK),)](v, wt, vc, wtc, h, w, hc, wc, n, BLOCK=_PIXEL_BLOCK)
        for (h, w), (hc, wc), (v, wt), (vc, _) in reversed(list(zip(shapes, shapes[1:], levels, levels[1:]))):
            n = batch * h * w
            _pull_kernel[(triton.cdiv(n, _PIXEL_BLOCK),)](v, wt, vc, h, w, hc, wc, n, BLOCK=_PIXEL_BLOCK)
    coarse, (ch, cw) = (levels[0][0], shapes[0]) if levels else (depth, (1, 1))
    n = batch * height * width
    _final_kernel[(triton.cdiv(n, _PIXEL_BLOCK),)](zbuf_a, zbuf_b, points.attrs, max_id, weights, coarse, ch, cw,
                                                    color, depth, valid.view(torch.uint8), height, width, n,
                                                    FADE=fade, FILL=bool(levels), BLOCK=_PIXEL_BLOCK)
    return color.permute(0, 2, 3, 1), depth, valid


def empty_zbuffer(batch: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    return torch.full((batch * height * width,), EMPTY_KEY, dtype=torch.int64, device=device)


class RenderPlan:
    """Every launch of one render shape (views, size, cross-fade or not) over parameter buffers on the
    device, so the launches can be captured once and replayed as one CUDA graph: ~25 kernel launches
    cost ~1.5 ms of host time on the H100 host, a replay ~0.1 ms. Without ``graph`` (CPU tensors under
    the Triton interpreter, or capture refused) the same launches run eagerly each call."""

    def __init__(self, points: PackedPoints, static_count: int, max_dynamic: int, batch: int, height: int,
                 width: int, fade: bool, fill: bool, config: SplatConfig, device: torch.device, graph: bool):
        self.points, self.static_count, self.max_dynamic = points, static_count, max_dynamic
        self.shape, self.fade, self.fill, self.config = (batch, height, width), fade, fill, config
        self.cams = torch.zeros((batch, _CAMERA_FLOATS), dtype=torch.float32, device=device)
        self.ranges = torch.zeros((3, 2), dtype=torch.int64, device=device)  # static, frame a, frame b
        self.weights = torch.zeros(2, dtype=torch.float32, device=device)
        self.graph = None
        if graph:
            self._launch()  # compiles the kernels (not allowed while capturing)
            torch.cuda.synchronize(device)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, capture_error_mode="thread_local"):  # other threads may use CUDA meanwhile
                self._outputs = self._launch()
            self.graph = g

    def _launch(self):
        batch, height, width = self.shape
        zbuf = empty_zbuffer(batch, height, width, self.cams.device)
        splat_range(zbuf, self.points, self.ranges[0], self.static_count, self.cams, width, height, self.config)
        zbuf_b = None
        if self.fade:
            zbuf_b = zbuf.clone()
            splat_range(zbuf_b, self.points, self.ranges[2], self.max_dynamic, self.cams, width, height, self.config)
        splat_range(zbuf, self.points, self.ranges[1], self.max_dynamic, self.cams, width, height, self.config)
        return resolve_and_fill(zbuf, zbuf_b, self.weights, self.points, batch, height, width, self.fill)

    def __call__(self, cams: np.ndarray, ranges: np.ndarray, weights: np.ndarray):
        """``cams`` (B, 16) from :func:`camera_table`'s layout, ``ranges`` (3, 2) first index and count of
        the static points and frames a and b, ``weights`` from :func:`fade_weights` -> fresh outputs."""
        # Pageable copies: the host arrays may be reused as soon as these return.
        self.cams.copy_(torch.from_numpy(np.ascontiguousarray(cams, np.float32)))
        self.ranges.copy_(torch.from_numpy(np.ascontiguousarray(ranges, np.int64)))
        self.weights.copy_(torch.from_numpy(np.ascontiguousarray(weights, np.float32)))
        if self.graph is None:
            return self._launch()
        self.graph.replay()
        # The graph writes the same buffers every replay: the caller gets copies it can keep.
        return tuple(t.clone() for t in self._outputs)
