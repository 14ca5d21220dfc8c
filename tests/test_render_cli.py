"""`timewalk render` end to end: a saved world, a trajectory file, a real H.264 mp4 read back with PyAV."""

import json

import av
import numpy as np
import pytest
from PIL import Image

from gen_server import cameras, cli
from gen_server.world.state import PointLayer, WorldState
from gen_server.world.store import save_world

W, H = 64, 48


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    """A grey-blue wall 2 m ahead of the frame-0 camera and a red patch that moves right over 4 frames."""
    k = cameras.fov_to_intrinsics(cameras.Fov.symmetric(np.radians(60), W / H), W, H)
    pose = cameras.look_at([0.0, 1.5, 0.0], [0.0, 1.5, -1.0])
    wall = cameras.unproject_depth(np.full((H * 2, W * 2), 2.0), cameras.scale_intrinsics(k, 2, 2), pose).reshape(-1, 3)
    n = len(wall)
    static = PointLayer(wall.astype(np.float32), np.tile(np.uint8([60, 80, 160]), (n, 1)), np.full(n, 0.02, np.float32), np.ones(n, np.float32))
    grid = np.stack(np.meshgrid(np.linspace(-0.1, 0.1, 11), np.linspace(-0.1, 0.1, 11)), -1).reshape(-1, 2)
    frames = [PointLayer(np.c_[grid[:, 0] - 0.3 + 0.2 * f, 1.5 + grid[:, 1], np.full(len(grid), -1.0)].astype(np.float32),
                         np.tile(np.uint8([220, 20, 20]), (len(grid), 1)), np.full(len(grid), 0.015, np.float32), np.ones(len(grid), np.float32)) for f in range(4)]
    world = WorldState(static, PointLayer.concatenate(frames), np.arange(5) * len(grid), np.arange(4) / 4.0, 4.0,
                       np.repeat(pose[None], 4, 0), np.repeat(k[None], 4, 0), (W, H))
    out = tmp_path_factory.mktemp("world") / "world"
    save_world(world, out)
    return out


def _read_mp4(path):
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
        return frames, stream.codec_context.name


def test_render_txt_trajectory_stereo_with_pngs(world_dir, tmp_path):
    traj = tmp_path / "dolly.txt"
    traj.write_text("0\n0\n0 0.5\n")  # dolly 0.5 m forward over the shot
    out = tmp_path / "shot.mp4"
    rc = cli.main(["render", str(world_dir), "--trajectory", str(traj), "-o", str(out), "--stereo", "--ipd", "0.064",
                   "--time-rate", "0.5", "--frames-dir", str(tmp_path / "rgb"), "--depth-dir", str(tmp_path / "depth"), "--quiet", "--device", "cpu"])
    assert rc == 0
    frames, codec = _read_mp4(out)
    assert codec == "h264" and len(frames) == 7  # 0.75 s of clip at half speed, 4 fps output
    assert frames[0].shape == (H, 2 * W, 3)
    pngs = sorted((tmp_path / "rgb").glob("frame_*.png"))
    assert [p.name for p in pngs[:2]] == ["frame_00000.png", "frame_00001.png"] and len(pngs) == 7
    depth0 = np.asarray(Image.open(tmp_path / "depth" / "frame_00000.png"))
    last = np.asarray(Image.open(tmp_path / "depth" / "frame_00006.png"))
    assert depth0.dtype == np.uint16 and depth0.shape == (H, 2 * W)
    assert abs(int(depth0[2, 2]) - 2000) <= 2 and abs(int(last[2, 2]) - 1500) <= 2  # wall in mm, dollied 0.5 m
    # the patch (1 m ahead) is at x = -0.3 m at tau 0: left half of the left eye, red in the PNG
    rgb0 = np.asarray(Image.open(pngs[0]))
    k = cameras.fov_to_intrinsics(cameras.Fov.symmetric(np.radians(60), W / H), W, H)
    u = int(round(k[0, 2] + k[0, 0] * (-0.3 + 0.032) / 1.0))
    assert tuple(rgb0[int(round(k[1, 2])), u]) == (220, 20, 20)
    u_right = int(round(k[0, 2] + k[0, 0] * (-0.3 - 0.032) / 1.0))  # right eye: shifted left by f*ipd/z
    assert tuple(rgb0[int(round(k[1, 2])), W + u_right]) == (220, 20, 20)
    left_edge = lambda row: int(np.argmax((row[:, 0] == 220) & (row[:, 1] == 20)))
    row = rgb0[int(round(k[1, 2]))]
    assert left_edge(row[:W]) - left_edge(row[W:]) == pytest.approx(k[0, 0] * 0.064, abs=1.0)
    assert not list(tmp_path.glob(".*"))  # no temporary leftovers


def test_render_nerfstudio_json_with_time(world_dir, tmp_path):
    pose = cameras.look_at([0.5, 1.5, 0.0], [0.0, 1.5, -2.0])
    path = {"render_width": 32, "render_height": 24, "camera_path": [
        {"camera_to_world": list(pose.reshape(-1)), "fov": 50.0, "time": t} for t in (0.0, 0.5, 1.0)]}
    traj = tmp_path / "camera_path.json"
    traj.write_text(json.dumps(path))
    out = tmp_path / "ns.mp4"
    assert cli.main(["render", str(world_dir), "--trajectory", str(traj), "-o", str(out), "--quiet", "--device", "cpu"]) == 0
    frames, _ = _read_mp4(out)
    assert len(frames) == 3 and frames[0].shape == (24, 32, 3)


def test_bad_trajectory_exits_2_naming_file_and_line(world_dir, tmp_path, capsys):
    traj = tmp_path / "bad.txt"
    traj.write_text("0 1\n0 zero\n1\n")
    out = tmp_path / "bad.mp4"
    assert cli.main(["render", str(world_dir), "--trajectory", str(traj), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{traj}:2" in err and err.count("\n") == 1
    assert not out.exists()
