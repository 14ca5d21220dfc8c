"""Video files in and out through PyAV: decoding with rotation, fps resampling and resizing; atomic writing.

numpy + av only (no torch): the client and the headless viewer use :class:`VideoWriter` too.

Reading picks, for each output time ``k / fps``, the decoded frame whose timestamp is nearest (so a 60 fps
phone clip becomes 30 fps by dropping frames, never by blending them), applies the container's display
rotation the way players do, and scales to a long side with even dimensions (encoders need them).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from gen_server.errors import InputError

DEFAULT_MAX_FPS = 30.0


@dataclass(frozen=True)
class VideoInfo:
    """What is known about a video before streaming it. ``width``/``height``/``fps``/``frame_count`` describe
    the frames the iterator yields (after rotation, resizing and resampling); ``source_*`` the file."""

    path: str
    width: int
    height: int
    fps: float
    frame_count: int  # estimate from the container duration; the iterator is the truth
    duration: float  # seconds
    rotation: int  # degrees counter-clockwise applied to decoded frames (0, 90, 180, 270)
    source_width: int
    source_height: int
    source_fps: float
    codec: str


def _even(x: float) -> int:
    return max(2, int(round(x / 2.0)) * 2)


def output_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled down (never up) so the long side is at most ``max_side``; even dimensions."""
    scale = 1.0 if not max_side else min(1.0, max_side / max(width, height))
    return _even(width * scale), _even(height * scale)


def _open_input(path: Path):
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a video file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes)")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable video (truncated or not a video file: {e})") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path}: has no video stream")
    return container


def _frame_time(frame, t_fallback: float) -> float:
    return float(frame.time) if frame.time is not None else t_fallback


def _decoded(container, stream, path: Path) -> Iterator:
    """Decoded frames; a decode error mid-file (truncation, corruption) becomes an InputError."""
    try:
        yield from container.decode(stream)
    except av.error.FFmpegError as e:
        raise InputError(f"{path}: video data is damaged or truncated ({e})") from None


def _declared_video_duration(stream) -> float | None:
    """The video stream's declared length in seconds (stream duration, or Matroska's per-track DURATION
    tag), None when the file does not say. Container duration is not used: audio may be longer."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tag = {k.lower(): v for k, v in (stream.metadata or {}).items()}.get("duration")
    if tag:
        try:
            h, m, sec = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(sec)
        except ValueError:
            return None
    return None


def _display_rotation(frame, stream) -> int:
    """Counter-clockwise degrees (0/90/180/270) to apply for display: the display matrix when present, else
    a legacy ``rotate`` tag (ffmpeg's old convention: clockwise degrees)."""
    degrees = float(getattr(frame, "rotation", 0) or 0)
    if degrees == 0:
        tags = {k.lower(): v for k, v in (stream.metadata or {}).items()}
        try:
            degrees = -float(tags.get("rotate", 0))
        except ValueError:
            degrees = 0.0
    return int(round(degrees / 90.0)) * 90 % 360


def _rotate(rgb: np.ndarray, rotation: int) -> np.ndarray:
    # Display-matrix rotation is counter-clockwise, as is np.rot90 for positive k.
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def read_video_frames(
    path: str | os.PathLike, fps: float | None = None, max_side: int | None = 960
) -> tuple[VideoInfo, "VideoFrames"]:
    """Open a video and return its :class:`VideoInfo` and an iterator of ``(time_s, rgb (H, W, 3) uint8)``.

    ``fps`` None: the source rate capped at 30. Output times are ``k / fps`` from the first frame (time 0);
    each takes the nearest decoded frame. Bad input raises :class:`InputError` naming the file (the first
    frame is decoded here, so an empty or undecodable file fails before iteration starts).
    """
    path = Path(path)
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = _decoded(container, stream, path)
        first = next(frames, None)
        if first is None:
            raise InputError(f"{path}: video stream has no frames")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        source_fps = float(rate) if rate else 24.0
        out_fps = float(fps) if fps is not None else min(source_fps, DEFAULT_MAX_FPS)
        if not (math.isfinite(out_fps) and out_fps > 0):
            raise InputError(f"{path}: invalid target fps {fps!r}")
        rotation = _display_rotation(first, stream)
        sw, sh = first.width, first.height
        dw, dh = (sh, sw) if rotation in (90, 270) else (sw, sh)  # displayed size
        out_w, out_h = output_size(dw, dh, max_side)
        dec_w, dec_h = (out_h, out_w) if rotation in (90, 270) else (out_w, out_h)
        declared = _declared_video_duration(stream)  # the video stream's own, for the truncation check
        if declared is not None:
            duration = declared
        elif container.duration is not None:
            duration = container.duration / 1e6
        else:
            duration = (stream.frames or 1) / source_fps
        n_est = stream.frames or max(1, int(round(duration * source_fps)))
        info = VideoInfo(
            path=str(path), width=out_w, height=out_h, fps=out_fps,
            frame_count=max(1, math.ceil((n_est - 0.5) / source_fps * out_fps - 1e-9)),
            duration=duration, rotation=rotation, source_width=sw, source_height=sh,
            source_fps=source_fps, codec=stream.codec_context.name,
        )
    except BaseException:
        container.close()
        raise

    def convert(frame) -> np.ndarray:
        rgb = frame.reformat(width=dec_w, height=dec_h, format="rgb24").to_ndarray()
        return _rotate(rgb, rotation)

    def iterate() -> Iterator[tuple[float, np.ndarray]]:
        t0 = _frame_time(first, 0.0)
        prev, prev_t = first, 0.0
        k = 0
        eps = 1e-6
        for i, frame in enumerate(frames, start=1):
            t = _frame_time(frame, t0 + i / source_fps) - t0
            # Emit every output time whose nearest frame is `prev` (strictly before the midpoint).
            while k / out_fps < 0.5 * (prev_t + t) - eps:
                yield k / out_fps, convert(prev)
                k += 1
            prev, prev_t = frame, t
        while k / out_fps < prev_t + 0.5 / source_fps - eps:
            yield k / out_fps, convert(prev)
            k += 1
        end = prev_t + 1.0 / source_fps
        if declared is not None and end < declared - max(2.0 / source_fps, 0.02 * declared):
            raise InputError(f"{path}: video data ends at {end:.3f} s but the file declares {declared:.3f} s "
                             f"(truncated?)")

    return info, VideoFrames(iterate(), container)


class VideoFrames:
    """Iterator of (time_s, rgb) that owns the open file: closed when exhausted, on close(), or in a with."""

    def __init__(self, frames: Iterator[tuple[float, np.ndarray]], container):
        self._frames, self._container = frames, container

    def __iter__(self) -> "VideoFrames":
        return self

    def __next__(self) -> tuple[float, np.ndarray]:
        if self._container is None:
            raise StopIteration
        try:
            return next(self._frames)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._container is not None:
            self._frames.close()
            self._container.close()
            self._container = None

    def __enter__(self) -> "VideoFrames":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


class VideoWriter:
    """Write RGB frames to a video file; the file appears (atomically renamed) only on a clean close.

    ``with VideoWriter("out.mp4", 24, 640, 360) as w: w.write(rgb)``. ``codec`` "h264" (libx264),
    "vp9", "mpeg4" or any PyAV encoder name; ``crf`` sets quality where the encoder has it.
    """

    _ENCODERS = {"h264": "libx264", "vp9": "libvpx-vp9", "av1": "libsvtav1"}

    def __init__(self, path: str | os.PathLike, fps: float, width: int, height: int,
                 codec: str = "h264", crf: int | None = 20, pix_fmt: str = "yuv420p"):
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(f"VideoWriter: width/height must be positive and even, got {width}x{height}")
        if not fps > 0:
            raise ValueError(f"VideoWriter: fps must be positive, got {fps}")
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.fps = Fraction(fps).limit_denominator(1001)
        self.codec = self._ENCODERS.get(codec, codec)
        self.crf, self.pix_fmt = crf, pix_fmt
        self.frames_written = 0
        self._tmp = self.path.with_name(f".{self.path.stem}.partial-{os.getpid()}{self.path.suffix}")
        self._container = None
        self._stream = None

    def __enter__(self) -> "VideoWriter":
        self.open()
        return self

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self._tmp), mode="w")
        options = {}
        if self.crf is not None and self.codec in ("libx264", "libx265", "libvpx-vp9", "libsvtav1"):
            options["crf"] = str(self.crf)
            if self.codec == "libvpx-vp9":
                options["b"] = "0"  # constant-quality mode
        stream = self._container.add_stream(self.codec, rate=self.fps, options=options)
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, self.pix_fmt
        if "crf" not in options:  # encoders without constant quality (mpeg4...): a generous bit rate
            stream.bit_rate = int(max(2e6, 1.0 * self.width * self.height * float(self.fps)))
        self._stream = stream

    def write(self, rgb: np.ndarray) -> None:
        """Append one frame, (height, width, 3) uint8 RGB."""
        rgb = np.asarray(rgb)
        if rgb.shape != (self.height, self.width, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"VideoWriter.write: expected ({self.height}, {self.width}, 3) uint8, "
                             f"got {rgb.shape} {rgb.dtype}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> Path:
        """Flush, close and rename into place. Returns the final path."""
        if self.frames_written == 0:
            raise ValueError(f"VideoWriter: no frames written to {self.path}")
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file."""
        if self._container is not None:
            try:
                self._container.close()
            except av.error.FFmpegError:
                pass
            self._container = None
        self._tmp.unlink(missing_ok=True)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
