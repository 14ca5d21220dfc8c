"""``timewalk info WORLD_DIR [--json]``: print a world's summary (checks the manifest and checksums)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="timewalk info", description="Print a world directory's summary.")
    p.add_argument("world", type=Path, help="world directory (from `timewalk build`)")
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    p.add_argument("--no-verify", action="store_true", help="skip the file checksum pass")
    return p


def summary_lines(world_dir: Path, manifest: dict) -> list[str]:
    source, layers, bounds = manifest.get("source", {}), manifest.get("layers", {}), manifest.get("bounds", {})
    w, h = manifest.get("image_size", ["?", "?"])
    lo, hi = bounds.get("min", [0, 0, 0]), bounds.get("max", [0, 0, 0])
    size = " x ".join(f"{b - a:.2f}" for a, b in zip(lo, hi))
    pose = source.get("pose_source", "?")
    return [
        f"world: {world_dir} (format {manifest['format_version']})",
        f"source: {source.get('path', '?')} ({source.get('kind', '?')})",
        f"frames: {manifest.get('frame_count')} at {manifest.get('fps', 0):g} fps, {manifest.get('duration', 0):.2f} s, {w}x{h}",
        f"depth: {source.get('depth_source', '?')}; poses: {pose}",
        f"static points: {layers.get('static_points', 0):,}; dynamic points: {layers.get('dynamic_points', 0):,} "
        f"(max {layers.get('dynamic_points_per_frame_max', 0):,} per frame)",
        f"bounds: min {[round(v, 3) for v in lo]} max {[round(v, 3) for v in hi]} (size {size} m)",
        "files: " + ", ".join(sorted(manifest.get("files", {}))),
    ]


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from gen_server.world.store import read_manifest, verify_files

    manifest = read_manifest(args.world)
    if not args.no_verify:
        verify_files(args.world, manifest)
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        print("\n".join(summary_lines(args.world, manifest)))
    return 0
