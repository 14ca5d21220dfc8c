"""Camera trajectory files for offline rendering: InSpatio-World's 3-line txt and nerfstudio camera_path.json.

Both load into a :class:`CameraPath`: one OpenXR pose + OpenCV intrinsics per output frame (and, for
nerfstudio, an optional normalised time per frame). Axis conversions go through ``gen_server.cameras``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gen_server import cameras
from gen_server.errors import InputError
from gen_server.world.state import WorldState


@dataclass
class CameraPath:
    """Convention: ``world_from_camera`` (N, 4, 4) OpenXR poses in the world's frame; ``intrinsics``
    (N, 3, 3) OpenCV for ``width`` x ``height``; ``times`` (N,) in [0, 1] over the clip, or None."""

    world_from_camera: np.ndarray
    intrinsics: np.ndarray
    width: int
    height: int
    times: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.world_from_camera)


# ----------------------------------------------------------------------------------------------------
# InSpatio-World txt
# ----------------------------------------------------------------------------------------------------
def read_inspatio_txt(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (pitch degrees, yaw degrees, displacement r) keyframe arrays; InputError names file and line."""
    path = Path(path)
    try:
        lines = [l for l in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read trajectory ({e})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) != 3:
        raise InputError(f"{path}: InSpatio trajectory needs exactly 3 lines (pitch, yaw, r keyframes), found {len(lines)}")
    rows = []
    for number, (line, what) in enumerate(zip(lines, ("pitch degrees", "yaw degrees", "displacement r")), 1):
        try:
            values = np.array([float(x) for x in line.split()], np.float64)
        except ValueError:
            raise InputError(f"{path}:{number}: {what}: expected numbers separated by spaces, got {line.strip()[:60]!r}") from None
        if len(values) == 0 or not np.isfinite(values).all():
            raise InputError(f"{path}:{number}: {what}: needs at least one finite number")
        rows.append(values)
    return rows[0], rows[1], rows[2]


def interpolate_keyframes(keys: np.ndarray, n: int) -> np.ndarray:
    """Keyframes spread evenly over ``n`` output frames -> (n,) values.

    Like InSpatio-World: a smoothing cubic spline (scipy's default smoothing) through more than 3
    keyframes, piecewise-linear otherwise.
    """
    keys = np.asarray(keys, np.float64)
    if len(keys) == 1:
        return np.full(n, keys[0])
    x, xs = np.linspace(0, 1, len(keys)), np.linspace(0, 1, n)
    if len(keys) <= 3:
        return np.interp(xs, x, keys)
    from scipy.interpolate import UnivariateSpline

    return UnivariateSpline(x, keys, k=3)(xs)


def inspatio_cv_poses(pitch_deg: np.ndarray, yaw_deg: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Per-frame pitch/yaw (degrees) and displacement r (metres) -> (N, 4, 4) camera-to-frame-0 poses with
    both frames in OpenCV axes (x right, y down, z forward).

    Convention: an orbit of radius r around (0, 0, r) in front of the frame-0 camera:
    t = [-r cos p sin y, -r sin p, r - r cos p cos y], R = Ry(yaw) Rx(pitch) with the tilt chosen so the
    camera keeps looking at the orbit centre (pitch > 0 raises the camera and tilts it down towards the
    centre; yaw > 0 moves it left and turns it right). As in InSpatio-World, a path whose pitch and yaw are
    zero in every frame is a pure dolly: t = [0, 0, r] (forward by r).
    """
    p, y, r = (np.radians(pitch_deg), np.radians(yaw_deg), np.asarray(r, np.float64))
    cp, sp, cy, sy = np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    n = len(p)
    ry = np.zeros((n, 3, 3))
    ry[:, 0, 0], ry[:, 0, 2], ry[:, 1, 1], ry[:, 2, 0], ry[:, 2, 2] = cy, sy, 1, -sy, cy
    rx = np.zeros((n, 3, 3))  # tilt about x that turns +z towards +y (down) for pitch > 0
    rx[:, 0, 0], rx[:, 1, 1], rx[:, 1, 2], rx[:, 2, 1], rx[:, 2, 2] = 1, cp, sp, -sp, cp
    out = np.repeat(np.eye(4)[None], n, 0)
    out[:, :3, :3] = ry @ rx
    out[:, :3, 3] = np.stack([-r * cp * sy, -r * sp, r - r * cp * cy], -1)
    if not np.any(p) and not np.any(y):
        out[:, :3, 3] = np.stack([np.zeros(n), np.zeros(n), r], -1)
    return out


def load_inspatio_txt(path: str | Path, world: WorldState, frames: int, width: int, height: int) -> CameraPath:
    """InSpatio txt -> CameraPath relative to the world's frame-0 camera, with its intrinsics scaled."""
    pitch, yaw, r = read_inspatio_txt(path)
    rel_cv = inspatio_cv_poses(*(interpolate_keyframes(k, frames) for k in (pitch, yaw, r)))
    rel_xr = np.stack([cameras.xr_world_from_cv_world_pose(m) for m in rel_cv])
    poses = world.camera_poses[0] @ rel_xr
    sw, sh = world.image_size
    k = cameras.scale_intrinsics(world.intrinsics[0], width / sw, height / sh)
    return CameraPath(poses, np.repeat(k[None], frames, 0), width, height)


# ----------------------------------------------------------------------------------------------------
# nerfstudio camera_path.json
# ----------------------------------------------------------------------------------------------------
def _positive_int(path: Path, data: dict, key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise InputError(f"{path}: '{key}' must be a positive integer, got {value!r}")
    return int(value)


def load_nerfstudio_json(path: str | Path, width: int | None = None, height: int | None = None) -> CameraPath:
    """nerfstudio camera_path.json -> CameraPath. ``camera_to_world`` is 16 floats, row-major, OpenGL
    camera axes (= OpenXR), in the world's frame; ``fov`` is the vertical FOV in degrees; optional
    ``time`` in [0, 1] over the clip. ``width``/``height`` override render_width/height."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read camera path ({e})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("camera_path"), list) or not data["camera_path"]:
        raise InputError(f"{path}: expected an object with a non-empty 'camera_path' list")
    w = width or _positive_int(path, data, "render_width")
    h = height or _positive_int(path, data, "render_height")
    poses, ks, times = [], [], []
    for i, entry in enumerate(data["camera_path"]):
        where = f"{path}: camera_path[{i}]"
        if not isinstance(entry, dict):
            raise InputError(f"{where}: expected an object")
        c2w = entry.get("camera_to_world")
        try:
            m = np.array(c2w, np.float64).reshape(4, 4) if isinstance(c2w, list) and len(c2w) == 16 else None
        except (TypeError, ValueError):
            m = None
        if m is None or not np.isfinite(m).all():
            raise InputError(f"{where}.camera_to_world: expected 16 finite numbers (row-major 4x4)")
        rot = m[:3, :3]
        scale = np.cbrt(np.linalg.det(rot))
        if not scale > 0 or not np.allclose(rot.T @ rot, np.eye(3) * scale**2, atol=1e-3 * max(1.0, scale**2)):
            raise InputError(f"{where}.camera_to_world: rotation part is not a rotation")
        m[:3, :3] = rot / scale
        fov = entry.get("fov")
        if isinstance(fov, bool) or not isinstance(fov, (int, float)) or not 0 < fov < 180:
            raise InputError(f"{where}.fov: expected vertical degrees in (0, 180), got {fov!r}")
        poses.append(m)
        ks.append(cameras.fov_to_intrinsics(cameras.Fov.symmetric(math.radians(fov), w / h), w, h))
        t = entry.get("time")
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1):
            raise InputError(f"{where}.time: expected a number in [0, 1], got {t!r}")
        times.append(t)
    has_time = [t is not None for t in times]
    if any(has_time) and not all(has_time):
        raise InputError(f"{path}: 'time' must be given for every camera_path entry or none")
    return CameraPath(np.stack(poses), np.stack(ks), w, h, np.array(times, np.float64) if all(has_time) else None)


def load_trajectory(path: str | Path, world: WorldState, frames: int, width: int | None = None, height: int | None = None) -> CameraPath:
    """Dispatch on the file: ``.json`` is a nerfstudio camera path (its own frame count), anything else
    an InSpatio txt interpolated over ``frames`` frames at the world's image size unless overridden."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: trajectory file not found")
    if path.suffix.lower() == ".json":
        return load_nerfstudio_json(path, width, height)
    sw, sh = world.image_size
    return load_inspatio_txt(path, world, frames, width or sw, height or sh)
