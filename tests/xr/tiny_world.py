"""A small world for the client end-to-end tests: a room whose four walls have different colours (so the
head's yaw is visible in every image) with a checker floor, and a ball that moves with world time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gen_server.world.state import PointLayer, WorldState
from gen_server.world.store import save_world

WALL_COLOURS = {"front": (220, 60, 50), "left": (50, 180, 70), "right": (60, 90, 220), "back": (230, 200, 40)}


def _layer(points: np.ndarray, colours: np.ndarray, radius: float) -> PointLayer:
    n = len(points)
    return PointLayer(points.astype(np.float32), colours.astype(np.uint8), np.full(n, radius, np.float32),
                      np.ones(n, np.float32))


def room(half: float = 3.0, height: float = 3.0, spacing: float = 0.06) -> PointLayer:
    """Walls at x, z = +-half (OpenXR: front is -Z), floor y = 0; a darker band on each wall."""
    a = np.arange(-half, half + 1e-9, spacing)
    ys = np.arange(0.0, height + 1e-9, spacing)
    ga, gy = np.meshgrid(a, ys)
    ga, gy = ga.ravel(), gy.ravel()
    layers = []
    for name, pts in {
        "front": np.stack([ga, gy, np.full_like(ga, -half)], -1),
        "back": np.stack([ga, gy, np.full_like(ga, half)], -1),
        "left": np.stack([np.full_like(ga, -half), gy, ga], -1),
        "right": np.stack([np.full_like(ga, half), gy, ga], -1),
    }.items():
        col = np.tile(np.array(WALL_COLOURS[name], np.float64), (len(pts), 1))
        band = (np.floor(ga / 0.5) % 2 == 0)[:, None]  # vertical stripes: texture for reprojection
        layers.append(_layer(pts, np.where(band, col * 0.6, col), spacing * 0.75))
    gx, gz = np.meshgrid(a, a)
    floor = np.stack([gx.ravel(), np.zeros(gx.size), gz.ravel()], -1)
    checker = ((np.floor(gx.ravel() / 0.5) + np.floor(gz.ravel() / 0.5)) % 2)[:, None]
    layers.append(_layer(floor, np.where(checker > 0, 200, 90) * np.ones((1, 3)), spacing * 0.75))
    return PointLayer.concatenate(layers)


def ball(center: np.ndarray, radius: float = 0.3, n: int = 800) -> PointLayer:
    rng = np.random.default_rng(0)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return _layer(center + radius * d, np.tile([250, 250, 250], (n, 1)), 0.03)


def make_world(frames: int = 120, fps: float = 6.0) -> WorldState:
    dyn = [ball(np.array([-1.5 + 3.0 * f / max(frames - 1, 1), 1.5, -2.0])) for f in range(frames)]
    offsets = np.r_[0, np.cumsum([len(d) for d in dyn])].astype(np.int64)
    k = np.array([[200.0, 0, 160], [0, 200.0, 120], [0, 0, 1]])
    pose = np.eye(4)
    pose[1, 3] = 1.6
    return WorldState(static=room(), dynamic=PointLayer.concatenate(dyn), dynamic_offsets=offsets,
                      times=np.arange(frames) / fps, fps=fps, camera_poses=np.tile(pose, (frames, 1, 1)),
                      intrinsics=np.tile(k, (frames, 1, 1)), image_size=(320, 240), source={"kind": "xr-test-room"})


def save_tiny_world(out_dir: Path) -> Path:
    return save_world(make_world(), out_dir)
