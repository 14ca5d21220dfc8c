"""The InSpatio generator through the server seam on a tiny world (tiny DiT/TAEHV in the real key layouts,
a real source.mp4 through PyAV), the centre-view stereo reprojection geometry, and the prompt embedding file."""
from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from gen_server import cameras
from gen_server.errors import InputError
from gen_server.generators.inspatio.checkpoint import save_dit
from gen_server.generators.inspatio.config import tiny_dit_config, tiny_stream_config, tiny_taehv_config
from gen_server.generators.inspatio.dit import CausalWanDiT
from gen_server.generators.inspatio.stereo import relative_cv_transforms, reproject_views
from gen_server.generators.inspatio.taehv import TAEHV
from gen_server.generators.inspatio.text_embed import load_prompt_embedding, save_prompt_embedding
from gen_server.world.state import PointLayer, WorldState

FPS = 8.0
N_FRAMES = 24
STREAM = tiny_stream_config()  # 48x32


def _world() -> WorldState:
    rng = np.random.default_rng(0)
    xs, ys = np.meshgrid(np.linspace(-3, 3, 160), np.linspace(-2, 2, 110))
    pos = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, -3.0)], 1).astype(np.float32)
    static = PointLayer(pos, rng.integers(0, 255, (len(pos), 3), dtype=np.uint8),
                        np.full(len(pos), 0.03, np.float32), np.ones(len(pos), np.float32))
    k = cameras.fov_to_intrinsics(cameras.Fov(-0.6, 0.6, 0.45, -0.45), 48, 32)
    return WorldState(static=static, dynamic=PointLayer.empty(), dynamic_offsets=np.zeros(N_FRAMES + 1, np.int64),
                      times=np.arange(N_FRAMES) / FPS, fps=FPS, camera_poses=np.repeat(np.eye(4)[None], N_FRAMES, 0),
                      intrinsics=np.repeat(k[None], N_FRAMES, 0), image_size=(48, 32))


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    with av.open(str(d / "source.mp4"), "w") as out:
        s = out.add_stream("libx264", rate=int(FPS))
        s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
        for i in range(N_FRAMES):
            img = np.full((32, 48, 3), 10 * i, np.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    torch.manual_seed(0)
    save_dit(CausalWanDiT(tiny_dit_config()), d / "dit.safetensors")
    torch.save(TAEHV(tiny_taehv_config()).state_dict(), d / "taew2_1.pth")
    save_prompt_embedding(d / "prompt_embedding.safetensors", torch.randn(3, tiny_dit_config().text_dim), "")
    return d


@pytest.fixture(scope="module")
def generator(world_dir):
    from gen_server.generators.inspatio.generator import InSpatioGenerator
    return InSpatioGenerator(_world(), device="cpu", checkpoint=str(world_dir / "dit.safetensors"),
                             taehv=str(world_dir / "taew2_1.pth"), world_dir=str(world_dir),
                             dit_config=tiny_dit_config(), taehv_config=tiny_taehv_config(), stream_config=STREAM)


def test_reference_latents_follow_tau(generator):
    assert generator.reference.shape == (N_FRAMES // 4, 16, 4, 6) and generator.source_fps == pytest.approx(FPS)
    ref = generator.reference
    fwd = generator.reference_latents(1.0 + np.arange(12) / FPS)  # frames 8..19 -> latents 2, 3, 4
    torch.testing.assert_close(fwd, ref[[2, 3, 4]])
    paused = generator.reference_latents(np.full(12, 1.0))
    torch.testing.assert_close(paused, ref[[2, 2, 2]])
    reverse = generator.reference_latents(2.5 - np.arange(12) / FPS)  # frames 20 down to 9
    torch.testing.assert_close(reverse, ref[[5, 4, 3]])


def test_render_views_through_the_seam(generator):
    from gen_server.generators.base import check_views
    generator.reset()
    head = np.eye(4)
    left, right = cameras.eye_poses(head, 0.064)
    fov = cameras.Fov(-0.6, 0.6, 0.45, -0.45)
    out = generator.render_views(np.stack([left, right]), [fov, fov], 40, 30, 0.0)
    check_views(out, 2, 40, 30)
    assert out.color.dtype == torch.uint8 and out.valid.float().mean() > 0.8
    assert len(generator.queue) == 8  # first block: 12 - 3 startup frames, one consumed
    # Plane at 3 m straight ahead: reprojected depth is the plane's z.
    assert torch.median(out.depth[out.valid]).item() == pytest.approx(3.0, abs=0.05)
    # Identity reprojection at the stream size returns the generated frame itself.
    frame = generator.queue[0]
    same = generator.render_views(frame.world_from_view[:1], [fov], 48, 32, frame.tau)
    v = same.valid[0]
    assert v.float().mean() > 0.9
    assert torch.equal(same.color[0][v], frame.color[0][v])
    # A seek far away restarts the stream (fresh DiT context and TAEHV memories).
    generator.render_views(np.stack([left, right]), [fov, fov], 40, 30, 2.0)
    assert generator.streamer.blocks_done == 1 and len(generator.queue) == 8


def test_missing_world_inputs_are_clear(world_dir, tmp_path):
    from gen_server.generators.inspatio.generator import InSpatioGenerator
    with pytest.raises(InputError, match="nope.safetensors: DiT checkpoint not found"):
        InSpatioGenerator(_world(), device="cpu", checkpoint=str(tmp_path / "nope.safetensors"),
                          taehv=str(world_dir / "taew2_1.pth"), world_dir=str(world_dir),
                          dit_config=tiny_dit_config(), taehv_config=tiny_taehv_config(), stream_config=STREAM)
    with pytest.raises(InputError, match="prompt embedding not found"):
        load_prompt_embedding(tmp_path / "none.safetensors")
    save_prompt_embedding(tmp_path / "p.safetensors", torch.zeros(2, 7))
    with pytest.raises(InputError, match=r"shape \(1\.\.512, 4096\), got \(2, 7\)"):
        load_prompt_embedding(tmp_path / "p.safetensors")


def test_stereo_reprojection_disparity():
    """Fronto-parallel plane at z = 2 m, f = 50 px, right eye +0.08 m: image shifts by f*b/z = 2 px left."""
    rng = np.random.default_rng(1)
    h, w = 20, 30
    color = torch.from_numpy(rng.integers(0, 255, (1, h, w, 3), dtype=np.uint8))
    depth = torch.full((1, h, w), 2.0)
    k = torch.tensor([[50.0, 0, 15], [0, 50.0, 10], [0, 0, 1]])
    right = np.eye(4)
    right[0, 3] = 0.08
    rel = torch.from_numpy(relative_cv_transforms(np.eye(4), np.stack([np.eye(4), right])))
    c, d, v = reproject_views(color, depth, k, rel, k.expand(2, 3, 3))
    assert torch.equal(c[0, 0], color[0]) and bool(v[0, 0].all())
    assert torch.equal(c[0, 1][:, : w - 2], color[0][:, 2:])  # u' = u - 2
    assert not bool(v[0, 1][:, w - 2:].any()) and bool(v[0, 1][:, : w - 2].all())
    torch.testing.assert_close(d[0, 1][v[0, 1]], torch.full((int(v[0, 1].sum()),), 2.0))
    # Nearer surface wins where two land on the same pixel.
    depth2 = depth.clone()
    depth2[0, :, 10] = 1.0  # a near column: shifts 4 px instead of 2, lands on column 6 over the far column 8
    c2, d2, _ = reproject_views(color, depth2, k, rel[1:], k[None])
    assert torch.equal(c2[0, 0][:, 6], color[0][:, 10]) and torch.allclose(d2[0, 0][:, 6], torch.ones(h))


def test_umt5_prompt_embedding_drops_padding(tmp_path):
    from transformers import UMT5Config, UMT5EncoderModel

    from gen_server.generators.inspatio.text_embed import embed_token_ids
    torch.manual_seed(0)
    enc = UMT5EncoderModel(UMT5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)).eval()
    ids = torch.tensor([[5, 9, 3, 1, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    emb = embed_token_ids(enc, ids, mask)
    assert emb.shape == (4, 16)
    with torch.no_grad():
        full = enc(input_ids=ids, attention_mask=mask).last_hidden_state[0]
    torch.testing.assert_close(emb, full[:4])
    save_prompt_embedding(tmp_path / "e.safetensors", emb, "a prompt")
    torch.testing.assert_close(load_prompt_embedding(tmp_path / "e.safetensors", text_dim=16), emb)


def test_asynchronous_mode_never_waits(world_dir):
    """First call: geometric render (nothing generated yet); once the worker has a block, generated frames."""
    import time

    from gen_server.generators.inspatio.generator import InSpatioGenerator
    from gen_server.render.renderer import Renderer
    world = _world()
    gen = InSpatioGenerator(world, device="cpu", checkpoint=str(world_dir / "dit.safetensors"),
                            taehv=str(world_dir / "taew2_1.pth"), world_dir=str(world_dir),
                            dit_config=tiny_dit_config(), taehv_config=tiny_taehv_config(), stream_config=STREAM,
                            asynchronous=True)
    try:
        fov = cameras.Fov(-0.6, 0.6, 0.45, -0.45)
        pose = np.eye(4)[None]
        first = gen.render_views(pose, [fov], 48, 32, 0.0)
        geo = Renderer(world, device="cpu").render_fov(pose, [fov], 48, 32, 0.0)
        assert torch.equal(first.color, geo.color) and torch.equal(first.depth, geo.depth)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(gen.queue) < 9:
            time.sleep(0.05)
        assert gen.worker_error is None and len(gen.queue) >= 9
        frame = gen.queue[0]  # first block: frames 3..11 of a block started at tau 0
        assert frame.tau == pytest.approx(3 / FPS)
        out = gen.render_views(pose, [fov], 48, 32, frame.tau)
        v = out.valid[0]
        assert v.float().mean() > 0.9 and torch.equal(out.color[0][v], frame.color[0][v])
    finally:
        gen.close()
    assert not gen._worker.is_alive()
