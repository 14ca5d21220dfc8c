"""TAEHV: taew2_1 key layout round trip, streaming chunks == whole clip == per-frame sequential reference."""
from __future__ import annotations

import pytest
import torch

from gen_server.errors import InputError
from gen_server.generators.inspatio.checkpoint import load_taehv
from gen_server.generators.inspatio.config import tiny_taehv_config
from gen_server.generators.inspatio.taehv import TAEHV, MemBlock, TAEHVStream, TGrow, TPool

CFG = tiny_taehv_config()


def _random_tae(seed=0) -> TAEHV:
    torch.manual_seed(seed)
    tae = TAEHV(CFG)
    with torch.no_grad():
        for p in tae.parameters():
            p.mul_(1.5)  # keep activations alive through the ReLUs
    return tae.eval()


def sequential_reference(seq, frames: list[torch.Tensor]) -> list[torch.Tensor]:
    """Layer by layer over a list of (N, C, H, W) frames; memory = previous frame's input at that layer."""
    for layer in seq:
        if isinstance(layer, MemBlock):
            frames = [layer(x, frames[i - 1] if i else torch.zeros_like(x)) for i, x in enumerate(frames)]
        elif isinstance(layer, TPool):
            s = layer.stride
            frames = [layer.conv(torch.cat(frames[i:i + s], 1)) for i in range(0, len(frames), s)]
        elif isinstance(layer, TGrow):
            frames = [y for x in frames for y in layer.conv(x).chunk(layer.stride, 1)]
        else:
            frames = [layer(x) for x in frames]
    return frames


def test_taew2_1_layout_roundtrip_and_errors(tmp_path):
    tae = _random_tae()
    path = tmp_path / "taew2_1.pth"
    torch.save(tae.state_dict(), path)
    keys = set(torch.load(path, weights_only=True))
    for k in ("encoder.0.weight", "encoder.2.conv.weight", "encoder.4.conv.0.weight", "encoder.4.conv.4.bias",
              "encoder.17.weight", "decoder.1.weight", "decoder.7.conv.weight", "decoder.13.conv.weight",
              "decoder.22.bias"):
        assert k in keys, k
    loaded = load_taehv(path, CFG, dtype=torch.float32)
    for k, v in tae.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    sd = tae.state_dict()
    del sd["decoder.13.conv.weight"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(InputError, match=r"broken\.pth.*missing keys: decoder\.13\.conv\.weight"):
        load_taehv(tmp_path / "broken.pth", CFG)


def test_stream_equals_whole_clip_equals_sequential():
    tae = _random_tae()
    g = torch.Generator().manual_seed(3)
    frames = torch.rand(2, 24, 3, 32, 48, generator=g)
    with torch.no_grad():
        whole = tae.encode_video(frames)
        assert whole.shape == (2, 6, 16, 4, 6)
        seq = torch.stack(sequential_reference(tae.encoder, list(frames.unbind(1))), dim=1)
        torch.testing.assert_close(whole, seq, rtol=1e-5, atol=1e-5)
        stream = TAEHVStream(tae)
        chunks = torch.cat([stream.encode(frames[:, :12]), stream.encode(frames[:, 12:])], dim=1)
        torch.testing.assert_close(chunks, whole, rtol=1e-5, atol=1e-5)
        assert whole.std() > 1e-3

        decoded = tae.decode_video(whole)
        assert decoded.shape == (2, 21, 3, 32, 48)  # 4L - 3 frames
        raw = torch.stack(sequential_reference(tae.decoder, list(whole.unbind(1))), dim=1).clamp(0, 1)
        torch.testing.assert_close(decoded, raw[:, 3:], rtol=1e-5, atol=1e-5)
        first, second = stream.decode(whole[:, :3]), stream.decode(whole[:, 3:])
        assert first.shape[1] == 9 and second.shape[1] == 12
        torch.testing.assert_close(torch.cat([first, second], 1), decoded, rtol=1e-5, atol=1e-5)
        # Memory matters: decoding the second chunk from a fresh stream differs.
        assert not torch.allclose(TAEHVStream(tae).decode(whole[:, 3:])[:, -6:], second[:, -6:], atol=1e-4)
        with pytest.raises(ValueError, match="multiple of 4"):
            stream.encode(frames[:, :6])
