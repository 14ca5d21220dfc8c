"""Trajectory files (InSpatio txt, nerfstudio json) and offline time controls."""

import json

import numpy as np
import pytest

from gen_server import cameras
from gen_server.errors import InputError
from gen_server.offline_render import TimeControls, default_frame_count, output_taus, path_taus
from gen_server.trajectory import inspatio_cv_poses, interpolate_keyframes, load_nerfstudio_json, load_trajectory, read_inspatio_txt
from gen_server.world.state import PointLayer, WorldState


def _world(frames=10, fps=10.0):
    cam0 = cameras.look_at([1.0, 1.5, 2.0], [1.0, 1.5, -1.0])  # looking down -Z from (1, 1.5, 2)
    k = cameras.fov_to_intrinsics(cameras.Fov.symmetric(np.radians(60), 4 / 3), 64, 48)
    poses = np.repeat(cam0[None], frames, 0)
    return WorldState(PointLayer.empty(), PointLayer.empty(), np.zeros(frames + 1, np.int64), np.arange(frames) / fps, fps, poses, np.repeat(k[None], frames, 0), (64, 48))


def test_inspatio_orbit_looks_at_its_centre():
    p, y, r = np.array([0.0, 10.0, -20.0, 30.0]), np.array([15.0, -40.0, 5.0, 0.0]), np.array([0.5, 1.0, 2.0, 0.7])
    poses = inspatio_cv_poses(p, y, r)
    centre = np.stack([np.zeros(4), np.zeros(4), r], -1)
    to_centre = centre - poses[:, :3, 3]
    assert np.allclose(np.linalg.norm(to_centre, axis=1), r)
    forward = poses[:, :3, 2]  # OpenCV +z
    assert np.allclose(forward, to_centre / r[:, None])
    assert np.allclose(poses[:, :3, :3] @ poses[:, :3, :3].transpose(0, 2, 1), np.eye(3))


def test_inspatio_txt_yaw_moves_left_and_dolly_moves_forward(tmp_path):
    world = _world()
    yaw = tmp_path / "yaw.txt"
    yaw.write_text("0 0\n0 30\n1 1\n")
    path = load_trajectory(yaw, world, 5, None, None)
    assert path.width == 64 and path.height == 48 and len(path) == 5
    assert np.allclose(path.world_from_camera[0], world.camera_poses[0])
    end = path.world_from_camera[-1, :3, 3]
    assert end[0] == pytest.approx(1.0 - np.sin(np.radians(30)))  # moved to world -X (left of cam0)
    assert end[2] == pytest.approx(2.0 - (1 - np.cos(np.radians(30))))
    # still looks at the orbit centre 1 m in front of cam0
    uv, z = cameras.project_points(np.array([[1.0, 1.5, 1.0]]), path.world_from_camera[-1], path.intrinsics[-1])
    assert np.allclose(uv[0], path.intrinsics[-1][:2, 2]) and z[0] == pytest.approx(1.0)
    dolly = tmp_path / "dolly.txt"
    dolly.write_text("0\n0\n0 0.5\n")
    path = load_trajectory(dolly, world, 3, 32, 24)
    assert np.allclose(path.world_from_camera[-1, :3, 3], [1.0, 1.5, 1.5])  # 0.5 m forward (-Z)
    assert path.intrinsics[0][0, 0] == pytest.approx(world.intrinsics[0][0, 0] / 2)


def test_keyframe_interpolation():
    assert np.allclose(interpolate_keyframes(np.array([0.0, 10.0]), 5), [0, 2.5, 5, 7.5, 10])
    smooth = interpolate_keyframes(np.array([0.0, 1.0, 2.0, 3.0, 4.0]), 9)
    assert np.allclose(smooth, np.linspace(0, 4, 9))  # a spline through collinear keys is that line


@pytest.mark.parametrize(
    "text, match",
    [("0 1\n2 3\n", "exactly 3 lines"), ("0 1\n2 x\n1\n", ":2: yaw"), ("0\n0\nnan\n", ":3: displacement"), ("0\n\n1\n", ":2: yaw")],
)
def test_bad_inspatio_txt_names_file_and_line(tmp_path, text, match):
    f = tmp_path / "traj.txt"
    f.write_text(text)
    with pytest.raises(InputError, match=match) as e:
        read_inspatio_txt(f)
    assert str(f) in str(e.value)


def _ns_entry(c2w, fov=50.0, time=None):
    e = {"camera_to_world": list(np.asarray(c2w, float).reshape(-1)), "fov": fov}
    if time is not None:
        e["time"] = time
    return e


def test_nerfstudio_json_poses_fov_and_time(tmp_path):
    c2w = cameras.look_at([0.5, 1.0, 3.0], [0.0, 1.0, 0.0])
    f = tmp_path / "camera_path.json"
    f.write_text(json.dumps({"render_width": 80, "render_height": 60, "camera_path": [_ns_entry(c2w, 50.0, 0.0), _ns_entry(c2w, 30.0, 0.5)]}))
    path = load_nerfstudio_json(f)
    assert (path.width, path.height) == (80, 60)
    assert np.allclose(path.world_from_camera[0], c2w)
    assert path.intrinsics[1][1, 1] == pytest.approx(30.0 / np.tan(np.radians(15.0)))
    assert path.intrinsics[0][0, 0] == pytest.approx(path.intrinsics[0][1, 1])  # square pixels
    world = _world()
    assert np.allclose(path_taus(path, world, TimeControls(10.0)), [0.0, 0.45])
    assert np.allclose(path_taus(path, world, TimeControls(10.0, reverse=True)), [0.9, 0.45])


@pytest.mark.parametrize(
    "data, match",
    [
        ({"render_width": 8, "render_height": 8, "camera_path": [{"camera_to_world": [1] * 15, "fov": 50}]}, r"camera_path\[0\].camera_to_world"),
        ({"render_width": 8, "render_height": 8, "camera_path": [_ns_entry(np.eye(4), fov=0)]}, r"camera_path\[0\].fov"),
        ({"render_width": 8, "render_height": 8, "camera_path": [_ns_entry(np.eye(4)), _ns_entry(np.eye(4), time=2.0)]}, r"camera_path\[1\].time"),
        ({"render_width": 8, "render_height": 8, "camera_path": [_ns_entry(np.diag([1, 2, 1, 1]))]}, "not a rotation"),
        ({"render_width": -1, "render_height": 8, "camera_path": [_ns_entry(np.eye(4))]}, "render_width"),
        ({"camera_path": []}, "non-empty"),
    ],
)
def test_bad_nerfstudio_json(tmp_path, data, match):
    f = tmp_path / "cp.json"
    f.write_text(json.dumps(data))
    with pytest.raises(InputError, match=match):
        load_nerfstudio_json(f)


def test_invalid_json_names_line(tmp_path):
    f = tmp_path / "cp.json"
    f.write_text('{\n "render_width": 8,\n oops\n}')
    with pytest.raises(InputError, match=r"cp.json:3: not valid JSON"):
        load_nerfstudio_json(f)


def test_time_controls_rate_reverse_freeze():
    world = _world(frames=10, fps=10.0)  # times 0.0 .. 0.9
    c = TimeControls(fps=10.0)
    assert default_frame_count(world, c) == 10
    assert np.allclose(output_taus(10, world, c), np.arange(10) / 10)
    slow = TimeControls(fps=10.0, rate=0.5)
    assert default_frame_count(world, slow) == 19
    assert np.allclose(output_taus(3, world, slow), [0.0, 0.05, 0.1])
    rev = TimeControls(fps=10.0, reverse=True)
    assert np.allclose(output_taus(10, world, rev), np.arange(9, -1, -1) / 10)
    frz = TimeControls(fps=10.0, freeze_at=0.3, freeze_frames=3)
    assert default_frame_count(world, frz) == 13
    assert np.allclose(output_taus(8, world, frz), [0.0, 0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.4])
    assert np.allclose(output_taus(12, world, c)[-3:], 0.9)  # holds at the end
    with pytest.raises(InputError, match="--time-rate"):
        TimeControls(fps=10.0, rate=-1.0).validate(world)
    with pytest.raises(InputError, match="--freeze-at"):
        TimeControls(fps=10.0, freeze_at=5.0, freeze_frames=1).validate(world)
