"""``timewalk view --server ADDR``: walk a served world in a desktop window, or ``--headless`` along a
scripted path, writing what the eyes saw (side by side) to an mp4 and statistics to JSON."""

from __future__ import annotations

import argparse
import sys

from gen_server.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="timewalk view", description="Desktop or headless viewer for `timewalk serve`.")
    p.add_argument("--server", required=True, help="server address, e.g. tcp://127.0.0.1:5555")
    p.add_argument("--headless", action="store_true", help="no window: scripted head path, offscreen OpenGL")
    p.add_argument("--seconds", type=float, default=0.0, help="how long (headless: required; desktop: 0 = until Esc)")
    p.add_argument("--out", help="headless: write both eyes side by side to this mp4")
    p.add_argument("--stats", help="write statistics JSON here")
    p.add_argument("--width", type=int, help="per eye (headless, default 640) / window (desktop, default 1280)")
    p.add_argument("--height", type=int, help="per eye (headless, default 640) / window (desktop, default 720)")
    p.add_argument("--fps", type=float, default=30.0, help="headless tick and video rate (default 30)")
    p.add_argument("--fov", type=float, default=90.0, help="vertical field of view in degrees (default 90)")
    p.add_argument("--no-hud", action="store_true", help="headless: leave the HUD out of the video")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not 10.0 <= args.fov <= 170.0:
        raise InputError(f"--fov: {args.fov} degrees is outside [10, 170]")
    if not 1.0 <= args.fps <= 240.0:
        raise InputError(f"--fps: {args.fps} is outside [1, 240]")
    if args.out is not None and not args.out.lower().endswith((".mp4", ".mkv", ".mov")):
        raise InputError(f"--out {args.out}: must end in .mp4, .mkv or .mov")
    from xr_client.viewer import ViewerConfig, run_desktop, run_headless

    if args.headless:
        if args.seconds <= 0:
            raise InputError("--headless needs --seconds > 0")
        w, h = args.width or 640, args.height or 640
        cfg = ViewerConfig(width=w, height=h, vertical_fov_deg=args.fov, fps=args.fps, hud=not args.no_hud)
        result = run_headless(args.server, args.seconds, args.out, args.stats, w, h, config=cfg)
        lat = result["latency_ms"]
        print(f"timewalk view: {result['ticks']} ticks at {result['fps']:.1f} fps, {result['frames_shown']} server "
              f"frames, pose-to-frame latency p50 {lat['p50']:.0f} ms p90 {lat['p90']:.0f} ms"
              + (f"; video {args.out}" if args.out else ""), file=sys.stderr)
        return 0 if result["frames_shown"] > 0 else 1
    if args.out:
        raise InputError("--out needs --headless")
    cfg = ViewerConfig(vertical_fov_deg=args.fov)
    result = run_desktop(args.server, args.width or 1280, args.height or 720, args.seconds, args.stats, cfg)
    print(f"timewalk view: {result['frames']} frames at {result['fps']:.1f} fps, {result['frames_shown']} from "
          "the server", file=sys.stderr)
    return 0
