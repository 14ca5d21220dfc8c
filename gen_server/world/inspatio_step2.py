"""InSpatio-World step-2 folders (their DA3 depth + pose output) as a :class:`FrameSource`.

Layout (facts read from the public inspatio/inspatio-world code):

* ``frames/0000.jpg ...`` RGB frames;
* ``depth/0000.png ...`` one float32 metric z-depth per pixel, its 4 bytes (little-endian, as numpy writes
  them on x86) stored as the R, G, B, A channels of an 8-bit RGBA PNG of the same width and height; 0 = invalid;
* ``intrinsic.txt``: ``np.savetxt`` of each frame's 3x3 K, i.e. 3 text rows of 3 numbers per frame (a frame
  on one row of 9 numbers is accepted too), for the frames' pixel size;
* ``extrinsic.txt``: 3 rows of 4 numbers per frame (or one row of 12): world-to-camera 3x4 where both the
  camera and the world use OpenCV axes (x right, y down, z forward).

Poses become OpenXR ``world_from_camera`` through gen_server.cameras; there is no frame rate in the folder,
so ``fps`` defaults to 24 (recorded in ``info.extra``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gen_server import cameras
from gen_server.errors import InputError
from gen_server.video_io import output_size
from gen_server.world.frames import FrameSource, FrameSourceInfo, SourceFrame
from gen_server.world.transforms_json import nearest_resize, validated_depth, validated_pose

DEFAULT_FPS = 24.0
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def decode_rgba_depth(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 -> (H, W) float32: each pixel's 4 channel bytes are one little-endian float32."""
    rgba = np.ascontiguousarray(rgba, dtype=np.uint8)
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"rgba depth: expected (H, W, 4) uint8, got {rgba.shape}")
    return rgba.view("<f4")[..., 0].astype(np.float32)


def encode_rgba_depth(depth: np.ndarray) -> np.ndarray:
    """(H, W) float32 depth -> (H, W, 4) uint8 RGBA bytes. Inverse of :func:`decode_rgba_depth`."""
    depth = np.ascontiguousarray(depth, dtype="<f4")
    if depth.ndim != 2:
        raise ValueError(f"depth: expected (H, W), got {depth.shape}")
    return depth[..., None].view(np.uint8).reshape(depth.shape[0], depth.shape[1], 4)


def _matrices(path: Path, rows: int, cols: int) -> np.ndarray:
    """Per-frame (rows x cols) matrices from a text file of `rows` lines of `cols` numbers per frame,
    or of one line of rows*cols numbers per frame."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        data = np.loadtxt(path, ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise InputError(f"{path}: not a table of numbers ({e})") from None
    if data.size == 0:
        raise InputError(f"{path}: is empty")
    if data.shape[1] == rows * cols:
        return data.reshape(-1, rows, cols)
    if data.shape[1] != cols:
        raise InputError(f"{path}: expected {cols} numbers per line ({rows} lines per frame) or "
                         f"{rows * cols} per line, got {data.shape[1]}")
    if data.shape[0] % rows:
        raise InputError(f"{path}: {data.shape[0]} lines is not a multiple of {rows} (one {rows}x{cols} per frame)")
    return data.reshape(-1, rows, cols)


class InspatioStep2Source(FrameSource):
    """An InSpatio-World step-2 output folder (frames/, depth/, intrinsic.txt, extrinsic.txt)."""

    def __init__(self, folder: str | os.PathLike, fps: float | None = None, max_side: int | None = 960):
        from PIL import Image, UnidentifiedImageError

        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder (expected an InSpatio-World step-2 output folder)")
        self.folder, self.max_side = folder, max_side
        self.fps = float(fps) if fps else DEFAULT_FPS
        self.images = self._listing(folder / "frames", _IMAGE_SUFFIXES)
        self.depths = self._listing(folder / "depth", (".png",))
        ks = _matrices(folder / "intrinsic.txt", 3, 3)
        extr = _matrices(folder / "extrinsic.txt", 3, 4)
        counts = {"frames/": len(self.images), "depth/": len(self.depths), "intrinsic.txt": len(ks),
                  "extrinsic.txt": len(extr)}
        if len(set(counts.values())) != 1:
            raise InputError(f"{folder}: frame counts differ: " + ", ".join(f"{k} {v}" for k, v in counts.items()))

        self.intrinsics, self.poses, self.sizes = [], [], []
        for i, (img, dep, k, e) in enumerate(zip(self.images, self.depths, ks, extr)):
            where = f"{folder}: frame {i}"
            try:
                with Image.open(img) as im:
                    size = im.size
                with Image.open(dep) as im:
                    dsize, dmode = im.size, im.mode
            except (UnidentifiedImageError, OSError) as err:
                raise InputError(f"{where}: unreadable image ({err})") from None
            if dmode != "RGBA":
                raise InputError(f"{where}: depth {dep.name} is {dmode}, expected RGBA (float32 bytes)")
            if dsize != size:
                raise InputError(f"{where}: depth {dep.name} size {dsize} does not match frame {img.name} size {size}")
            if not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0 or np.abs(k[2] - [0, 0, 1]).max() > 1e-6:
                raise InputError(f"{folder / 'intrinsic.txt'}: frame {i}: not a valid intrinsic matrix "
                                 f"(positive focal lengths, last row 0 0 1)")
            cv_camera_from_cv_world = validated_pose(e, f"{folder / 'extrinsic.txt'}: frame {i}", "extrinsic")
            pose = cameras.xr_world_from_cv_world_pose(cameras.invert_rigid(cv_camera_from_cv_world))
            self.intrinsics.append(k)
            self.poses.append(pose)
            self.sizes.append(size)
        w, h = output_size(*self.sizes[0], max_side)
        self.info = FrameSourceInfo(
            path=str(folder), kind="inspatio_step2", fps=self.fps, frame_count=len(self.images), width=w,
            height=h, has_depth=True, has_poses=True,
            extra={"fps_source": "given" if fps else f"assumed {DEFAULT_FPS} (step-2 folders carry no frame rate)",
                   "world": "OpenXR axes of the step-2 OpenCV world (frame 0 camera near the origin)"},
        )

    @staticmethod
    def _listing(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
        if not files:
            raise InputError(f"{folder}: no {'/'.join(suffixes)} files")
        return files

    def __iter__(self) -> Iterator[SourceFrame]:
        from PIL import Image

        for i, (img, dep) in enumerate(zip(self.images, self.depths)):
            size = self.sizes[i]
            ow, oh = output_size(*size, self.max_side)
            with Image.open(img) as im:
                im = im.convert("RGB")
                if (ow, oh) != size:
                    im = im.resize((ow, oh), Image.Resampling.LANCZOS)
                rgb = np.asarray(im, dtype=np.uint8)
            with Image.open(dep) as im:
                depth = decode_rgba_depth(np.asarray(im))
            depth = validated_depth(depth, f"{self.folder}: frame {i}: depth {dep.name}")
            k = self.intrinsics[i]
            if (ow, oh) != size:
                k = cameras.scale_intrinsics(k, ow / size[0], oh / size[1])
                depth = nearest_resize(depth, ow, oh)
            yield SourceFrame(index=i, time=i / self.fps, rgb=rgb, intrinsics=k.copy(),
                              world_from_camera=self.poses[i].copy(), depth=depth)
