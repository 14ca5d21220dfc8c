"""Decode a ``frame`` message into per-eye images: JPEG through simplejpeg, depth through the codec's
inverse-depth dequantisation. No torch (runs on the headset PC)."""

from __future__ import annotations

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
    ``timings``: the server's ns timings plus ``decode_ns`` and ``received_ns`` (client monotonic clock).
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


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="frame-decode")
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
    return DecodedFrame(
        seq=msg.seq, pose_seq=msg.pose_seq, tau=msg.tau, color=color, depth=depth,
        poses=[e.pose for e in msg.eyes], fovs=[e.fov for e in msg.eyes], timeline=dict(msg.timeline), timings=timings,
    )
