"""World directory round trip and rejection of damaged / newer worlds."""

import json

import numpy as np
import pytest

from gen_server.world.state import PointLayer, WorldState
from gen_server.world.store import WorldFormatError, load_world, save_world


def _layer(n, rng):
    return PointLayer(rng.normal(size=(n, 3)).astype(np.float32), rng.integers(0, 255, (n, 3), dtype=np.uint8),
                      rng.uniform(0.001, 0.01, n).astype(np.float32), rng.uniform(0, 1, n).astype(np.float32))


def _world():
    rng = np.random.default_rng(0)
    f = 4
    return WorldState(static=_layer(100, rng), dynamic=_layer(30, rng), dynamic_offsets=np.array([0, 5, 10, 20, 30]),
                      times=np.arange(f) / 24.0, fps=24.0, camera_poses=np.tile(np.eye(4), (f, 1, 1)),
                      intrinsics=np.tile(np.eye(3), (f, 1, 1)), image_size=(64, 48), source={"kind": "test"})


def test_round_trip(tmp_path):
    w = _world()
    save_world(w, tmp_path / "w")
    back = load_world(tmp_path / "w")
    np.testing.assert_array_equal(back.static.positions, w.static.positions)
    np.testing.assert_array_equal(back.dynamic_frame(2).colors, w.dynamic.colors[10:20])
    assert back.frame_at(1.5 / 24.0) == (1, 2, pytest.approx(0.5))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_damaged_and_newer_rejected(tmp_path):
    save_world(_world(), tmp_path / "w")
    layers = tmp_path / "w" / "layers.safetensors"
    data = bytearray(layers.read_bytes())
    data[-1] ^= 0xFF
    layers.write_bytes(bytes(data))
    with pytest.raises(WorldFormatError, match="checksum"):
        load_world(tmp_path / "w")
    manifest = tmp_path / "w" / "world.json"
    m = json.loads(manifest.read_text())
    m["format_version"] = 99
    manifest.write_text(json.dumps(m))
    with pytest.raises(WorldFormatError, match="newer"):
        load_world(tmp_path / "w")
    manifest.write_text("{not json")
    with pytest.raises(WorldFormatError, match="damaged manifest"):
        load_world(tmp_path / "w")
    with pytest.raises(WorldFormatError, match="not a world directory"):
        load_world(tmp_path / "missing")
