"""The one record every input reader yields and the fusion consumes: a source frame.

Readers (video, transforms.json, InSpatio-World step-2 folders, the synthetic scene) all produce
:class:`SourceFrame` in the project conventions, so fusion never sees a file format.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np


@dataclass
class SourceFrame:
    """One frame of source footage.

    Convention: ``rgb`` (H, W, 3) uint8; ``depth`` (H, W) float32 z-depth in metres (> 0 valid, 0 where
    unknown) or None when the input has none yet; ``intrinsics`` (3, 3) OpenCV; ``world_from_camera``
    (4, 4) OpenXR pose; ``time`` seconds of source time.
    """

    index: int
    time: float
    rgb: np.ndarray
    intrinsics: np.ndarray
    world_from_camera: np.ndarray
    depth: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.rgb.shape[1], self.rgb.shape[0]


@dataclass
class FrameSourceInfo:
    """What a reader knows before streaming: enough for progress bars and the manifest."""

    path: str
    kind: str  # "video" | "transforms_json" | "inspatio_step2" | "synthetic"
    fps: float
    frame_count: int
    width: int
    height: int
    has_depth: bool
    has_poses: bool
    extra: dict = field(default_factory=dict)


class FrameSource:
    """A reader: ``info`` up front, then frames streamed one by one (never all in memory)."""

    info: FrameSourceInfo

    def __iter__(self) -> Iterator[SourceFrame]:  # pragma: no cover - interface
        raise NotImplementedError
