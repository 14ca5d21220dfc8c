"""``timewalk serve WORLD --bind tcp://127.0.0.1:5555``: stream stereo views of a world over ZeroMQ."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from gen_server.generators.options import add_generator_arguments, generator_options


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="timewalk serve", description="Stream stereo views of a world to XR clients over ZeroMQ.")
    p.add_argument("world", type=Path, help="world directory (from `timewalk build`)")
    p.add_argument("--bind", default="tcp://127.0.0.1:5555", help="ZeroMQ endpoint (default: loopback port 5555)")
    p.add_argument("--fps", type=float, default=24.0, help="most frames per second per client (default 24)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--independent-timelines", action="store_true", help="each client scrubs its own time")
    p.add_argument("--end-mode", default="loop", choices=("loop", "bounce", "hold"), help="at the clip's ends")
    p.add_argument("--keys", type=Path, help="CURVE key folder from `timewalk keys generate` (required off loopback)")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without CURVE (warns)")
    p.add_argument("--stats", type=Path, help="append one JSON line of stats per second here")
    p.add_argument("--width", type=int, help="per-eye render width (default: the client's)")
    p.add_argument("--height", type=int, help="per-eye render height (default: the client's)")
    p.add_argument("--jpeg-quality", type=int, default=85)
    p.add_argument("--depth-downscale", type=int, default=0,
                   help="depth is sent at 1/N of the colour size (default 0: auto, at most 400 px wide)")
    p.add_argument("--color-codec", default="jpeg", choices=("jpeg", "h264"),
                   help="h264: low-bandwidth stream for clients that decode it (others still get JPEG)")
    p.add_argument("--h264-crf", type=int, default=23, help="h264 quality (lower = better, 0..51)")
    p.add_argument("--threads", type=int, help="torch CPU threads for a CPU device (fewer is steadier on a busy box)")
    p.add_argument("--client-timeout", type=float, default=5.0, help="seconds of silence before a client is freed")
    add_generator_arguments(p)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from gen_server.codec import CodecConfig, H264Config
    from gen_server.errors import InputError
    from gen_server.generators import make_generator
    from gen_server.server import ServerConfig, StreamServer, check_bind_security, load_world_from_stage
    from gen_server.world.store import load_world

    if args.fps <= 0:
        raise InputError(f"--fps: must be positive, got {args.fps}")
    for name in ("width", "height"):
        value = getattr(args, name)
        if value is not None and not 8 <= value <= 8192:
            raise InputError(f"--{name}: must be in [8, 8192], got {value}")
    if not 1 <= args.jpeg_quality <= 100:
        raise InputError(f"--jpeg-quality: must be in [1, 100], got {args.jpeg_quality}")
    if args.depth_downscale < 0:
        raise InputError(f"--depth-downscale: must be >= 0 (0 = auto), got {args.depth_downscale}")
    if not 0 <= args.h264_crf <= 51:
        raise InputError(f"--h264-crf: must be in [0, 51], got {args.h264_crf}")
    config = ServerConfig(
        bind=args.bind, fps=args.fps, width=args.width, height=args.height,
        independent_timelines=args.independent_timelines, end_mode=args.end_mode, keys_dir=args.keys,
        insecure=args.insecure, stats_path=args.stats, client_timeout_s=args.client_timeout,
        codec=CodecConfig(color_codec=args.color_codec, jpeg_quality=args.jpeg_quality,
                          depth_downscale=args.depth_downscale),
        h264=H264Config(crf=args.h264_crf),
    )
    check_bind_security(config)  # before the (slow) world load: a refused bind fails at once
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads: must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    world = load_world(args.world)
    generator = make_generator(args.generator, world, device=args.device, **generator_options(args, args.world))
    server = StreamServer(generator, world_info(world, args.world), config, load_world_from_stage(args.world, world))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.request_stop())
    warm_s = server.warm_up()
    print(f"timewalk serve: warmed up the renderer in {warm_s:.1f} s (colour encoder: {server.encoder_backend or '?'})",
          file=sys.stderr)
    print(f"timewalk serve: {args.world} ({world.frame_count} frames, {world.duration:.2f} s) on {server.address} "
          f"with {args.generator}; Ctrl-C stops", file=sys.stderr)
    server.serve_forever()
    print("timewalk serve: stopped", file=sys.stderr)
    return 0


def world_info(world, world_dir: Path) -> dict:
    """The world metadata sent in ``welcome`` (plain msgpack types only)."""
    lo, hi = world.bounds()
    return {"name": Path(world_dir).name, "duration": float(world.duration), "fps": float(world.fps),
            "frame_count": int(world.frame_count), "image_size": [int(v) for v in world.image_size],
            "bounds": [[float(v) for v in lo], [float(v) for v in hi]],
            "static_points": int(len(world.static)), "dynamic_points": int(len(world.dynamic))}
