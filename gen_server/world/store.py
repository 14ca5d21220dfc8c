"""The on-disk world directory: ``world.json`` (versioned manifest) + ``layers.safetensors``.

Written into a temporary sibling folder and renamed at the end, so a crash never leaves a half-written
world. Loading checks the format version and the checksum of every file the manifest lists.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from gen_server.errors import InputError
from gen_server.world.state import PointLayer, WorldState

FORMAT_VERSION = 1
MANIFEST = "world.json"
LAYERS = "layers.safetensors"


class WorldFormatError(InputError):
    """A world directory that cannot be loaded; the message names the path and the problem."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tensors(world: WorldState) -> dict[str, np.ndarray]:
    out = {}
    for name, layer in (("static", world.static), ("dynamic", world.dynamic)):
        for field_ in ("positions", "colors", "radii", "confidence"):
            out[f"{name}.{field_}"] = np.ascontiguousarray(getattr(layer, field_))
    out["dynamic_offsets"] = world.dynamic_offsets.astype(np.int64)
    out["times"] = world.times.astype(np.float64)
    out["camera_poses"] = world.camera_poses.astype(np.float64)
    out["intrinsics"] = world.intrinsics.astype(np.float64)
    return out


def manifest_for(world: WorldState, files: dict[str, str], extra: dict | None = None) -> dict:
    lo, hi = world.bounds()
    return {
        "format": "timewalk-world",
        "format_version": FORMAT_VERSION,
        "fps": world.fps,
        "frame_count": world.frame_count,
        "duration": world.duration,
        "image_size": list(world.image_size),
        "intrinsics": world.intrinsics[0].tolist(),
        "bounds": {"min": lo.tolist(), "max": hi.tolist()},
        "source": world.source,
        "layers": {
            "static_points": len(world.static),
            "dynamic_points": len(world.dynamic),
            "dynamic_points_per_frame_max": int(np.diff(world.dynamic_offsets).max(initial=0)),
        },
        "files": files,  # name -> sha256
        **(extra or {}),
    }


def save_world(world: WorldState, out_dir: str | os.PathLike, extra_files: dict[str, Path] | None = None,
               extra_manifest: dict | None = None) -> Path:
    """Write ``world`` to ``out_dir`` atomically (temp folder + rename). Returns the final path.

    ``extra_files`` (name -> existing file) are moved in and checksummed too (e.g. ``source.mp4``).
    An existing ``out_dir`` is replaced only once the new one is complete.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        save_file(_tensors(world), str(tmp / LAYERS))
        for name, src in (extra_files or {}).items():
            shutil.move(str(src), tmp / name)
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        manifest = manifest_for(world, files, extra_manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_manifest(world_dir: str | os.PathLike) -> dict:
    """Parse and version-check ``WORLD_DIR/world.json`` (no checksum pass)."""
    world_dir = Path(world_dir)
    path = world_dir / MANIFEST
    if not world_dir.is_dir():
        raise WorldFormatError(f"{world_dir}: not a world directory (no such folder)")
    if not path.is_file():
        raise WorldFormatError(f"{path}: missing; {world_dir} is not a timewalk world (run `timewalk build`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WorldFormatError(f"{path}: damaged manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "timewalk-world":
        raise WorldFormatError(f"{path}: not a timewalk world manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise WorldFormatError(f"{path}: format_version missing or not an integer")
    if version > FORMAT_VERSION:
        raise WorldFormatError(f"{path}: format version {version} is newer than this timewalk reads ({FORMAT_VERSION}); upgrade timewalk")
    if version < 1:
        raise WorldFormatError(f"{path}: invalid format version {version}")
    return manifest


def verify_files(world_dir: str | os.PathLike, manifest: dict) -> None:
    world_dir = Path(world_dir)
    files = manifest.get("files")
    if not isinstance(files, dict) or LAYERS not in files:
        raise WorldFormatError(f"{world_dir / MANIFEST}: file list missing {LAYERS}")
    for name, digest in files.items():
        path = world_dir / name
        if not path.is_file():
            raise WorldFormatError(f"{path}: missing (listed in {MANIFEST})")
        if _sha256(path) != digest:
            raise WorldFormatError(f"{path}: checksum mismatch (file damaged or changed after build)")


def load_world(world_dir: str | os.PathLike, verify: bool = True) -> WorldState:
    """Load a world directory; raises :class:`WorldFormatError` naming the file and the problem."""
    world_dir = Path(world_dir)
    manifest = read_manifest(world_dir)
    if verify:
        verify_files(world_dir, manifest)
    try:
        t = load_file(str(world_dir / LAYERS))
    except Exception as e:  # safetensors raises several types for damaged files
        raise WorldFormatError(f"{world_dir / LAYERS}: unreadable ({e})") from None

    def layer(name: str) -> PointLayer:
        return PointLayer(*(t[f"{name}.{f}"] for f in ("positions", "colors", "radii", "confidence")))

    try:
        return WorldState(
            static=layer("static"),
            dynamic=layer("dynamic"),
            dynamic_offsets=t["dynamic_offsets"],
            times=t["times"],
            fps=float(manifest["fps"]),
            camera_poses=t["camera_poses"],
            intrinsics=t["intrinsics"],
            image_size=tuple(int(v) for v in manifest["image_size"]),
            source=manifest.get("source", {}),
        )
    except (KeyError, ValueError) as e:
        raise WorldFormatError(f"{world_dir / LAYERS}: inconsistent contents ({e})") from None
