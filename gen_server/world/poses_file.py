"""Camera poses for plain videos, from a file, interpolated to the video's frame times.

Two formats:

* TUM trajectory text: one pose per line ``t tx ty tz qx qy qz qw`` (seconds, metres, unit quaternion
  x y z w), ``#`` comments; each is ``world_from_camera`` with OpenXR axes (+Y up, camera -Z forward).
* JSON: a list of camera-to-world matrices (16 numbers row-major, or 4x4 nested lists), OpenXR/OpenGL camera
  axes, one per *source* video frame (times = index / source fps).

Between samples the position is interpolated linearly and the rotation by slerp; before the first and after
the last sample the end pose is held.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gen_server import cameras
from gen_server.errors import InputError
from gen_server.world.transforms_json import validated_pose


@dataclass
class PoseTrack:
    """Timed poses. Convention: ``poses`` (N, 4, 4) OpenXR world_from_camera, ``times`` (N,) seconds, increasing."""

    times: np.ndarray
    poses: np.ndarray
    path: str = ""

    def at(self, times) -> np.ndarray:
        """world_from_camera (M, 4, 4) at times (M,): linear position, slerped rotation, ends held."""
        times = np.atleast_1d(np.asarray(times, np.float64))
        if len(self.times) == 1:
            return np.repeat(self.poses[:1], len(times), axis=0)
        t = np.clip(times, self.times[0], self.times[-1])
        j = np.clip(np.searchsorted(self.times, t, side="right") - 1, 0, len(self.times) - 2)
        w = (t - self.times[j]) / (self.times[j + 1] - self.times[j])
        quats = cameras.matrix_to_quat(self.poses[:, :3, :3])
        out = np.repeat(np.eye(4)[None], len(t), axis=0)
        out[:, :3, :3] = cameras.quat_to_matrix(slerp(quats[j], quats[j + 1], w))
        pos = self.poses[:, :3, 3]
        out[:, :3, 3] = (1.0 - w)[:, None] * pos[j] + w[:, None] * pos[j + 1]
        return out


def slerp(q0: np.ndarray, q1: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Spherical interpolation of unit quaternions (M, 4) xyzw at weights (M,), shortest arc."""
    q0, q1 = np.asarray(q0, np.float64), np.asarray(q1, np.float64).copy()
    w = np.asarray(w, np.float64)[:, None]
    dot = np.sum(q0 * q1, axis=1, keepdims=True)
    q1 = np.where(dot < 0, -q1, q1)
    dot = np.abs(dot)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    sin = np.sin(theta)
    near = sin < 1e-6  # nearly equal rotations: lerp is exact to rounding
    a = np.where(near, 1.0 - w, np.sin((1.0 - w) * theta) / np.where(near, 1.0, sin))
    b = np.where(near, w, np.sin(w * theta) / np.where(near, 1.0, sin))
    q = a * q0 + b * q1
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _read_tum(path: Path, text: str) -> PoseTrack:
    times, poses = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            v = np.array([float(x) for x in line.replace(",", " ").split()])
        except ValueError:
            raise InputError(f"{path}: line {lineno}: not numbers (expected 't tx ty tz qx qy qz qw')") from None
        if v.shape != (8,):
            raise InputError(f"{path}: line {lineno}: expected 8 numbers 't tx ty tz qx qy qz qw', got {v.size}")
        if not np.isfinite(v).all():
            raise InputError(f"{path}: line {lineno}: non-finite value")
        norm = np.linalg.norm(v[4:])
        if abs(norm - 1.0) > 1e-2:
            raise InputError(f"{path}: line {lineno}: quaternion is not unit length (norm {norm:.4f})")
        times.append(v[0])
        poses.append(cameras.pose_to_matrix(v[1:4], v[4:] / norm))
    if not times:
        raise InputError(f"{path}: no poses (expected lines 't tx ty tz qx qy qz qw')")
    times = np.array(times)
    if np.any(np.diff(times) <= 0):
        bad = int(np.argmax(np.diff(times) <= 0)) + 1
        raise InputError(f"{path}: timestamps must increase (pose {bad} at t={times[bad]} is not after the previous)")
    return PoseTrack(times, np.stack(poses), str(path))


def _read_json(path: Path, text: str, fps: float | None) -> PoseTrack:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(data, list) or not data:
        raise InputError(f"{path}: expected a non-empty JSON list of 4x4 camera-to-world matrices")
    if fps is None or not fps > 0:
        raise InputError(f"{path}: a JSON pose list needs the video frame rate to place poses in time")
    poses = []
    for i, m in enumerate(data):
        try:
            arr = np.asarray(m, np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{path}: pose {i}: not a numeric matrix") from None
        if arr.shape == (16,):  # row-major flat
            arr = arr.reshape(4, 4)
        poses.append(validated_pose(arr, f"{path}: pose {i}", "matrix"))
    return PoseTrack(np.arange(len(poses)) / float(fps), np.stack(poses), str(path))


def read_poses_file(path: str | os.PathLike, fps: float | None = None) -> PoseTrack:
    """Read a TUM text or JSON matrix-list poses file (format by content: JSON starts with '[').
    ``fps``: the source video's frame rate, needed to time a JSON list (one pose per source frame)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read as text ({e})") from None
    if text.lstrip().startswith(("[", "{")):
        return _read_json(path, text, fps)
    return _read_tum(path, text)
