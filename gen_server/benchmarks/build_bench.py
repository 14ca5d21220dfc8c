"""Fusion throughput: source frames per second turned into the world state.

RGB-D frames of the synthetic scene are rendered before timing; the timed part is exactly what
``build_world`` does per frame after decoding: upload, unproject, dynamic detection against the
neighbour window, voxel merge, dynamic layer extraction, plus the final merge into a WorldState.

    python -m gen_server.benchmarks.build_bench --device cpu [--frames 48] [--width 960] [--height 540]

Measured 2026-11-24, 48 frames 960x540 (static 700 k points, dynamic 133 k):
NVIDIA H100 (torch 2.11): 271 frames/s with torch.compile (default on CUDA), ~150 eager; 1920x1080:
169 frames/s; peak GPU memory 0.6 GiB. 2-core AMD EPYC shared with other jobs: 19-22 frames/s eager, 28-30 compiled (the default
at this size when a C++ compiler is present).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def make_frames(frames: int, width: int, height: int, fps: float = 24.0, seed: int = 0) -> list:
    """RGB-D SourceFrames of the synthetic scene along its camera path."""
    from gen_server import cameras
    from gen_server.world.frames import SourceFrame
    from gen_server.world.synth import SyntheticScene

    scene = SyntheticScene(seed=seed)
    k = cameras.fov_to_intrinsics(cameras.Fov.symmetric(np.radians(60.0), width / height), width, height)
    out = []
    for i in range(frames):
        t = i / fps
        pose = scene.camera_path(t)
        rgb, depth, _ = scene.render(pose, k, width, height, t)
        out.append(SourceFrame(i, t, rgb, k, pose, depth.astype(np.float32)))
    return out


def run(device: str = "cpu", frames: int = 48, width: int = 960, height: int = 540, repeats: int = 2,
        quiet: bool = False, compile: bool | None = None) -> dict:
    """Time fusion of ``frames`` synthetic frames; returns (and prints) frames/s and machine info.

    The first pass warms up (allocator, CUDA kernels, torch.compile); the best of ``repeats`` timed
    passes is reported. ``compile``: the detection kernel through torch.compile (None: ``auto_compile``).
    """
    import torch

    from gen_server.benchmarks.machine import describe, machine_info
    from gen_server.world.fusion import FusionConfig, auto_compile, fuse_frames, resolve_device

    dev = resolve_device(device)
    source = make_frames(frames, width, height)
    config = FusionConfig(compile=compile)
    fuse_frames(source[: min(len(source), 12)], 24.0, config=config, device=dev)  # warm-up
    timings, world = [], None
    for _ in range(repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        world = fuse_frames(source, 24.0, config=config, device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - t0)
    best = min(timings)
    import resource

    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None
    info = machine_info(str(dev))
    result = {
        "benchmark": "build (fusion)",
        "device": str(dev),
        "compiled": auto_compile(dev, (width, height)) if compile is None else bool(compile),
        "frames": frames,
        "width": width,
        "height": height,
        "seconds": best,
        "seconds_all": timings,
        "frames_per_second": frames / best,
        "megapixels_per_second": frames * width * height / best / 1e6,
        "static_points": len(world.static),
        "dynamic_points": len(world.dynamic),
        "torch_threads": torch.get_num_threads(),
        "peak_rss_gib": round(peak_rss, 2),  # whole process, the pre-rendered frames included
        "peak_gpu_gib": None if peak_gpu is None else round(peak_gpu, 2),
        "machine": info,
    }
    if not quiet:
        mode = "torch.compile" if result["compiled"] else "eager"
        print(f"build fusion: {frames} frames {width}x{height} on {dev} ({mode}): {best:.2f} s, "
              f"{result['frames_per_second']:.1f} source frames/s ({result['megapixels_per_second']:.1f} MP/s); "
              f"static {result['static_points']:,} points, dynamic {result['dynamic_points']:,}")
        gpu = f", peak GPU memory {peak_gpu:.2f} GiB" if peak_gpu is not None else ""
        print(f"machine: {describe(info)}; torch threads {result['torch_threads']}; "
              f"peak RSS {peak_rss:.2f} GiB (frames included){gpu}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gen_server.benchmarks.build_bench", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--width", type=int, default=960)
    p.add_argument("--height", type=int, default=540)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile the detection kernel (auto: CUDA, or CPU at >= 640x360 with a C++ compiler)")
    p.add_argument("--json", action="store_true", help="also print the result dict as JSON")
    args = p.parse_args(argv)
    result = run(args.device, args.frames, args.width, args.height, args.repeats,
                 compile={"auto": None, "on": True, "off": False}[args.compile])
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
