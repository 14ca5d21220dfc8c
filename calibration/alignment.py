"""The world <-> stage similarity transform and stereo at scale.

Convention (decided here, used by server and client):

* ``world_from_stage`` (4x4) maps stage points (the user's room: OpenXR stage space, metres, +Y up,
  floor at y = 0) to world points (the reconstruction's OpenXR world frame, in its own units):
  ``x_world = translation + scale * R @ x_stage``.
* ``scale`` = world units per stage metre and is INSIDE world_from_stage. For a metric world scale 1
  is true size. A larger scale means each real metre spans more of the world: the world looks smaller,
  the user is a giant. The server renders each eye at ``world_from_stage @ stage_from_eye``; with the
  scale inside, the eyes sit ``scale * ipd`` apart in the world, which is what makes a shrunk world
  look like a model on a table rather than a flat picture.
* ``R = level @ Ry(heading + yaw_offset)``: ``level`` is the smallest rotation taking stage +Y to the
  world's floor normal ``up``; ``heading`` puts stage -Z along the source camera's horizontal view
  direction; ``yaw_offset`` is the user's turn (radians, counter-clockwise seen from above, i.e. the
  stage forward turns left in the world and the world appears to turn right).
* ``origin`` is the world point on the floor under the stage origin; ``floor_offset`` (stage metres)
  is how high above the real floor the world's floor appears (positive raises the world).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from gen_server.cameras import axis_angle_to_matrix, eye_poses, yaw_pitch_to_matrix

STAGE_UP = np.array([0.0, 1.0, 0.0])


def _unit(v, name: str) -> np.ndarray:
    v = np.asarray(v, np.float64).reshape(3)
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"{name}: must be a finite non-zero 3-vector, got {v}")
    return v / n


def level_rotation(up: np.ndarray) -> np.ndarray:
    """Smallest rotation (3, 3) taking stage +Y to the unit world direction ``up``.

    Convention: OpenXR axes; rotation about the axis +Y x up.
    """
    up = _unit(up, "up")
    axis = np.cross(STAGE_UP, up)
    s, c = float(np.linalg.norm(axis)), float(np.dot(STAGE_UP, up))
    if s < 1e-12:
        if c > 0:
            return np.eye(3)
        return axis_angle_to_matrix([1.0, 0.0, 0.0], np.pi)  # upside down: flip about +X
    return axis_angle_to_matrix(axis / s, float(np.arctan2(s, c)))


def heading_of(direction: np.ndarray, up: np.ndarray) -> float:
    """Yaw (radians) such that ``level(up) @ Ry(yaw) @ (0, 0, -1)`` is ``direction``'s component
    perpendicular to ``up``. Convention: OpenXR (-Z forward), yaw > 0 turns left as in
    ``gen_server.cameras.yaw_pitch_to_matrix``. Raises ValueError if direction is parallel to up."""
    up = _unit(up, "up")
    d = np.asarray(direction, np.float64).reshape(3)
    horizontal = d - np.dot(d, up) * up
    if np.linalg.norm(horizontal) < 1e-9 * max(np.linalg.norm(d), 1e-300):
        raise ValueError("heading_of: direction is parallel to up")
    g = level_rotation(up).T @ horizontal
    return float(np.arctan2(-g[0], -g[2]))


@dataclass(frozen=True)
class WorldFromStage:
    """Similarity stage -> world from its parts (see the module docstring for the convention)."""

    scale: float = 1.0
    heading: float = 0.0
    yaw_offset: float = 0.0
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    up: tuple[float, float, float] = (0.0, 1.0, 0.0)
    floor_offset: float = 0.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"WorldFromStage.scale: must be finite and > 0, got {self.scale}")
        for name in ("heading", "yaw_offset", "floor_offset"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"WorldFromStage.{name}: must be finite")
        object.__setattr__(self, "up", tuple(float(v) for v in _unit(self.up, "WorldFromStage.up")))
        origin = np.asarray(self.origin, np.float64).reshape(3)
        if not np.all(np.isfinite(origin)):
            raise ValueError("WorldFromStage.origin: must be finite")
        object.__setattr__(self, "origin", tuple(float(v) for v in origin))

    @property
    def yaw(self) -> float:
        return self.heading + self.yaw_offset

    @property
    def rotation(self) -> np.ndarray:
        return level_rotation(np.array(self.up)) @ yaw_pitch_to_matrix(self.yaw)

    @property
    def translation(self) -> np.ndarray:
        """World point of the stage origin: ``floor_offset`` stage metres below the floor origin."""
        return np.array(self.origin) - self.scale * self.floor_offset * np.array(self.up)

    def matrix(self) -> np.ndarray:
        """4x4 world_from_stage. Convention: x_world = t + scale * R @ x_stage."""
        m = np.eye(4)
        m[:3, :3] = self.scale * self.rotation
        m[:3, 3] = self.translation
        return m

    def inverse_matrix(self) -> np.ndarray:
        """4x4 stage_from_world."""
        return invert_similarity(self.matrix())

    def with_matrix(self, world_from_stage: np.ndarray) -> "WorldFromStage":
        """The parts (same ``up``, ``heading`` and ``floor_offset``) that give ``world_from_stage``,
        which must be a similarity whose rotation keeps stage +Y on ``up`` (a yaw about the floor normal)."""
        rigid, scale = split_similarity(world_from_stage)
        up = np.array(self.up)
        if not np.allclose(rigid[:3, 1], up, atol=1e-6):
            raise ValueError("WorldFromStage.with_matrix: rotation tilts the floor (only yaw may change)")
        yaw = heading_of(-rigid[:3, 2], up)
        yaw_offset = float(np.angle(np.exp(1j * (yaw - self.heading))))
        origin = rigid[:3, 3] + scale * self.floor_offset * up
        return replace(self, scale=scale, yaw_offset=yaw_offset, origin=tuple(origin))


def invert_similarity(m: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 similarity ``[s R | t]``. Convention: any frames; s > 0."""
    m = np.asarray(m, np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"invert_similarity: expected (4, 4), got {m.shape}")
    rigid, s = split_similarity(m)
    out = np.eye(4)
    out[:3, :3] = rigid[:3, :3].T / s
    out[:3, 3] = -out[:3, :3] @ m[:3, 3]
    return out


def split_similarity(m: np.ndarray) -> tuple[np.ndarray, float]:
    """4x4 similarity (..., 4, 4) -> (rigid part with unit rotation, scale). Convention: scale = cbrt(det)."""
    m = np.asarray(m, np.float64)
    if m.shape[-2:] != (4, 4):
        raise ValueError(f"split_similarity: expected (..., 4, 4), got {m.shape}")
    scale = np.cbrt(np.linalg.det(m[..., :3, :3]))
    if np.any(~(scale > 0)):
        raise ValueError("split_similarity: not a proper similarity (det <= 0)")
    rigid = m.copy()
    rigid[..., :3, :3] = m[..., :3, :3] / np.asarray(scale)[..., None, None]
    return rigid, float(scale) if np.ndim(scale) == 0 else scale


def apply_to_points(world_from_stage: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Stage points (..., 3) -> world points (..., 3). Convention: x_world = M[:3,:3] x + M[:3,3]."""
    p = np.asarray(points, np.float64)
    if p.shape[-1] != 3:
        raise ValueError(f"apply_to_points: expected (..., 3), got {p.shape}")
    m = np.asarray(world_from_stage, np.float64)
    return p @ m[:3, :3].T + m[:3, 3]


def eye_separation_in_world(ipd: float, scale: float) -> float:
    """World distance between the eyes. Convention: scale = world units per stage metre."""
    if not (ipd >= 0 and scale > 0):
        raise ValueError(f"eye_separation_in_world: need ipd >= 0 and scale > 0, got {ipd}, {scale}")
    return float(ipd) * float(scale)


def world_eye_poses(world_from_stage: np.ndarray, stage_from_head: np.ndarray, ipd: float
                    ) -> tuple[np.ndarray, np.ndarray, float]:
    """(left, right) RIGID world_from_eye poses for rendering, and the scale (world units per metre).

    Convention: OpenXR poses; eyes ±ipd/2 along the head's +X in stage metres, so ``scale * ipd`` apart in
    the world. Depth rendered in world units divides by ``scale`` to give stage metres.
    """
    left, right = eye_poses(np.asarray(stage_from_head, np.float64), ipd)
    rl, scale = split_similarity(world_from_stage @ left)
    rr, _ = split_similarity(world_from_stage @ right)
    return rl, rr, scale
