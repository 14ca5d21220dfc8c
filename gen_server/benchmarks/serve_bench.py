"""Streaming benchmark: loopback pose-to-frame latency and frames/s through the real server and client.

    python -m gen_server.benchmarks.serve_bench --device cpu --width 512 --height 512 --clients 1 4
    python -m gen_server.benchmarks.serve_bench --device cuda --width 1440 --height 1600 --clients 1 4

The server (geometric generator + codec + ROUTER socket) runs in its own process, as `timewalk serve`
would; each client is an :class:`xr_client.stream_client.StreamClient` that sends a head pose, waits for
the frame answering it to be *decoded*, and sends the next one at once (closed loop: the measured rate
is what the pipeline sustains, not a rate we asked for). Latency = pose sent -> frame decoded on the
client's clock; the server's own pose-in -> frame-out comes from the frame's timings.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import threading
import time
from pathlib import Path

import numpy as np

from gen_server.benchmarks.machine import describe, machine_info


def smooth_colors(positions: np.ndarray) -> np.ndarray:
    """Colours varying smoothly over surfaces (like photographed walls), so JPEG sizes and decode times
    are representative: the render benchmark's per-point random colours are noise, JPEG's worst case."""
    p = positions.astype(np.float64)
    waves = [np.sin(1.7 * p[:, 0] + 0.9 * p[:, 2]), np.sin(2.3 * p[:, 1] - 1.1 * p[:, 0]), np.sin(1.3 * p[:, 2] + 0.7 * p[:, 1])]
    return np.clip(128 + 90 * np.stack(waves, -1), 0, 255).astype(np.uint8)


def bench_world(static_points: int, noise_colors: bool = False):
    """render_bench's room of points (+ moving dynamic sphere), smooth colours unless ``noise_colors``."""
    from dataclasses import replace

    from gen_server.benchmarks.render_bench import random_world

    world = random_world(static_points, static_points // 8, frames=8)
    if noise_colors:
        return world
    return replace(world, static=replace(world.static, colors=smooth_colors(world.static.positions)),
                   dynamic=replace(world.dynamic, colors=smooth_colors(world.dynamic.positions)))


def _serve(world_dir, device, static_points, fps, color_codec, noise_colors, ready, stop) -> None:
    """Server process body: build/load the world, serve until ``stop`` is set."""
    from gen_server.codec import CodecConfig
    from gen_server.commands.serve import world_info
    from gen_server.generators import make_generator
    from gen_server.server import ServerConfig, StreamServer

    if world_dir is None:
        world = bench_world(static_points, noise_colors)
        info = world_info(world, Path("random-room"))
    else:
        from gen_server.world.store import load_world

        world = load_world(world_dir)
        info = world_info(world, Path(world_dir))
    generator = make_generator("geometric", world, device=device)
    server = StreamServer(generator, info, ServerConfig(bind="tcp://127.0.0.1:*", fps=fps, status_line=False,
                                                        client_timeout_s=30.0, codec=CodecConfig(color_codec=color_codec)))
    ready.put((server.address, machine_info(device)))
    threading.Thread(target=lambda: (stop.wait(), server.request_stop()), daemon=True).start()
    server.serve_forever()
    ready.put(server.status())  # render/encode ms and encoder backend as the server saw them


def _client_loop(client, seconds: float, rng: np.random.Generator, out: dict, min_frames: int = 0) -> None:
    from gen_server import cameras
    from gen_server.protocol import Pose

    latencies, server_ms, transport_ms, decode_ms, frames, timeouts, nbytes = [], [], [], [], 0, 0, []
    end = time.monotonic() + seconds
    while time.monotonic() < end or frames < min_frames:
        eye = rng.uniform([-1.5, 1.4, -0.5], [1.5, 1.8, 2.0])
        head_m = cameras.look_at(eye, eye + np.array([rng.uniform(-1, 1), rng.uniform(-0.3, 0.3), -1.0]))
        left, right = cameras.eye_poses(head_m, 0.064)
        sent = time.monotonic_ns()
        seq = client.send_pose(Pose.from_matrix(head_m), (Pose.from_matrix(left), Pose.from_matrix(right)))
        frame = client.wait_frame(pose_seq=seq, timeout=5.0)
        if frame is None or frame.pose_seq != seq:
            timeouts += 1
            continue
        decoded = frame.timings["received_ns"] + frame.timings["decode_ns"]
        latencies.append((decoded - sent) / 1e6)
        t = frame.timings
        server_ms.append((t["send_ns"] - t["pose_received_ns"]) / 1e6)
        transport_ms.append((t["received_ns"] - t["send_ns"]) / 1e6)  # one host: one monotonic clock
        decode_ms.append(t["decode_ns"] / 1e6)
        nbytes.append(t.get("payload_bytes", 0))
        frames += 1
    out.update(latencies=latencies, server_ms=server_ms, transport_ms=transport_ms, decode_ms=decode_ms,
               frames=frames, timeouts=timeouts, nbytes=nbytes)


def run(world_dir_or_none, device: str, width: int, height: int, clients: int, seconds: float,
        static_points: int | None = None, fps: float = 1000.0, color_codec: str = "jpeg",
        noise_colors: bool = False) -> dict:
    """Serve in a subprocess, run ``clients`` closed-loop clients for ``seconds``; returns the numbers."""
    from gen_server.cameras import Fov
    from xr_client.stream_client import StreamClient, StreamConfig

    static_points = static_points or (2_000_000 if str(device).startswith("cuda") else 300_000)
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_serve, args=(world_dir_or_none, device, static_points, fps, color_codec, noise_colors,
                                            ready, stop), daemon=True)
    proc.start()
    try:
        address, info = ready.get(timeout=300)
        fov = Fov.symmetric(math.radians(100), width / height)
        config = StreamConfig(eye_width=width, eye_height=height, fovs=(fov, fov), timeout_s=30.0,
                              color_codecs=(color_codec, "jpeg"))
        streams = [StreamClient(address, config).start() for _ in range(clients)]
        for s in streams:
            if not s.wait_connected(60.0):
                raise RuntimeError(f"benchmark: no welcome from {address}")
        # Warm-up (the first renders allocate and tune kernels: ~1 s each on a CPU), then measure.
        warm = [dict() for _ in streams]
        _run_threads(streams, 1.0, warm, min_frames=5)
        results = [dict() for _ in streams]
        _run_threads(streams, seconds, results)
        for s in streams:
            s.close()
        stop.set()
        server_status = ready.get(timeout=60)
    finally:
        stop.set()
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    lat = np.concatenate([r["latencies"] for r in results]) if results else np.zeros(0)
    srv = np.concatenate([r["server_ms"] for r in results]) if results else np.zeros(0)
    transport = np.concatenate([r["transport_ms"] for r in results]) if results else np.zeros(0)
    decode = np.concatenate([r["decode_ms"] for r in results]) if results else np.zeros(0)
    per_client_fps = [r["frames"] / seconds for r in results]

    def pct(a, q):
        return round(float(np.percentile(a, q)), 2) if len(a) else None

    return {
        "machine": describe(info), "device": device, "width": width, "height": height, "clients": clients,
        "seconds": seconds, "static_points": static_points if world_dir_or_none is None else None,
        "fps_per_client_min": round(min(per_client_fps), 2), "fps_total": round(sum(per_client_fps), 2),
        "latency_ms_p50": pct(lat, 50), "latency_ms_p99": pct(lat, 99),
        "server_pose_to_send_ms_p50": pct(srv, 50), "server_pose_to_send_ms_p99": pct(srv, 99),
        "timeouts": sum(r["timeouts"] for r in results),
        "send_to_received_ms_p50": pct(transport, 50), "client_decode_ms_p50": pct(decode, 50),
        "color_codec": color_codec, "colors": "noise" if noise_colors else "smooth",
        "frame_kib_mean": round(float(np.mean(np.concatenate([r["nbytes"] for r in results]))) / 1024, 1),
        "server_render_ms_p50": server_status.get("render_ms_p50"),
        "server_encode_ms_p50": server_status.get("encode_ms_p50"),
        "encoder": [k[len("encoded_"):] for k in server_status if k.startswith("encoded_")],
        "frames_dropped": server_status.get("frames_dropped", 0),
    }


def _run_threads(streams, seconds: float, outs: list[dict], min_frames: int = 0) -> None:
    threads = [threading.Thread(target=_client_loop, args=(s, seconds, np.random.default_rng(i), o, min_frames))
               for i, (s, o) in enumerate(zip(streams, outs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="serve_bench", description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, help="world directory (default: a random room of points)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--static-points", type=int)
    p.add_argument("--color-codec", default="jpeg", choices=("jpeg", "h264"))
    p.add_argument("--noise-colors", action="store_true", help="random per-point colours (JPEG's worst case)")
    args = p.parse_args(argv)
    for n in args.clients:
        r = run(args.world, args.device, args.width, args.height, n, args.seconds, args.static_points,
                color_codec=args.color_codec, noise_colors=args.noise_colors)
        print(json.dumps(r))
        print(f"serve: {n} client(s) at 2x{args.width}x{args.height} {r['color_codec']} {r['frame_kib_mean']} KiB/frame "
              f"({r['colors']} colours): {r['fps_per_client_min']:.1f} fps/client "
              f"(total {r['fps_total']:.1f}), pose->decoded p50 {r['latency_ms_p50']} / p99 {r['latency_ms_p99']} ms, "
              f"server pose->send p99 {r['server_pose_to_send_ms_p99']} ms (render {r['server_render_ms_p50']} + "
              f"encode {r['server_encode_ms_p50']} ms, {'/'.join(r['encoder'])}; transport {r['send_to_received_ms_p50']} + "
              f"client decode {r['client_decode_ms_p50']} ms) — {r['machine']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
