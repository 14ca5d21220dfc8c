"""Renderer benchmark: stereo pairs per second at arbitrary world time from a large random world.

    python -m gen_server.benchmarks.render_bench --device cuda --width 1440 --height 1600
    python -m gen_server.benchmarks.render_bench --device cpu --width 512 --height 512

The world is a room of surface points (walls, floor, ceiling, boxes) with footprint radii matching their
spacing, plus a moving dynamic blob per frame; each iteration renders both eyes of a head that wanders
around the room at a random fractional tau (so two dynamic frames are cross-faded) with hole filling.

Measured 2026-11-24 (2 M static + 300 k/frame dynamic, 4 frames, 16.0 B/point, 100 deg FOV):
one H100 80GB (torch 2.11+cu130, triton 3.6): fused Triton path (``--backend triton``, the CUDA default)
519 pairs/s (1.93 ms) at 2x1440x1600, 779 at 2x512x512, ~0.5 ms of GPU time per pair (the rest is
kernel launches); the torch path before it: 120 pairs/s (flat expansion), 133 with a Triton expansion kernel.
2-core AMD EPYC CPU (torch 2.13, shared machine, medians of runs): shape-grouped expansion + bit-op
resolve/fill, at 2x512x512: 2 M static: 6.8-8.2 -> 13-18 (typically 17) pairs/s; 300 k static + 30 k
dynamic: median of 3 runs 18.1 -> 51.2 pairs/s (bit-identical images). Setting MALLOC_MMAP_THRESHOLD_=2000000000
MALLOC_TRIM_THRESHOLD_=4000000000 in the environment gave a further ~15% on CPU (fewer page faults on the
large per-frame temporaries).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from gen_server import cameras
from gen_server.benchmarks.machine import describe, machine_info
from gen_server.render.renderer import RenderConfig, Renderer
from gen_server.render.splat import SplatConfig
from gen_server.world.state import PointLayer, WorldState


def _surface_points(rng: np.random.Generator, n: int) -> tuple[np.ndarray, float]:
    """n points on the inside of a 10 x 4 x 10 m room plus 12 boxes; -> (points, mean spacing)."""
    faces = []  # (origin, u, v) rectangles
    lo, hi = np.array([-5.0, 0.0, -5.0]), np.array([5.0, 4.0, 5.0])
    for axis in range(3):
        for side in (lo, hi):
            o = lo.copy()
            o[axis] = side[axis]
            a, b = [i for i in range(3) if i != axis]
            u, v = np.zeros(3), np.zeros(3)
            u[a], v[b] = hi[a] - lo[a], hi[b] - lo[b]
            faces.append((o, u, v))
    for _ in range(12):
        c = rng.uniform([-4, 0, -4], [4, 0, 4])
        s = rng.uniform(0.3, 1.2, 3)
        for axis in range(3):
            a, b = [i for i in range(3) if i != axis]
            for sign in (0.0, 1.0):
                o = c.copy()
                o[axis] += sign * s[axis]
                u, v = np.zeros(3), np.zeros(3)
                u[a], v[b] = s[a], s[b]
                faces.append((o, u, v))
    areas = np.array([np.linalg.norm(np.cross(u, v)) for _, u, v in faces])
    counts = rng.multinomial(n, areas / areas.sum())
    pts = [o + rng.random((k, 1)) * u + rng.random((k, 1)) * v for (o, u, v), k in zip(faces, counts)]
    return np.concatenate(pts).astype(np.float32), float(np.sqrt(areas.sum() / n))


def random_world(static_points: int, dynamic_points: int, frames: int = 4, seed: int = 0) -> WorldState:
    """A room of ``static_points`` surface points and ``dynamic_points`` per frame on a moving sphere."""
    rng = np.random.default_rng(seed)
    pts, spacing = _surface_points(rng, static_points)
    static = PointLayer(pts, rng.integers(0, 256, (len(pts), 3), dtype=np.uint8), np.full(len(pts), 0.5 * spacing, np.float32), np.ones(len(pts), np.float32))
    layers = []
    for f in range(frames):
        d = rng.normal(size=(dynamic_points, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        centre = np.array([0.3 * f, 1.2, -2.0])
        spacing_d = math.sqrt(4 * math.pi * 0.6**2 / max(dynamic_points, 1))
        layers.append(PointLayer((centre + 0.6 * d).astype(np.float32), rng.integers(0, 256, (dynamic_points, 3), dtype=np.uint8), np.full(dynamic_points, 0.5 * spacing_d, np.float32), np.ones(dynamic_points, np.float32)))
    fps = 24.0
    k = cameras.fov_to_intrinsics(cameras.Fov.symmetric(math.radians(60), 16 / 9), 1280, 720)
    return WorldState(
        static, PointLayer.concatenate(layers), np.arange(frames + 1, dtype=np.int64) * dynamic_points,
        np.arange(frames) / fps, fps, np.repeat(np.eye(4)[None], frames, 0), np.repeat(k[None], frames, 0), (1280, 720),
    )


def _head_poses(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    poses = []
    for _ in range(n):
        eye = rng.uniform([-2, 1.4, -1], [2, 1.8, 3])
        target = eye + np.array([rng.uniform(-1, 1), rng.uniform(-0.3, 0.3), -1.0])
        poses.append(cameras.look_at(eye, target))
    return poses


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(device: str, width: int, height: int, static_points: int, dynamic_points: int, iters: int, frames: int = 4, ipd: float = 0.064, warmup: int = 3, expansion: str = "auto", backend: str = "auto") -> dict:
    """Render ``iters`` stereo pairs (2 x width x height) at random fractional tau; returns timings.
    ``backend``: :attr:`RenderConfig.backend`; ``expansion``: :attr:`SplatConfig.expansion` (torch path)."""
    world = random_world(static_points, dynamic_points, frames)
    renderer = Renderer(world, device, RenderConfig(splat=SplatConfig(expansion=expansion), backend=backend))
    dev = renderer.device
    fov = cameras.Fov.symmetric(math.radians(100), width / height)
    rng = np.random.default_rng(1)
    heads = _head_poses(rng, iters + warmup)
    taus = rng.uniform(0, world.times[-1], iters + warmup)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    valid_frac = []
    for i in range(warmup):
        renderer.render_fov(np.stack(cameras.eye_poses(heads[i], ipd)), [fov, fov], width, height, taus[i])
    _sync(dev)
    times = []
    for i in range(warmup, warmup + iters):
        t0 = time.perf_counter()
        out = renderer.render_fov(np.stack(cameras.eye_poses(heads[i], ipd)), [fov, fov], width, height, taus[i])
        _sync(dev)
        times.append(time.perf_counter() - t0)
        valid_frac.append(float(out.valid.float().mean()))
    times = np.array(times)
    result = {
        "device": str(dev),
        "machine": describe(machine_info(str(dev))),
        "width": width,
        "height": height,
        "static_points": len(world.static),
        "dynamic_points_per_frame": dynamic_points,
        "dynamic_frames": frames,
        "bytes_per_point_gpu": renderer.points.bytes_per_point(),
        "backend": renderer.backend,
        "expansion": expansion,
        "iters": iters,
        "ms_per_pair_median": float(np.median(times) * 1e3),
        "ms_per_pair_mean": float(times.mean() * 1e3),
        "pairs_per_s": float(1.0 / np.median(times)),
        "splat_coverage": float(np.mean(valid_frac)),
    }
    if dev.type == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return result


def _profile(args) -> None:
    from torch.profiler import ProfilerActivity, profile

    world = random_world(args.static_points, args.dynamic_points, args.frames)
    renderer = Renderer(world, args.device, RenderConfig(splat=SplatConfig(expansion=args.expansion), backend=args.backend))
    fov = cameras.Fov.symmetric(math.radians(100), args.width / args.height)
    heads = _head_poses(np.random.default_rng(2), 7)
    for h in heads[:2]:
        renderer.render_fov(np.stack(cameras.eye_poses(h, 0.064)), [fov, fov], args.width, args.height, 0.05)
    _sync(renderer.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if renderer.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for h in heads[2:]:
            renderer.render_fov(np.stack(cameras.eye_poses(h, 0.064)), [fov, fov], args.width, args.height, 0.05)
        _sync(renderer.device)
    key = "self_cuda_time_total" if renderer.device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=30))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="render_bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--static-points", type=int, default=2_000_000)
    p.add_argument("--dynamic-points", type=int, default=300_000)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--backend", choices=("auto", "torch", "triton"), default="auto", help="render path (RenderConfig.backend)")
    p.add_argument("--expansion", choices=("auto", "groups", "flat"), default="auto", help="torch path's footprint expansion (SplatConfig.expansion)")
    p.add_argument("--profile", action="store_true", help="also print a torch profiler table of 5 renders")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    r = run(args.device, args.width, args.height, args.static_points, args.dynamic_points, args.iters, args.frames, expansion=args.expansion, backend=args.backend)
    print(json.dumps(r, indent=1))
    if args.profile:
        _profile(args)
    print(f"render: {r['pairs_per_s']:.1f} stereo pairs/s ({r['ms_per_pair_median']:.2f} ms) at 2x{args.width}x{args.height}, "
          f"{r['static_points']:,} static + {args.dynamic_points:,}/frame dynamic points, {r['bytes_per_point_gpu']:.0f} B/point, {r['backend']} path on {r['device']} — {r['machine']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
