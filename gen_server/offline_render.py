"""Offline shot rendering: a world + a camera path + time controls -> H.264 mp4 (and optional PNGs).

World time per output frame comes from :func:`output_taus` (rate, reverse, freeze) or from the camera
path's own normalised times; frames are rendered by :class:`gen_server.render.renderer.Renderer`.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gen_server import cameras
from gen_server.errors import InputError
from gen_server.trajectory import CameraPath
from gen_server.world.state import WorldState


@dataclass(frozen=True)
class TimeControls:
    """``rate``: source seconds per output second (> 0); ``reverse`` plays from the last frame backwards;
    ``freeze_at`` (source seconds) holds that time for ``freeze_frames`` output frames while the camera
    keeps moving."""

    fps: float
    rate: float = 1.0
    reverse: bool = False
    freeze_at: float | None = None
    freeze_frames: int = 0

    def validate(self, world: WorldState) -> None:
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise InputError(f"--fps: must be positive, got {self.fps}")
        if not (math.isfinite(self.rate) and 0 < self.rate <= 64):
            raise InputError(f"--time-rate: must be in (0, 64] (use --reverse to play backwards), got {self.rate}")
        if self.freeze_frames < 0:
            raise InputError(f"--freeze-frames: must be >= 0, got {self.freeze_frames}")
        if self.freeze_at is not None:
            t0, t1 = float(world.times[0]), float(world.times[-1])
            if not (math.isfinite(self.freeze_at) and t0 <= self.freeze_at <= t1):
                raise InputError(f"--freeze-at: {self.freeze_at} s is outside the clip [{t0:g}, {t1:g}] s")


def default_frame_count(world: WorldState, controls: TimeControls) -> int:
    """Frames needed to play the whole clip once at the controls' rate, plus the frozen frames."""
    span = float(world.times[-1] - world.times[0])
    frozen = controls.freeze_frames if controls.freeze_at is not None else 0
    return int(math.floor(span * controls.fps / controls.rate + 1e-9)) + 1 + frozen


def output_taus(frames: int, world: WorldState, controls: TimeControls) -> np.ndarray:
    """World time (s) of each of ``frames`` output frames; held at the clip's ends."""
    t0, t1 = float(world.times[0]), float(world.times[-1])
    taus, elapsed, frozen = [], 0.0, 0
    for _ in range(frames):
        tau = t1 - elapsed if controls.reverse else t0 + elapsed
        tau = min(max(tau, t0), t1)
        at = controls.freeze_at
        reached = at is not None and (tau <= at + 1e-9 if controls.reverse else tau >= at - 1e-9)
        if reached and frozen < controls.freeze_frames:
            taus.append(at)
            frozen += 1
            continue
        taus.append(tau)
        elapsed += controls.rate / controls.fps
    return np.array(taus)


def path_taus(path: CameraPath, world: WorldState, controls: TimeControls) -> np.ndarray:
    """Per-frame world times: the path's own normalised times if it has them, else the time controls."""
    if path.times is None:
        return output_taus(len(path), world, controls)
    t0, t1 = float(world.times[0]), float(world.times[-1])
    times = 1.0 - path.times if controls.reverse else path.times
    return t0 + times * (t1 - t0)


def depth_png_mm(depth_m: np.ndarray) -> np.ndarray:
    """z-depth metres -> uint16 millimetres (0 = unknown, clipped at 65.535 m)."""
    return np.clip(np.rint(np.nan_to_num(depth_m) * 1000.0), 0, 65535).astype(np.uint16)


@dataclass(frozen=True)
class OutputOptions:
    out_path: Path
    stereo: bool = False
    ipd: float = 0.064
    frames_dir: Path | None = None
    depth_dir: Path | None = None


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)


def render_path(world: WorldState, path: CameraPath, taus: np.ndarray, options: OutputOptions, fps: float, device: str | None = None, progress: bool = True, generator=None) -> int:
    """Render every frame of ``path`` at ``taus`` and write the mp4 (+ PNG folders). Returns frames written.

    Outputs appear only when complete: the mp4 through VideoWriter's atomic rename, PNG folders written to
    a temporary sibling folder and renamed at the end. ``generator`` (anything with ``render_views``, see
    ``gen_server.generators``) defaults to the geometric renderer.
    """
    from tqdm import tqdm

    from gen_server.generators import make_generator
    from gen_server.video_io import VideoWriter

    if len(taus) != len(path):
        raise ValueError(f"render_path: {len(path)} cameras but {len(taus)} times")
    generator = generator or make_generator("geometric", world, device)
    w, h = path.width, path.height
    out_w = 2 * w if options.stereo else w
    if out_w % 2 or h % 2:
        raise InputError(f"output size {out_w}x{h}: H.264 (yuv420p) needs even width and height (use --width/--height)")
    if options.stereo and not (math.isfinite(options.ipd) and 0 <= options.ipd < 1):
        raise InputError(f"--ipd: expected metres in [0, 1), got {options.ipd}")
    temp_dirs = {}
    for name, final in (("frames", options.frames_dir), ("depth", options.depth_dir)):
        if final is not None:
            final.parent.mkdir(parents=True, exist_ok=True)
            temp_dirs[name] = (Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent)), final)
    try:
        with VideoWriter(options.out_path, fps, out_w, h) as writer:
            for i in tqdm(range(len(path)), desc="render", unit="frame", disable=not progress):
                if options.stereo:
                    poses = np.stack(cameras.eye_poses(path.world_from_camera[i], options.ipd))
                else:
                    poses = path.world_from_camera[i : i + 1]
                fov = cameras.intrinsics_to_fov(path.intrinsics[i], w, h)
                out = generator.render_views(poses, [fov] * len(poses), w, h, float(taus[i]))
                color = np.concatenate(list(out.color.cpu().numpy()), axis=1)  # eyes side by side
                writer.write(color)
                if "frames" in temp_dirs:
                    _write_png(temp_dirs["frames"][0] / f"frame_{i:05d}.png", color)
                if "depth" in temp_dirs:
                    depth = np.concatenate(list(out.depth.cpu().numpy()), axis=1)
                    _write_png(temp_dirs["depth"][0] / f"frame_{i:05d}.png", depth_png_mm(depth))
        for temp, final in temp_dirs.values():
            if final.exists():
                shutil.rmtree(final)
            os.replace(temp, final)
    finally:
        for temp, _ in temp_dirs.values():
            if temp.exists():
                shutil.rmtree(temp, ignore_errors=True)
    return len(path)
