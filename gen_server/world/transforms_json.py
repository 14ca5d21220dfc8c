"""nerfstudio ``transforms.json`` datasets: frames + intrinsics + camera-to-world poses (+ depth, time).

The file's ``transform_matrix`` is camera-to-world with OpenGL camera axes, which are the OpenXR axes this
project uses, so it is taken as ``world_from_camera`` unchanged (the world frame is the file's).
nerfstudio puts pixel centres at +0.5 (its rays go through ``pixel + 0.5``), OpenCV at integers: the two
helpers below are the only place that half pixel is added or removed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gen_server import cameras
from gen_server.errors import InputError
from gen_server.video_io import output_size
from gen_server.world.frames import FrameSource, FrameSourceInfo, SourceFrame

NERFSTUDIO_PIXEL_CENTRE = 0.5  # nerfstudio/COLMAP: the first pixel's centre is at 0.5


def intrinsics_from_nerfstudio(fl_x: float, fl_y: float, cx: float, cy: float) -> np.ndarray:
    """nerfstudio fl_x, fl_y, cx, cy -> OpenCV K (3, 3). Convention: OpenCV pixel centres at integers."""
    return np.array([[fl_x, 0.0, cx - NERFSTUDIO_PIXEL_CENTRE],
                     [0.0, fl_y, cy - NERFSTUDIO_PIXEL_CENTRE],
                     [0.0, 0.0, 1.0]])


def nerfstudio_from_intrinsics(intrinsics: np.ndarray) -> dict[str, float]:
    """OpenCV K (3, 3) -> {"fl_x", "fl_y", "cx", "cy"} for transforms.json. Inverse of the above."""
    k = np.asarray(intrinsics, np.float64)
    if k.shape != (3, 3):
        raise ValueError(f"intrinsics: expected (3, 3), got {k.shape}")
    return {"fl_x": float(k[0, 0]), "fl_y": float(k[1, 1]),
            "cx": float(k[0, 2] + NERFSTUDIO_PIXEL_CENTRE), "cy": float(k[1, 2] + NERFSTUDIO_PIXEL_CENTRE)}


# ----------------------------------------------------------------------------------------------------
# The reader
# ----------------------------------------------------------------------------------------------------
DEFAULT_FPS = 24.0
DEFAULT_DEPTH_SCALE = 0.001  # nerfstudio's default depth_unit_scale_factor: 16-bit PNG in millimetres
_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")


@dataclass
class _FrameEntry:
    index: int  # position in the file's frames list
    time: float | None
    image: Path
    depth: Path | None
    mask: Path | None
    intrinsics: np.ndarray  # OpenCV K for (w, h)
    size: tuple[int, int]  # (w, h) the intrinsics refer to
    pose: np.ndarray  # world_from_camera (4, 4), OpenXR axes


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise InputError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def validated_pose(value, where: str, name: str = "transform_matrix") -> np.ndarray:
    """A 4x4 (or 3x4) rigid transform from JSON/text values, or an InputError saying what is wrong."""
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {name} is not a numeric matrix") from None
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise InputError(f"{where}: {name} must be 4x4 (or 3x4), got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise InputError(f"{where}: {name} has non-finite values")
    r = m[:3, :3]
    if (np.abs(r @ r.T - np.eye(3)).max() > 1e-3 or abs(np.linalg.det(r) - 1.0) > 1e-3
            or np.abs(m[3] - [0, 0, 0, 1]).max() > 1e-6):
        raise InputError(f"{where}: {name} is not a rigid transform (rotation must be orthonormal, "
                         f"det +1, last row 0 0 0 1)")
    return m


def _existing(folder: Path, rel, where: str, key: str) -> Path:
    if not isinstance(rel, str) or not rel:
        raise InputError(f"{where}: {key} must be a non-empty string")
    p = (folder / rel).resolve()
    if not p.exists() and p.suffix == "":  # NeRF-synthetic style paths leave out ".png"
        p = p.with_suffix(".png")
    if not p.is_file():
        raise InputError(f"{where}: {key} {rel!r} not found ({p})")
    return p


def _image_size(path: Path, where: str) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{where}: {path} is not a readable image ({e})") from None


class TransformsJsonSource(FrameSource):
    """A nerfstudio ``transforms.json`` (the file or its folder) as a :class:`FrameSource`.

    Everything checkable without decoding pixels (JSON, keys, poses, files, image/depth sizes) is checked here,
    so a bad dataset fails before any work starts; depth values are checked as frames stream.
    Frames are sorted by ``time`` when every frame has one (else file order, time = index / fps); images whose
    long side exceeds ``max_side`` are scaled down (intrinsics scaled to match, depth and masks by nearest).
    """

    def __init__(self, path: str | os.PathLike, max_side: int | None = 960):
        path = Path(path)
        if path.is_dir():
            path = path / "transforms.json"
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        self.path, self.folder, self.max_side = path, path.parent, max_side
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: cannot read ({e})") from None
        if not isinstance(meta, dict):
            raise InputError(f"{path}: expected a JSON object at the top level")
        frames = meta.get("frames")
        if not isinstance(frames, list) or not frames:
            raise InputError(f"{path}: missing or empty 'frames' list")
        self.fps = _number(meta["fps"], f"{path}: fps") if "fps" in meta else None
        if self.fps is not None and self.fps <= 0:
            raise InputError(f"{path}: fps must be positive, got {self.fps}")
        self.depth_scale = _number(meta.get("depth_unit_scale_factor", DEFAULT_DEPTH_SCALE),
                                   f"{path}: depth_unit_scale_factor")
        entries = [self._entry(meta, f, i) for i, f in enumerate(frames)]
        timed = [e.time is not None for e in entries]
        if any(timed) and not all(timed):
            missing = timed.index(False)
            raise InputError(f"{path}: frame {missing}: has no 'time' while other frames do")
        if all(timed):
            entries.sort(key=lambda e: e.time)
            if self.fps is None and len(entries) > 1:
                dt = np.diff([e.time for e in entries])
                self.fps = 1.0 / float(np.median(dt)) if np.median(dt) > 0 else None
        self.fps = self.fps or DEFAULT_FPS
        if not all(timed):
            for e in entries:
                e.time = e.index / self.fps
        with_depth = [e.depth is not None for e in entries]
        if any(with_depth) and not all(with_depth):
            raise InputError(f"{path}: frame {with_depth.index(False)}: no depth_file_path while other frames have one")
        self.entries = entries
        w, h = entries[0].size
        out_w, out_h = output_size(w, h, max_side)
        self.info = FrameSourceInfo(
            path=str(path), kind="transforms_json", fps=self.fps, frame_count=len(entries), width=out_w,
            height=out_h, has_depth=all(with_depth), has_poses=True,
            extra={"world": "the file's world frame; transform_matrix used as OpenXR world_from_camera",
                   "depth_unit_scale_factor": self.depth_scale,
                   "has_dynamic_masks": all(e.mask is not None for e in entries)},
        )

    # -- parsing --------------------------------------------------------------------------------------
    def _entry(self, meta: dict, frame, i: int) -> _FrameEntry:
        where = f"{self.path}: frame {i}"
        if not isinstance(frame, dict):
            raise InputError(f"{where}: expected an object")
        if "file_path" not in frame:
            raise InputError(f"{where}: missing 'file_path'")
        if "transform_matrix" not in frame:
            raise InputError(f"{where}: missing 'transform_matrix'")
        image = _existing(self.folder, frame["file_path"], where, "file_path")
        img_w, img_h = _image_size(image, where)
        merged = {**{k: meta[k] for k in _INTRINSIC_KEYS + ("camera_angle_x",) if k in meta},
                  **{k: frame[k] for k in _INTRINSIC_KEYS + ("camera_angle_x",) if k in frame}}
        w = int(_number(merged.get("w", img_w), f"{where}: w"))
        h = int(_number(merged.get("h", img_h), f"{where}: h"))
        if "fl_x" in merged:
            fl_x = _number(merged["fl_x"], f"{where}: fl_x")
        elif "camera_angle_x" in merged:  # NeRF-synthetic style
            fl_x = 0.5 * w / np.tan(0.5 * _number(merged["camera_angle_x"], f"{where}: camera_angle_x"))
        else:
            raise InputError(f"{where}: missing intrinsics 'fl_x' (top level or per frame)")
        fl_y = _number(merged.get("fl_y", fl_x), f"{where}: fl_y")
        cx = _number(merged.get("cx", 0.5 * w), f"{where}: cx")
        cy = _number(merged.get("cy", 0.5 * h), f"{where}: cy")
        if fl_x <= 0 or fl_y <= 0 or w <= 0 or h <= 0:
            raise InputError(f"{where}: focal lengths and w/h must be positive")
        k = intrinsics_from_nerfstudio(fl_x, fl_y, cx, cy)
        if (img_w, img_h) != (w, h):  # e.g. images_2/ with full-size intrinsics: same aspect required
            if abs(img_w / w - img_h / h) > 0.01 * img_w / w:
                raise InputError(f"{where}: image {image.name} is {img_w}x{img_h} but w/h say {w}x{h}")
            k = cameras.scale_intrinsics(k, img_w / w, img_h / h)
        pose = validated_pose(frame["transform_matrix"], where)
        time = _number(frame["time"], f"{where}: time") if "time" in frame else None
        depth = mask = None
        if frame.get("depth_file_path") is not None:
            depth = _existing(self.folder, frame["depth_file_path"], where, "depth_file_path")
            if depth.suffix.lower() == ".npy":
                try:
                    shape = np.load(depth, mmap_mode="r").shape
                except (ValueError, OSError) as e:
                    raise InputError(f"{where}: {depth} is not a readable .npy array ({e})") from None
                dsize = (shape[1], shape[0]) if len(shape) == 2 else None
            else:
                dsize = _image_size(depth, where)
            if dsize != (img_w, img_h):
                raise InputError(f"{where}: depth {depth.name} size {dsize} does not match image "
                                 f"{image.name} size {(img_w, img_h)}")
        if frame.get("dynamic_mask_path") is not None:
            mask = _existing(self.folder, frame["dynamic_mask_path"], where, "dynamic_mask_path")
        return _FrameEntry(i, time, image, depth, mask, k, (img_w, img_h), pose)

    # -- loading --------------------------------------------------------------------------------------
    def _load_depth(self, e: _FrameEntry) -> np.ndarray:
        from PIL import Image

        where = f"{self.path}: frame {e.index}: depth {e.depth}"
        if e.depth.suffix.lower() == ".npy":
            depth = np.load(e.depth).astype(np.float32)
        else:
            with Image.open(e.depth) as im:
                raw = np.asarray(im)
            if raw.ndim != 2:
                raise InputError(f"{where}: expected a single-channel (16-bit) depth image, got shape {raw.shape}")
            depth = raw.astype(np.float32) * np.float32(self.depth_scale)
        return validated_depth(depth, where)

    def _out_size(self, e: _FrameEntry) -> tuple[int, int]:
        return output_size(*e.size, self.max_side)

    def __iter__(self) -> Iterator[SourceFrame]:
        from PIL import Image

        for out_index, e in enumerate(self.entries):
            ow, oh = self._out_size(e)
            with Image.open(e.image) as im:
                im = im.convert("RGB")
                if (ow, oh) != e.size:
                    im = im.resize((ow, oh), Image.Resampling.LANCZOS)
                rgb = np.asarray(im, dtype=np.uint8)
            k = e.intrinsics
            depth = None
            if e.depth is not None:
                depth = self._load_depth(e)
            if (ow, oh) != e.size:
                k = cameras.scale_intrinsics(k, ow / e.size[0], oh / e.size[1])
                if depth is not None:
                    depth = nearest_resize(depth, ow, oh)
            yield SourceFrame(index=out_index, time=float(e.time), rgb=rgb, intrinsics=k,
                              world_from_camera=e.pose.copy(), depth=depth)

    def frame_masks(self) -> Iterator[np.ndarray | None]:
        """Ground-truth moving-pixel masks (bool (H, W) at the output size) in frame order, None where absent."""
        from PIL import Image

        for e in self.entries:
            if e.mask is None:
                yield None
                continue
            with Image.open(e.mask) as im:
                m = np.asarray(im.convert("L")) > 127
            ow, oh = self._out_size(e)
            yield nearest_resize(m, ow, oh) if (ow, oh) != e.size else m


def validated_depth(depth: np.ndarray, where: str) -> np.ndarray:
    """Depth in metres with 0 = unknown; NaN, infinite or negative values are an InputError."""
    if not np.isfinite(depth).all():
        raise InputError(f"{where}: contains NaN or infinite values (use 0 for unknown depth)")
    if (depth < 0).any():
        raise InputError(f"{where}: contains negative depth (use 0 for unknown depth)")
    return depth


def nearest_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize by pixel centres (never mixes depths across edges)."""
    h, w = image.shape[:2]
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return image[rows[:, None], cols[None, :]]
