"""``timewalk render WORLD --trajectory FILE -o OUT.mp4``: render a camera trajectory through a world."""

from __future__ import annotations

import argparse
from pathlib import Path

from gen_server.generators.options import add_generator_arguments, generator_options


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="timewalk render", description="Render a camera trajectory through a world to an H.264 mp4.")
    p.add_argument("world", type=Path, help="world directory (from `timewalk build`)")
    p.add_argument("--trajectory", required=True, type=Path, help="InSpatio-World 3-line .txt or nerfstudio camera_path.json")
    p.add_argument("-o", "--output", required=True, type=Path, help="output .mp4")
    p.add_argument("--width", type=int, help="output width per eye (default: trajectory's or world's)")
    p.add_argument("--height", type=int, help="output height (default: trajectory's or world's)")
    p.add_argument("--fps", type=float, help="output frame rate (default: the world's)")
    p.add_argument("--frames", type=int, help="output frames for a .txt trajectory (default: whole clip once)")
    p.add_argument("--time-rate", type=float, default=1.0, help="source seconds per output second (0.25 = slow motion)")
    p.add_argument("--reverse", action="store_true", help="play world time backwards")
    p.add_argument("--freeze-at", type=float, help="world time (s) to freeze at while the camera moves")
    p.add_argument("--freeze-frames", type=int, default=0, help="output frames to hold --freeze-at")
    p.add_argument("--stereo", action="store_true", help="left and right eyes side by side")
    p.add_argument("--ipd", type=float, default=0.064, help="interpupillary distance in metres for --stereo")
    p.add_argument("--frames-dir", type=Path, help="also write frame_00000.png ... here")
    p.add_argument("--depth-dir", type=Path, help="also write 16-bit depth PNGs (millimetres) here")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_generator_arguments(p)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from gen_server.errors import InputError
    from gen_server.generators import make_generator
    from gen_server.offline_render import OutputOptions, TimeControls, default_frame_count, path_taus, render_path
    from gen_server.trajectory import load_trajectory
    from gen_server.world.store import load_world

    for name in ("width", "height", "frames"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name}: must be a positive integer, got {value}")
    if args.output.suffix.lower() != ".mp4":
        raise InputError(f"{args.output}: output must be an .mp4 file")
    world = load_world(args.world)
    controls = TimeControls(args.fps or world.fps, args.time_rate, args.reverse, args.freeze_at, args.freeze_frames)
    controls.validate(world)
    frames = args.frames or default_frame_count(world, controls)
    path = load_trajectory(args.trajectory, world, frames, args.width, args.height)
    taus = path_taus(path, world, controls)
    options = OutputOptions(args.output, args.stereo, args.ipd, args.frames_dir, args.depth_dir)
    generator = make_generator(args.generator, world, args.device, **generator_options(args, args.world))
    n = render_path(world, path, taus, options, controls.fps, args.device, progress=not args.quiet, generator=generator)
    eyes = "stereo " if args.stereo else ""
    print(f"wrote {args.output}: {n} {eyes}frames {path.width}x{path.height} at {controls.fps:g} fps, world time {taus[0]:.3f}..{taus[-1]:.3f} s")
    return 0
