"""Fusion of streamed RGB-D source frames into the anchored world state (torch; CUDA when available).

Per frame (streamed; only a ring buffer of ``2 * max|offset| + 1`` frames is held):

1. unproject the depth to world points (``cameras.unproject_depth`` semantics, vectorised in torch);
2. split pixels into static / dynamic by multi-frame consistency (``dynamic_detect``) against the
   neighbour frames ``t + offsets`` (on a grid subsampled so it is at most ``detect_max_side`` wide);
3. merge static pixels into a voxel grid whose voxel size follows the pixel footprint (see
   :class:`VoxelAccumulator`): the static layer holds what no single frame sees and stays bounded by
   the scene's surface, not the clip length;
4. keep the dynamic pixels as that frame's dynamic layer (subsampled if a frame has more than
   ``max_dynamic_points`` of them);
5. every ``carve_every``-th frame, count the static voxels it sees through: a voxel seen through in
   more frames than it was seen in is free space (a moving object that paused) and is dropped.

Pixel footprint (documented once, used for radii and voxel sizes): a pixel at z-depth ``d`` spans
``f = d * max(1/fx, 1/fy)`` metres; a splat covering the whole pixel square has radius
``f * sqrt(2) / 2`` (half its diagonal).

Memory bound for a 60 s clip at 960x540, 24 fps (1440 frames):

* ring buffer: 17 frames x ~13 MiB (depth, colour, detection grid) = ~0.2 GiB;
* static voxels: 44 bytes each (int64 key, 8 float32 sums, a carve count). Consecutive frames overlap, so a frame
  adds new voxels only for newly seen surface; even at 10 % new surface every frame (a fast pan) that
  is ~23 k voxels/frame -> 33 M voxels = 1.4 GiB, plus ~3x that while a batch (<= 4 M samples) is
  merged (sort) = ~4 GiB;
* dynamic points: 23 bytes each on the CPU, capped at 131 072 per frame -> at most 4.3 GiB for 1440
  fully dynamic frames, doubled for the final concatenation = 8.7 GiB.

Worst case ~13 GiB, under the 24 GiB budget; a typical clip (10 % moving pixels) needs ~4 GiB. The
build benchmark prints the measured peak.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from gen_server import cameras
from gen_server.world.dynamic_detect import DetectionView, DynamicDetectConfig, detect_dynamic, detection_colors
from gen_server.world.frames import SourceFrame
from gen_server.world.state import PointLayer, WorldState

HALF_DIAGONAL = math.sqrt(2.0) / 2.0


@dataclass
class FusionConfig:
    """Knobs of the fusion. ``voxel_factor``: a static voxel is at least this many pixel footprints
    wide (rounded up to ``voxel_base * 2**level``); ``detect_max_side``: the detection grid is strided
    down to at most this width/height; ``max_dynamic_points``: per-frame cap (strided beyond it)."""

    detect: DynamicDetectConfig = field(default_factory=DynamicDetectConfig)
    voxel_factor: float = 1.0
    voxel_base: float = 1e-3
    detect_max_side: int = 480
    max_dynamic_points: int = 131_072
    dynamic_batch: int = 8  # frames whose dynamic points are moved to the CPU together (one sync)
    compile: bool | None = None  # torch.compile the detection kernel; None: see auto_compile
    carve_every: int = 4  # every n-th frame removes static voxels it sees through (0: never)
    merge_min: int = 262_144  # pending static samples that trigger a merge, at least ...
    merge_max: int = 4_000_000  # ... and at most; in between, the merged voxel count (amortised sort)


def auto_compile(device: torch.device, size: tuple[int, int]) -> bool:
    """Whether ``compile=None`` compiles the detection kernel: always on CUDA (the eager kernel is
    launch-bound there); on the CPU for frames of 640x360 and up when a C++ compiler is on PATH (it
    pays off there - 28 vs 19 frames/s at 960x540 on 2 cores - and small test clips stay eager)."""
    if device.type == "cuda":
        return True
    import shutil

    return size[0] * size[1] >= 640 * 360 and any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pixel_footprint(depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Metres spanned by one pixel at each z-depth: ``depth * max(1/fx, 1/fy)``.

    Convention: OpenCV intrinsics (3, 3); depth z-depth metres, any shape.
    """
    return depth * torch.maximum(1.0 / intrinsics[0, 0], 1.0 / intrinsics[1, 1])


def unproject_depth_torch(depth: torch.Tensor, intrinsics: torch.Tensor, world_from_cv: torch.Tensor) -> torch.Tensor:
    """z-depth (H, W) -> world points (H, W, 3); torch twin of ``cameras.unproject_depth``.

    Convention: OpenCV pixels (centres at integers) and intrinsics; ``world_from_cv`` (4, 4) is
    ``inverse(cameras.cv_camera_from_world(world_from_camera))`` so the result is in the OpenXR world.
    Invalid depth is not masked here (callers carry a ``depth > 0`` mask).
    """
    if depth.ndim != 2:
        raise ValueError(f"depth: expected (H, W), got {tuple(depth.shape)}")
    h, w = depth.shape
    u = torch.arange(w, device=depth.device, dtype=depth.dtype)
    v = torch.arange(h, device=depth.device, dtype=depth.dtype)
    x = ((u - intrinsics[0, 2]) / intrinsics[0, 0])[None, :] * depth
    y = ((v - intrinsics[1, 2]) / intrinsics[1, 1])[:, None] * depth
    r, t = world_from_cv[:3, :3], world_from_cv[:3, 3]
    return torch.stack(
        [r[i, 0] * x + r[i, 1] * y + r[i, 2] * depth + t[i] for i in range(3)], -1
    )


# Voxel keys: 5 bits of level, then 3 x 19 bits of signed cell index (offset by 2**18).
_BITS, _OFF = 19, 1 << 18
_MASK = (1 << _BITS) - 1
_MAX_LEVEL = 30


class VoxelAccumulator:
    """Static surface samples merged per voxel: mean position, mean colour, observation count.

    A sample of footprint ``f`` goes to level ``L = ceil(log2(factor * f / base))``, voxel size
    ``s = base * 2**L`` (so ``factor * f <= s < 2 * factor * f``): near surfaces get fine voxels, far
    ones coarse, and each voxel gathers ~1-4 pixels of one frame. Per voxel it sums the offset from the
    voxel centre (float32 stays exact far from the origin), the colour, the sample's ``(f / s)**2``
    (the fraction of the voxel face one pixel covers: summed, ~number of frames that saw the voxel)
    and the sample count. Samples are batched and merged by sort (``torch.unique``).
    """

    def __init__(self, device: torch.device, factor: float = 1.0, base: float = 1e-3, merge_min: int = 262_144,
                 merge_max: int = 4_000_000):
        self.device, self.factor, self.base = device, factor, base
        self.merge_min, self.merge_max = merge_min, merge_max
        self.keys = torch.zeros(0, dtype=torch.int64, device=device)
        self.sums = torch.zeros((0, 8), dtype=torch.float32, device=device)
        self.through = torch.zeros(0, dtype=torch.float32, device=device)  # frames that saw through it
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_count = 0

    def add(self, samples: torch.Tensor, use: torch.Tensor | None = None, weight: float = 1.0) -> None:
        """samples (N, 7): world position (3, metres), colour (3, 0..255), pixel footprint (metres);
        ``use`` (N,) bool: which samples count (default all); ``weight``: pixels each sample stands for
        (when the caller subsamples), for the observation count.

        Convention: positions in the OpenXR world frame, metres; voxel cells are axis-aligned in it.

        No host-device synchronisation (no boolean indexing): unused samples and samples beyond the key
        range get zero weight and key 0 (never a real voxel's), and voxels without weight are dropped
        at :meth:`layer`.
        """
        if len(samples) == 0:
            return
        points, colors = samples[:, 0:3], samples[:, 3:6]
        footprint = samples[:, 6].clamp_min(1e-9)  # unused samples may have depth 0
        level = torch.ceil(torch.log2(self.factor * footprint / self.base)).clamp(0, _MAX_LEVEL)
        size = self.base * torch.exp2(level)
        cell = torch.floor(points / size[:, None])
        inside = (cell.abs() < _OFF - 1).all(-1)
        if use is not None:
            inside &= use
        cell = torch.where(inside[:, None], cell, torch.zeros_like(cell))
        idx = cell.long() + _OFF
        key = (level.long() << (3 * _BITS)) | (idx[:, 0] << (2 * _BITS)) | (idx[:, 1] << _BITS) | idx[:, 2]
        key = torch.where(inside, key, torch.zeros_like(key))
        offset = points - (cell + 0.5) * size[:, None]
        obs = (footprint / size).square() * weight
        values = torch.cat([offset, colors, obs[:, None], torch.ones_like(obs)[:, None]], 1) * inside[:, None]
        self._pending.append((key, values))
        self._pending_count += len(key)
        # Merging re-sorts every voxel: wait for as many new samples as there are voxels, so the
        # sorting cost per sample stays O(log M) however long the clip.
        if self._pending_count >= min(self.merge_max, max(self.merge_min, len(self.keys))):
            self.merge()

    def merge(self) -> None:
        if not self._pending:
            return
        keys = torch.cat([self.keys] + [k for k, _ in self._pending])
        values = torch.cat([self.sums] + [v for _, v in self._pending])
        self._pending, self._pending_count = [], 0
        old_count = len(self.keys)
        self.keys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        self.sums = torch.zeros((len(self.keys), values.shape[1]), dtype=values.dtype, device=values.device)
        self.sums.index_add_(0, inverse, values)
        through = torch.zeros(len(self.keys), dtype=self.through.dtype, device=self.through.device)
        self.through = through.index_add_(0, inverse[:old_count], self.through)

    def positions(self) -> torch.Tensor:
        """(M, 3) mean position of every merged voxel (pending samples not included)."""
        level = (self.keys >> (3 * _BITS)).float()
        size = self.base * torch.exp2(level)
        cell = torch.stack([(self.keys >> (2 * _BITS)) & _MASK, (self.keys >> _BITS) & _MASK, self.keys & _MASK],
                           -1) - _OFF
        return (cell.float() + 0.5) * size[:, None] + self.sums[:, 0:3] / self.sums[:, 7:8].clamp_min(1e-9)

    def carve(self, view, depth_rel_tol: float, weight: float = 1.0) -> None:
        """Count, per voxel, a frame that looked through it (free space where the voxel is).

        Voxels seen through in more frames than they were seen in are dropped by :meth:`layer`: they
        were a moving object that sat still long enough to pass the dynamic test (a pendulum at its
        turning point) and left later. ``weight``: frames each call stands for (carving every n-th
        frame).
        """
        from gen_server.world.dynamic_detect import seen_through

        if len(self.keys):  # merged voxels only: pending samples are carved once merged
            self.through += seen_through(self.positions(), view, depth_rel_tol).float() * weight

    def __len__(self) -> int:
        self.merge()
        return len(self.keys)

    def layer(self) -> PointLayer:
        """The merged voxels as a PointLayer.

        Radius: half the diagonal of the voxel face (``s * sqrt(2) / 2``), so neighbouring voxels'
        splats close the surface. Confidence: ``1 - exp(-n / 2)`` for ``n`` frame-equivalents seen.
        """
        self.merge()
        # Drop voxels that only got out-of-range samples (zero weight: > 262 k voxels from the origin)
        # and voxels seen through more often than seen (carved free space).
        kept = (self.sums[:, 7] > 0) & (self.through <= self.sums[:, 6])
        position = self.positions()[kept]
        keys, sums = self.keys[kept], self.sums[kept]
        size = self.base * torch.exp2((keys >> (3 * _BITS)).float())
        color = (sums[:, 3:6] / sums[:, 7:8]).round().clamp(0, 255)
        confidence = 1.0 - torch.exp(-sums[:, 6] / 2.0)
        return PointLayer(
            position.cpu().numpy().astype(np.float32),
            color.cpu().numpy().astype(np.uint8),
            (size * HALF_DIAGONAL).cpu().numpy().astype(np.float32),
            confidence.cpu().numpy().astype(np.float32),
        )


@dataclass
class _Prepared:
    """A frame in the ring buffer, on the fusion device."""

    position: int
    depth: torch.Tensor  # (H, W) float32, 0 = unknown
    rgb: torch.Tensor  # (H, W, 3) float32 0..255
    intrinsics: torch.Tensor  # (3, 3) float32
    world_from_cv: torch.Tensor  # (4, 4) float32
    view: DetectionView


class WorldFuser:
    """Streams SourceFrames in (``add``), returns the WorldState at ``finish``.

    A frame is classified once the frames ``max(offsets)`` after it have arrived (or at the end of the
    stream), so at most ``max(offsets) - min(offsets) + 1`` frames are held.
    """

    def __init__(self, config: FusionConfig | None = None, device: str | torch.device | None = None):
        self.config = config or FusionConfig()
        self.device = resolve_device(device)
        offsets = self.config.detect.offsets
        self._ahead = max([0, *offsets])
        self._behind = -min([0, *offsets])
        self._ring: deque[_Prepared] = deque()
        self._next = 0  # stream position of the next frame to classify
        self._count = 0
        self.static = VoxelAccumulator(self.device, self.config.voxel_factor, self.config.voxel_base,
                                       self.config.merge_min, self.config.merge_max)
        self._dynamic: list[PointLayer] = []
        self._dynamic_pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._times: list[float] = []
        self._poses: list[np.ndarray] = []
        self._intrinsics: list[np.ndarray] = []
        self._size: tuple[int, int] | None = None
        self._compiled: bool | None = self.config.compile  # None: decided at the first frame
        self.dynamic_pixels = 0
        self._static_pixels = torch.zeros((), dtype=torch.int64, device=self.device)

    @property
    def static_pixels(self) -> int:
        """Static pixel samples merged so far."""
        return int(self._static_pixels)

    @property
    def frame_count(self) -> int:
        return self._count

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) of the frames, once the first has arrived."""
        return self._size

    # -- streaming ----------------------------------------------------------------------------------
    def add(self, frame: SourceFrame) -> None:
        """Take the next frame (must have depth and the same size as the first)."""
        if frame.depth is None:
            raise ValueError(f"frame {frame.index}: no depth (run a depth model first)")
        if self._size is None:
            self._size = frame.size
        elif frame.size != self._size:
            raise ValueError(f"frame {frame.index}: size {frame.size} differs from the first frame's {self._size}")
        self._ring.append(self._prepare(frame))
        self._times.append(float(frame.time))
        self._poses.append(np.asarray(frame.world_from_camera, np.float64))
        self._intrinsics.append(np.asarray(frame.intrinsics, np.float64))
        self._count += 1
        while self._next + self._ahead < self._count:
            self._classify(self._next)

    def finish(self, fps: float, source: dict | None = None) -> WorldState:
        """Classify the frames still waiting for neighbours; return the world state."""
        if self._count == 0:
            raise ValueError("no frames to fuse")
        while self._next < self._count:
            self._classify(self._next)
        self._flush_dynamic()
        offsets = np.zeros(self._count + 1, np.int64)
        offsets[1:] = np.cumsum([len(layer) for layer in self._dynamic])
        return WorldState(
            static=self.static.layer(),
            dynamic=PointLayer.concatenate(self._dynamic),
            dynamic_offsets=offsets,
            times=np.asarray(self._times, np.float64),
            fps=float(fps),
            camera_poses=np.stack(self._poses),
            intrinsics=np.stack(self._intrinsics),
            image_size=self._size,
            source=dict(source or {}),
        )

    # -- internals ----------------------------------------------------------------------------------
    def _stride(self) -> int:
        w, h = self._size
        return max(1, math.ceil(max(w, h) / self.config.detect_max_side))

    def _prepare(self, frame: SourceFrame) -> _Prepared:
        dev, s = self.device, self._stride()
        depth = torch.from_numpy(np.require(frame.depth, np.float32, ["C", "W"])).to(dev)
        depth = torch.where(torch.isfinite(depth) & (depth > 0), depth, torch.zeros_like(depth))
        rgb = torch.from_numpy(np.require(frame.rgb, np.uint8, ["C", "W"])).to(dev).float()
        k = torch.as_tensor(np.asarray(frame.intrinsics, np.float64), dtype=torch.float32, device=dev)
        cv_from_world_np = cameras.cv_camera_from_world(np.asarray(frame.world_from_camera, np.float64))
        cv_from_world = torch.as_tensor(cv_from_world_np, dtype=torch.float32, device=dev)
        world_from_cv = torch.as_tensor(np.linalg.inv(cv_from_world_np), dtype=torch.float32, device=dev)
        view = DetectionView(depth[::s, ::s].contiguous(), detection_colors(rgb[::s, ::s] / 255.0), k, cv_from_world, s)
        return _Prepared(len(self._times), depth, rgb, k, world_from_cv, view)

    def _get(self, position: int) -> _Prepared | None:
        if not self._ring or position < self._ring[0].position or position > self._ring[-1].position:
            return None
        return self._ring[position - self._ring[0].position]

    def _classify(self, position: int) -> None:
        cur = self._get(position)
        neighbours = [n.view for o in self.config.detect.offsets if o != 0 and (n := self._get(position + o))]
        s = cur.view.stride
        points = unproject_depth_torch(cur.depth, cur.intrinsics, cur.world_from_cv)
        valid = cur.depth > 0
        det_points = points[::s, ::s]
        dyn_small, conf_small = self._detect(det_points, cur.view.rgb, cur.view.depth > 0, neighbours)
        h, w = cur.depth.shape
        dynamic = dyn_small.repeat_interleave(s, 0).repeat_interleave(s, 1)[:h, :w] & valid
        conf = conf_small.repeat_interleave(s, 0).repeat_interleave(s, 1)[:h, :w]
        footprint = pixel_footprint(cur.depth, cur.intrinsics)
        # Per-pixel attributes in one tensor, so each layer takes a single gather (one device sync).
        features = torch.cat([points, cur.rgb, footprint[..., None], conf[..., None]], -1)

        # Static samples: on large images one pixel of each stride x stride block per frame, the block
        # position cycling with the frame, so consecutive frames (which re-observe nearly the same
        # surface) together still sample every pixel at a fraction of the merge cost.
        phase = position % (s * s)
        pv, pu = divmod(phase, s)
        static_sel = (valid & ~dynamic)[pv::s, pu::s].reshape(-1)
        self._static_pixels += static_sel.sum()
        self.static.add(features[pv::s, pu::s, :7].reshape(-1, 7), static_sel, weight=float(s * s))
        carve = self.config.carve_every
        if carve and position % carve == carve - 1:
            self.static.carve(cur.view, self.config.detect.depth_rel_tol, weight=float(carve))
        self._dynamic_pending.append((features, dynamic))
        if len(self._dynamic_pending) >= self.config.dynamic_batch:
            self._flush_dynamic()

        self._next += 1
        # Drop frames no later frame will need as a neighbour.
        while self._ring and self._ring[0].position < self._next - self._behind:
            self._ring.popleft()

    def _detect(self, points, rgb, valid, neighbours):
        if self._compiled is None:
            self._compiled = auto_compile(self.device, self._size)
        if self._compiled:
            try:
                return detect_dynamic(points, rgb, valid, neighbours, self.config.detect, compiled=True)
            except Exception as e:  # no compiler toolchain here: the eager kernel computes the same
                warnings.warn(f"fusion: torch.compile unavailable ({type(e).__name__}: {e}); running eager")
                self._compiled = False
        return detect_dynamic(points, rgb, valid, neighbours, self.config.detect)

    def _flush_dynamic(self) -> None:
        """Move the pending frames' dynamic points to the CPU: one device sync for the whole batch."""
        if not self._dynamic_pending:
            return
        pending, self._dynamic_pending = self._dynamic_pending, []
        pixels = torch.stack([m for _, m in pending]).nonzero()  # (M, 3): frame, row, column, frame-major
        counts = torch.bincount(pixels[:, 0], minlength=len(pending)).cpu().numpy()
        starts = np.concatenate([[0], np.cumsum(counts)])
        width = pending[0][1].shape[1]
        rows = torch.cat([features.reshape(-1, features.shape[-1])[pixels[a:b, 1] * width + pixels[a:b, 2]]
                          for (features, _), a, b in zip(pending, starts[:-1], starts[1:])]).cpu().numpy()
        pixels = pixels.cpu().numpy()
        for frame_rows, frame_pixels in zip(np.split(rows, np.cumsum(counts)[:-1]),
                                            np.split(pixels, np.cumsum(counts)[:-1])):
            self._dynamic.append(self._dynamic_layer(frame_rows, frame_pixels[:, 1:]))

    def _dynamic_layer(self, rows: np.ndarray, pixels: np.ndarray) -> PointLayer:
        """One frame's dynamic points from its (n, 8) feature rows at pixels (n, 2) (row, column).

        Radius = pixel footprint * sqrt(2) / 2 (half the pixel diagonal); beyond ``max_dynamic_points``
        only every step-th pixel in both directions is kept and radii grow to cover the skipped ones.
        """
        n = len(rows)
        self.dynamic_pixels += n
        step = 1
        if n > self.config.max_dynamic_points:
            step = math.ceil(math.sqrt(n / self.config.max_dynamic_points))
            keep = (pixels[:, 0] % step == 0) & (pixels[:, 1] % step == 0)
            rows = rows[keep]
        return PointLayer(
            np.ascontiguousarray(rows[:, 0:3], np.float32),
            np.clip(np.round(rows[:, 3:6]), 0, 255).astype(np.uint8),
            (rows[:, 6] * (HALF_DIAGONAL * step)).astype(np.float32),
            np.ascontiguousarray(rows[:, 7], np.float32),
        )


def fuse_frames(frames, fps: float, source: dict | None = None, config: FusionConfig | None = None,
                device: str | torch.device | None = None) -> WorldState:
    """Fuse an iterable of SourceFrames (streamed) into a WorldState."""
    fuser = WorldFuser(config, device)
    with torch.inference_mode():
        for frame in frames:
            fuser.add(frame)
        return fuser.finish(fps, source)
