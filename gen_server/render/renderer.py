"""The stereo renderer's public API: a world state, a batch of cameras and a world time -> images.

Static layer + the dynamic layer at world time tau are z-buffer splatted (``splat``); a fractional tau
renders both neighbouring dynamic frames over the same static layer and cross-fades them so slow motion
is smooth; pixels no splat reached are filled by push-pull (``holes``) and reported in ``valid``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from gen_server import cameras
from gen_server.render.chunks import ChunkBounds, morton_order
from gen_server.render.holes import push_pull, select
from gen_server.render.splat import EMPTY_KEY, PackedPoints, SplatConfig, pack_points, projection_matrices, resolve_planes, splat_into, triton_available
from gen_server.world.state import PointLayer, WorldState


@dataclass
class RenderOutput:
    """Per-view images on the renderer's device.

    Convention: ``color`` (B, H, W, 3) uint8; ``depth`` (B, H, W) float32 z-depth metres (OpenCV camera
    z, hole-filled); ``valid`` (B, H, W) bool, True where a real splat landed, False where filled.
    """

    color: torch.Tensor
    depth: torch.Tensor
    valid: torch.Tensor


@dataclass(frozen=True)
class RenderConfig:
    splat: SplatConfig = field(default_factory=SplatConfig)
    fill_holes: bool = True
    cull_chunks: bool = True  # torch path: skip static chunks outside every view's frustum (same image either way)
    # "torch": the portable path (splat / holes modules); "triton": the fused kernels of triton_render
    # (CUDA; also runs on CPU tensors under TRITON_INTERPRET=1, which the tests use); "auto": triton on
    # CUDA when triton imports, torch otherwise.
    backend: str = "auto"
    # Triton path on CUDA: replay each render shape's launches as a CUDA graph (host time ~1.5 -> ~0.1 ms);
    # at most this many shapes (views x size x cross-fade) are kept captured at once.
    cuda_graphs: bool = True
    max_cuda_graphs: int = 8

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "torch", "triton"):
            raise ValueError(f"RenderConfig.backend: must be auto, torch or triton, got {self.backend!r}")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _as_batch(name: str, value, tail: tuple[int, int]) -> np.ndarray:
    """numpy/torch (B, *tail) or (*tail) -> float64 numpy (B, *tail)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value, np.float64)
    if array.shape == tail:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != tail:
        raise ValueError(f"{name}: expected shape (B, {tail[0]}, {tail[1]}), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return array


class Renderer:
    """Renders a :class:`WorldState` for batches of cameras.

    All per-world tensors (16 bytes per point) are uploaded once in the constructor; ``render`` only
    projects, splats, resolves and fills.
    """

    def __init__(self, world: WorldState, device: str | torch.device | None = None, config: RenderConfig | None = None):
        self.world = world
        self.device = torch.device(device) if device is not None else default_device()
        self.config = config or RenderConfig()
        # Static points in Z-curve order so fixed-size chunks are compact boxes for frustum culling.
        order = morton_order(world.static.positions)
        self.static_order = order  # internal static point i is world.static point static_order[i]
        static = world.static.select(order)
        self.chunks = ChunkBounds(static.positions)
        # Pad to whole chunks with NaN points (they fail every depth/frustum test and never land), so the
        # visible chunks are gathered as contiguous blocks.
        pad = len(self.chunks) * self.chunks.size - len(static)
        if pad:
            nan = PointLayer(np.full((pad, 3), np.nan, np.float32), np.zeros((pad, 3), np.uint8), np.full(pad, 1e-3, np.float32), np.zeros(pad, np.float32))
            static = PointLayer.concatenate([static, nan])
        layers = [static, world.dynamic]
        self.points: PackedPoints = pack_points(
            np.concatenate([l.positions for l in layers]),
            np.concatenate([l.colors for l in layers]),
            np.concatenate([l.radii for l in layers]),
            self.device,
        )
        self._static_count = len(static)
        self._dynamic_offsets = world.dynamic_offsets.astype(np.int64) + self._static_count
        backend = self.config.backend
        if backend == "triton" and not triton_available():
            raise ValueError("RenderConfig.backend 'triton': triton is not importable here")
        self.backend = "triton" if backend == "triton" or (backend == "auto" and self.device.type == "cuda" and triton_available()) else "torch"
        self._plans: dict = {}  # (views, height, width, cross-fade) -> triton_render.RenderPlan, by last use

    def stored_radii(self) -> np.ndarray:
        """World radii as the renderer stores them (8-bit quantised), static then dynamic, in the world's
        point order: what a reference implementation must use to match this renderer exactly."""
        radii = self.points.radii().cpu().numpy()
        n = len(self.world.static)
        static = np.empty(n, np.float32)
        static[self.static_order] = radii[:n]
        return np.concatenate([static, radii[self._static_count:]])

    # ------------------------------------------------------------------------------------------------
    def _dynamic_slice(self, frame: int) -> slice:
        return slice(*self._dynamic_range(frame))

    def _static_selection(self, proj: np.ndarray, width: int, height: int) -> slice | torch.Tensor:
        """The static points that can land in these views: a slice of all, or the indices of the visible chunks."""
        cfg = self.config.splat
        if not self.config.cull_chunks:
            return slice(0, self._static_count)
        chunks = self.chunks.visible(proj, width, height, cfg.max_half_px + 0.5, cfg.near)
        if len(chunks) > 0.8 * len(self.chunks):
            return slice(0, self._static_count)
        return torch.from_numpy(chunks).to(self.device)

    def _zbuffer(self, layer_slices: list, proj: torch.Tensor, k: torch.Tensor, width: int, height: int, base: torch.Tensor | None = None, consume_base: bool = False) -> torch.Tensor:
        """Splat layers over ``base`` (a copy of it, or ``base`` itself when ``consume_base``) or an empty z-buffer."""
        zbuf = (base if consume_base else base.clone()) if base is not None else torch.full((proj.shape[0] * height * width,), EMPTY_KEY, dtype=torch.int64, device=self.device)
        for sl in layer_slices:
            splat_into(zbuf, self.points, sl, proj, k, width, height, self.config.splat, self.chunks.size)
        return zbuf

    def render(self, world_from_camera, intrinsics, width: int, height: int, tau: float) -> RenderOutput:
        """Render B views at world time ``tau`` seconds.

        Convention: ``world_from_camera`` (B, 4, 4) OpenXR poses; ``intrinsics`` (B, 3, 3) OpenCV for a
        ``width`` x ``height`` image (numpy or torch; a single (4, 4)/(3, 3) is treated as B = 1).
        """
        poses = _as_batch("world_from_camera", world_from_camera, (4, 4))
        ks = _as_batch("intrinsics", intrinsics, (3, 3))
        if len(poses) != len(ks):
            raise ValueError(f"render: {len(poses)} poses but {len(ks)} intrinsics")
        if int(width) < 1 or int(height) < 1:
            raise ValueError(f"render: bad image size {width}x{height}")
        if not math.isfinite(float(tau)):
            raise ValueError(f"render: tau must be finite, got {tau}")
        width, height, batch = int(width), int(height), len(poses)
        proj64 = projection_matrices(cameras.cv_camera_from_world(poses), ks)
        proj = torch.from_numpy(proj64).to(self.device, torch.float32)
        k = torch.from_numpy(ks).to(self.device, torch.float32)

        a, b, w = self.world.frame_at(float(tau))
        if self.backend == "triton":
            color, depth, valid = self._render_triton(proj64, ks, width, height, a, b, w)
            return RenderOutput(color, depth, valid)
        static = self._static_selection(proj64, width, height)
        if b != a and w > 0.0:
            zstatic = self._zbuffer([static], proj, k, width, height)
            planes_a, valid_a = resolve_planes(self._zbuffer([self._dynamic_slice(a)], proj, k, width, height, zstatic), self.points, batch, height, width)
            planes_b, valid_b = resolve_planes(self._zbuffer([self._dynamic_slice(b)], proj, k, width, height, zstatic, consume_base=True), self.points, batch, height, width)
            planes, valid = _cross_fade(planes_a, valid_a, planes_b, valid_b, w)
        else:
            planes, valid = resolve_planes(self._zbuffer([static, self._dynamic_slice(a)], proj, k, width, height), self.points, batch, height, width)
        if self.config.fill_holes:
            planes = push_pull(planes, valid, zero_invalid=True)
        color = torch.empty((batch, height, width, 3), dtype=torch.uint8, device=self.device)
        color.copy_((planes[:, :3] + 0.5).clamp_(0, 255).permute(0, 2, 3, 1))  # uint8 cast truncates: floor(x + .5)
        return RenderOutput(color, planes[:, 3].contiguous(), valid)

    def _render_triton(self, proj64: np.ndarray, ks: np.ndarray, width: int, height: int, a: int, b: int, w: float):
        from gen_server.render import triton_render as tr  # noqa: PLC0415 - imports triton

        fade = b != a and w > 0.0
        plan = self._plan(len(proj64), height, width, fade)
        ranges = np.array([[0, self._static_count], self._dynamic_span(a), self._dynamic_span(b)], np.int64)
        return plan(tr.camera_table(proj64, ks), ranges, tr.fade_weights(w if fade else 0.0))

    def _plan(self, batch: int, height: int, width: int, fade: bool):
        """The Triton launches for one render shape, a CUDA graph on CUDA (``RenderConfig.cuda_graphs``);
        the most recently used few are kept (each holds its z-buffers and outputs on the device)."""
        from gen_server.render import triton_render as tr  # noqa: PLC0415 - imports triton

        key = (batch, height, width, fade)
        plan = self._plans.pop(key, None)
        if plan is None:
            graph = self.config.cuda_graphs and self.device.type == "cuda"
            spans = np.diff(self._dynamic_offsets)
            args = (self.points, self._static_count, int(spans.max()) if len(spans) else 0, batch, height, width,
                    fade, self.config.fill_holes, self.config.splat, self.device)
            try:
                plan = tr.RenderPlan(*args, graph=graph)
            except RuntimeError:  # capture refused (e.g. another capture in flight): the same launches, eager
                if not graph:
                    raise
                plan = tr.RenderPlan(*args, graph=False)
            while len(self._plans) >= self.config.max_cuda_graphs:
                self._plans.pop(next(iter(self._plans)))
        self._plans[key] = plan  # most recently used last
        return plan

    def _dynamic_span(self, frame: int) -> tuple[int, int]:
        start, stop = self._dynamic_range(frame)
        return start, stop - start

    def _dynamic_range(self, frame: int) -> tuple[int, int]:
        return int(self._dynamic_offsets[frame]), int(self._dynamic_offsets[frame + 1])

    def render_fov(self, world_from_eye, fovs: list[cameras.Fov], width: int, height: int, tau: float) -> RenderOutput:
        """Render OpenXR views: world_from_eye (B, 4, 4) OpenXR poses and one :class:`cameras.Fov` per view."""
        poses = _as_batch("world_from_eye", world_from_eye, (4, 4))
        if len(fovs) != len(poses):
            raise ValueError(f"render_fov: {len(poses)} poses but {len(fovs)} fovs")
        ks = np.stack([cameras.fov_to_intrinsics(f, int(width), int(height)) for f in fovs])
        return self.render(poses, ks, width, height, tau)


def _cross_fade(planes_a, valid_a, planes_b, valid_b, w: float):
    """Blend two resolved frames (planes (B, 4, H, W), 0 where not valid; consumed) with weight ``w`` on b;
    a pixel valid in only one takes that one."""
    # The per-pixel weights take only two values each, so compute them as float32 scalars (bit-identical to
    # normalising per-pixel weight maps) and pick per pixel.
    wa = torch.ones(1, dtype=torch.float32, device=planes_a.device) * (1.0 - w)
    wb = torch.ones(1, dtype=torch.float32, device=planes_a.device) * w
    total = (wa + wb).clamp(min=1e-12)
    shape = valid_a.shape
    ka = select(valid_b, (wa / total).expand(shape), (wa / wa.clamp(min=1e-12)).expand(shape))[:, None]
    kb = select(valid_a, (wb / total).expand(shape), (wb / wb.clamp(min=1e-12)).expand(shape))[:, None]
    planes = planes_a.mul_(ka).add_(planes_b.mul_(kb))
    return planes, valid_a | valid_b
