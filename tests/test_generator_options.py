"""`--generator` wiring in `timewalk render`: the geometric default renders, and the neural generator's
flags reach its real loader (a tiny checkpoint is refused with the shapes named, not a traceback)."""

import numpy as np
import pytest

from gen_server.cli import main
from gen_server.world.state import PointLayer, WorldState
from gen_server.world.store import save_world


@pytest.fixture()
def world_dir(tmp_path):
    rng = np.random.default_rng(0)
    n = 2000
    pos = np.stack([rng.uniform(-2, 2, n), rng.uniform(0, 2, n), np.full(n, -3.0)], 1).astype(np.float32)
    layer = PointLayer(pos, rng.integers(0, 255, (n, 3), dtype=np.uint8), np.full(n, 0.05, np.float32),
                       np.ones(n, np.float32))
    k = np.array([[40.0, 0, 31.5], [0, 40.0, 23.5], [0, 0, 1]])
    world = WorldState(static=layer, dynamic=PointLayer.empty(), dynamic_offsets=np.zeros(3, np.int64),
                       times=np.array([0.0, 0.5]), fps=2.0, camera_poses=np.tile(np.eye(4), (2, 1, 1)),
                       intrinsics=np.tile(k, (2, 1, 1)), image_size=(64, 48))
    return save_world(world, tmp_path / "world")


@pytest.fixture()
def trajectory(tmp_path):
    path = tmp_path / "dolly.txt"
    path.write_text("0 0\n0 0\n0 0.2\n")
    return path


def test_render_with_geometric_generator(world_dir, trajectory, tmp_path, capsys):
    out = tmp_path / "shot.mp4"
    assert main(["render", str(world_dir), "--trajectory", str(trajectory), "-o", str(out), "--frames", "4",
                 "--generator", "geometric", "--quiet", "--device", "cpu"]) == 0
    assert out.stat().st_size > 0


def test_inspatio_needs_its_weights(world_dir, trajectory, tmp_path, capsys):
    out = tmp_path / "shot.mp4"
    assert main(["render", str(world_dir), "--trajectory", str(trajectory), "-o", str(out),
                 "--generator", "inspatio", "--quiet"]) == 2
    assert "--generator inspatio needs --checkpoint" in capsys.readouterr().err
    assert not out.exists()


def test_inspatio_flags_reach_the_real_loader(world_dir, trajectory, tmp_path, capsys):
    import torch

    from gen_server.generators.inspatio.checkpoint import save_dit
    from gen_server.generators.inspatio.config import tiny_dit_config
    from gen_server.generators.inspatio.dit import CausalWanDiT

    ckpt = tmp_path / "tiny.safetensors"
    save_dit(CausalWanDiT(tiny_dit_config()), ckpt)
    taehv = tmp_path / "taew2_1.pth"
    torch.save({}, taehv)
    out = tmp_path / "shot.mp4"
    code = main(["render", str(world_dir), "--trajectory", str(trajectory), "-o", str(out), "--generator",
                 "inspatio", "--checkpoint", str(ckpt), "--taehv", str(taehv), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(ckpt) in err and "missing" in err and "blocks.10." in err  # a 2-layer checkpoint lacks layers 2-29
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_serve_inspatio_needs_its_weights(world_dir, capsys):
    assert main(["serve", str(world_dir), "--generator", "inspatio", "--taehv", "x.pth"]) == 2
    assert "--generator inspatio needs --checkpoint" in capsys.readouterr().err
