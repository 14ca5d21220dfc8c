"""``timewalk export-ply WORLD_DIR OUT.ply [--frame N]``: a world's points as a binary PLY.

Binary little-endian PLY with ``x y z`` (float32, OpenXR world metres) and ``red green blue`` (uint8).
Written to a temporary sibling and renamed, so a failure leaves no partial file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from gen_server.atomic_write import atomic_path

PLY_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="timewalk export-ply", description="Write a world's points as a binary PLY file.")
    p.add_argument("world", type=Path, help="world directory (from `timewalk build`)")
    p.add_argument("output", type=Path, help="PLY file to write")
    p.add_argument("--frame", type=int, help="add this frame's dynamic points to the static layer")
    return p


def write_ply(path: Path, positions: np.ndarray, colors: np.ndarray) -> None:
    """Atomically write points (N, 3) float and colours (N, 3) uint8 as binary little-endian PLY."""
    if positions.shape != colors.shape or positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"write_ply: positions {positions.shape} and colors {colors.shape} must both be (N, 3)")
    data = np.empty(len(positions), PLY_DTYPE)
    for i, name in enumerate(("x", "y", "z")):
        data[name] = positions[:, i]
    for i, name in enumerate(("red", "green", "blue")):
        data[name] = colors[:, i]
    header = "\n".join([
        "ply", "format binary_little_endian 1.0", "comment timewalk world points (OpenXR world, metres)",
        f"element vertex {len(data)}",
        *(f"property {'float' if name in 'xyz' else 'uchar'} {name}" for name in PLY_DTYPE.names),
        "end_header", "",
    ]).encode("ascii")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header)
        f.write(data.tobytes())


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from gen_server.errors import InputError
    from gen_server.world.state import PointLayer
    from gen_server.world.store import load_world

    world = load_world(args.world)
    layers = [world.static]
    if args.frame is not None:
        if not 0 <= args.frame < world.frame_count:
            raise InputError(f"--frame {args.frame}: {args.world} has frames 0..{world.frame_count - 1}")
        layers.append(world.dynamic_frame(args.frame))
    points = PointLayer.concatenate(layers)
    if args.output.is_dir():
        raise InputError(f"{args.output}: is a folder; give a .ply file path")
    write_ply(args.output, points.positions, points.colors)
    extra = f" + {len(layers[1]):,} dynamic of frame {args.frame}" if len(layers) > 1 else ""
    print(f"wrote {args.output}: {len(points):,} points ({len(world.static):,} static{extra})")
    return 0
