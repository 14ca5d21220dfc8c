"""``timewalk synth OUT_DIR``: render the synthetic demo scene to a dataset folder (mp4 + PNG frames, exact
depth, moving-object masks, transforms.json, scene.json)."""

from __future__ import annotations

import argparse
import time

from tqdm import tqdm


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="timewalk synth", description=__doc__)
    p.add_argument("out_dir", help="output folder (created; must not exist or be empty unless --overwrite)")
    p.add_argument("--width", type=int, default=640, help="frame width in pixels, even (default 640)")
    p.add_argument("--height", type=int, default=360, help="frame height in pixels, even (default 360)")
    p.add_argument("--seconds", type=float, default=3.0, help="clip length in seconds (default 3)")
    p.add_argument("--fps", type=float, default=24.0, help="frames per second (default 24)")
    p.add_argument("--seed", type=int, default=0, help="texture noise seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from gen_server.world.synth import write_synthetic_dataset

    start = time.perf_counter()
    with tqdm(total=max(1, round(args.seconds * args.fps)), unit="frame", desc="synth") as bar:
        out = write_synthetic_dataset(
            args.out_dir, width=args.width, height=args.height, seconds=args.seconds, fps=args.fps,
            seed=args.seed, overwrite=args.overwrite, progress=lambda done, total: bar.update(done - bar.n),
        )
    print(f"wrote {out} ({bar.n} frames {args.width}x{args.height} in {time.perf_counter() - start:.1f} s): "
          f"video.mp4, transforms.json, scene.json, images/, depth/, masks/")
    return 0
