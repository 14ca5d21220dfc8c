"""transforms.json reader: round trip of the synthetic dataset (exact poses, intrinsics, depth within 1 mm),
ordering, resizing, .npy depth, and every kind of bad dataset rejected with the file (and frame) named."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from gen_server.errors import InputError
from gen_server.world.synth import SyntheticScene, write_synthetic_dataset
from gen_server.world.transforms_json import (
    TransformsJsonSource, intrinsics_from_nerfstudio, nerfstudio_from_intrinsics,
)

W, H = 64, 48


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("tj") / "ds", width=W, height=H, seconds=0.5, fps=12)


@pytest.fixture
def copy(dataset, tmp_path):
    """A writable copy of the dataset and a helper to rewrite its transforms.json."""
    dst = tmp_path / "ds"
    shutil.copytree(dataset, dst)

    def edit(fn):
        meta = json.loads((dst / "transforms.json").read_text())
        fn(meta)
        (dst / "transforms.json").write_text(json.dumps(meta))
        return dst / "transforms.json"

    return dst, edit


def test_nerfstudio_half_pixel_round_trip():
    k = SyntheticScene.default_intrinsics(W, H)
    ns = nerfstudio_from_intrinsics(k)
    assert (ns["cx"], ns["cy"]) == (W / 2, H / 2)  # image centre in nerfstudio's pixel-centre-at-0.5 frame
    np.testing.assert_allclose(intrinsics_from_nerfstudio(**ns), k)


def test_round_trip_poses_intrinsics_depth(dataset):
    src = TransformsJsonSource(dataset)
    info = src.info
    assert (info.kind, info.frame_count, info.width, info.height, info.fps) == ("transforms_json", 6, W, H, 12.0)
    assert info.has_depth and info.has_poses and info.extra["has_dynamic_masks"]
    scene = SyntheticScene(0)
    k_true = scene.default_intrinsics(W, H)
    masks = list(src.frame_masks())
    for f, m in zip(src, masks):
        t = f.index / 12
        assert f.time == pytest.approx(t)
        np.testing.assert_allclose(f.world_from_camera, scene.camera_path(t), atol=1e-12)
        np.testing.assert_allclose(f.intrinsics, k_true, atol=1e-9)
        rgb, depth, mask = scene.render(f.world_from_camera, f.intrinsics, W, H, t)
        assert f.depth.dtype == np.float32 and np.abs(f.depth - depth).max() <= 0.001
        assert np.array_equal(f.rgb, rgb) and np.array_equal(m, mask)


def test_sorted_by_time_and_default_times(copy):
    dst, edit = copy
    path = edit(lambda m: m["frames"].reverse())
    frames = list(TransformsJsonSource(path))
    assert [f.time for f in frames] == pytest.approx(np.arange(6) / 12)
    assert [f.index for f in frames] == list(range(6))

    def drop_time(m):
        for f in m["frames"]:
            del f["time"]
        del m["fps"]
    frames = list(TransformsJsonSource(edit(drop_time)))  # file order (reversed), index / 24 fps
    assert [f.time for f in frames] == pytest.approx(np.arange(6) / 24)
    np.testing.assert_allclose(frames[0].world_from_camera, SyntheticScene.camera_path(5 / 12), atol=1e-12)


def test_resize_scales_intrinsics_and_depth(dataset):
    src = TransformsJsonSource(dataset, max_side=32)
    f = next(iter(src))
    assert f.rgb.shape == (24, 32, 3) and f.depth.shape == (24, 32) and next(src.frame_masks()).shape == (24, 32)
    k = SyntheticScene.default_intrinsics(32, 24)
    np.testing.assert_allclose(f.intrinsics, k, atol=1e-9)
    # Nearest resize by pixel centres: an exact 2x reduction takes source pixel (2i+1, 2j+1), never a blend.
    full = next(iter(TransformsJsonSource(dataset, max_side=None)))
    assert np.array_equal(f.depth, full.depth[1::2, 1::2])


def test_npy_depth_and_per_frame_intrinsics(copy):
    dst, edit = copy
    d = np.full((H, W), 2.5, np.float32)
    d[0, 0] = 0.0  # unknown is allowed
    np.save(dst / "d0.npy", d)

    def change(m):
        m["frames"][0]["depth_file_path"] = "d0.npy"
        m["frames"][0]["fl_x"] = 100.0
    frames = list(TransformsJsonSource(edit(change)))
    assert frames[0].depth[1, 1] == pytest.approx(2.5) and frames[0].depth[0, 0] == 0.0
    assert frames[0].intrinsics[0, 0] == 100.0 and frames[1].intrinsics[0, 0] != 100.0


def _bad_cases(dst):
    def set_(key, value, frame=None):
        def f(m):
            (m if frame is None else m["frames"][frame])[key] = value
        return f

    def delete(key, frame=None):
        def f(m):
            del (m if frame is None else m["frames"][frame])[key]
        return f

    def nonrigid(m):
        m["frames"][2]["transform_matrix"][0][0] = 2.0

    def nan_pose(m):
        m["frames"][1]["transform_matrix"][1][3] = float("nan")

    def mixed_time(m):
        del m["frames"][3]["time"]

    return [
        (delete("fl_x"), "frame 0: missing intrinsics 'fl_x'"),
        (delete("transform_matrix", 4), "frame 4: missing 'transform_matrix'"),
        (delete("file_path", 1), "frame 1: missing 'file_path'"),
        (nonrigid, "frame 2: transform_matrix is not a rigid"),
        (nan_pose, "frame 1: transform_matrix has non-finite"),
        (set_("transform_matrix", [[1, 0], [0, 1]], 0), "frame 0: transform_matrix must be 4x4"),
        (set_("file_path", "images/nope.png", 3), "frame 3: file_path 'images/nope.png' not found"),
        (set_("depth_file_path", "depth/nope.png", 5), "frame 5: depth_file_path 'depth/nope.png' not found"),
        (set_("depth_file_path", "small.png", 2), "frame 2: depth small.png size (32, 24) does not match"),
        (set_("frames", []), "missing or empty 'frames'"),
        (mixed_time, "frame 3: has no 'time'"),
        (set_("fps", -3), "fps must be positive"),
        (set_("fl_x", "wide"), "fl_x: expected a finite number"),
    ]


def test_bad_transforms_rejected(copy):
    dst, edit = copy
    Image.fromarray(np.zeros((24, 32), np.uint16)).save(dst / "small.png")
    original = (dst / "transforms.json").read_text()
    for change, words in _bad_cases(dst):
        (dst / "transforms.json").write_text(original)
        path = edit(change)
        with pytest.raises(InputError) as e:
            list(TransformsJsonSource(path))
        msg = str(e.value)
        assert str(path) in msg and words in msg and "\n" not in msg, (words, msg)
    (dst / "transforms.json").write_text("{ not json")
    with pytest.raises(InputError, match=r"transforms.json: invalid JSON .* line 1"):
        TransformsJsonSource(dst)
    with pytest.raises(InputError, match="no such file"):
        TransformsJsonSource(dst / "missing.json")


def test_bad_depth_values_rejected(copy):
    dst, edit = copy
    bad = np.full((H, W), 1.0, np.float32)
    bad[3, 3] = -0.5
    np.save(dst / "neg.npy", bad)
    bad[3, 3] = np.nan
    np.save(dst / "nan.npy", bad)
    for name, words in [("neg.npy", "negative depth"), ("nan.npy", "NaN")]:
        path = edit(lambda m: m["frames"][1].__setitem__("depth_file_path", name))
        frames = iter(TransformsJsonSource(path))
        next(frames)  # frame 0 is fine
        with pytest.raises(InputError) as e:
            next(frames)
        assert str(path) in str(e.value) and "frame 1" in str(e.value) and words in str(e.value)
