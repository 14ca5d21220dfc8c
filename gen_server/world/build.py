"""``build_world``: input path -> reader -> (depth model) -> fusion -> world directory on disk.

Input kinds, told apart by what is on disk:

* a video file (anything else that is a file) -> ``VideoSource``; needs ``depth_model`` (videos carry
  no depth) and takes optional ``poses`` (else a static camera is assumed);
* ``transforms.json`` or a folder holding one -> ``TransformsJsonSource``;
* an InSpatio-World step-2 folder (``frames/`` + ``depth/`` + ``extrinsic.txt``) -> ``InspatioStep2Source``.

Frames are streamed: decoded, given depth, checked, fused and appended to ``source.mp4`` one at a
time. Everything is written into a temporary folder and renamed at the end (``store.save_world``), so
a failure leaves no output directory behind.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gen_server.errors import InputError
from gen_server.world.frames import FrameSource, SourceFrame

SOURCE_VIDEO = "source.mp4"
STATIC_CAMERA = "static camera (no poses given)"


@dataclass
class BuildSummary:
    """What ``timewalk build`` prints."""

    world_dir: str
    input_kind: str
    frames: int
    width: int
    height: int
    fps: float
    static_points: int
    dynamic_points: int
    seconds: float
    frames_per_second: float
    depth_source: str
    pose_source: str
    device: str

    def as_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        camera = "static camera (no poses given)" if self.pose_source == STATIC_CAMERA else f"poses: {self.pose_source}"
        return [
            f"world: {self.world_dir}",
            f"input: {self.input_kind}, {self.frames} frames {self.width}x{self.height} at {self.fps:g} fps",
            f"depth: {self.depth_source}; {camera}",
            f"static points: {self.static_points:,}; dynamic points: {self.dynamic_points:,} "
            f"({self.dynamic_points / max(self.frames, 1):,.0f} per frame)",
            f"built in {self.seconds:.1f} s ({self.frames_per_second:.1f} frames/s on {self.device})",
        ]


def open_source(input_path: str | Path, fps: float | None = None, max_side: int = 960,
                poses: str | Path | None = None) -> FrameSource:
    """Pick the reader for ``input_path`` by what it is; InputError naming the path if none fits."""
    path = Path(input_path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "transforms.json").is_file():
            path = path / "transforms.json"
        elif (path / "frames").is_dir():
            _no_poses_flag(path, poses)
            from gen_server.world.inspatio_step2 import InspatioStep2Source

            return InspatioStep2Source(path, fps=fps, max_side=max_side)
        else:
            raise InputError(f"{path}: folder holds neither transforms.json nor an InSpatio step-2 layout "
                             "(frames/ + depth/ + extrinsic.txt)")
    if path.suffix.lower() == ".json":
        _no_poses_flag(path, poses)
        if fps is not None:
            raise InputError(f"{path}: --fps does not apply to transforms.json input (its frames carry their times)")
        from gen_server.world.transforms_json import TransformsJsonSource

        return TransformsJsonSource(path, max_side=max_side)
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes), not a video")
    from gen_server.world.video_source import VideoSource

    return VideoSource(path, fps=fps, max_side=max_side, poses=poses)


def _no_poses_flag(path: Path, poses) -> None:
    if poses is not None:
        raise InputError(f"{path}: --poses applies to plain video input only (this input carries its own poses)")


def check_depth(frame: SourceFrame, path: str) -> None:
    """Reject depth that does not fit its frame: wrong size, NaN/inf or negative values."""
    w, h = frame.size
    depth = frame.depth
    if depth.ndim != 2 or depth.shape != (h, w):
        raise InputError(f"{path}: depth of frame {frame.index} is {tuple(depth.shape)} but its colour image is {h}x{w}")
    if not np.isfinite(depth).all():
        raise InputError(f"{path}: depth of frame {frame.index} has NaN or infinite values")
    if (depth < 0).any():
        raise InputError(f"{path}: depth of frame {frame.index} has negative values (min {float(depth.min()):g} m)")


def _with_depth(source: FrameSource, path: str, depth_model, device: str | None, depth_scale: float
                ) -> tuple[Iterator[SourceFrame], str]:
    """Frames with depth (from the input, else from the model) and the manifest's depth_source."""
    if source.info.has_depth:
        def given() -> Iterator[SourceFrame]:
            for frame in source:
                if frame.depth is None:
                    raise InputError(f"{path}: frame {frame.index} has no depth while the others have")
                if depth_scale != 1.0:
                    frame.depth = frame.depth * np.float32(depth_scale)
                check_depth(frame, path)
                yield frame

        return given(), "given"
    if depth_model is None:
        raise InputError(f"{path}: input has no depth; pass --depth-model MODEL (a transformers depth-estimation "
                         "model id or local folder) to estimate it")
    from gen_server.world.depth_model import MonocularDepth

    model = MonocularDepth(depth_model, device, scale=depth_scale)
    # Relative models place the median pixel at depth_scale metres; metric ones are scaled by it.
    factor = np.float32(depth_scale if model.metric else 1.0)

    def estimated() -> Iterator[SourceFrame]:
        for frame in source:
            frame.depth = np.asarray(model.predict(frame.rgb), np.float32) * factor
            check_depth(frame, path)
            yield frame

    return estimated(), str(depth_model)


def build_world(input_path: str | Path, out_dir: str | Path, depth_model: str | None = None, fps: float | None = None,
                max_side: int = 960, device: str | None = None, depth_scale: float = 1.0,
                poses: str | Path | None = None, progress: bool = True, write_source_video: bool = True,
                fusion_config=None, compile: bool | None = None) -> BuildSummary:
    """Build the anchored world state of ``input_path`` into ``out_dir`` (atomic); returns the summary.

    ``compile``: run the dynamic-detection kernel through torch.compile (None: ``fusion.auto_compile``;
    falls back to eager where compiling fails).
    """
    import torch
    from tqdm import tqdm

    from gen_server.world.fusion import WorldFuser, resolve_device
    from gen_server.world.store import save_world

    if not (depth_scale > 0 and math.isfinite(depth_scale)):
        raise InputError(f"--depth-scale {depth_scale}: must be a positive number")
    if max_side < 16:
        raise InputError(f"--max-side {max_side}: must be at least 16")
    dev = resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available (use --device cpu)")
    started = time.perf_counter()
    source = open_source(input_path, fps=fps, max_side=max_side, poses=poses)
    info = source.info
    frames, depth_source = _with_depth(source, str(input_path), depth_model, str(dev), depth_scale)
    pose_source = "given" if info.has_poses else STATIC_CAMERA

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build-", dir=out_dir.parent))
    try:
        if compile is not None:
            from dataclasses import replace

            from gen_server.world.fusion import FusionConfig

            fusion_config = replace(fusion_config or FusionConfig(), compile=compile)
        fuser = WorldFuser(fusion_config, dev)
        writer = None
        bar = tqdm(total=info.frame_count or None, desc="build: depth + fusion", unit="frame", disable=not progress)
        try:
            with torch.inference_mode():
                for frame in frames:
                    if fuser.frame_count and frame.size != fuser.image_size:
                        raise InputError(f"{input_path}: frame {frame.index} is {frame.size[0]}x{frame.size[1]} but "
                                         f"the first frame is {fuser.image_size[0]}x{fuser.image_size[1]}")
                    fuser.add(frame)
                    if write_source_video:
                        writer = writer or _open_video(scratch / SOURCE_VIDEO, frame, info.fps)
                        writer.write(_even_crop(frame.rgb))
                    bar.update(1)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            bar.close()
        if writer is not None:
            writer.close()
        with torch.inference_mode():
            if fuser.frame_count == 0:
                raise InputError(f"{input_path}: no frames")
            source_meta = {
                "path": str(Path(input_path).resolve()),
                "kind": info.kind,
                "depth_source": depth_source,
                "depth_scale": depth_scale,
                "pose_source": pose_source,
                "frame_count": fuser.frame_count,
                "fusion": {"device": str(dev), "static_pixels": fuser.static_pixels,
                           "dynamic_pixels": fuser.dynamic_pixels},
                **({"extra": info.extra} if info.extra else {}),
            }
            world = fuser.finish(info.fps, source_meta)
        extra = {SOURCE_VIDEO: scratch / SOURCE_VIDEO} if writer is not None else None
        for _ in tqdm(range(1), desc="build: save", disable=not progress):
            save_world(world, out_dir, extra_files=extra)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.perf_counter() - started
    w, h = world.image_size
    return BuildSummary(str(out_dir), info.kind, world.frame_count, w, h, world.fps, len(world.static),
                        len(world.dynamic), seconds, world.frame_count / max(seconds, 1e-9), depth_source,
                        pose_source, str(dev))


def _even_crop(rgb: np.ndarray) -> np.ndarray:
    """H.264 (yuv420p) needs even sizes: drop an odd last row/column (top-left pixels keep their place,
    so the stored intrinsics stay valid for the video)."""
    h, w = rgb.shape[:2]
    return rgb[: h - h % 2, : w - w % 2]


def _open_video(path: Path, frame: SourceFrame, fps: float):
    from gen_server.video_io import VideoWriter

    h, w = _even_crop(frame.rgb).shape[:2]
    writer = VideoWriter(path, fps, w, h)
    writer.open()
    return writer
