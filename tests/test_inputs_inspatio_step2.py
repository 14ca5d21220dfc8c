"""InSpatio-World step-2 folders: a folder written here by a small writer that follows their format (np.savetxt
3x3 K and 3x4 world-to-camera per frame in OpenCV axes, float32 depth bytes as RGBA PNG) is read back with
exact poses/intrinsics/depth in OpenXR conventions; every bad folder is rejected naming the file."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from gen_server import cameras
from gen_server.errors import InputError
from gen_server.world.inspatio_step2 import InspatioStep2Source, decode_rgba_depth, encode_rgba_depth
from gen_server.world.synth import SyntheticScene

W, H, N = 64, 48, 4
FLIP = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenXR <-> OpenCV axes, written out independently of cameras.py


def write_step2(folder, frames):
    """frames: list of (rgb, depth, K, xr_world_from_camera). Writes their layout with their conventions."""
    for sub in ("frames", "depth"):
        (folder / sub).mkdir(parents=True)
    with open(folder / "intrinsic.txt", "w") as fi, open(folder / "extrinsic.txt", "w") as fe:
        for i, (rgb, depth, k, pose) in enumerate(frames):
            Image.fromarray(rgb).save(folder / "frames" / f"{i:04d}.jpg", quality=95)
            raw = np.frombuffer(depth.astype("<f4").tobytes(), np.uint8).reshape(depth.shape[0], depth.shape[1], 4)
            Image.fromarray(raw, mode="RGBA").save(folder / "depth" / f"{i:04d}.png", compress_level=0)
            np.savetxt(fi, k)
            cv_world_from_cv_cam = FLIP @ pose @ FLIP  # both world and camera in OpenCV axes
            np.savetxt(fe, np.linalg.inv(cv_world_from_cv_cam)[:3, :])
    return folder


@pytest.fixture(scope="module")
def truth():
    scene = SyntheticScene(0)
    k = scene.default_intrinsics(W, H)
    out = []
    for i in range(N):
        t = i / 24
        pose = scene.camera_path(t)
        rgb, depth, _ = scene.render(pose, k, W, H, t)
        out.append((rgb, depth, k, pose))
    return out


@pytest.fixture
def folder(tmp_path, truth):
    return write_step2(tmp_path / "step2", truth)


def test_rgba_depth_codec_bytes():
    d = np.array([[1.0, 2.5], [0.0, 1e-3]], np.float32)
    rgba = encode_rgba_depth(d)
    assert rgba.shape == (2, 2, 4) and list(rgba[0, 0]) == [0, 0, 0x80, 0x3F]  # 1.0f little-endian
    assert np.array_equal(decode_rgba_depth(rgba), d)


def test_read_back_exact(folder, truth):
    src = InspatioStep2Source(folder)
    info = src.info
    assert (info.kind, info.frame_count, info.width, info.height, info.fps) == ("inspatio_step2", N, W, H, 24.0)
    assert "assumed 24" in info.extra["fps_source"]
    frames = list(src)
    for f, (rgb, depth, k, pose) in zip(frames, truth):
        np.testing.assert_allclose(f.world_from_camera, pose, atol=1e-12)
        np.testing.assert_allclose(f.intrinsics, k, atol=1e-12)
        assert f.depth.dtype == np.float32 and np.array_equal(f.depth, depth)
        assert np.abs(f.rgb.astype(float) - rgb).mean() < 6  # JPEG
        assert f.time == pytest.approx(f.index / 24)
    # Geometry through the reader's output: the bottom rows are floor, y == 0 in the OpenXR world.
    pts = cameras.unproject_depth(frames[2].depth, frames[2].intrinsics, frames[2].world_from_camera)
    assert np.nanmax(np.abs(pts[-6:, :, 1])) < 1e-5


def test_axis_conventions(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    depth = np.ones((8, 8), np.float32)
    k = np.array([[8.0, 0, 3.5], [0, 8.0, 3.5], [0, 0, 1]])
    folder = tmp_path / "s"
    (folder / "frames").mkdir(parents=True)
    (folder / "depth").mkdir()
    for i in range(2):
        Image.fromarray(rgb).save(folder / "frames" / f"{i:04d}.jpg")
        Image.fromarray(encode_rgba_depth(depth), mode="RGBA").save(folder / "depth" / f"{i:04d}.png")
    (folder / "intrinsic.txt").write_text("\n".join(" ".join(map(str, k.ravel())) for _ in range(2)))  # 9/line
    # Frame 1: camera centre at OpenCV world (1, 2, 3): w2c translation = -R^T c with R = I.
    (folder / "extrinsic.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n1 0 0 -1\n0 1 0 -2\n0 0 1 -3\n")
    f0, f1 = list(InspatioStep2Source(folder, fps=10))
    np.testing.assert_allclose(f0.world_from_camera, np.eye(4))
    np.testing.assert_allclose(f1.world_from_camera[:3, 3], [1.0, -2.0, -3.0])  # y down -> up, z fwd -> -z
    assert f1.time == pytest.approx(0.1)


def _expect(folder, words, iterate=False):
    with pytest.raises(InputError) as e:
        src = InspatioStep2Source(folder)
        if iterate:
            list(src)
    msg = str(e.value)
    assert words in msg and str(folder) in msg and "\n" not in msg, (words, msg)
    return msg


def test_bad_folders_rejected(tmp_path, truth):
    base = write_step2(tmp_path / "base", truth)

    def variant(name, fn):
        dst = tmp_path / name
        shutil.copytree(base, dst)
        fn(dst)
        return dst

    _expect(tmp_path / "nope", "no such folder")
    _expect(variant("noframes", lambda d: shutil.rmtree(d / "frames")), "frames: no such folder")
    _expect(variant("nointr", lambda d: (d / "intrinsic.txt").unlink()), "intrinsic.txt: no such file")
    _expect(variant("count", lambda d: (d / "depth" / "0003.png").unlink()), "frame counts differ")
    _expect(variant("text", lambda d: (d / "extrinsic.txt").write_text("1 2 x 4\n")), "extrinsic.txt: not a table")
    _expect(variant("rows", lambda d: (d / "intrinsic.txt").write_text("1 0 0\n0 1 0\n")), "not a multiple of 3")

    def nonrigid(d):
        lines = (d / "extrinsic.txt").read_text().splitlines()
        lines[3] = "2 0 0 0"
        (d / "extrinsic.txt").write_text("\n".join(lines) + "\n")
    assert "frame 1" in _expect(variant("rigid", nonrigid), "extrinsic is not a rigid transform")

    def small_depth(d):
        Image.fromarray(encode_rgba_depth(np.ones((24, 32), np.float32)), mode="RGBA").save(d / "depth" / "0002.png")
    assert "frame 2" in _expect(variant("size", small_depth), "does not match frame")

    def gray_depth(d):
        Image.fromarray(np.zeros((H, W), np.uint8)).save(d / "depth" / "0001.png")
    _expect(variant("gray", gray_depth), "expected RGBA")

    for name, value, words in [("nan", np.nan, "NaN"), ("neg", -1.0, "negative depth")]:
        def bad_value(d, value=value):
            dep = np.ones((H, W), np.float32)
            dep[5, 5] = value
            Image.fromarray(encode_rgba_depth(dep), mode="RGBA").save(d / "depth" / "0002.png")
        assert "frame 2" in _expect(variant(name, bad_value), words, iterate=True)
