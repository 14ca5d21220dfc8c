"""VideoSource + poses files: a real synthetic mp4 with TUM / JSON poses interpolated to frame times (slerp
compared against scipy's), assumed intrinsics, static camera without poses, and bad poses files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from gen_server import cameras
from gen_server.errors import InputError
from gen_server.world.poses_file import PoseTrack, read_poses_file, slerp
from gen_server.world.synth import SyntheticScene, write_synthetic_dataset
from gen_server.world.video_source import VideoSource, assumed_intrinsics


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    out = write_synthetic_dataset(tmp_path_factory.mktemp("vs") / "ds", width=64, height=48, seconds=1.0, fps=12)
    return out / "video.mp4"


def _tum(path, times):
    lines = ["# t tx ty tz qx qy qz qw"]
    for t in times:
        pos, q = cameras.matrix_to_pose(SyntheticScene.camera_path(t))
        lines.append(" ".join(f"{v:.12f}" for v in [t, *pos, *q]))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_slerp_matches_scipy():
    rng = np.random.default_rng(0)
    q0, q1 = Rotation.random(20, random_state=1).as_quat(), Rotation.random(20, random_state=2).as_quat()
    w = rng.uniform(0, 1, 20)
    ours = Rotation.from_quat(slerp(q0, q1, w)).as_matrix()
    ref = np.stack([Slerp([0, 1], Rotation.from_quat([a, b]))(x).as_matrix() for a, b, x in zip(q0, q1, w)])
    np.testing.assert_allclose(ours, ref, atol=1e-9)


def test_video_with_tum_poses(video, tmp_path):
    poses = _tum(tmp_path / "poses.txt", np.arange(0, 1.01, 0.25))
    src = VideoSource(video, poses=poses)
    assert src.info.has_poses and src.info.kind == "video" and not src.info.has_depth
    frames = list(src)
    assert len(frames) == src.info.frame_count == 12 and src.info.fps == 12.0
    for f in frames:
        truth = SyntheticScene.camera_path(f.time)
        assert f.depth is None and f.rgb.shape == (48, 64, 3)
        err = np.linalg.norm(f.world_from_camera[:3, 3] - truth[:3, 3])
        assert err < 0.02  # linear between 0.25 s samples of a smooth path
        if abs(f.time * 4 - round(f.time * 4)) < 1e-9:  # on a sample: exact
            np.testing.assert_allclose(f.world_from_camera, truth, atol=1e-9)
    # Held at the ends.
    track = read_poses_file(poses)
    np.testing.assert_allclose(track.at([5.0])[0], track.poses[-1], atol=1e-12)
    np.testing.assert_allclose(track.at([-1.0])[0], track.poses[0], atol=1e-12)


def test_video_with_json_matrices_one_per_source_frame(video, tmp_path):
    mats = [SyntheticScene.camera_path(i / 12).ravel().tolist() for i in range(12)]
    path = tmp_path / "poses.json"
    path.write_text(json.dumps(mats))
    frames = list(VideoSource(video, fps=6, poses=path))  # every second source frame
    assert len(frames) == 6
    for f in frames:
        np.testing.assert_allclose(f.world_from_camera, SyntheticScene.camera_path(f.time), atol=1e-9)


def test_no_poses_static_camera_and_assumed_intrinsics(video):
    src = VideoSource(video, max_side=32)
    assert not src.info.has_poses and "60 degree" in src.info.extra["intrinsics"]
    assert "static" in src.info.extra["poses"]
    f = next(iter(src))
    assert f.rgb.shape == (24, 32, 3)
    np.testing.assert_allclose(f.world_from_camera, np.eye(4))
    k = assumed_intrinsics(32, 24)
    assert k[0, 0] == pytest.approx(16 / np.tan(np.radians(30)))
    assert (k[0, 2], k[1, 2]) == pytest.approx((15.5, 11.5)) and k[1, 1] == pytest.approx(k[0, 0])
    np.testing.assert_allclose(f.intrinsics, k)
    given = SyntheticScene.default_intrinsics(64, 48)
    f = next(iter(VideoSource(video, max_side=32, intrinsics=given)))
    np.testing.assert_allclose(f.intrinsics, SyntheticScene.default_intrinsics(32, 24), atol=1e-9)


@pytest.mark.parametrize("text,words", [
    ("", "no poses"),
    ("0 0 0 0 0 0 0\n", "line 1: expected 8 numbers"),
    ("0 0 0 0 0 0 0 1\n0 1 0 0 0 0 0 x\n", "line 2: not numbers"),
    ("0 0 0 0 0 0 0 2\n", "line 1: quaternion is not unit"),
    ("0 0 0 0 0 0 0 1\n0 1 0 0 0 0 0 1\n", "timestamps must increase"),
    ("0 nan 0 0 0 0 0 1\n", "non-finite"),
    ("[1, 2", "invalid JSON"),
    ("[[1,0,0,0, 0,2,0,0, 0,0,1,0, 0,0,0,1]]", "pose 0: matrix is not a rigid"),
    ("[[1,0,0]]", "pose 0: matrix must be 4x4"),
    ("[]", "non-empty JSON list"),
])
def test_bad_poses_files(tmp_path, text, words):
    path = tmp_path / "poses.txt"
    path.write_text(text)
    with pytest.raises(InputError) as e:
        read_poses_file(path, fps=12)
    assert str(path) in str(e.value) and words in str(e.value), str(e.value)


def test_missing_files(tmp_path, video):
    with pytest.raises(InputError, match="no such file"):
        read_poses_file(tmp_path / "none.txt")
    with pytest.raises(InputError, match="no such file"):
        VideoSource(video, poses=tmp_path / "none.txt")
    with pytest.raises(InputError, match="no such file"):
        VideoSource(tmp_path / "none.mp4")


def test_pose_track_single_sample():
    track = PoseTrack(np.array([0.0]), cameras.look_at([0, 1.6, 0], [0, 1.6, -1])[None])
    np.testing.assert_allclose(track.at([0.0, 3.0]), np.repeat(track.poses, 2, axis=0))
