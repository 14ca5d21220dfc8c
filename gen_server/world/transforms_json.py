"""nerfstudio ``transforms.json`` datasets: frames + intrinsics + camera-to-world poses (+ depth, time).

The file's ``transform_matrix`` is camera-to-world with OpenGL camera axes, which are the OpenXR axes this
project uses, so it is taken as ``world_from_camera`` unchanged (the world frame is the file's).
nerfstudio puts pixel centres at +0.5 (its rays go through ``pixel + 0.5``), OpenCV at integers: the two
helpers below are the only place that half pixel is added or removed.
"""

from __future__ import annotations

import numpy as np

NERFSTUDIO_PIXEL_CENTRE = 0.5  # nerfstudio/COLMAP: the first pixel's centre is at 0.5


def intrinsics_from_nerfstudio(fl_x: float, fl_y: float, cx: float, cy: float) -> np.ndarray:
    """nerfstudio fl_x, fl_y, cx, cy -> OpenCV K (3, 3). Convention: OpenCV pixel centres at integers."""
    return np.array([[fl_x, 0.0, cx - NERFSTUDIO_PIXEL_CENTRE],
                     [0.0, fl_y, cy - NERFSTUDIO_PIXEL_CENTRE],
                     [0.0, 0.0, 1.0]])


def nerfstudio_from_intrinsics(intrinsics: np.ndarray) -> dict[str, float]:
    """OpenCV K (3, 3) -> {"fl_x", "fl_y", "cx", "cy"} for transforms.json. Inverse of the above."""
    k = np.asarray(intrinsics, np.float64)
    if k.shape != (3, 3):
        raise ValueError(f"intrinsics: expected (3, 3), got {k.shape}")
    return {"fl_x": float(k[0, 0]), "fl_y": float(k[1, 1]),
            "cx": float(k[0, 2] + NERFSTUDIO_PIXEL_CENTRE), "cy": float(k[1, 2] + NERFSTUDIO_PIXEL_CENTRE)}
