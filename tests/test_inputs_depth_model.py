"""MonocularDepth through the real transformers loading path, on tiny randomly initialised Depth Anything
models (relative and metric heads) saved to a temporary folder. No downloads."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gen_server.errors import InputError  # noqa: E402
from gen_server.world.depth_model import MonocularDepth, disparity_to_depth, is_metric_model  # noqa: E402

MAX_DEPTH = 20


def _tiny(folder, kind):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, image_size=56,
                            patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 64],
                                 fusion_hidden_size=16, head_hidden_size=8, depth_estimation_type=kind,
                                 max_depth=MAX_DEPTH)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      do_pad=False).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("depth_models")
    return {kind: _tiny(root / kind, kind) for kind in ("relative", "metric")}


@pytest.fixture(scope="module")
def frame():
    from gen_server.world.synth import SyntheticScene

    scene = SyntheticScene(0)
    rgb, _, _ = scene.render(scene.camera_path(0.0), scene.default_intrinsics(80, 46), 80, 46, 0.0)
    return rgb


def test_metric_model_gives_metres(models, frame):
    md = MonocularDepth(models["metric"], device=None)  # None: cuda if available, else cpu
    assert md.metric and "metric" in md.describe()["output"]
    depth = md.predict(frame)
    assert depth.shape == frame.shape[:2] and depth.dtype == np.float32
    assert np.all(depth > 0) and np.all(depth <= MAX_DEPTH * (1 + 1e-5))  # sigmoid head * max_depth
    np.testing.assert_allclose(depth, md.raw(frame), rtol=1e-6)


def test_relative_model_converted_and_scaled(models, frame):
    md = MonocularDepth(models["relative"], scale=2.5)
    assert not md.metric and "2.5 m" in md.describe()["output"]
    raw = md.raw(frame)
    depth = md.predict(frame)
    assert depth.shape == frame.shape[:2] and depth.dtype == np.float32
    valid = depth > 0
    assert valid.mean() > 0.5 and np.all(depth >= 0)
    median = np.median(raw[raw > 0])
    # depth * disparity is the same constant everywhere: scale * median disparity.
    np.testing.assert_allclose(depth[valid] * raw[valid], 2.5 * median, rtol=1e-4)
    # Overriding the flag uses the raw output as metres.
    md_forced = MonocularDepth(models["relative"], metric=True)
    np.testing.assert_allclose(md_forced.predict(frame), np.maximum(raw, 0), rtol=1e-6, atol=1e-12)


def test_disparity_to_depth_reference():
    disp = np.array([[4.0, 2.0, 1.0], [0.0, 0.005, -1.0]])
    depth = disparity_to_depth(disp, scale=3.0)
    # positive disparities 4, 2, 1, 0.005 -> median 1.5; 0.005 < 1% of it -> unknown.
    np.testing.assert_allclose(depth, [[3 * 1.5 / 4, 3 * 1.5 / 2, 3 * 1.5], [0, 0, 0]], rtol=1e-6)
    assert not disparity_to_depth(np.zeros((2, 2))).any()


def test_metric_detection_by_config_and_name():
    from transformers import DepthAnythingConfig, ZoeDepthConfig

    assert is_metric_model(DepthAnythingConfig(depth_estimation_type="metric"))
    assert not is_metric_model(DepthAnythingConfig(), "depth-anything/Depth-Anything-V2-Small-hf")
    assert is_metric_model(DepthAnythingConfig(), "depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf")
    assert is_metric_model(ZoeDepthConfig())


def test_bad_model_path(tmp_path):
    with pytest.raises(InputError) as e:
        MonocularDepth(str(tmp_path / "no_such_model"))
    assert str(tmp_path / "no_such_model") in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="cannot load"):
        MonocularDepth(str(tmp_path / "empty"))
