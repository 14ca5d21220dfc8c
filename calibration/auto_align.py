"""Automatic alignment of a world to the user's stage: floor, origin, yaw and metric scale.

The floor is a RANSAC plane through the static layer (up prior: the source cameras' mean +Y), put at
stage y = 0; the stage origin sits on the floor under where the source camera stood at tau = 0, and stage
-Z points where it looked (horizontally). The scale comes from, in order of preference: the user's
value, a known distance between two picked world points, the source camera's true height above the
floor, else 1 (the depth model is taken as metric).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibration.alignment import WorldFromStage, heading_of
from calibration.floor import FloorConfig, FloorPlane, fit_floor, up_prior
from calibration.record import Calibration


ASSUMED_EYE_HEIGHT = 1.6  # metres; only when a world has no points to find its floor in


@dataclass(frozen=True)
class AutoAlignConfig:
    """``camera_height``: the source camera's true height above the floor at tau = 0 (metres);
    ``known_distance``: ((x, y, z), (x, y, z), metres) two world points and their true distance;
    ``scale``: the user's own value (world units per metre); ``floor``: RANSAC settings."""

    camera_height: float | None = None
    known_distance: tuple | None = None
    scale: float | None = None
    floor: FloorConfig = FloorConfig()


def scale_from_camera_height(measured_height: float, true_height: float) -> float:
    """World units per metre given the camera's height above the floor in world units and in metres."""
    if not (measured_height > 0 and true_height > 0):
        raise ValueError(f"camera height: need positive heights, got measured {measured_height}, true {true_height}")
    return float(measured_height) / float(true_height)


def scale_from_points(a: np.ndarray, b: np.ndarray, true_distance: float) -> float:
    """World units per metre given two world points known to be ``true_distance`` metres apart."""
    d = float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))
    if not (d > 0 and true_distance > 0):
        raise ValueError(f"known distance: need distinct points and a positive distance, got {d}, {true_distance}")
    return d / float(true_distance)


def _floor_points(world) -> np.ndarray:
    """Static points; a world without a static layer falls back to its first dynamic frame."""
    pts = world.static.positions
    return pts if len(pts) else world.dynamic_frame(0).positions


def _find_floor(world, up: np.ndarray, cfg: AutoAlignConfig) -> tuple[FloorPlane, str]:
    """RANSAC floor; when there is none (no points, an outdoor clip without ground in view), a plane
    facing the up prior: through the lowest points (1st percentile of height), or with no points
    ASSUMED_EYE_HEIGHT metres (times the user's scale, if given) below the reference camera."""
    poses = np.asarray(world.camera_poses, np.float64)
    points = _floor_points(world).astype(np.float64)
    points = points[np.all(np.isfinite(points), axis=1)]
    try:
        floor = fit_floor(points, up, poses[:, :3, 3], cfg.floor)
        tilt = float(np.degrees(np.arccos(np.clip(floor.normal @ up, -1, 1))))
        return floor, f"RANSAC plane, {floor.inliers} inliers within {floor.inlier_threshold:.3g}, {tilt:.1f} deg from camera up"
    except ValueError as e:
        why = str(e)
    cam = poses[reference_frame(world), :3, 3]
    if len(points):
        offset = -float(np.percentile(points @ up, 1.0))
        how = "lowest points (1st percentile)"
    else:
        offset = -float(cam @ up) + ASSUMED_EYE_HEIGHT * (cfg.scale or 1.0)
        how = f"assumed {ASSUMED_EYE_HEIGHT} m below the camera"
    return FloorPlane(up, offset, 0, 0.0), f"fallback: {how}, facing camera up ({why})"


def reference_frame(world) -> int:
    """Index of the source frame shown at tau = 0."""
    return world.frame_at(0.0)[0]


def auto_calibration(world, config: AutoAlignConfig | None = None) -> Calibration:
    """Calibration for a WorldState from its own geometry (see the module docstring).

    Convention: world frame and units in, world_from_stage with the scale inside out.
    Raises ValueError when no floor can be found.
    """
    cfg = config or AutoAlignConfig()
    poses = np.asarray(world.camera_poses, np.float64)
    up = up_prior(poses)
    floor, floor_how = _find_floor(world, up, cfg)
    ref = reference_frame(world)
    camera = poses[ref]
    height = float(floor.height(camera[:3, 3]))
    origin = floor.project(camera[:3, 3])
    try:
        heading, yaw_how = heading_of(-camera[:3, 2], floor.normal), f"view direction of source frame {ref}"
    except ValueError:  # looking straight down: the top of the image is "forward"
        heading, yaw_how = heading_of(camera[:3, 1], floor.normal), f"image-up of source frame {ref} (camera looks down)"

    if cfg.scale is not None:
        scale, scale_how = float(cfg.scale), "user setting"
    elif cfg.known_distance is not None:
        a, b, metres = cfg.known_distance
        scale, scale_how = scale_from_points(a, b, metres), f"known distance {metres:g} m between two points"
    elif cfg.camera_height is not None:
        scale = scale_from_camera_height(height, cfg.camera_height)
        scale_how = f"camera height {cfg.camera_height:g} m (measured {height:.4g} world units)"
    else:
        depth = world.source.get("depth_source", "unknown") if isinstance(world.source, dict) else "unknown"
        scale, scale_how = 1.0, f"metric depth ({depth})"

    transform = WorldFromStage(scale=scale, heading=heading, yaw_offset=0.0, origin=tuple(origin),
                               up=tuple(floor.normal), floor_offset=0.0)
    sources = {
        "scale": scale_how,
        "floor": floor_how,
        "origin": f"source camera at tau=0 (frame {ref}) projected to the floor, {height:.4g} world units above it",
        "yaw": yaw_how,
        "floor_offset": "0 (floor at stage y = 0)",
    }
    return Calibration(transform=transform, sources=sources, note="auto")
