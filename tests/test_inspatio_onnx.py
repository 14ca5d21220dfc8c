"""ONNX graphs for the TensorRT path (static shapes) checked against torch with onnxruntime on the CPU,
and the engine selection errors (TensorRT missing -> install hint)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from gen_server.errors import InputError
from gen_server.generators.inspatio.config import tiny_dit_config, tiny_stream_config, tiny_taehv_config
from gen_server.generators.inspatio.dit import CausalWanDiT
from gen_server.generators.inspatio.engines import (TAEChunkGraph, export_prefill_onnx, export_step_onnx,
                                                    export_tae_onnx, make_runner)
from gen_server.generators.inspatio.streaming import EagerRunner, pad_context
from gen_server.generators.inspatio.taehv import TAEHV, TAEHVStream

ort = pytest.importorskip("onnxruntime")
CFG, STREAM = tiny_dit_config(), tiny_stream_config()
H, W = STREAM.latent_hw


@pytest.fixture(scope="module")
def dit():
    torch.manual_seed(0)
    m = CausalWanDiT(CFG).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("context_frames", [3, 6])
def test_step_onnx_matches_torch_runner(dit, tmp_path, context_frames):
    text = dit.text_context(torch.randn(1, 5, CFG.text_dim))
    path = export_step_onnx(dit, text, STREAM, 2, context_frames, tmp_path / "step.onnx")
    # Torch side: the cached eager runner after a real prefill.
    runner = EagerRunner(dit, text, STREAM, batch=2)
    runner.prefill(pad_context(torch.randn(2, context_frames, 16, H, W)))
    x36, t = torch.randn(2, 36, 3, H, W), torch.tensor([1000.0, 625.0])
    want = runner.step(x36, t, context_frames)
    n = context_frames * runner.tokens_per_frame
    feeds = {"x36": x36, "t": t, "ctx_k": runner.cache.k[:, :, :, :n], "ctx_v": runner.cache.v[:, :, :, :n],
             "text_k": text.k, "text_v": text.v}
    got = _session(path).run(["flow"], {k: v.contiguous().numpy() for k, v in feeds.items()})[0]
    assert got.shape == (2, 16, 3, H, W)
    assert np.abs(want.numpy()).mean() > 0.1
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-3, atol=1e-3)
    import onnx
    graph = onnx.load(str(path))
    assert all(d.dim_value > 0 for i in graph.graph.input for d in i.type.tensor_type.shape.dim)  # static
    assert not any(t.data_type == onnx.TensorProto.DOUBLE for t in graph.graph.initializer)  # no FP64 for TRT


def test_prefill_onnx_matches_cache(dit, tmp_path):
    text = dit.text_context(torch.randn(1, 3, CFG.text_dim))
    path = export_prefill_onnx(dit, text, STREAM, 1, 6, tmp_path / "prefill.onnx")
    ctx = pad_context(torch.randn(1, 6, 16, H, W))
    runner = EagerRunner(dit, text, STREAM, batch=1)
    runner.prefill(ctx)
    k, v = _session(path).run(["ctx_k", "ctx_v"], {"context36": ctx.numpy(), "text_k": text.k.numpy(),
                                                   "text_v": text.v.numpy()})
    n = 6 * runner.tokens_per_frame
    np.testing.assert_allclose(k, runner.cache.k[:, :, :, :n].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(v, runner.cache.v[:, :, :, :n].numpy(), rtol=1e-4, atol=1e-4)


def test_tae_onnx_chunks_match_stream(tmp_path):
    torch.manual_seed(1)
    tae = TAEHV(tiny_taehv_config()).eval()
    frames = torch.rand(1, 24, 3, 32, 48)
    enc = export_tae_onnx(tae, "encoder", (1, 12, 3, 32, 48), tmp_path / "enc.onnx")
    dec = export_tae_onnx(tae, "decoder", (1, 3, 16, 4, 6), tmp_path / "dec.onnx")
    stream = TAEHVStream(tae)
    want_z = torch.cat([stream.encode(frames[:, :12]), stream.encode(frames[:, 12:])], 1)
    want_x = torch.cat([stream.decode(want_z[:, :3]), stream.decode(want_z[:, 3:])], 1)
    for path, chunks, shape in ((enc, frames.split(12, 1), (1, 12, 3, 32, 48)),
                                (dec, want_z.split(3, 1), (1, 3, 16, 4, 6))):
        sess = _session(path)
        mems = [np.zeros(s, np.float32) for s in TAEChunkGraph(tae.encoder if path == enc else tae.decoder)
                .memory_shapes(shape)]
        outs = []
        for chunk in chunks:
            res = sess.run(None, {"x": chunk.numpy(), **{f"mem{i}": m for i, m in enumerate(mems)}})
            outs.append(res[0])
            mems = res[1:]
        got = np.concatenate(outs, 1)
        if path == enc:
            np.testing.assert_allclose(got, want_z.numpy(), rtol=1e-4, atol=1e-4)
        else:
            np.testing.assert_allclose(np.clip(got, 0, 1)[:, 3:], want_x.numpy(), rtol=1e-4, atol=1e-4)


def test_engine_selection_errors(dit):
    text = dit.text_context(torch.randn(1, 2, CFG.text_dim))
    with pytest.raises(InputError, match="expected one of eager, cudagraph, compile, tensorrt"):
        make_runner("fast", dit, text, STREAM, 1)
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(InputError, match="pip install tensorrt"):
            make_runner("tensorrt", dit, text, STREAM, 1, cache_dir="/tmp/x")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="needs a CUDA device"):
            make_runner("cudagraph", dit, text, STREAM, 1)
