"""A plain video file as a :class:`FrameSource`: frames without depth (a depth model fills it in later).

Poses come from a poses file (see :mod:`gen_server.world.poses_file`) when given; otherwise the camera is
taken as static at the world origin (``info.has_poses`` False). Intrinsics, when unknown, assume a 60 degree
horizontal field of view centred on the image; ``info.extra`` says which of these assumptions were made.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from gen_server import cameras
from gen_server.video_io import read_video_frames
from gen_server.world.frames import FrameSource, FrameSourceInfo, SourceFrame
from gen_server.world.poses_file import PoseTrack, read_poses_file

ASSUMED_HORIZONTAL_FOV_DEG = 60.0


def assumed_intrinsics(width: int, height: int, horizontal_fov_deg: float = ASSUMED_HORIZONTAL_FOV_DEG) -> np.ndarray:
    """OpenCV K (3, 3) for a centred pinhole with the given horizontal FOV and square pixels."""
    half_h = np.radians(horizontal_fov_deg) / 2.0
    half_v = np.arctan(np.tan(half_h) * height / width)
    return cameras.fov_to_intrinsics(cameras.Fov(-half_h, half_h, half_v, -half_v), width, height)


class VideoSource(FrameSource):
    """Frames of a video file (PyAV) with depth None.

    ``fps``/``max_side``: as :func:`gen_server.video_io.read_video_frames`. ``poses``: a poses file path or a
    :class:`PoseTrack` (times in seconds from the first frame). ``intrinsics``: OpenCV K (3, 3) for the video's
    displayed (rotated) source size; scaled to the output size here.
    """

    def __init__(self, path: str | os.PathLike, fps: float | None = None, max_side: int | None = 960,
                 poses: str | os.PathLike | PoseTrack | None = None, intrinsics: np.ndarray | None = None):
        self.path, self.fps, self.max_side = str(path), fps, max_side
        video, frames = read_video_frames(path, fps=fps, max_side=max_side)
        frames.close()  # opened for the header and the first frame only
        self.video = video
        extra: dict = {"rotation": video.rotation, "source_fps": video.source_fps, "codec": video.codec,
                       "source_size": [video.source_width, video.source_height]}
        if intrinsics is None:
            self.intrinsics = assumed_intrinsics(video.width, video.height)
            extra["intrinsics"] = f"assumed: {ASSUMED_HORIZONTAL_FOV_DEG:g} degree horizontal FOV, centred"
        else:
            k = np.asarray(intrinsics, np.float64)
            if k.shape != (3, 3):
                raise ValueError(f"intrinsics: expected (3, 3), got {k.shape}")
            sw, sh = (video.source_height, video.source_width) if video.rotation in (90, 270) else \
                (video.source_width, video.source_height)
            self.intrinsics = cameras.scale_intrinsics(k, video.width / sw, video.height / sh)
            extra["intrinsics"] = "given"
        if poses is None:
            self.track = None
            extra["poses"] = "none: static camera at the origin (identity pose)"
        else:
            self.track = poses if isinstance(poses, PoseTrack) else read_poses_file(poses, fps=video.source_fps)
            extra["poses"] = f"from {self.track.path or 'a pose track'} ({len(self.track.times)} samples)"
        self.info = FrameSourceInfo(path=self.path, kind="video", fps=video.fps, frame_count=video.frame_count,
                                    width=video.width, height=video.height, has_depth=False,
                                    has_poses=self.track is not None, extra=extra)

    def __iter__(self) -> Iterator[SourceFrame]:
        _, frames = read_video_frames(self.path, fps=self.fps, max_side=self.max_side)
        with frames:
            for i, (t, rgb) in enumerate(frames):
                pose = np.eye(4) if self.track is None else self.track.at([t])[0]
                yield SourceFrame(index=i, time=t, rgb=rgb, intrinsics=self.intrinsics.copy(),
                                  world_from_camera=pose, depth=None)
