"""calibration.json: round trip, history/undo, atomic writes, damaged files (clear error + automatic
fallback), ``timewalk calibrate`` end to end, and the server's calibration seam."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calibration import store
from calibration.adjust import set_scale, set_yaw
from calibration.auto_align import AutoAlignConfig, auto_calibration
from calibration.store import CalibrationFileError, load_calibration, load_or_auto, save_calibration
from gen_server.world.store import save_world
from gen_server.world.synth import CAMERA_HEIGHT
from test_calibration_alignment import _random_rotation, _synthetic_world

ROOT = Path(__file__).resolve().parents[1]
S_W = 1.7  # reconstruction units per true metre


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(11)
    sim = np.eye(4)
    sim[:3, :3] = S_W * _random_rotation(rng, 15.0)
    sim[:3, 3] = [0.5, -1.0, 2.0]
    return _synthetic_world(sim)


@pytest.fixture
def world_dir(world, tmp_path):
    out = tmp_path / "world"
    save_world(world, out)
    return out


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gen_server.cli", "calibrate", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_round_trip_with_history(world, tmp_path):
    auto = auto_calibration(world, AutoAlignConfig(camera_height=CAMERA_HEIGHT))
    edited = set_yaw(set_scale(auto, 0.8), 15.0)
    path = save_calibration(tmp_path, edited, [auto, set_scale(auto, 0.8)])
    assert path == tmp_path / "calibration.json"
    assert [p.name for p in tmp_path.iterdir()] == ["calibration.json"]  # no temp files left
    loaded = load_calibration(tmp_path)
    assert np.allclose(loaded.current.world_from_stage, edited.world_from_stage, atol=1e-12)
    assert loaded.current.transform.yaw_offset == pytest.approx(math.radians(15.0))
    assert loaded.current.sources == edited.sources and loaded.current.created
    assert len(loaded.history) == 2
    assert np.allclose(loaded.history[0].world_from_stage, auto.world_from_stage, atol=1e-12)
    doc = json.loads(path.read_text())
    assert doc["version"] == store.VERSION and len(doc["current"]["world_from_stage"]) == 16
    assert load_calibration(tmp_path / "nowhere") is None


def test_failed_write_keeps_old_file(world, tmp_path, monkeypatch):
    auto = auto_calibration(world)
    save_calibration(tmp_path, auto)
    before = (tmp_path / "calibration.json").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    import gen_server.atomic_write

    monkeypatch.setattr(gen_server.atomic_write.os, "fsync", boom)  # the temp file is written, then the disk fails
    with pytest.raises(OSError):
        save_calibration(tmp_path, set_scale(auto, 3.0))
    assert (tmp_path / "calibration.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["calibration.json"]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong_version", "matrix_mismatch", "bad_scale", "missing"])
def test_damaged_file_clear_error_and_fallback(world, world_dir, damage):
    good = auto_calibration(world, AutoAlignConfig(camera_height=CAMERA_HEIGHT))
    path = save_calibration(world_dir, set_scale(good, 3.0))
    text = path.read_text()
    doc = json.loads(text)
    if damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00\xff not json")
    else:
        if damage == "wrong_version":
            doc["version"] = 99
        elif damage == "matrix_mismatch":
            doc["current"]["world_from_stage"][3] += 1.0
        elif damage == "bad_scale":
            doc["current"]["scale"] = -2.0
        elif damage == "missing":
            del doc["current"]["origin"]
        path.write_text(json.dumps(doc))
    with pytest.raises(CalibrationFileError) as err:
        load_calibration(world_dir)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    # Callers fall back to the automatic alignment (here without camera height: metric scale 1).
    result = load_or_auto(world_dir, world)
    cal, warning = result
    assert str(path) in warning and "automatic" in warning
    assert cal.note == "auto" and cal.scale == 1.0
    assert np.allclose(result.world_from_stage, auto_calibration(world).world_from_stage)
    # The world is loaded from the directory when not given.
    assert np.allclose(load_or_auto(world_dir).world_from_stage, cal.world_from_stage, atol=1e-5)
    # The CLI reports the same single line and exits 2.
    proc = _cli(world_dir)
    assert proc.returncode == 2 and str(path) in proc.stderr and proc.stderr.count("\n") == 1
    assert "--reset" in proc.stderr
    # --reset replaces the damaged file (with a warning) by the automatic alignment.
    proc = _cli(world_dir, "--reset", "--json")
    assert proc.returncode == 0 and "warning" in proc.stderr and str(path) in proc.stderr
    assert json.loads(proc.stdout)["history_length"] == 0
    assert load_calibration(world_dir).current.note == "reset"


def test_cli_auto_edit_undo_reset(world_dir):
    path = world_dir / "calibration.json"
    proc = _cli(world_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["scale"] == 1.0 and not path.exists()  # printed, not stored

    proc = _cli(world_dir, "--auto", "--camera-height", CAMERA_HEIGHT, "--json")
    assert proc.returncode == 0, proc.stderr
    auto = json.loads(proc.stdout)
    assert auto["scale"] == pytest.approx(S_W, rel=0.01) and auto["history_length"] == 0 and path.exists()

    assert _cli(world_dir, "--scale", 2.0).returncode == 0
    assert _cli(world_dir, "--yaw", 30).returncode == 0
    proc = _cli(world_dir, "--floor-offset", 0.25, "--json")
    now = json.loads(proc.stdout)
    assert now["scale"] == 2.0 and now["yaw_offset_deg"] == pytest.approx(30.0)
    assert now["floor_offset"] == 0.25 and now["history_length"] == 3
    assert now["origin"] == pytest.approx(auto["origin"]) and now["up"] == pytest.approx(auto["up"])

    undone = json.loads(_cli(world_dir, "--undo", "--json").stdout)
    assert undone["floor_offset"] == 0.0 and undone["yaw_offset_deg"] == pytest.approx(30.0)
    assert undone["history_length"] == 2

    reset = json.loads(_cli(world_dir, "--reset", "--camera-height", CAMERA_HEIGHT, "--json").stdout)
    assert reset["world_from_stage"] == pytest.approx(auto["world_from_stage"])
    assert reset["history_length"] == 3 and reset["note"] == "reset"
    text = _cli(world_dir)
    assert text.returncode == 0 and "scale: " in text.stdout and "history: 3" in text.stdout

    for bad in (("--scale", "0"), ("--camera-height", "1.6"), ("--auto", "--camera-height", "-1")):
        proc = _cli(world_dir, *bad)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, (bad, proc.stderr)
    proc = _cli(world_dir.parent / "missing")
    assert proc.returncode == 2 and "not a world directory" in proc.stderr


def test_cli_undo_with_no_history(world_dir):
    assert _cli(world_dir, "--auto").returncode == 0
    proc = _cli(world_dir, "--undo")
    assert proc.returncode == 2 and "nothing to undo" in proc.stderr


def test_server_seam_uses_stored_calibration(world, world_dir):
    from gen_server.server import load_world_from_stage

    cal = set_scale(auto_calibration(world, AutoAlignConfig(camera_height=CAMERA_HEIGHT)), 4.0)
    save_calibration(world_dir, cal)
    assert np.allclose(load_world_from_stage(world_dir, world), cal.world_from_stage)
