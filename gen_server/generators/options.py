"""Command-line options for choosing and configuring a generator: shared by `serve` and `render`."""

from __future__ import annotations

import argparse
from pathlib import Path

from gen_server.errors import InputError
from gen_server.generators import GENERATORS


def add_generator_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generator")
    g.add_argument("--generator", default="geometric", choices=sorted(GENERATORS),
                   help="geometric: point-splat renders of the world (default); inspatio: neural refinement")
    g.add_argument("--checkpoint", type=Path, help="inspatio: InSpatio-World-1.3B .safetensors")
    g.add_argument("--taehv", type=Path, help="inspatio: TAEHV weights (taew2_1.pth)")
    g.add_argument("--engine", default="eager", choices=("eager", "cudagraph", "compile", "tensorrt"),
                   help="inspatio: how the DiT runs (default eager)")
    g.add_argument("--stereo-mode", default="reproject", choices=("reproject", "batched"),
                   help="inspatio: one centre view reprojected to both eyes, or both eyes generated")
    g.add_argument("--prompt-embedding", type=Path, help="inspatio: umT5 embedding file (default: in the world dir)")
    g.add_argument("--engine-cache", type=Path, help="inspatio: folder for TensorRT engines")
    g.add_argument("--async-generation", action="store_true",
                   help="inspatio: generate ahead on a worker thread; geometric renders until a frame is ready")


def generator_options(args: argparse.Namespace, world_dir: Path) -> dict:
    """The keyword options for ``make_generator(args.generator, world, device, **options)``."""
    if args.generator != "inspatio":
        return {}
    for flag in ("checkpoint", "taehv"):
        path = getattr(args, flag)
        if path is None:
            raise InputError(f"--generator inspatio needs --{flag} PATH")
        if not path.is_file():
            raise InputError(f"{path}: no such file (--{flag})")
    return {"checkpoint": str(args.checkpoint), "taehv": str(args.taehv), "world_dir": str(world_dir),
            "engine": args.engine, "stereo": args.stereo_mode, "asynchronous": args.async_generation,
            "prompt_embedding": None if args.prompt_embedding is None else str(args.prompt_embedding),
            "engine_cache": None if args.engine_cache is None else str(args.engine_cache)}
