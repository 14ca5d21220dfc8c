"""Camera and pose geometry: the one module that converts between OpenXR and OpenCV conventions.

Conventions (DESIGN.md), decided once here:

* World, stage and eye/camera poses use the **OpenXR** convention: right-handed, +X right, +Y up,
  -Z forward. A pose is ``world_from_camera`` (4x4, float64): it maps camera-space points to the world.
  The OpenGL camera convention used by nerfstudio's ``transform_matrix`` is the same set of camera axes.
* Intrinsics and image-space maths use the **OpenCV** convention: x right, y down, +Z forward; pixel
  centres at integer coordinates (pixel (0, 0) covers [-0.5, 0.5]^2).
* Depth is z-depth along the camera's forward axis, in metres, positive in front of the camera.
* Quaternions are (x, y, z, w), unit length.
* FOV follows OpenXR ``XrFovf``: angle_left/right/up/down in radians, left and down normally negative.

Nothing outside this module flips axes: builders, renderers and the client call the functions below.
Every function is numpy-only (the client imports it without torch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Camera axes: OpenXR/OpenGL (x right, y up, z back) <-> OpenCV (x right, y down, z forward).
# The flip is its own inverse.
CV_FROM_XR_AXES = np.diag([1.0, -1.0, -1.0, 1.0])


def _check_shape(name: str, array: np.ndarray, tail: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(array)
    if array.shape[-len(tail):] != tail:
        raise ValueError(f"{name}: expected shape (..., {', '.join(map(str, tail))}), got {array.shape}")
    return array


# ----------------------------------------------------------------------------------------------------
# Rotations
# ----------------------------------------------------------------------------------------------------
def quat_to_matrix(quat_xyzw: np.ndarray) -> np.ndarray:
    """Unit quaternion(s) (..., 4) in (x, y, z, w) order -> rotation matrices (..., 3, 3).

    Convention: Hamilton product, active rotation; the quaternion is normalised first.
    """
    q = _check_shape("quat_xyzw", quat_xyzw, (4,)).astype(np.float64)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm < 1e-12):
        raise ValueError("quat_xyzw: zero-length quaternion")
    x, y, z, w = np.moveaxis(q / norm, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def matrix_to_quat(rotation: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) in (x, y, z, w) order, w >= 0."""
    r = _check_shape("rotation", rotation, (3, 3)).astype(np.float64)
    batch = r.shape[:-2]
    r = r.reshape(-1, 3, 3)
    out = np.empty((len(r), 4))
    for i, m in enumerate(r):
        trace = m[0, 0] + m[1, 1] + m[2, 2]
        if trace > 0:
            s = 2.0 * np.sqrt(trace + 1.0)
            out[i] = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
        elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
            s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
            out[i] = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
        elif m[1, 1] > m[2, 2]:
            s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
            out[i] = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
        else:
            s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
            out[i] = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    out /= np.linalg.norm(out, axis=-1, keepdims=True)
    out[out[:, 3] < 0] *= -1
    return out.reshape(*batch, 4)


def axis_angle_to_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation of ``angle`` radians about ``axis`` (3,), right-hand rule -> (3, 3)."""
    axis = np.asarray(axis, np.float64)
    axis = axis / np.linalg.norm(axis)
    half = 0.5 * angle
    return quat_to_matrix(np.concatenate([axis * np.sin(half), [np.cos(half)]]))


def yaw_pitch_to_matrix(yaw: float, pitch: float = 0.0) -> np.ndarray:
    """OpenXR rotation ``Ry(yaw) @ Rx(pitch)``: yaw > 0 turns left (towards -X), pitch > 0 looks up.

    Convention: OpenXR world (+Y up, -Z forward); radians.
    """
    return axis_angle_to_matrix([0, 1, 0], yaw) @ axis_angle_to_matrix([1, 0, 0], pitch)


# ----------------------------------------------------------------------------------------------------
# Poses
# ----------------------------------------------------------------------------------------------------
def pose_to_matrix(position: np.ndarray, quat_xyzw: np.ndarray) -> np.ndarray:
    """OpenXR pose (position (..., 3) metres, orientation (..., 4) xyzw) -> (..., 4, 4) parent_from_child."""
    position = _check_shape("position", position, (3,)).astype(np.float64)
    rot = quat_to_matrix(quat_xyzw)
    out = np.zeros(rot.shape[:-2] + (4, 4))
    out[..., :3, :3] = rot
    out[..., :3, 3] = position
    out[..., 3, 3] = 1.0
    return out


def matrix_to_pose(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 4, 4) rigid transform -> (position (..., 3), quaternion (..., 4) xyzw)."""
    matrix = _check_shape("matrix", matrix, (4, 4))
    return matrix[..., :3, 3].astype(np.float64), matrix_to_quat(matrix[..., :3, :3])


def invert_rigid(matrix: np.ndarray) -> np.ndarray:
    """Inverse of rigid (or uniformly scaled rigid) transforms (..., 4, 4)."""
    matrix = _check_shape("matrix", matrix, (4, 4)).astype(np.float64)
    return np.linalg.inv(matrix)


def look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """world_from_camera (4, 4) for a camera at ``eye`` whose -Z axis points at ``target``.

    Convention: OpenXR camera axes (+Y up, -Z forward), world metres.
    """
    eye, target, up = (np.asarray(v, np.float64) for v in (eye, target, up))
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("look_at: view direction is parallel to up")
    right /= np.linalg.norm(right)
    true_up = np.cross(back, right)
    out = np.eye(4)
    out[:3, 0], out[:3, 1], out[:3, 2], out[:3, 3] = right, true_up, back, eye
    return out


# ----------------------------------------------------------------------------------------------------
# The OpenXR <-> OpenCV conversion
# ----------------------------------------------------------------------------------------------------
def cv_camera_from_world(world_from_camera: np.ndarray) -> np.ndarray:
    """OpenXR pose world_from_camera (..., 4, 4) -> OpenCV extrinsics camera_from_world (..., 4, 4).

    The result maps world points into OpenCV camera coordinates (x right, y down, +z forward), so that
    ``K @ (E @ X)[:3]`` projects them.
    """
    return CV_FROM_XR_AXES @ invert_rigid(world_from_camera)


def world_from_cv_camera(cv_camera_from_world_: np.ndarray) -> np.ndarray:
    """OpenCV extrinsics camera_from_world (..., 4, 4) -> OpenXR pose world_from_camera (..., 4, 4).

    Inverse of :func:`cv_camera_from_world`; the world frame is left as it is.
    """
    return invert_rigid(CV_FROM_XR_AXES @ _check_shape("extrinsics", cv_camera_from_world_, (4, 4)))


def xr_world_from_cv_world_pose(cv_world_from_cv_camera: np.ndarray) -> np.ndarray:
    """A camera-to-world pose where *both* world and camera use OpenCV axes (y down, z forward), as
    InSpatio-World / DA3 write them -> OpenXR world_from_camera with an OpenXR world (y up, -z forward).

    The OpenCV world is mapped to OpenXR by the same axis flip as cameras, so a camera at the OpenCV
    world origin looking down +z_cv ends up at the OpenXR origin looking down -z.
    """
    m = _check_shape("pose", cv_world_from_cv_camera, (4, 4)).astype(np.float64)
    return CV_FROM_XR_AXES @ m @ CV_FROM_XR_AXES


def xr_points_from_cv_points(points_cv: np.ndarray) -> np.ndarray:
    """Points (..., 3) in an OpenCV-axes frame -> the same points in the matching OpenXR-axes frame."""
    points_cv = _check_shape("points_cv", points_cv, (3,))
    return points_cv * np.array([1.0, -1.0, -1.0], dtype=points_cv.dtype)


# ----------------------------------------------------------------------------------------------------
# Intrinsics and FOV
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fov:
    """OpenXR XrFovf: radians; left/down are normally negative, right/up positive."""

    angle_left: float
    angle_right: float
    angle_up: float
    angle_down: float

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.angle_left, self.angle_right, self.angle_up, self.angle_down)

    @classmethod
    def symmetric(cls, vertical_fov: float, aspect: float) -> "Fov":
        """A centred FOV from a vertical full angle (radians) and width/height aspect."""
        half_v = 0.5 * vertical_fov
        half_h = np.arctan(np.tan(half_v) * aspect)
        return cls(-half_h, half_h, half_v, -half_v)


def fov_to_intrinsics(fov: Fov, width: int, height: int) -> np.ndarray:
    """OpenXR FOV + image size -> OpenCV intrinsics K (3, 3).

    Convention: the image spans tan(angle_left)..tan(angle_right) horizontally and tan(angle_up) (top
    row, y = -0.5) down to tan(angle_down) (bottom row, y = height - 0.5); pixel centres are integers.
    """
    tl, tr = np.tan(fov.angle_left), np.tan(fov.angle_right)
    tu, td = np.tan(fov.angle_up), np.tan(fov.angle_down)
    if not (tr > tl and tu > td):
        raise ValueError(f"fov: degenerate angles {fov}")
    fx = width / (tr - tl)
    fy = height / (tu - td)
    cx = -tl * fx - 0.5
    cy = tu * fy - 0.5
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def intrinsics_to_fov(intrinsics: np.ndarray, width: int, height: int) -> Fov:
    """OpenCV intrinsics K (3, 3) + image size -> OpenXR FOV. Inverse of :func:`fov_to_intrinsics`."""
    k = _check_shape("intrinsics", intrinsics, (3, 3))
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    return Fov(
        angle_left=float(np.arctan(-(cx + 0.5) / fx)),
        angle_right=float(np.arctan((width - 0.5 - cx) / fx)),
        angle_up=float(np.arctan((cy + 0.5) / fy)),
        angle_down=float(np.arctan(-(height - 0.5 - cy) / fy)),
    )


def scale_intrinsics(intrinsics: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K for an image resized by (sx, sy), keeping the pixel-centre convention."""
    k = np.array(_check_shape("intrinsics", intrinsics, (3, 3)), np.float64)
    k[..., 0, 0] *= sx
    k[..., 1, 1] *= sy
    k[..., 0, 2] = (k[..., 0, 2] + 0.5) * sx - 0.5
    k[..., 1, 2] = (k[..., 1, 2] + 0.5) * sy - 0.5
    return k


def gl_projection(fov: Fov, near: float, far: float) -> np.ndarray:
    """OpenGL clip-from-eye matrix (4, 4) for an OpenXR FOV (eye space: OpenXR axes, -Z forward).

    Convention: depth maps to NDC z in [-1, 1]; row-major numpy (transpose for glUniformMatrix4fv with
    transpose=False).
    """
    tl, tr = np.tan(fov.angle_left), np.tan(fov.angle_right)
    tu, td = np.tan(fov.angle_up), np.tan(fov.angle_down)
    w, h = tr - tl, tu - td
    return np.array(
        [
            [2 / w, 0, (tr + tl) / w, 0],
            [0, 2 / h, (tu + td) / h, 0],
            [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)],
            [0, 0, -1, 0],
        ]
    )


# ----------------------------------------------------------------------------------------------------
# Projection and unprojection
# ----------------------------------------------------------------------------------------------------
def project_points(
    points_world: np.ndarray, world_from_camera: np.ndarray, intrinsics: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """World points (N, 3) -> pixel coordinates (N, 2) (OpenCV, x right, y down) and z-depth (N,).

    Convention: ``world_from_camera`` is an OpenXR pose; depth > 0 in front of the camera.
    """
    points_world = _check_shape("points_world", points_world, (3,))
    extr = cv_camera_from_world(world_from_camera)
    cam = points_world @ extr[:3, :3].T + extr[:3, 3]
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (cam @ np.asarray(intrinsics, np.float64).T)[:, :2] / z[:, None]
    return uv, z


def pixel_grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer pixel-centre coordinates (u, v), each (H, W) float64."""
    return np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))


def unproject_depth(depth: np.ndarray, intrinsics: np.ndarray, world_from_camera: np.ndarray) -> np.ndarray:
    """z-depth image (H, W) metres -> world points (H, W, 3) (OpenXR world).

    Convention: OpenCV pixels and intrinsics, OpenXR pose. Invalid depth (<= 0, NaN) gives NaN points.
    """
    depth = np.asarray(depth, np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth: expected (H, W), got {depth.shape}")
    h, w = depth.shape
    u, v = pixel_grid(w, h)
    k = np.asarray(intrinsics, np.float64)
    x = (u - k[0, 2]) / k[0, 0] * depth
    y = (v - k[1, 2]) / k[1, 1] * depth
    cam_cv = np.stack([x, y, depth], -1)
    cam_cv[~(depth > 0)] = np.nan
    world_from_cv = invert_rigid(cv_camera_from_world(world_from_camera))
    return cam_cv @ world_from_cv[:3, :3].T + world_from_cv[:3, 3]


def eye_poses(world_from_head: np.ndarray, ipd: float) -> tuple[np.ndarray, np.ndarray]:
    """World-from-head pose (4, 4) -> (left, right) world-from-eye poses, eyes ±ipd/2 along head +X."""
    head = _check_shape("world_from_head", world_from_head, (4, 4))
    left, right = np.eye(4), np.eye(4)
    left[0, 3], right[0, 3] = -0.5 * ipd, 0.5 * ipd
    return head @ left, head @ right
