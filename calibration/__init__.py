"""Numpy-only calibration maths shared by server and client: alignment, clock sync, latency.

Modules: ``clock_sync`` (client <-> server clock), ``latency`` (pipeline percentiles, prediction
horizon), ``alignment`` (world_from_stage similarity, stereo at scale), ``floor`` (RANSAC floor),
``auto_align`` (floor/origin/yaw/scale from a world), ``record`` (a calibration and its provenance),
``adjust`` (grip gestures and settings), ``store`` (WORLD_DIR/calibration.json with history).
"""

from calibration.adjust import apply_grab, set_floor_offset, set_scale, set_yaw
from calibration.alignment import WorldFromStage, eye_separation_in_world, world_eye_poses
from calibration.auto_align import AutoAlignConfig, auto_calibration
from calibration.clock_sync import ClockSync, ClockSyncConfig
from calibration.latency import LatencyTracker, estimated_latency_s
from calibration.record import Calibration
from calibration.store import CalibrationFileError, load_calibration, load_or_auto, save_calibration

__all__ = [
    "AutoAlignConfig", "Calibration", "CalibrationFileError", "ClockSync", "ClockSyncConfig", "LatencyTracker",
    "WorldFromStage", "apply_grab", "auto_calibration", "estimated_latency_s", "eye_separation_in_world",
    "load_calibration", "load_or_auto", "save_calibration", "set_floor_offset", "set_scale", "set_yaw",
    "world_eye_poses",
]
