"""Slow, obviously-correct point-splatting reference that the fast renderer is compared to.

One Python loop over points, one over the pixels of each footprint, float64 maths via cameras.py. Same
footprint rule as gen_server.render.splat: a camera-facing square of half-size radius*scale*f/z pixels,
clamped to [0.5, max_half_px], covering the pixel centres inside it at the point's depth; nearest depth wins,
ties go to the lower point index.
"""

from __future__ import annotations

import math

import numpy as np

from gen_server import cameras


def reference_splat(positions, colors, radii, world_from_camera, intrinsics, width, height, radius_scale=1.1, max_half_px=8.0, near=1e-3):
    """-> (colour (H, W, 3) uint8, depth (H, W) float64, winner (H, W) int, -1 where empty)."""
    uv, z = cameras.project_points(np.asarray(positions, np.float64), world_from_camera, intrinsics)
    fx, fy = intrinsics[0, 0], intrinsics[1, 1]
    depth = np.full((height, width), np.inf)
    winner = np.full((height, width), -1, np.int64)
    for i in range(len(z)):
        if not z[i] > near:
            continue
        rx = min(max(radii[i] * radius_scale / z[i] * fx, 0.5), max_half_px)
        ry = min(max(radii[i] * radius_scale / z[i] * fy, 0.5), max_half_px)
        for y in range(max(math.ceil(uv[i, 1] - ry), 0), min(math.floor(uv[i, 1] + ry), height - 1) + 1):
            for x in range(max(math.ceil(uv[i, 0] - rx), 0), min(math.floor(uv[i, 0] + rx), width - 1) + 1):
                if z[i] < depth[y, x] or (z[i] == depth[y, x] and i < winner[y, x]):
                    depth[y, x], winner[y, x] = z[i], i
    color = np.zeros((height, width, 3), np.uint8)
    color[winner >= 0] = np.asarray(colors)[winner[winner >= 0]]
    depth[winner < 0] = 0.0
    return color, depth, winner


def reference_render_at(world, radii_all, world_from_camera, intrinsics, width, height, tau, **kw):
    """Static + dynamic layer(s) at tau; a fractional tau cross-fades the two neighbouring frames pixel by
    pixel (a pixel only one frame covers takes that frame). ``radii_all``: radii of static then dynamic
    points, as the renderer stores them. -> (colour float64 (H, W, 3), depth (H, W), valid (H, W))."""
    ns = len(world.static)

    def one(frame):
        lo, hi = int(world.dynamic_offsets[frame]), int(world.dynamic_offsets[frame + 1])
        pos = np.concatenate([world.static.positions, world.dynamic.positions[lo:hi]])
        col = np.concatenate([world.static.colors, world.dynamic.colors[lo:hi]])
        rad = np.concatenate([radii_all[:ns], radii_all[ns + lo: ns + hi]])
        c, d, win = reference_splat(pos, col, rad, world_from_camera, intrinsics, width, height, **kw)
        return c.astype(np.float64), d, win >= 0

    a, b, w = world.frame_at(tau)
    ca, da, va = one(a)
    if b == a or w == 0.0:
        return ca, da, va
    cb, db, vb = one(b)
    wa, wb = va * (1 - w), vb * w
    tot = np.maximum(wa + wb, 1e-12)
    wa, wb = wa / tot, wb / tot
    return ca * wa[..., None] + cb * wb[..., None], da * wa + db * wb, va | vb
