"""Shared pieces of the streaming-server tests: a pose-painting generator and small constructors."""

from __future__ import annotations

import numpy as np
import zmq

from gen_server import protocol as P
from gen_server.cameras import Fov
from gen_server.codec import CodecConfig
from gen_server.generators.base import Views
from gen_server.protocol import Pose
from gen_server.server import ServerConfig, StreamServer

WORLD_INFO = {"name": "painted", "duration": 4.0, "fps": 10.0, "frame_count": 40}
FOV = Fov.symmetric(1.2, 1.0)


def painted_color(world_from_eye: np.ndarray) -> np.ndarray:
    """The colour the painter uses for an eye at this world pose: its position, 100 levels per metre."""
    return np.clip(np.rint(128 + 100 * world_from_eye[:3, 3]), 0, 255).astype(np.uint8)


def painted_depth(tau: float) -> float:
    """The (world-metre) depth the painter uses at world time tau."""
    return 1.0 + tau


class PosePainter:
    """Test generator: every pixel shows the eye's world position as a colour, depth encodes tau."""

    def __init__(self):
        self.calls = []

    def render_views(self, world_from_eye, fovs, width, height, tau):
        self.calls.append((np.array(world_from_eye), list(fovs), width, height, tau))
        b = len(world_from_eye)
        color = np.empty((b, height, width, 3), np.uint8)
        for i in range(b):
            color[i] = painted_color(world_from_eye[i])
        depth = np.full((b, height, width), painted_depth(tau), np.float32)
        return Views(color, depth, np.ones((b, height, width), bool))


def make_server(generator=None, **overrides) -> StreamServer:
    config = ServerConfig(bind=overrides.pop("bind", "tcp://127.0.0.1:*"), fps=overrides.pop("fps", 60.0), status_line=False,
                          client_timeout_s=overrides.pop("client_timeout_s", 2.0),
                          codec=overrides.pop("codec", CodecConfig(jpeg_quality=95, depth_downscale=2)), **overrides)
    return StreamServer(generator or PosePainter(), WORLD_INFO, config)


def eyes_at(x: float, y: float = 1.6, z: float = 0.0, ipd: float = 0.064) -> tuple[Pose, tuple[Pose, Pose]]:
    """Head at (x, y, z) looking down -Z; eyes +/- ipd/2 along +X (stage space)."""
    head = Pose((x, y, z))
    return head, (Pose((x - ipd / 2, y, z)), Pose((x + ipd / 2, y, z)))


def raw_dealer(address: str) -> zmq.Socket:
    """A bare DEALER on ``address`` (no handshake): for sending hand-made or malformed messages."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    return sock


def recv_msg(sock: zmq.Socket, timeout_ms: int = 3000) -> P.Message:
    assert sock.poll(timeout_ms), "no reply from the server"
    return P.decode(sock.recv_multipart())
