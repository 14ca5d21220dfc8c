"""The floor: a RANSAC plane through the static points, constrained by an up-direction prior.

Candidate planes from random point triples must face within ``max_tilt_deg`` of the prior's up and lie
below the source cameras (which rules out ceilings and most table tops of a walk-through); the one with
most inliers wins and is refined by least squares (SVD) on its inliers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FloorConfig:
    """``inlier_fraction``: inlier distance as a fraction of the scene's size (median point distance from
    the cameras), so it works in any world units. ``max_points``: subsample for speed."""

    iterations: int = 400
    inlier_fraction: float = 0.01
    max_tilt_deg: float = 30.0
    min_inliers: int = 50
    max_points: int = 200_000
    refine_rounds: int = 4
    seed: int = 0


@dataclass(frozen=True)
class FloorPlane:
    """Plane ``dot(normal, x) + offset = 0``; ``normal`` is unit and points up (towards the cameras).

    Convention: world frame and units; signed height of a point above the floor = dot(normal, x) + offset.
    """

    normal: np.ndarray
    offset: float
    inliers: int
    inlier_threshold: float

    def height(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, np.float64) @ self.normal + self.offset

    def project(self, points: np.ndarray) -> np.ndarray:
        p = np.asarray(points, np.float64)
        return p - self.height(p)[..., None] * self.normal


def up_prior(world_from_camera: np.ndarray) -> np.ndarray:
    """Mean of the cameras' +Y axes in the world, unit (3,). Convention: OpenXR poses (F, 4, 4): people
    hold cameras roughly level, so the average camera up is close to the world's up."""
    poses = np.asarray(world_from_camera, np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise ValueError(f"up_prior: expected (F, 4, 4) poses, got {poses.shape}")
    mean = poses[:, :3, 1].mean(0)
    n = np.linalg.norm(mean)
    if n < 1e-9:
        raise ValueError("up_prior: camera up axes cancel out")
    return mean / n


def _plane_through(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, 3, 3) point triples -> (unit normals (K, 3) or NaN if degenerate, offsets (K,))."""
    n = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = n / norm
    return n, -(n * p[:, 0]).sum(1)


def _refit(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares plane (normal, offset) through (M, 3) points: smallest singular vector."""
    centre = points.mean(0)
    _, _, vt = np.linalg.svd(points - centre, full_matrices=False)
    n = vt[2]
    return n, -float(n @ centre)


def fit_floor(points: np.ndarray, up: np.ndarray, camera_positions: np.ndarray,
              config: FloorConfig | None = None) -> FloorPlane:
    """RANSAC floor plane through ``points`` (N, 3) facing ``up`` (3,), below all ``camera_positions`` (F, 3).

    Convention: world frame and units; the returned normal points to the cameras' side.
    Raises ValueError when no plane with enough inliers exists.
    """
    cfg = config or FloorConfig()
    pts = np.asarray(points, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"fit_floor: expected (N, 3) points, got {pts.shape}")
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    cams = np.asarray(camera_positions, np.float64).reshape(-1, 3)
    up = np.asarray(up, np.float64) / np.linalg.norm(up)
    if len(pts) < max(3, cfg.min_inliers):
        raise ValueError(f"fit_floor: only {len(pts)} points")
    rng = np.random.default_rng(cfg.seed)
    if len(pts) > cfg.max_points:
        pts = pts[rng.choice(len(pts), cfg.max_points, replace=False)]
    extent = float(np.median(np.linalg.norm(pts - cams.mean(0), axis=1)))
    threshold = cfg.inlier_fraction * extent

    # All candidates at once: (iterations, 3) triples -> planes, oriented up, filtered by the prior.
    normals, offsets = _plane_through(pts[rng.integers(0, len(pts), (cfg.iterations, 3))])
    flip = (normals @ up) < 0
    normals[flip], offsets[flip] = -normals[flip], -offsets[flip]
    cos_tilt = normals @ up
    cam_height = (cams @ normals.T + offsets).min(0)  # lowest camera above each plane
    ok = np.isfinite(cos_tilt) & (cos_tilt >= np.cos(np.radians(cfg.max_tilt_deg))) & (cam_height > threshold)
    if not ok.any():
        raise ValueError("fit_floor: no candidate plane faces the up prior below the cameras")
    normals, offsets = normals[ok], offsets[ok]
    counts = np.array([(np.abs(pts @ n + d) <= threshold).sum() for n, d in zip(normals, offsets)])
    best = int(np.argmax(counts))
    n, d = normals[best], float(offsets[best])
    band = threshold
    for _ in range(cfg.refine_rounds):
        resid = np.abs(pts @ n + d)
        inl = resid <= band
        if inl.sum() < 3:
            break
        n, d = _refit(pts[inl])
        if n @ up < 0:
            n, d = -n, -d
        # Narrow the band to the floor's own spread (3 robust sigmas) so that the feet of walls and
        # objects standing on it stop pulling the fit; never wider than the RANSAC threshold.
        spread = 3.0 * 1.4826 * float(np.median(np.abs(pts[inl] @ n + d)))
        band = float(np.clip(spread, 0.05 * threshold, threshold))
    count = int((np.abs(pts @ n + d) <= threshold).sum())  # reported against the RANSAC threshold
    if count < cfg.min_inliers:
        raise ValueError(f"fit_floor: best plane has only {count} inliers (need {cfg.min_inliers})")
    return FloorPlane(normal=n, offset=d, inliers=count, inlier_threshold=threshold)
