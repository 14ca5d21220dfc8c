"""The anchored world state: a static point layer plus one dynamic point layer per source frame.

Numpy-only. Builders produce it (``gen_server.world.fusion``), renderers consume it
(``gen_server.render``), ``gen_server.world.store`` puts it on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PointLayer:
    """A set of surface points (splats).

    Convention: ``positions`` (N, 3) float32 metres in the OpenXR world frame; ``colors`` (N, 3) uint8
    sRGB; ``radii`` (N,) float32 world-space footprint radius in metres (half the spacing of the pixels
    that produced the point at its depth); ``confidence`` (N,) float32 in [0, 1].
    """

    positions: np.ndarray
    colors: np.ndarray
    radii: np.ndarray
    confidence: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.positions)
        checks = {
            "positions": (self.positions, (n, 3), np.float32),
            "colors": (self.colors, (n, 3), np.uint8),
            "radii": (self.radii, (n,), np.float32),
            "confidence": (self.confidence, (n,), np.float32),
        }
        for name, (arr, shape, dtype) in checks.items():
            if arr.shape != shape or arr.dtype != dtype:
                raise ValueError(f"PointLayer.{name}: expected {shape} {np.dtype(dtype)}, got {arr.shape} {arr.dtype}")

    def __len__(self) -> int:
        return len(self.positions)

    @classmethod
    def empty(cls) -> "PointLayer":
        return cls(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), np.zeros(0, np.float32), np.zeros(0, np.float32))

    @classmethod
    def concatenate(cls, layers: list["PointLayer"]) -> "PointLayer":
        if not layers:
            return cls.empty()
        return cls(*(np.concatenate([getattr(l, f) for l in layers]) for f in ("positions", "colors", "radii", "confidence")))

    def select(self, index: np.ndarray | slice) -> "PointLayer":
        return PointLayer(self.positions[index], self.colors[index], self.radii[index], self.confidence[index])


@dataclass
class WorldState:
    """Everything ``timewalk serve`` needs to render any view at any world time.

    Convention: frame f was captured at ``times[f]`` seconds of source time by a camera with OpenXR pose
    ``camera_poses[f]`` (world_from_camera, (F, 4, 4) float64) and OpenCV ``intrinsics[f]`` ((F, 3, 3))
    at ``image_size`` = (width, height). Dynamic points of frame f are
    ``dynamic.select(slice(dynamic_offsets[f], dynamic_offsets[f + 1]))``.
    """

    static: PointLayer
    dynamic: PointLayer
    dynamic_offsets: np.ndarray  # (F + 1,) int64, non-decreasing, last == len(dynamic)
    times: np.ndarray  # (F,) float64 seconds, increasing
    fps: float
    camera_poses: np.ndarray  # (F, 4, 4) float64
    intrinsics: np.ndarray  # (F, 3, 3) float64
    image_size: tuple[int, int]
    source: dict = field(default_factory=dict)  # path, kind, depth_source, pose_source, ...

    def __post_init__(self) -> None:
        f = len(self.times)
        if f < 1:
            raise ValueError("WorldState: needs at least one frame")
        if self.dynamic_offsets.shape != (f + 1,) or self.dynamic_offsets[0] != 0 or self.dynamic_offsets[-1] != len(self.dynamic):
            raise ValueError("WorldState.dynamic_offsets: must be (F + 1,) from 0 to len(dynamic)")
        if np.any(np.diff(self.dynamic_offsets) < 0):
            raise ValueError("WorldState.dynamic_offsets: must be non-decreasing")
        if f > 1 and np.any(np.diff(self.times) <= 0):
            raise ValueError("WorldState.times: must be strictly increasing")
        if self.camera_poses.shape != (f, 4, 4) or self.intrinsics.shape != (f, 3, 3):
            raise ValueError("WorldState: camera_poses must be (F, 4, 4) and intrinsics (F, 3, 3)")

    @property
    def frame_count(self) -> int:
        return len(self.times)

    @property
    def duration(self) -> float:
        """Seconds of source time covered: last frame time + one frame period."""
        return float(self.times[-1] - self.times[0] + 1.0 / self.fps)

    def dynamic_frame(self, frame: int) -> PointLayer:
        return self.dynamic.select(slice(int(self.dynamic_offsets[frame]), int(self.dynamic_offsets[frame + 1])))

    def frame_at(self, tau: float) -> tuple[int, int, float]:
        """World time tau (s) -> (frame a, frame b, blend weight of b in [0, 1]); clamps to the clip."""
        times = self.times
        if tau <= times[0]:
            return 0, 0, 0.0
        if tau >= times[-1]:
            last = len(times) - 1
            return last, last, 0.0
        b = int(np.searchsorted(times, tau, side="right"))
        a = b - 1
        return a, b, float((tau - times[a]) / (times[b] - times[a]))

    def bounds(self) -> np.ndarray:
        """(2, 3) min/max corner over all points (static and dynamic)."""
        pts = [p for p in (self.static.positions, self.dynamic.positions) if len(p)]
        if not pts:
            return np.zeros((2, 3))
        allp = np.concatenate(pts)
        return np.stack([allp.min(0), allp.max(0)]).astype(np.float64)
