"""Slow, obviously-correct numpy reprojection: where source pixels must land in the current eye.

The OpenGL path (reprojection.py) is compared against these functions in tests.
"""

from __future__ import annotations

import numpy as np

from gen_server import cameras
from gen_server.cameras import Fov


def reproject_pixels(pix: np.ndarray, depth: np.ndarray, src_pose: np.ndarray, src_fov: Fov,
                     src_size: tuple[int, int], dst_pose: np.ndarray, dst_fov: Fov,
                     dst_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Source pixels (N, 2) with z-depth (N,) metres -> destination pixels (N, 2) and z-depth (N,).

    Convention: OpenCV pixel coordinates (centres at integers, y down) in both images; OpenXR poses
    world_from_eye in one shared space; sizes are (width, height).
    """
    pix = np.asarray(pix, np.float64).reshape(-1, 2)
    depth = np.asarray(depth, np.float64).reshape(-1)
    if len(pix) != len(depth):
        raise ValueError(f"reproject_pixels: {len(pix)} pixels but {len(depth)} depths")
    k_src = cameras.fov_to_intrinsics(src_fov, *src_size)
    cam_cv = np.stack([(pix[:, 0] - k_src[0, 2]) / k_src[0, 0] * depth,
                       (pix[:, 1] - k_src[1, 2]) / k_src[1, 1] * depth, depth], -1)
    world_from_cv = cameras.invert_rigid(cameras.cv_camera_from_world(src_pose))
    world = cam_cv @ world_from_cv[:3, :3].T + world_from_cv[:3, 3]
    return cameras.project_points(world, dst_pose, cameras.fov_to_intrinsics(dst_fov, *dst_size))


def reproject_pixels_at_infinity(pix: np.ndarray, src_pose: np.ndarray, src_fov: Fov, src_size: tuple[int, int],
                                 dst_pose: np.ndarray, dst_fov: Fov, dst_size: tuple[int, int]) -> np.ndarray:
    """Rotation-only reprojection (scene at infinity): source pixels (N, 2) -> destination pixels (N, 2).

    Convention: as :func:`reproject_pixels`; only the rotations of the poses matter.
    """
    src_rot, dst_rot = np.eye(4), np.eye(4)
    src_rot[:3, :3] = np.asarray(src_pose)[:3, :3]
    dst_rot[:3, :3] = np.asarray(dst_pose)[:3, :3]
    uv, _ = reproject_pixels(pix, np.ones(len(np.reshape(pix, (-1, 2)))), src_rot, src_fov, src_size,
                             dst_rot, dst_fov, dst_size)
    return uv


def reproject_image(rgb: np.ndarray, depth: np.ndarray, src_pose: np.ndarray, src_fov: Fov,
                    dst_pose: np.ndarray, dst_fov: Fov, dst_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Forward-splat every source pixel to its nearest destination pixel with a z-buffer.

    Returns (image (H, W, 3) uint8, covered (H, W) bool); uncovered pixels are 0. Holes are expected
    where the source has no sample; compare only covered pixels.
    """
    h, w = depth.shape
    u, v = cameras.pixel_grid(w, h)
    uv, z = reproject_pixels(np.stack([u.ravel(), v.ravel()], -1), depth.ravel(), src_pose, src_fov, (w, h),
                             dst_pose, dst_fov, dst_size)
    dw, dh = dst_size
    x, y = np.round(uv[:, 0]).astype(np.int64), np.round(uv[:, 1]).astype(np.int64)
    ok = (z > 0) & (x >= 0) & (x < dw) & (y >= 0) & (y < dh)
    idx, z, src = (y * dw + x)[ok], z[ok], np.nonzero(ok)[0]
    # Nearest wins: write far-to-near so the last write per pixel is the nearest.
    order = np.argsort(-z, kind="stable")
    out = np.zeros((dh * dw, 3), np.uint8)
    covered = np.zeros(dh * dw, bool)
    out[idx[order]] = rgb.reshape(-1, 3)[src[order]]
    covered[idx] = True
    return out.reshape(dh, dw, 3), covered.reshape(dh, dw)
