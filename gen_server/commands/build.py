"""``timewalk build INPUT -o WORLD_DIR``: turn a video / transforms.json / step-2 folder into a world."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="timewalk build",
        description="Fuse a clip's frames (colour + depth + poses) into an anchored world state: a static point "
        "layer plus one dynamic layer per frame.")
    p.add_argument("input", type=Path, help="video file, transforms.json (or its folder), or InSpatio step-2 folder")
    p.add_argument("-o", "--output", required=True, type=Path, help="world directory to write (replaced atomically)")
    p.add_argument("--depth-model", help="transformers depth-estimation model (id or folder) for inputs without depth")
    p.add_argument("--depth-scale", type=float, default=1.0, help="multiply depth by this (metres per depth unit)")
    p.add_argument("--poses", type=Path, help="camera poses file for a plain video (default: static camera)")
    p.add_argument("--fps", type=float, help="resample a plain video to this frame rate")
    p.add_argument("--max-side", type=int, default=960, help="downscale frames so the longer side is at most this")
    p.add_argument("--device", choices=("cpu", "cuda"), help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile the dynamic-detection kernel (auto: on CUDA, and on the CPU for "
                   ">= 640x360 frames when a C++ compiler is present)")
    p.add_argument("--no-source-video", action="store_true", help="do not store the resampled colour as source.mp4")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--text-encoder", type=Path, help="umT5 encoder folder: store the prompt embedding the "
                   "neural generator cross-attends to (prompt_embedding.safetensors)")
    p.add_argument("--prompt", default="", help="with --text-encoder: a caption of the clip (default: empty)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from gen_server.errors import InputError
    from gen_server.world.build import build_world

    if args.fps is not None and not args.fps > 0:
        raise InputError(f"--fps {args.fps}: must be positive")
    if args.output.exists() and not (args.output / "world.json").is_file():
        raise InputError(f"{args.output}: exists and is not a world directory; refusing to replace it")
    if args.text_encoder is not None and not args.text_encoder.is_dir():
        raise InputError(f"{args.text_encoder}: text encoder folder not found (--text-encoder)")
    summary = build_world(args.input, args.output, depth_model=args.depth_model, fps=args.fps,
                          max_side=args.max_side, device=args.device, depth_scale=args.depth_scale,
                          poses=args.poses, progress=not args.quiet,
                          write_source_video=not args.no_source_video,
                          compile={"auto": None, "on": True, "off": False}[args.compile])
    if args.text_encoder is not None:
        _store_prompt_embedding(args.output, args.text_encoder, args.prompt, args.device)
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print("\n".join(summary.lines()))
    return 0


def _store_prompt_embedding(world_dir: Path, encoder_dir: Path, prompt: str, device: str | None) -> None:
    """umT5 embedding of ``prompt`` -> WORLD_DIR/prompt_embedding.safetensors (atomic write)."""
    from gen_server.generators.inspatio.text_embed import PROMPT_FILE, encode_prompt, save_prompt_embedding

    embedding = encode_prompt(prompt, encoder_dir, device or "cpu")
    save_prompt_embedding(world_dir / PROMPT_FILE, embedding, prompt)
