"""The synthetic demo scene: a textured room with static props and physically moving objects, rendered
exactly (colour, z-depth, moving-pixel mask) by numpy ray casting of analytic primitives.

It is the ground truth for the whole pipeline: the builder can be checked against exact depth and poses,
the renderer against exact views, calibration against the known floor (y = 0), up (+Y) and scale (metres).

Scene (OpenXR world, metres, +Y up, the camera looks towards -Z): a room 7 m wide (x in [-3.5, 3.5]) with
a back wall at z = -5, side walls, no ceiling (sky: depth 0); two boxes, two pillars, a sphere, a beam on
which hangs a pendulum (rod + bob, exact large-angle motion via Jacobi elliptic functions) and a ball
bouncing along x (ballistic flight, restitution 0.75, restarting every 4 s). Shading is Lambertian with a
fixed light, so a surface point has the same colour from every view (photometric matching works).
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import ellipj, ellipk

from gen_server import cameras
from gen_server.errors import InputError
from gen_server.world.frames import FrameSource, FrameSourceInfo, SourceFrame

FLOOR_Y = 0.0
UP = (0.0, 1.0, 0.0)
CAMERA_HEIGHT = 1.6
GRAVITY = 9.81
HORIZONTAL_FOV_DEG = 70.0
_LIGHT = np.array([0.35, 1.0, 0.45]) / np.linalg.norm([0.35, 1.0, 0.45])
_T_MIN = 1e-6


# ----------------------------------------------------------------------------------------------------
# Procedural texture: value noise on a hashed integer lattice (deterministic, seedable)
# ----------------------------------------------------------------------------------------------------
def _lattice(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, seed: int) -> np.ndarray:
    h = (ix.astype(np.uint64) * np.uint64(73856093)) ^ (iy.astype(np.uint64) * np.uint64(19349663))
    h ^= iz.astype(np.uint64) * np.uint64(83492791) ^ np.uint64((seed * 2654435761) & 0xFFFFFFFF)
    h ^= h >> np.uint64(13)
    h *= np.uint64(1274126177)
    h ^= h >> np.uint64(16)
    return (h & np.uint64(0xFFFF)).astype(np.float64) / 65535.0


def value_noise(points: np.ndarray, frequency: float, seed: int) -> np.ndarray:
    """Smooth noise in [0, 1] at points (N, 3), features of size ~1/frequency metres."""
    p = points * frequency
    base = np.floor(p)
    f = p - base
    f = f * f * (3.0 - 2.0 * f)  # smoothstep: continuous gradient across cells
    i = base.astype(np.int64)
    out = np.zeros(len(p))
    for dx in (0, 1):
        wx = f[:, 0] if dx else 1.0 - f[:, 0]
        for dy in (0, 1):
            wy = f[:, 1] if dy else 1.0 - f[:, 1]
            for dz in (0, 1):
                wz = f[:, 2] if dz else 1.0 - f[:, 2]
                out += wx * wy * wz * _lattice(i[:, 0] + dx, i[:, 1] + dy, i[:, 2] + dz, seed)
    return out


def _fbm(points: np.ndarray, seed: int) -> np.ndarray:
    """Two octaves of noise in [0, 1]: coarse blotches plus fine grain for matching."""
    return 0.6 * value_noise(points, 3.0, seed) + 0.4 * value_noise(points, 17.0, seed + 1)


# ----------------------------------------------------------------------------------------------------
# Primitives: intersect(origin (3,), dirs (N, 3)) -> t (N,) (inf = miss); shade(points) -> albedo, normal
# ----------------------------------------------------------------------------------------------------
@dataclass
class Primitive:
    name: str
    kind: str
    dynamic: bool
    texture: str
    color: tuple[float, float, float]

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def normal(self, p: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def local(self, p: np.ndarray) -> np.ndarray:
        """Texture coordinates that move with the object."""
        return p

    def bounding_sphere(self) -> tuple[np.ndarray, float] | None:
        """(centre, radius) enclosing the primitive, to skip rays that cannot hit it; None = unbounded test."""
        return None

    def describe(self) -> dict:
        raise NotImplementedError  # pragma: no cover


@dataclass
class Rect(Primitive):
    """Axis-aligned rectangle: coordinate ``axis`` == ``value``, the other two within ``lo``..``hi``."""

    axis: int = 1
    value: float = 0.0
    lo: tuple[float, float] = (0.0, 0.0)
    hi: tuple[float, float] = (0.0, 0.0)
    facing: float = 1.0  # sign of the normal along `axis`

    def intersect(self, o, d):
        a = self.axis
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (self.value - o[a]) / d[:, a]
        p = o + t[:, None] * d
        others = [i for i in range(3) if i != a]
        ok = (t > _T_MIN) & np.isfinite(t)
        for j, i in enumerate(others):
            ok &= (p[:, i] >= self.lo[j]) & (p[:, i] <= self.hi[j])
        return np.where(ok, t, np.inf)

    def normal(self, p):
        n = np.zeros_like(p)
        n[:, self.axis] = self.facing
        return n

    def describe(self):
        return {"name": self.name, "type": "rect", "axis": "xyz"[self.axis], "value": self.value,
                "lo": list(self.lo), "hi": list(self.hi)}


@dataclass
class Box(Primitive):
    """Axis-aligned box (slab test)."""

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    half: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def intersect(self, o, d):
        c, h = np.asarray(self.center), np.asarray(self.half)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / d
            t1 = (c - h - o) * inv
            t2 = (c + h - o) * inv
        t1 = np.nan_to_num(t1, nan=-np.inf)
        t2 = np.nan_to_num(t2, nan=np.inf)
        t_near = np.minimum(t1, t2).max(axis=1)
        t_far = np.maximum(t1, t2).min(axis=1)
        t = np.where(t_near > _T_MIN, t_near, t_far)  # inside the box: the exit
        return np.where((t_far >= t_near) & (t > _T_MIN), t, np.inf)

    def normal(self, p):
        q = (p - np.asarray(self.center)) / np.asarray(self.half)
        axis = np.abs(q).argmax(axis=1)
        n = np.zeros_like(p)
        n[np.arange(len(p)), axis] = np.sign(q[np.arange(len(p)), axis])
        return n

    def local(self, p):
        return p - np.asarray(self.center)

    def bounding_sphere(self):
        return np.asarray(self.center, np.float64), float(np.linalg.norm(self.half))

    def describe(self):
        return {"name": self.name, "type": "box", "center": list(self.center), "half_size": list(self.half)}


@dataclass
class Sphere(Primitive):
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    radius: float = 0.5

    def intersect(self, o, d):
        oc = o - np.asarray(self.center)
        a = np.einsum("ij,ij->i", d, d)
        b = d @ oc
        c = oc @ oc - self.radius**2
        disc = b * b - a * c
        sq = np.sqrt(np.maximum(disc, 0.0))
        t0, t1 = (-b - sq) / a, (-b + sq) / a
        t = np.where(t0 > _T_MIN, t0, t1)
        return np.where((disc >= 0) & (t > _T_MIN), t, np.inf)

    def normal(self, p):
        return (p - np.asarray(self.center)) / self.radius

    def local(self, p):
        return p - np.asarray(self.center)

    def bounding_sphere(self):
        return np.asarray(self.center, np.float64), float(self.radius)

    def describe(self):
        return {"name": self.name, "type": "sphere", "center": list(self.center), "radius": self.radius}


@dataclass
class Cylinder(Primitive):
    """Closed cylinder from ``a`` to ``b`` (any axis) with radius ``radius``: side plus two end discs."""

    a: tuple[float, float, float] = (0.0, 0.0, 0.0)
    b: tuple[float, float, float] = (0.0, 1.0, 0.0)
    radius: float = 0.1

    def _axis(self):
        a, b = np.asarray(self.a, np.float64), np.asarray(self.b, np.float64)
        length = np.linalg.norm(b - a)
        return a, b, (b - a) / length, length

    def intersect(self, o, d):
        a, b, u, length = self._axis()
        oa = o - a
        d_perp = d - (d @ u)[:, None] * u
        oa_perp = oa - (oa @ u) * u
        qa = np.einsum("ij,ij->i", d_perp, d_perp)
        qb = d_perp @ oa_perp
        qc = oa_perp @ oa_perp - self.radius**2
        disc = qb * qb - qa * qc
        sq = np.sqrt(np.maximum(disc, 0.0))
        best = np.full(len(d), np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            for t in ((-qb - sq) / qa, (-qb + sq) / qa):
                s = (oa @ u) + t * (d @ u)
                ok = (disc >= 0) & (qa > 1e-15) & (t > _T_MIN) & (s >= 0) & (s <= length)
                best = np.where(ok & (t < best), t, best)
            for centre in (a, b):
                t = ((centre - o) @ u) / (d @ u)
                p = o + t[:, None] * d
                ok = np.isfinite(t) & (t > _T_MIN) & (np.sum((p - centre) ** 2, axis=1) <= self.radius**2)
                best = np.where(ok & (t < best), t, best)
        return best

    def normal(self, p):
        a, b, u, length = self._axis()
        s = (p - a) @ u
        radial = (p - a) - s[:, None] * u
        rn = np.linalg.norm(radial, axis=1, keepdims=True)
        n = radial / np.maximum(rn, 1e-12)
        on_cap = (s < 1e-6) | (s > length - 1e-6)
        n[on_cap] = np.where((s[on_cap] > 0.5 * length)[:, None], u, -u)
        return n

    def local(self, p):
        return p - np.asarray(self.a)

    def bounding_sphere(self):
        a, b, _, length = self._axis()
        return 0.5 * (a + b), float(np.hypot(0.5 * length, self.radius))

    def describe(self):
        return {"name": self.name, "type": "cylinder", "a": list(self.a), "b": list(self.b), "radius": self.radius}


# ----------------------------------------------------------------------------------------------------
# Motion
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pendulum:
    """A rigid pendulum swinging in the x-y plane; exact (not small-angle) solution:
    theta(t) = 2 asin(k sn(K(k) - omega t; k)), k = sin(theta0 / 2), omega = sqrt(g / L)."""

    pivot: tuple[float, float, float] = (0.0, 2.5, -2.6)
    length: float = 1.5
    amplitude: float = 0.6  # radians, released from rest at t = 0
    bob_radius: float = 0.18
    rod_radius: float = 0.02

    def angle(self, t: float) -> float:
        k = np.sin(0.5 * self.amplitude)
        m = k * k
        omega = np.sqrt(GRAVITY / self.length)
        sn, _, _, _ = ellipj(ellipk(m) - omega * t, m)
        return float(2.0 * np.arcsin(k * sn))

    def period(self) -> float:
        k = np.sin(0.5 * self.amplitude)
        return float(4.0 * ellipk(k * k) / np.sqrt(GRAVITY / self.length))

    def bob_center(self, t: float) -> np.ndarray:
        th = self.angle(t)
        return np.asarray(self.pivot) + self.length * np.array([np.sin(th), -np.cos(th), 0.0])


@dataclass(frozen=True)
class BouncingBall:
    """Dropped from ``drop_height`` (bottom of the ball above the floor) while moving at ``vx`` along x;
    each bounce keeps ``restitution`` of the vertical speed; the throw repeats every ``cycle`` seconds."""

    start: tuple[float, float, float] = (-1.2, 0.0, -1.3)
    radius: float = 0.18
    drop_height: float = 1.2
    vx: float = 0.4
    restitution: float = 0.75
    cycle: float = 4.0

    def height(self, t: float) -> float:
        """Height of the ball's bottom above the floor at cycle time t (closed form per flight)."""
        t = t % self.cycle
        t_fall = np.sqrt(2.0 * self.drop_height / GRAVITY)
        if t < t_fall:
            return self.drop_height - 0.5 * GRAVITY * t * t
        t -= t_fall
        v = GRAVITY * t_fall * self.restitution  # launch speed of the first bounce
        while v > 1e-3:
            flight = 2.0 * v / GRAVITY
            if t < flight:
                return v * t - 0.5 * GRAVITY * t * t
            t -= flight
            v *= self.restitution
        return 0.0

    def rest_time(self) -> float:
        """Time from release until the bounces die out (geometric series of flight times)."""
        t_fall = np.sqrt(2.0 * self.drop_height / GRAVITY)
        first = 2.0 * GRAVITY * t_fall * self.restitution / GRAVITY
        return float(t_fall + first / (1.0 - self.restitution))

    def center(self, t: float) -> np.ndarray:
        tc = t % self.cycle
        x = self.start[0] + self.vx * min(tc, self.rest_time())
        return np.array([x, FLOOR_Y + self.radius + self.height(t), self.start[2]])


# ----------------------------------------------------------------------------------------------------
# The scene
# ----------------------------------------------------------------------------------------------------
def _static_primitives() -> list[Primitive]:
    room_x, back_z, front_z, wall_h = 3.5, -5.0, 4.0, 3.0
    return [
        Rect("floor", "rect", False, "checker", (0.62, 0.55, 0.45), axis=1, value=FLOOR_Y,
             lo=(-room_x, back_z), hi=(room_x, front_z), facing=1.0),
        Rect("back_wall", "rect", False, "brick", (0.70, 0.42, 0.32), axis=2, value=back_z,
             lo=(-room_x, FLOOR_Y), hi=(room_x, wall_h), facing=1.0),
        Rect("left_wall", "rect", False, "stripes", (0.45, 0.58, 0.70), axis=0, value=-room_x,
             lo=(FLOOR_Y, back_z), hi=(wall_h, front_z), facing=1.0),
        Rect("right_wall", "rect", False, "stripes", (0.55, 0.68, 0.48), axis=0, value=room_x,
             lo=(FLOOR_Y, back_z), hi=(wall_h, front_z), facing=-1.0),
        Box("box_left", "box", False, "grid", (0.80, 0.60, 0.20), center=(-1.6, 0.4, -2.2), half=(0.4, 0.4, 0.4)),
        Box("box_right", "box", False, "grid", (0.30, 0.45, 0.80), center=(1.7, 0.3, -1.2), half=(0.3, 0.3, 0.5)),
        Cylinder("pillar_left", "cylinder", False, "stripes", (0.75, 0.75, 0.70), a=(-2.4, 0.0, -3.6),
                 b=(-2.4, 2.8, -3.6), radius=0.25),
        Cylinder("pillar_right", "cylinder", False, "stripes", (0.65, 0.35, 0.55), a=(2.5, 0.0, -3.9),
                 b=(2.5, 2.8, -3.9), radius=0.2),
        Sphere("sphere", "sphere", False, "latlong", (0.35, 0.70, 0.55), center=(0.9, 0.35, -3.3), radius=0.35),
        Box("beam", "box", False, "grid", (0.40, 0.30, 0.25), center=(0.0, 2.55, -2.6), half=(0.9, 0.05, 0.08)),
    ]


class SyntheticScene:
    """A procedural dynamic room rendered exactly. Units metres/seconds, OpenXR world (+Y up)."""

    FLOOR_Y = FLOOR_Y
    UP = UP
    CAMERA_HEIGHT = CAMERA_HEIGHT

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self.static = _static_primitives()
        self.pendulum = Pendulum()
        self.ball = BouncingBall()

    # -- scene content --------------------------------------------------------------------------------
    def dynamic_primitives(self, t: float) -> list[Primitive]:
        bob = self.pendulum.bob_center(t)
        ball = self.ball.center(t)
        p = self.pendulum
        return [
            Cylinder("pendulum_rod", "cylinder", True, "plain", (0.85, 0.85, 0.88), a=tuple(p.pivot),
                     b=tuple(bob), radius=p.rod_radius),
            Sphere("pendulum_bob", "sphere", True, "latlong", (0.90, 0.25, 0.20), center=tuple(bob),
                   radius=p.bob_radius),
            Sphere("ball", "sphere", True, "latlong", (0.95, 0.85, 0.15), center=tuple(ball),
                   radius=self.ball.radius),
        ]

    def primitives(self, t: float) -> list[Primitive]:
        return self.static + self.dynamic_primitives(t)

    def describe(self) -> dict:
        """JSON-able description (scene.json): frame conventions, static objects, motion parameters."""
        return {
            "units": "metres, seconds",
            "world": "OpenXR: right-handed, +Y up, -Z forward",
            "floor_y": FLOOR_Y, "up": list(UP), "camera_height": CAMERA_HEIGHT, "gravity": GRAVITY,
            "seed": self.seed,
            "static_objects": [p.describe() for p in self.static],
            "dynamic_objects": [
                {"name": "pendulum", "type": "pendulum", "pivot": list(self.pendulum.pivot),
                 "length": self.pendulum.length, "amplitude_rad": self.pendulum.amplitude,
                 "period_s": self.pendulum.period(), "bob_radius": self.pendulum.bob_radius,
                 "rod_radius": self.pendulum.rod_radius, "plane": "x-y", "motion": "exact rigid pendulum"},
                {"name": "ball", "type": "bouncing_ball", "start": list(self.ball.start),
                 "radius": self.ball.radius, "drop_height": self.ball.drop_height, "vx": self.ball.vx,
                 "restitution": self.ball.restitution, "cycle_s": self.ball.cycle},
            ],
        }

    # -- camera ---------------------------------------------------------------------------------------
    @staticmethod
    def camera_path(t: float) -> np.ndarray:
        """world_from_camera (4, 4) at time t: eye height 1.6 m, walking 1.2 m sideways (+x) and 0.4 m forward
        over 3 s (then back: period 6 s) while looking at a point that sways, i.e. a gentle yaw.

        Convention: OpenXR pose (camera -Z forward, +Y up), world metres.
        """
        s = 0.5 * (1.0 - np.cos(np.pi * t / 3.0))  # 0 -> 1 over [0, 3] s, smooth at both ends
        eye = np.array([-0.6 + 1.2 * s, CAMERA_HEIGHT, 2.6 - 0.4 * s])
        target = np.array([0.25 * np.sin(0.8 * t), 1.0, -2.5])
        return cameras.look_at(eye, target, UP)

    @staticmethod
    def default_intrinsics(width: int, height: int) -> np.ndarray:
        """OpenCV K for a centred 70 degree horizontal field of view."""
        half_h = np.radians(HORIZONTAL_FOV_DEG) / 2.0
        vfov = 2.0 * np.arctan(np.tan(half_h) * height / width)
        return cameras.fov_to_intrinsics(cameras.Fov.symmetric(vfov, width / height), width, height)

    # -- rendering ------------------------------------------------------------------------------------
    def _albedo(self, prim: Primitive, p: np.ndarray) -> np.ndarray:
        q = prim.local(p)
        base = np.asarray(prim.color)[None, :]
        grain = _fbm(q + 17.0 * (zlib.crc32(prim.name.encode()) % 7), self.seed)[:, None]
        pattern = np.ones((len(p), 1))
        if prim.texture == "checker":  # 0.5 m floor tiles
            parity = (np.floor(q[:, 0] / 0.5) + np.floor(q[:, 2] / 0.5)) % 2
            pattern = np.where(parity[:, None] > 0, 0.55, 1.0)
        elif prim.texture == "brick":  # 0.5 x 0.25 m bricks, alternate rows offset, dark mortar
            row = np.floor(q[:, 1] / 0.25)
            u = q[:, 0] + 0.25 * (row % 2)
            mortar = (np.abs(q[:, 1] / 0.25 - np.round(q[:, 1] / 0.25)) < 0.08) | \
                     (np.abs(u / 0.5 - np.round(u / 0.5)) < 0.04)
            pattern = np.where(mortar[:, None], 0.45, 1.0)
        elif prim.texture == "stripes":  # bands around/along the object
            coord = q[:, 2] + q[:, 0] if prim.kind == "rect" else np.arctan2(q[:, 2], q[:, 0]) * 0.5
            pattern = np.where(((np.floor(coord / 0.3)) % 2)[:, None] > 0, 0.7, 1.0)
        elif prim.texture == "grid":  # 0.1 m grid lines
            near = np.abs(q / 0.1 - np.round(q / 0.1)) < 0.06
            pattern = np.where((near.sum(axis=1) >= 2)[:, None], 0.5, 1.0)
        elif prim.texture == "latlong":  # checker in latitude/longitude (shows rotation-free motion)
            r = np.linalg.norm(q, axis=1) + 1e-12
            lat = np.floor(np.arccos(np.clip(q[:, 1] / r, -1, 1)) / (np.pi / 6))
            lon = np.floor((np.arctan2(q[:, 2], q[:, 0]) + np.pi) / (np.pi / 6))
            pattern = np.where(((lat + lon) % 2)[:, None] > 0, 0.5, 1.0)
        return base * pattern * (0.7 + 0.6 * grain)

    def render(self, world_from_camera: np.ndarray, intrinsics: np.ndarray, width: int, height: int,
               t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact view at world time t: rgb (H, W, 3) uint8, z-depth (H, W) float32 metres (0 = sky),
        dynamic_mask (H, W) bool (pixel sees a moving object).

        Convention: OpenXR pose world_from_camera (4, 4), OpenCV intrinsics (3, 3), pixel centres at integer
        coordinates; one ray per pixel centre.
        """
        world_from_camera = np.asarray(world_from_camera, np.float64)
        intrinsics = np.asarray(intrinsics, np.float64)
        if world_from_camera.shape != (4, 4) or intrinsics.shape != (3, 3):
            raise ValueError(f"render: expected (4, 4) pose and (3, 3) intrinsics, got "
                             f"{world_from_camera.shape}, {intrinsics.shape}")
        u, v = cameras.pixel_grid(width, height)
        k = intrinsics
        # Rays with OpenCV camera z = 1, so the ray parameter t at a hit *is* the z-depth.
        d_cv = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
        world_from_cv = cameras.invert_rigid(cameras.cv_camera_from_world(world_from_camera))
        d = d_cv @ world_from_cv[:3, :3].T
        o = world_from_cv[:3, 3]

        prims = self.primitives(t)
        best_t = np.full(len(d), np.inf)
        best_id = np.full(len(d), -1)
        dd = np.einsum("ij,ij->i", d, d)
        for i, prim in enumerate(prims):
            rays = _rays_near(o, d, dd, prim.bounding_sphere())
            ti = prim.intersect(o, d if rays is None else d[rays])
            if rays is None:
                closer = ti < best_t
                best_t[closer], best_id[closer] = ti[closer], i
            else:
                closer = ti < best_t[rays]
                best_t[rays[closer]], best_id[rays[closer]] = ti[closer], i

        color = np.zeros((len(d), 3))
        color[best_id < 0] = (0.62, 0.75, 0.92)  # sky
        for i, prim in enumerate(prims):
            sel = np.nonzero(best_id == i)[0]
            if len(sel) == 0:
                continue
            p = o + best_t[sel, None] * d[sel]
            shade = 0.35 + 0.65 * np.clip(prim.normal(p) @ _LIGHT, 0.0, 1.0)
            color[sel] = self._albedo(prim, p) * shade[:, None]
        rgb = np.clip(color * 255.0 + 0.5, 0, 255).astype(np.uint8).reshape(height, width, 3)
        depth = np.where(np.isfinite(best_t), best_t, 0.0).astype(np.float32).reshape(height, width)
        dynamic_ids = [i for i, p in enumerate(prims) if p.dynamic]
        mask = np.isin(best_id, dynamic_ids).reshape(height, width)
        return rgb, depth, mask


def _rays_near(o: np.ndarray, d: np.ndarray, dd: np.ndarray, sphere) -> np.ndarray | None:
    """Indices of rays that pass within a bounding sphere (a conservative pre-test), None = all rays."""
    if sphere is None:
        return None
    centre, radius = sphere
    oc = o - centre
    b = d @ oc
    return np.nonzero(b * b - dd * (oc @ oc - (radius * 1.001) ** 2) >= 0)[0]


class SyntheticSource(FrameSource):
    """The synthetic scene as a FrameSource (exact depth and poses), for building worlds without files."""

    def __init__(self, width: int = 320, height: int = 180, seconds: float = 3.0, fps: float = 24.0, seed: int = 0):
        self.scene = SyntheticScene(seed)
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.count = max(1, int(round(seconds * fps)))
        self.intrinsics = SyntheticScene.default_intrinsics(width, height)
        self.info = FrameSourceInfo(path=f"synthetic:seed={seed}", kind="synthetic", fps=self.fps,
                                    frame_count=self.count, width=self.width, height=self.height,
                                    has_depth=True, has_poses=True, extra={"scene": self.scene.describe()})

    def __iter__(self) -> Iterator[SourceFrame]:
        for i in range(self.count):
            t = i / self.fps
            pose = self.scene.camera_path(t)
            rgb, depth, _ = self.scene.render(pose, self.intrinsics, self.width, self.height, t)
            yield SourceFrame(index=i, time=t, rgb=rgb, intrinsics=self.intrinsics.copy(),
                              world_from_camera=pose, depth=depth)


# ----------------------------------------------------------------------------------------------------
# Dataset writer
# ----------------------------------------------------------------------------------------------------
DEPTH_UNIT_SCALE = 0.001  # 16-bit depth PNG units: millimetres


def write_synthetic_dataset(out_dir: str | os.PathLike, width: int = 640, height: int = 360,
                            seconds: float = 3.0, fps: float = 24, seed: int = 0, overwrite: bool = False,
                            progress: Callable[[int, int], None] | None = None) -> Path:
    """Render the scene along :meth:`SyntheticScene.camera_path` into ``out_dir`` (written to a temporary
    sibling directory and renamed at the end): video.mp4, images/*.png, depth/*.png (uint16 mm),
    masks/*.png (255 = moving object), transforms.json (nerfstudio, + "time", "dynamic_mask_path", "fps")
    and scene.json. ``progress(done, total)`` is called after each frame. Returns ``out_dir``.
    """
    from PIL import Image

    from gen_server.video_io import VideoWriter
    from gen_server.world.transforms_json import nerfstudio_from_intrinsics

    out = Path(out_dir)
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise InputError(f"{out}: width and height must be positive and even (video), got {width}x{height}")
    if not (seconds > 0 and fps > 0):
        raise InputError(f"{out}: seconds and fps must be positive, got {seconds}, {fps}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise InputError(f"{out}: already exists and is not empty (pass overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("images", "depth", "masks"):
        (tmp / sub).mkdir(parents=True)

    scene = SyntheticScene(seed)
    k = SyntheticScene.default_intrinsics(width, height)
    n = max(1, int(round(seconds * fps)))
    frames = []
    try:
        with VideoWriter(tmp / "video.mp4", fps, width, height, codec="h264", crf=16) as video:
            for i in range(n):
                t = i / fps
                pose = scene.camera_path(t)
                rgb, depth, mask = scene.render(pose, k, width, height, t)
                name = f"frame_{i:05d}.png"
                Image.fromarray(rgb).save(tmp / "images" / name)
                depth_mm = np.clip(np.round(depth / DEPTH_UNIT_SCALE), 0, 65535).astype(np.uint16)
                Image.fromarray(depth_mm).save(tmp / "depth" / name)
                Image.fromarray(mask.astype(np.uint8) * 255).save(tmp / "masks" / name)
                video.write(rgb)
                frames.append({"file_path": f"images/{name}", "depth_file_path": f"depth/{name}",
                               "dynamic_mask_path": f"masks/{name}", "time": t,
                               "transform_matrix": pose.tolist()})
                if progress is not None:
                    progress(i + 1, n)
        transforms = {"camera_model": "PINHOLE", **nerfstudio_from_intrinsics(k), "w": width, "h": height,
                      "fps": float(fps), "depth_unit_scale_factor": DEPTH_UNIT_SCALE,
                      "world_convention": "OpenXR (+Y up, -Z forward); transform_matrix camera-to-world, "
                                          "OpenGL camera axes", "frames": frames}
        (tmp / "transforms.json").write_text(json.dumps(transforms, indent=1))
        description = scene.describe() | {"fps": float(fps), "seconds": n / fps, "frame_count": n,
                                          "width": width, "height": height,
                                          "horizontal_fov_deg": HORIZONTAL_FOV_DEG}
        (tmp / "scene.json").write_text(json.dumps(description, indent=1))
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
