"""Causal DiT: real-layout checkpoint round trip, loader errors, KV-cache prefill and block streaming vs an
uncached float64 reference (tests/inspatio_reference.py)."""
from __future__ import annotations

import pytest
import torch

from gen_server.errors import InputError
from gen_server.generators.inspatio.checkpoint import load_dit, read_dit_state, save_dit
from gen_server.generators.inspatio.config import tiny_dit_config, tiny_stream_config
from gen_server.generators.inspatio.dit import CausalWanDiT
from gen_server.generators.inspatio.schedule import FlowMatchSchedule
from gen_server.generators.inspatio.streaming import BlockStreamer, EagerRunner, pad_context

from inspatio_reference import block_step_reference

CFG = tiny_dit_config()
STREAM = tiny_stream_config()
H, W = STREAM.latent_hw


def _random_dit(seed=0) -> CausalWanDiT:
    torch.manual_seed(seed)
    m = CausalWanDiT(CFG)
    with torch.no_grad():  # non-trivial norms/biases so every parameter matters
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("dit") / "InSpatio-World-tiny.safetensors"
    save_dit(_random_dit(), path)
    return path


@pytest.fixture(scope="module")
def model(ckpt):
    return load_dit(ckpt, CFG, dtype=torch.float32)


def test_checkpoint_layout_and_roundtrip(ckpt, model):
    from safetensors import safe_open
    with safe_open(str(ckpt), "pt") as fh:
        keys = set(fh.keys())
    # The published layout: wrapper prefix, Wan module names.
    for k in ("model.patch_embedding.weight", "model.text_embedding.0.weight", "model.time_projection.1.weight",
              "model.blocks.0.self_attn.norm_q.weight", "model.blocks.1.cross_attn.v.bias",
              "model.blocks.0.norm3.weight", "model.blocks.1.ffn.2.weight", "model.blocks.0.modulation",
              "model.head.head.weight", "model.head.modulation"):
        assert k in keys, k
    assert tuple(read_dit_state(ckpt)["patch_embedding.weight"].shape) == (CFG.dim, 36, 1, 2, 2)
    ref = _random_dit()
    for name, p in ref.state_dict().items():
        assert torch.equal(model.state_dict()[name], p), name


def test_loader_errors_name_keys_and_shapes(tmp_path):
    from safetensors.torch import save_file
    sd = {"model." + k: v for k, v in _random_dit().state_dict().items()}
    missing = dict(sd)
    del missing["model.blocks.1.self_attn.q.weight"]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(InputError, match=r"missing\.safetensors.*1 missing keys: blocks\.1\.self_attn\.q\.weight"):
        load_dit(tmp_path / "missing.safetensors", CFG)
    bad = dict(sd)
    bad["model.head.head.weight"] = torch.zeros(3, CFG.dim)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(InputError, match=r"head\.head\.weight \(3, 64\) \(model expects \(64, 64\)\)"):
        load_dit(tmp_path / "bad.safetensors", CFG)
    extra = dict(sd, **{"model.blocks.9.ffn.0.weight": torch.zeros(1)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(InputError, match=r"unexpected keys: blocks\.9\.ffn\.0\.weight"):
        load_dit(tmp_path / "extra.safetensors", CFG)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.safetensors: not a readable safetensors"):
        load_dit(tmp_path / "junk.safetensors", CFG)
    with pytest.raises(InputError, match="not found"):
        load_dit(tmp_path / "nope.safetensors", CFG)


def _inputs(seed, frames):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, frames, 16, H, W, generator=g)


def test_prefill_writes_reference_keys_and_step_matches(model):
    prompt = torch.randn(5, CFG.text_dim)
    runner = EagerRunner(model, model.text_context(prompt[None]), STREAM, batch=1)
    ctx = pad_context(torch.cat([_inputs(1, 3), _inputs(2, 3)], dim=1))  # (1, 36, 6, h, w)
    runner.prefill(ctx)
    x36 = torch.randn(1, 36, 3, H, W)
    t = 937.5
    flow = runner.step(x36, torch.tensor([t]), context_frames=6)
    ref_flow, kvs = block_step_reference(model.state_dict(), CFG, ctx[0], x36[0], t, prompt)
    nctx = 6 * runner.tokens_per_frame
    for li, (k, v) in enumerate(kvs):
        got_k = runner.cache.k[li, 0, :, :nctx].transpose(0, 1).double()
        got_v = runner.cache.v[li, 0, :, :nctx].transpose(0, 1).double()
        torch.testing.assert_close(got_k, k[:nctx], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got_v, v[:nctx], rtol=1e-4, atol=1e-4)
    assert ref_flow.abs().mean() > 0.1  # a real signal, not zeros
    torch.testing.assert_close(flow[0].double(), ref_flow, rtol=1e-4, atol=1e-4)
    # The step's scratch keys do not leak into the next step: a second call with other inputs is independent.
    flow2 = runner.step(torch.randn(1, 36, 3, H, W), torch.tensor([t]), context_frames=6)
    assert not torch.allclose(flow2, flow)
    torch.testing.assert_close(runner.step(x36, torch.tensor([t]), context_frames=6), flow)


def test_block_streaming_equals_uncached_reference(model):
    """Three blocks through the cached loop == recomputing every step from scratch (no cache)."""
    prompt = torch.randn(4, CFG.text_dim)
    sched = FlowMatchSchedule()
    streamer = BlockStreamer(EagerRunner(model, model.text_context(prompt[None]), STREAM, 1), STREAM, sched)
    g = torch.Generator().manual_seed(7)
    previous = None
    for blk in range(3):
        ref = torch.randn(1, 3, 16, H, W, generator=g)
        render = torch.randn(1, 3, 16, H, W, generator=g)
        mask = (torch.rand(1, 3, 4, H, W, generator=g) > 0.3).float()
        noises = [torch.randn(1, 3, 16, H, W, generator=g) for _ in range(4)]
        got = streamer.denoise_block(ref, render, mask, noises)
        # Reference: the published algorithm written out directly, float64, no cache.
        context = ref if previous is None else torch.cat([ref, previous], dim=1)
        ctx36 = pad_context(context)[0]
        x = noises[0].double()
        for i, (sigma, t) in enumerate(zip(sched.sigmas, sched.timesteps)):
            x36 = torch.cat([x.float(), mask, render], dim=2).transpose(1, 2)[0]
            flow, _ = block_step_reference(model.state_dict(), CFG, ctx36, x36, t, prompt)
            x0 = x - sigma * flow.transpose(0, 1)[None]
            if i < 3:
                x = (1 - sched.sigmas[i + 1]) * x0 + sched.sigmas[i + 1] * noises[i + 1].double()
        torch.testing.assert_close(got.double(), x0, rtol=1e-3, atol=1e-3)
        previous = x0.float()
    assert streamer.blocks_done == 3


def test_batched_views_equal_separate_streams(model):
    """Stereo batched (B=2) gives each view exactly what its own B=1 stream gives."""
    prompt = torch.randn(1, 3, CFG.text_dim)
    g = torch.Generator().manual_seed(11)
    blocks = [[torch.randn(2, 3, 16, H, W, generator=g), torch.randn(2, 3, 16, H, W, generator=g),
               torch.rand(2, 3, 4, H, W, generator=g), [torch.randn(2, 3, 16, H, W, generator=g) for _ in range(4)]]
              for _ in range(2)]
    both = BlockStreamer(EagerRunner(model, model.text_context(prompt.expand(2, -1, -1)), STREAM, 2), STREAM)
    got = [both.denoise_block(*b) for b in blocks]
    for v in range(2):
        one = BlockStreamer(EagerRunner(model, model.text_context(prompt), STREAM, 1), STREAM)
        for b, out in zip(blocks, got):
            ref, render, mask, noises = b
            want = one.denoise_block(ref[v:v + 1], render[v:v + 1], mask[v:v + 1], [n[v:v + 1] for n in noises])
            torch.testing.assert_close(out[v:v + 1], want, rtol=1e-4, atol=1e-4)
