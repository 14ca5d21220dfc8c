"""`timewalk bench [SUITE...]`: the benchmark suite as a table and JSON.

Suites: build (source frames/s fusing RGB-D), render (stereo pairs/s at several resolutions), encode (ms
per stereo pair, colour + depth), serve (loopback pose-to-frame p50/p99 and fps for 1 and 4 clients, with
poses at 120 Hz and in closed loop), client (client ms per vsync: reprojection of both eyes + submit; decode ms). Each row names the machine.
Speed is measured here, never by timed tests. `--device cuda` on the GPU machine.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

from gen_server.atomic_write import write_json_atomic
from gen_server.errors import InputError

SUITES = ("build", "render", "encode", "serve", "client")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="timewalk bench", description=__doc__.split("\n\n")[0])
    p.add_argument("suites", nargs="*", metavar="SUITE",
                   help=f"any of {', '.join(SUITES)} (default: all)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="small sizes and short runs (a smoke run)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    return p


def _device(arg: str | None) -> str:
    if arg:
        return arg
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def bench_build(device: str, quick: bool) -> list[dict]:
    from gen_server.benchmarks.build_bench import run

    width, height = (320, 180) if quick else (960, 540)
    return [run(device=device, frames=12 if quick else 48, width=width, height=height, repeats=1 if quick else 2, quiet=True)]


def render_sizes(device: str, quick: bool) -> list[tuple[int, int]]:
    if quick:
        return [(256, 256)]
    return [(512, 512), (1024, 1024), (1440, 1600)] if device.startswith("cuda") else [(512, 512), (1024, 1024)]


def bench_render(device: str, quick: bool) -> list[dict]:
    from gen_server.benchmarks.render_bench import run

    cuda = device.startswith("cuda")
    static, dynamic = (2_000_000, 300_000) if cuda and not quick else ((50_000, 5_000) if quick else (300_000, 30_000))
    return [run(device, w, h, static, dynamic, iters=5 if quick else (100 if cuda else 10))
            for w, h in render_sizes(device, quick)]


def bench_encode(device: str, quick: bool) -> list[dict]:
    """ms per stereo pair for colour JPEG + 16-bit depth, from a real render (so JPEG sees real content)."""
    import numpy as np
    import torch

    from gen_server import cameras
    from gen_server.benchmarks.machine import describe, machine_info
    from gen_server.benchmarks.render_bench import random_world
    from gen_server.codec import CodecConfig, FrameEncoder
    from gen_server.render.renderer import Renderer

    rows = []
    renderer = Renderer(random_world(50_000 if quick else 300_000, 5_000, 2), device)
    # On CUDA both GPU JPEG encoders, to compare (the binding is the default).
    gpu_jpegs = ("nvjpeg", "torchvision") if renderer.device.type == "cuda" else ("auto",)
    for (w, h), gpu_jpeg in itertools.product(render_sizes(device, quick), gpu_jpegs):
        fov = cameras.Fov.symmetric(np.deg2rad(100), w / h)
        out = renderer.render_fov(np.stack(cameras.eye_poses(np.eye(4), 0.064)), [fov, fov], w, h, 0.0)
        encoder = FrameEncoder(CodecConfig(gpu_jpeg=gpu_jpeg))
        try:
            for _ in range(3):
                encoder.encode(out.color, out.depth, out.valid)
            times, sizes = [], 0
            for _ in range(5 if quick else (200 if renderer.device.type == "cuda" else 30)):
                if renderer.device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                enc = encoder.encode(out.color, out.depth, out.valid)
                times.append(time.perf_counter() - t0)
                sizes = sum(map(len, enc.color)) + sum(map(len, enc.depth))
        finally:
            encoder.close()
        rows.append({"machine": describe(machine_info(str(renderer.device))), "device": str(renderer.device),
                     "width": w, "height": h, "backend": enc.backend, "ms_per_pair_median": float(np.median(times) * 1e3),
                     "ms_per_pair_p99": float(np.percentile(times, 99) * 1e3), "kib_per_pair": round(sizes / 1024, 1)})
    return rows


def bench_serve(device: str, quick: bool) -> list[dict]:
    from gen_server.benchmarks.serve_bench import run

    size = (256, 256) if quick else ((1440, 1600) if device.startswith("cuda") else (512, 512))
    seconds = 2.0 if quick else 6.0
    # Open loop with poses at 120 Hz (a headset's rate, above the 90 fps goal, so the server's capacity
    # shows), then closed loop (one pose in flight: the full round trip sets the rate).
    return [run(None, device, size[0], size[1], clients, seconds, pose_hz=pose_hz)
            for pose_hz in (120.0, 0.0) for clients in (1, 4)]


def bench_client(device: str, quick: bool) -> list[dict]:
    from xr_client.bench_client import run

    from gen_server.benchmarks.machine import describe, machine_info

    sizes = [(512, 512)] if quick else [(512, 512), (1440, 1600)]
    rows = []
    for w, h in sizes:
        r = run(width=w, height=h, vsyncs=30 if quick else 120)
        r.update(width=w, height=h, machine=f"{describe(machine_info())}, GL {r['gl_renderer']}",
                 vsync_ms_p50=r["vsync_ms_both_eyes"]["p50"], vsync_ms_p95=r["vsync_ms_both_eyes"]["p95"],
                 decode_ms_p50=r["decode_ms_per_frame"]["p50"])
        rows.append(r)
    return rows


RUNNERS = {"build": bench_build, "render": bench_render, "encode": bench_encode, "serve": bench_serve,
           "client": bench_client}

# The columns worth a glance in the table, per suite (everything goes to JSON).
HEADLINE = {
    "build": ["width", "height", "frames", "frames_per_second", "static_points"],
    "render": ["width", "height", "static_points", "pairs_per_s", "ms_per_pair_median", "bytes_per_point_gpu"],
    "encode": ["width", "height", "backend", "ms_per_pair_median", "ms_per_pair_p99", "kib_per_pair"],
    "serve": ["width", "height", "mode", "clients", "fps_per_client_min", "latency_ms_p50", "latency_ms_p99",
              "server_pose_to_send_ms_p99"],
    "client": ["width", "height", "vsync_ms_p50", "vsync_ms_p95", "decode_ms_p50"],
}


def _print_table(results: dict[str, list[dict]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for suite, rows in results.items():
        if not rows:
            continue
        cols = [c for c in HEADLINE[suite] if any(c in r for r in rows)]
        table = Table(title=f"{suite} — {_machine(rows[0])}")
        for c in cols:
            table.add_column(c)
        for r in rows:
            table.add_row(*(_fmt(r.get(c)) for c in cols))
        console.print(table)


def _machine(row: dict) -> str:
    from gen_server.benchmarks.machine import describe

    m = row.get("machine", "")
    return describe(m) if isinstance(m, dict) else str(m)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return "-" if v is None else str(v)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    unknown = [s for s in args.suites if s not in (*SUITES, "all")]
    if unknown:
        raise InputError(f"unknown benchmark suite {unknown[0]!r} (choose from {', '.join(SUITES)}, all)")
    suites = SUITES if not args.suites or "all" in args.suites else tuple(dict.fromkeys(args.suites))
    device = _device(args.device)
    results: dict[str, list[dict]] = {}
    for suite in suites:
        print(f"bench: {suite} on {device} ...", flush=True)
        results[suite] = RUNNERS[suite](device, args.quick)
    _print_table(results)
    if args.json:
        write_json_atomic(args.json, {"date": time.strftime("%Y-%m-%d"), "device": device, "results": results})
        print(f"bench: wrote {args.json}")
    return 0
