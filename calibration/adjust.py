"""Pure edits of a calibration: the client's grip gestures and the ``timewalk calibrate`` settings."""

from __future__ import annotations

import math

import numpy as np

from calibration.alignment import invert_similarity
from calibration.record import Calibration
from gen_server.cameras import yaw_pitch_to_matrix


def grab_matrix(delta_translation, delta_yaw: float, scale_factor: float, pivot) -> np.ndarray:
    """stage_from_stage (4, 4) of a grab: scale by ``scale_factor`` and turn by ``delta_yaw`` (radians,
    counter-clockwise seen from above) about the vertical line through ``pivot``, then move by
    ``delta_translation``. Convention: OpenXR stage metres; applied to the world as the user sees it."""
    t = np.asarray(delta_translation, np.float64).reshape(3)
    p = np.asarray(pivot, np.float64).reshape(3)
    if not (np.isfinite(scale_factor) and scale_factor > 0) or not np.isfinite(delta_yaw):
        raise ValueError(f"grab: need a finite yaw and a positive scale factor, got {delta_yaw}, {scale_factor}")
    g = np.eye(4)
    g[:3, :3] = scale_factor * yaw_pitch_to_matrix(delta_yaw)
    g[:3, 3] = p + t - g[:3, :3] @ p
    return g


def apply_grab(calibration: Calibration, delta_translation, delta_yaw: float, scale_factor: float,
               pivot=(0.0, 0.0, 0.0)) -> Calibration:
    """New calibration after a grip gesture (pure). The world as seen in the stage moves by
    ``delta_translation`` metres, turns by ``delta_yaw`` and grows by ``scale_factor`` about ``pivot``:
    new world_from_stage = old @ inverse(grab_matrix(...)). Floor tilt is kept (only yaw turns)."""
    g = grab_matrix(delta_translation, delta_yaw, scale_factor, pivot)
    new = calibration.world_from_stage @ invert_similarity(g)
    transform = calibration.transform.with_matrix(new)
    sources = dict(calibration.sources)
    sources["origin"] = "grip gesture"  # any grab about a pivot off the origin moves it
    if delta_yaw != 0:
        sources["yaw"] = "grip gesture"
    if scale_factor != 1:
        sources["scale"] = "grip gesture"
    return Calibration(transform, sources, note="grab")


def set_scale(c: Calibration, scale: float) -> Calibration:
    """World units per stage metre (1 = true size for a metric world), keeping the stage origin's place."""
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be finite and > 0, got {scale}")
    return c.with_parts(f"scale {scale:g}", {"scale": "user setting"}, scale=float(scale))


def set_floor_offset(c: Calibration, metres: float) -> Calibration:
    """How high above the real floor the world's floor appears (stage metres)."""
    if not math.isfinite(metres):
        raise ValueError("floor offset must be finite")
    return c.with_parts(f"floor offset {metres:g} m", {"floor_offset": "user setting"}, floor_offset=float(metres))


def set_yaw(c: Calibration, degrees: float) -> Calibration:
    """The user's turn on top of the source camera's heading (degrees, counter-clockwise from above)."""
    if not math.isfinite(degrees):
        raise ValueError("yaw must be finite")
    return c.with_parts(f"yaw {degrees:g} deg", {"yaw": "source camera heading + user turn"},
                        yaw_offset=math.radians(degrees))
