"""``timewalk xr --server ADDR``: the headset client (OpenXR).

Runs until the runtime ends the session (or --seconds / --frames, or Ctrl-C / SIGTERM, which end the
session cleanly). ``--stats PATH`` writes the session's statistics and per-frame records as JSON.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from gen_server.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="timewalk xr", description="Headset client: stream a world from "
                                "`timewalk serve` and reproject it to your head pose every display frame.")
    p.add_argument("--server", required=True, help="server address, e.g. tcp://127.0.0.1:5555")
    p.add_argument("--server-key", help="server's public CURVE key file (enables encryption)")
    p.add_argument("--client-keys", help="this client's CURVE key pair file (.key_secret)")
    p.add_argument("--gl", choices=("auto", "egl", "glx"), default="auto",
                   help="OpenGL binding: EGL (XR_MNDX_egl_enable) or GLX (hidden glfw window)")
    p.add_argument("--eye-scale", type=float, default=0.5,
                   help="server-rendered eye size relative to the headset's recommended size (default 0.5)")
    p.add_argument("--seconds", type=float, default=0.0, help="end the session after this long (0 = never)")
    p.add_argument("--frames", type=int, default=0, help="end the session after this many frames (0 = never)")
    p.add_argument("--latency-ms", type=float, default=None, help="pose prediction (default: calibration's, else 50)")
    p.add_argument("--floor-height", type=float, default=1.6, help="eye height assumed when there is no STAGE space")
    p.add_argument("--grid-step", type=int, default=4, help="reprojection mesh: source pixels per cell")
    p.add_argument("--no-hud", action="store_true", help="start with the HUD hidden")
    p.add_argument("--no-depth-layer", action="store_true", help="do not submit depth to the compositor")
    p.add_argument("--stats", help="write statistics JSON here at the end")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    if not 0.05 <= args.eye_scale <= 2.0:
        raise InputError(f"--eye-scale: {args.eye_scale} is outside [0.05, 2]")
    if args.grid_step < 1:
        raise InputError(f"--grid-step: must be >= 1, got {args.grid_step}")
    try:
        import xr  # noqa: F401
    except ImportError as e:
        raise InputError(f"pyopenxr is not usable here ({e}); install timewalk[client]") from None

    from xr_client.openxr_session import XrSession, XrSessionConfig

    session = XrSession(XrSessionConfig(backend=args.gl, floor_height=args.floor_height,
                                        submit_depth=not args.no_depth_layer, max_frames=args.frames,
                                        max_seconds=args.seconds))
    # OpenGL may be imported only now: choose_backend (in XrSession) picked PyOpenGL's platform.
    from xr_client.pipeline import PipelineConfig
    from xr_client.reprojection import ReprojectionConfig
    from xr_client.xr_app import XrApp, XrAppConfig, latency_estimate_s

    app = XrApp(XrAppConfig(server=args.server, eye_scale=args.eye_scale, server_public_key=args.server_key,
                            client_keys=args.client_keys, hud_visible=not args.no_hud,
                            pipeline=PipelineConfig(reprojection=ReprojectionConfig(grid_step=args.grid_step))))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: session.stop())
    latency = latency_estimate_s if args.latency_ms is None else args.latency_ms / 1e3
    try:
        stats = session.run(app, latency_s=latency)
    finally:
        client_stats = app.close()
    summary = stats.summary()
    print(f"timewalk xr: {summary['runtime']} / {summary['system']}: {summary['frames_submitted']} frames at "
          f"{summary['fps']:.1f} fps ({summary['backend']}, {summary['space']}, depth layer "
          f"{'on' if summary['depth_submitted'] else 'off'}); states {' -> '.join(summary['states'])}; "
          f"end: {summary['end_reason']}", file=sys.stderr)
    if args.stats:
        from xr_client.stats_io import write_json_atomic

        write_json_atomic(args.stats, {"session": summary, "client": client_stats})
    if "lost" in summary["end_reason"] or "loss" in summary["end_reason"]:
        return 1  # the runtime went away under us: said above, and not a clean end
    return 0 if "FOCUSED" in summary["states"] or summary["frames_submitted"] > 0 else 1
