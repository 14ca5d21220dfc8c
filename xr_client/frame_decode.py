"""Decode a ``frame`` message into per-eye images: JPEG through simplejpeg, H.264 through PyAV (one
stateful decoder per eye: :class:`FrameDecoder`), depth through the codec's inverse-depth
dequantisation. No torch (runs on the headset PC)."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import simplejpeg

from gen_server.cameras import Fov
from gen_server.codec import dequantize_inverse_depth, unpack_depth
from gen_server.protocol import Frame, Pose, ProtocolError


@dataclass
class DecodedFrame:
    """One stereo frame ready for reprojection.

    Convention: ``color[i]`` (H, W, 3) uint8 sRGB; ``depth[i]`` (Hd, Wd) float32 z-depth in stage metres
    along the eye's -Z axis (0 = no surface), usually a fraction of the colour size (scale the
    intrinsics from :func:`gen_server.cameras.fov_to_intrinsics` accordingly); ``poses[i]`` the
    stage_from_eye pose and ``fovs[i]`` the OpenXR FOV each eye was rendered with; ``tau`` world time.
    ``timings``: the server's ns timings plus ``decode_ns``, ``received_ns`` (client monotonic clock) and
    ``payload_bytes`` (colour + depth bytes on the wire).
    """

    seq: int
    pose_seq: int
    tau: float
    color: list[np.ndarray]
    depth: list[np.ndarray]
    poses: list[Pose]
    fovs: list[Fov]
    timeline: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def width(self) -> int:
        return self.color[0].shape[1]

    @property
    def height(self) -> int:
        return self.color[0].shape[0]


def decode_color(codec: str, data, width: int, height: int) -> np.ndarray:
    """One eye's colour payload -> (height, width, 3) uint8; ProtocolError if it does not match."""
    if codec == "raw":
        return np.frombuffer(data, np.uint8).reshape(height, width, 3)
    if codec == "h264":
        raise ProtocolError("frame: h264 colour needs the stream's FrameDecoder (it is stateful)")
    if codec == "jpeg":
        try:
            img = simplejpeg.decode_jpeg(bytes(data), colorspace="RGB", fastdct=True, fastupsample=True)
        except Exception as e:  # noqa: BLE001 - libjpeg errors come as several types
            raise ProtocolError(f"frame: undecodable JPEG ({e})") from None
        if img.shape != (height, width, 3):
            raise ProtocolError(f"frame: JPEG is {img.shape[1]}x{img.shape[0]}, declared {width}x{height}")
        return img
    raise ProtocolError(f"frame: unknown colour codec {codec!r}")


def decode_depth(codec: str, data, width: int, height: int, near: float, far: float) -> np.ndarray:
    """One eye's depth payload -> (height, width) float32 metres, 0 = no surface."""
    try:
        q = unpack_depth(data, codec, width, height)
    except (ValueError, Exception) as e:  # noqa: BLE001 - zlib.error and size mismatches alike
        raise ProtocolError(f"frame: bad depth payload ({e})") from None
    return dequantize_inverse_depth(q, near, far)


def _payload_bytes(msg: Frame) -> int:
    return sum(len(p) for p in (*msg.color, *msg.depth))


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        # Each frame's eyes (colour + depth) decode in parallel; several frames may be decoding at once.
        _POOL = ThreadPoolExecutor(max_workers=max(4, os.cpu_count() or 1), thread_name_prefix="frame-decode")
    return _POOL


def decode_frame(msg: Frame, received_ns: int | None = None) -> DecodedFrame:
    """A validated :class:`Frame` -> :class:`DecodedFrame`. The eyes' JPEG and depth payloads decode in
    parallel threads (libjpeg-turbo and zlib release the GIL)."""
    start = time.monotonic_ns()
    pool = _pool()
    color_jobs = [pool.submit(decode_color, msg.color_codec, c, msg.width, msg.height) for c in msg.color]
    depth_jobs = [pool.submit(decode_depth, msg.depth_codec, d, msg.depth_width, msg.depth_height, msg.depth_near,
                              msg.depth_far) for d in msg.depth]
    color = [j.result() for j in color_jobs]
    depth = [j.result() for j in depth_jobs]
    timings = dict(msg.timings)
    timings["decode_ns"] = time.monotonic_ns() - start
    timings["received_ns"] = received_ns if received_ns is not None else start
    timings["payload_bytes"] = _payload_bytes(msg)
    return DecodedFrame(
        seq=msg.seq, pose_seq=msg.pose_seq, tau=msg.tau, color=color, depth=depth,
        poses=[e.pose for e in msg.eyes], fovs=[e.fov for e in msg.eyes], timeline=dict(msg.timeline), timings=timings,
    )


class H264EyeDecoder:
    """One eye's H.264 stream (PyAV/FFmpeg). Frames must arrive in order; after a gap, only a keyframe
    can restart it (``FrameDecoder`` enforces that)."""

    def __init__(self):
        import av  # noqa: PLC0415 - only clients that asked for h264 need PyAV

        self._av = av
        self._ctx = av.CodecContext.create("h264", "r")

    def decode(self, data, width: int, height: int, want_image: bool = True) -> np.ndarray | None:
        try:
            frames = self._ctx.decode(self._av.Packet(bytes(data)))
        except self._av.FFmpegError as e:
            raise ProtocolError(f"frame: undecodable H.264 ({e})") from None
        if len(frames) != 1:
            raise ProtocolError(f"frame: H.264 access unit gave {len(frames)} pictures, expected 1")
        if (frames[0].width, frames[0].height) != (width, height):
            raise ProtocolError(f"frame: H.264 picture is {frames[0].width}x{frames[0].height}, declared {width}x{height}")
        return frames[0].to_ndarray(format="rgb24") if want_image else None


class FrameDecoder:
    """Stateful :func:`decode_frame` for a stream of frames: keeps the H.264 decoders and knows when the
    chain is broken (a frame lost on the way), in which case frames are skipped until a keyframe."""

    def __init__(self):
        self._h264: list[H264EyeDecoder] = []
        self._need_keyframe = True

    def chain_broken(self) -> None:
        """A frame was lost before decoding: wait for the next keyframe."""
        self._need_keyframe = True

    def decode(self, msg: Frame, received_ns: int | None = None, want_image: bool = True) -> DecodedFrame | None:
        """Decode ``msg``; None when it was skipped (waiting for a keyframe) or ``want_image`` is False
        (an h264 frame decoded only to keep the reference chain)."""
        if msg.color_codec != "h264":
            return decode_frame(msg, received_ns) if want_image else None
        if self._need_keyframe and not msg.keyframe:
            return None
        start = time.monotonic_ns()
        if len(self._h264) != len(msg.color) or msg.keyframe:
            self._h264 = [H264EyeDecoder() for _ in msg.color]  # a keyframe starts fresh streams
        try:
            color = [d.decode(c, msg.width, msg.height, want_image) for d, c in zip(self._h264, msg.color)]
        except ProtocolError:
            self._need_keyframe = True
            raise
        self._need_keyframe = False
        if not want_image:
            return None
        pool = _pool()
        depth_jobs = [pool.submit(decode_depth, msg.depth_codec, d, msg.depth_width, msg.depth_height, msg.depth_near,
                                  msg.depth_far) for d in msg.depth]
        timings = dict(msg.timings)
        depth = [j.result() for j in depth_jobs]
        timings["decode_ns"] = time.monotonic_ns() - start
        timings["received_ns"] = received_ns if received_ns is not None else start
        timings["payload_bytes"] = _payload_bytes(msg)
        return DecodedFrame(seq=msg.seq, pose_seq=msg.pose_seq, tau=msg.tau, color=color, depth=depth,
                            poses=[e.pose for e in msg.eyes], fovs=[e.fov for e in msg.eyes],
                            timeline=dict(msg.timeline), timings=timings)
