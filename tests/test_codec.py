"""Frame codec: colour JPEG quality, inverse-depth quantisation bounds, nearest-surface downsampling, sizes."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import zstandard

from gen_server.codec import (
    Q_MAX, CodecConfig, FrameEncoder, depth_bands, depth_error_bound, dequantize_inverse_depth, downsample_depth,
    byte_planes, compress_band, join_bands, pack_depth, quantize_inverse_depth, unpack_depth,
)
from gen_server.protocol import ProtocolError
from xr_client.frame_decode import decode_color, decode_depth


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Gradients plus a few soft blobs: photographic-ish content JPEG is meant for."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([200 * x + 30, 180 * y + 40, 120 * (1 - x * y) + 60], -1)
    for _ in range(5):
        cx, cy, r = rng.uniform(0, 1, 3)
        img += 40 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (0.02 + 0.05 * r))[..., None] * rng.uniform(-1, 1, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_jpeg_round_trip_psnr_and_size():
    enc = FrameEncoder(CodecConfig(jpeg_quality=90))
    color = np.stack([smooth_image(128, 160, 0), smooth_image(128, 160, 1)])
    depth = np.full((2, 128, 160), 3.0, np.float32)
    out = enc.encode(color, depth)
    assert out.backend == "simplejpeg" and (out.width, out.height) == (160, 128)
    for i in range(2):
        back = decode_color("jpeg", out.color[i], 160, 128)
        assert psnr(back, color[i]) > 35.0
        assert len(out.color[i]) < color[i].nbytes / 8  # it actually compresses
    low = FrameEncoder(CodecConfig(jpeg_quality=30)).encode(color, depth)
    assert sum(map(len, low.color)) < sum(map(len, out.color))
    with pytest.raises(ProtocolError, match="declared"):
        decode_color("jpeg", out.color[0], 128, 128)
    with pytest.raises(ProtocolError, match="undecodable"):
        decode_color("jpeg", b"\xff\xd8garbage", 160, 128)


def test_raw_colour_is_exact():
    color = np.random.default_rng(2).integers(0, 256, (2, 16, 24, 3), dtype=np.uint8)
    out = FrameEncoder(CodecConfig(color_codec="raw")).encode(color, np.ones((2, 16, 24), np.float32))
    for i in range(2):
        np.testing.assert_array_equal(decode_color("raw", out.color[i], 24, 16), color[i])


def test_inverse_depth_quantisation_error_bound():
    near, far = 0.1, 100.0
    z = np.geomspace(near, far, 20001).astype(np.float32)
    q = quantize_inverse_depth(z, near, far)
    assert q.min() == 1 and q.max() == Q_MAX  # the whole code range is used, 0 is reserved
    back = dequantize_inverse_depth(q, near, far)
    bound = depth_error_bound(z, near, far)
    assert np.all(np.abs(back - z) <= bound * 1.001 + 1e-6)
    # The bound is tight-ish and grows like z^2: ~0.4 mm at 1 m, ~0.8 m at 100 m for this range.
    assert depth_error_bound(1.0, near, far) == pytest.approx(1.0 * (1 / near - 1 / far) / (2 * (Q_MAX - 1)), rel=1e-3)
    assert np.abs(back - z).max() > 0.25 * bound.max()


def test_invalid_and_out_of_range_depth():
    near, far = 0.5, 50.0
    z = np.array([0.0, -1.0, np.nan, np.inf, 0.1, 1e4, 2.0], np.float32)
    q = quantize_inverse_depth(z, near, far)
    assert list(q[:4]) == [0, 0, 0, 0]  # no surface
    back = dequantize_inverse_depth(q, near, far)
    assert back[4] == pytest.approx(near, rel=1e-4) and back[5] == pytest.approx(far, rel=1e-4)  # clamped
    assert back[6] == pytest.approx(2.0, abs=depth_error_bound(2.0, near, far) + 1e-6)


def test_downsample_keeps_nearest_valid_surface():
    d = np.array([[5, 5, 2, 0], [5, 1, 0, 0], [3, 3, 4, 4], [3, np.nan, 4, 9]], np.float32)
    small = downsample_depth(d, 2)
    np.testing.assert_array_equal(small, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(downsample_depth(np.zeros((2, 2), np.float32), 2), [[0]])
    odd = downsample_depth(np.arange(1, 26, dtype=np.float32).reshape(5, 5), 2)
    assert odd.shape == (3, 3) and odd[2, 2] == 25 and odd[0, 0] == 1
    # Reference: the loop it replaces.
    rng = np.random.default_rng(3)
    d = rng.uniform(0.5, 10, (2, 9, 13)).astype(np.float32)
    d[rng.random(d.shape) < 0.3] = 0
    fast = downsample_depth(d, 4)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                block = d[b, 4 * i:4 * i + 4, 4 * j:4 * j + 4]
                ref = block[block > 0].min() if np.any(block > 0) else 0
                assert fast[b, i, j] == ref


@pytest.mark.parametrize("codec", ["inv16-zstd", "inv16-zlib", "inv16"])
def test_depth_payload_round_trip_and_size(codec):
    y, x = np.mgrid[0:120, 0:160]
    depth = (2.0 + 0.01 * x + 0.02 * y).astype(np.float32)[None].repeat(2, 0)
    depth[:, 10:20, 10:30] = 0  # a hole
    enc = FrameEncoder(CodecConfig(depth_codec=codec, depth_downscale=2, depth_near=0.1, depth_far=100.0))
    out = enc.encode(np.zeros((2, 120, 160, 3), np.uint8), depth)
    assert (out.depth_width, out.depth_height) == (80, 60)
    ref = downsample_depth(depth, 2)
    for i in range(2):
        back = decode_depth(codec, out.depth[i], 80, 60, 0.1, 100.0)
        valid = ref[i] > 0
        assert np.array_equal(back > 0, valid)
        assert np.all(np.abs(back[valid] - ref[i][valid]) <= depth_error_bound(ref[i][valid], 0.1, 100.0) * 1.001 + 1e-6)
        if codec != "inv16":
            assert len(out.depth[i]) < 0.5 * 80 * 60 * 2  # a smooth ramp compresses well
        else:
            assert len(out.depth[i]) == 80 * 60 * 2


def test_depth_scale_converts_world_to_stage_metres():
    enc = FrameEncoder(CodecConfig(depth_downscale=1))
    out = enc.encode(np.zeros((1, 8, 8, 3), np.uint8), np.full((1, 8, 8), 6.0, np.float32), depth_scale=3.0)
    back = decode_depth(out.depth_codec, out.depth[0], 8, 8, out.depth_near, out.depth_far)
    assert np.abs(back - 2.0).max() <= depth_error_bound(2.0, out.depth_near, out.depth_far) + 1e-6


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)"))])
@pytest.mark.parametrize("scale", [1.0, 1.7, [1.0, 2.5]])
def test_torch_input_matches_numpy_path(device, scale):
    rng = np.random.default_rng(5)
    color = np.stack([smooth_image(64, 64, 3)] * 2)
    depth = rng.uniform(0.5, 20, (2, 64, 64)).astype(np.float32)
    depth[0, :3, :5] = [np.nan, np.inf, -1.0, 0.0, 1e-4]  # invalid, and clamped to near
    depth[1, 60:, 60:] = 1e4  # clamped to far
    valid = rng.random((2, 64, 64)) > 0.2
    valid[1, 8:16, 8:16] = False  # a hole bigger than a block
    enc = FrameEncoder(CodecConfig(depth_downscale=4))
    a = enc.encode(color, depth, valid, depth_scale=scale)
    b = enc.encode(*(torch.from_numpy(x).to(device) for x in (color, depth, valid)), depth_scale=scale)
    if device == "cpu":
        assert a.color == b.color
    assert a.depth == b.depth  # same nearest-surface reduction and quantisation on both paths, bit for bit
    tensors = [torch.from_numpy(x).to(device) for x in (color, depth)]
    for _ in range(2):  # on CUDA a captured graph per shape: the second call replays it
        assert enc.encode(*tensors, depth_scale=scale).depth == enc.encode(color, depth, depth_scale=scale).depth
    codes = enc.depth_codes(depth, valid, scale)
    assert 0 < (codes == 0).sum() < codes.size and codes.max() == Q_MAX  # holes and the near clamp both met


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
def test_cuda_depth_payloads_outlive_the_reused_pinned_buffer():
    """Depth planes come back through one pinned buffer per shape: every frame's payload must still hold
    its own depth after later frames reused that buffer."""
    rng = np.random.default_rng(9)
    color = torch.from_numpy(np.stack([smooth_image(64, 96, 1)] * 2)).cuda()
    depths = [rng.uniform(0.5, 30, (2, 64, 96)).astype(np.float32) for _ in range(3)]
    enc = FrameEncoder(CodecConfig(depth_downscale=2))
    frames = [enc.encode(color, torch.from_numpy(d).cuda()) for d in depths]
    for frame, d in zip(frames, depths):
        assert frame.depth == enc.encode(color.cpu().numpy(), d).depth


def test_unpack_rejects_wrong_sizes_and_bombs():
    q = np.arange(12, dtype=np.uint16).reshape(3, 4)
    payload = pack_depth(q, "inv16-zlib")
    np.testing.assert_array_equal(unpack_depth(payload, "inv16-zlib", 4, 3), q)
    with pytest.raises(ValueError):
        unpack_depth(payload, "inv16-zlib", 4, 4)
    bomb = zlib.compress(b"\0" * (50 << 20))  # 50 MiB of zeros in ~50 KiB
    with pytest.raises(ValueError):
        unpack_depth(bomb, "inv16-zlib", 64, 64)
    with pytest.raises(ProtocolError, match="bad depth payload"):
        decode_depth("inv16", b"\0" * 7, 2, 2, 0.1, 10.0)


@pytest.mark.parametrize("codec", ["inv16-zstd", "inv16-zlib"])
def test_banded_depth_payload_round_trip_and_damage(codec):
    """Bands of rows compress separately (in parallel on the server); the reader checks that the bands
    are whole rows adding up to the declared height."""
    rng = np.random.default_rng(3)
    q = rng.integers(0, 65536, (150, 40), dtype=np.uint16)
    q[:, :20] = 1234  # some structure
    bands = depth_bands(150, 64)
    assert [(b.start, b.stop) for b in bands] == [(0, 64), (64, 128), (128, 150)]
    assert depth_bands(150, 0) == [slice(0, 150)]
    parts = [compress_band(byte_planes(q[b]), codec) for b in bands]
    payload = join_bands(parts, codec)
    np.testing.assert_array_equal(unpack_depth(payload, codec, 40, 150), q)
    assert pack_depth(q, codec, band_rows=64) == payload
    np.testing.assert_array_equal(unpack_depth(pack_depth(q, codec), codec, 40, 150), q)  # one band
    enc = FrameEncoder(CodecConfig(depth_codec=codec, depth_downscale=1, depth_band_rows=64))
    depth = rng.uniform(0.5, 20, (2, 150, 40)).astype(np.float32)
    banded = enc.encode(np.zeros((2, 150, 40, 3), np.uint8), depth)
    single = FrameEncoder(CodecConfig(depth_codec=codec, depth_downscale=1, depth_band_rows=0)).encode(
        np.zeros((2, 150, 40, 3), np.uint8), depth)
    assert banded.depth != single.depth  # three bands against one ...
    for a, b in zip(banded.depth, single.depth):  # ... holding the same codes
        np.testing.assert_array_equal(unpack_depth(a, codec, 40, 150), unpack_depth(b, codec, 40, 150))
    odd = b"\0" * (2 * 40 * 3 + 1)  # three rows and a byte
    partial_rows = zlib.compress(odd) if codec == "inv16-zlib" else zstandard.ZstdCompressor().compress(odd)
    for bad in (payload[:-5],                                    # last band truncated
                join_bands(parts + parts[2:], codec),            # one band too many
                join_bands(parts[:2], codec),                    # a band missing
                payload + b"junk",                               # trailing garbage
                join_bands([partial_rows] + parts, codec)):      # a band of partial rows
        with pytest.raises(ValueError):
            unpack_depth(bad, codec, 40, 150)


def test_zstd_depth_rejects_bombs_and_bad_tables():
    big = zstandard.ZstdCompressor().compress(b"\0" * (50 << 20))  # 50 MiB of zeros in a few KiB
    with pytest.raises(ValueError, match="declares"):
        unpack_depth(join_bands([big], "inv16-zstd"), "inv16-zstd", 64, 64)
    streamed = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (2 * 64 * 64))
    with pytest.raises(ValueError, match="declares"):  # no declared size: nothing bounds it, refused
        unpack_depth(join_bands([streamed], "inv16-zstd"), "inv16-zstd", 64, 64)
    good = pack_depth(np.ones((64, 64), np.uint16), "inv16-zstd")
    for bad in (b"", good[:3], b"\xff\xff\xff\xff" + good[4:], b"\0\0\0\0" + good[4:]):
        with pytest.raises(ValueError):
            unpack_depth(bad, "inv16-zstd", 64, 64)
    with pytest.raises(ProtocolError, match="bad depth payload"):
        decode_depth("inv16-zstd", good[:-1], 64, 64, 0.1, 10.0)


def test_auto_depth_factor():
    enc = FrameEncoder(CodecConfig())  # depth_downscale=0: auto, depth at most 400 px wide
    assert [enc.depth_factor(w) for w in (64, 400, 512, 1440, 2064)] == [1, 1, 2, 4, 8]
    out = enc.encode(np.zeros((2, 48, 512, 3), np.uint8), np.ones((2, 48, 512), np.float32))
    assert (out.depth_width, out.depth_height) == (256, 24)
    assert FrameEncoder(CodecConfig(depth_downscale=3)).depth_factor(1440) == 3


def test_h264_stream_round_trip_keyframes_and_sizes():
    from gen_server.codec import H264Config, H264StreamEncoder
    from gen_server.protocol import EyeView, Frame, Pose
    from xr_client.frame_decode import FrameDecoder

    enc = H264StreamEncoder(H264Config(crf=20, gop=100))
    fenc = FrameEncoder(CodecConfig(depth_downscale=2))
    fov = __import__("gen_server.cameras", fromlist=["Fov"]).Fov.symmetric(1.0, 1.0)
    base = smooth_image(96, 128, 7)
    frames = []
    for i in range(6):
        color = np.stack([np.roll(base, 2 * i, axis=1), np.roll(base, -2 * i, axis=1)])  # slow pan per eye
        if i == 4:
            enc.force_keyframe()  # as the server does after a dropped frame
        out = fenc.encode(color, np.full((2, 96, 128), 2.0, np.float32), h264=enc)
        assert out.color_codec == "h264" and out.backend == "libx264"
        frames.append((color, out))
    assert [o.keyframe for _, o in frames] == [True, False, False, False, True, False]
    key_size, p_size = sum(map(len, frames[0][1].color)), max(sum(map(len, o.color)) for _, o in frames[1:4])
    assert p_size < key_size / 3  # predicted frames are what makes h264 worth it on thin links

    def as_frame(seq, out):
        return Frame(seq=seq, pose_seq=seq, tau=0.0, eyes=(EyeView(Pose(), fov),) * 2, width=128, height=96,
                     color_codec="h264", depth_codec=out.depth_codec, depth_width=out.depth_width,
                     depth_height=out.depth_height, depth_near=out.depth_near, depth_far=out.depth_far,
                     color=out.color, depth=out.depth, keyframe=out.keyframe)

    dec = FrameDecoder()
    for seq, (color, out) in enumerate(frames):
        decoded = dec.decode(as_frame(seq, out))
        for eye in range(2):
            assert psnr(decoded.color[eye], color[eye]) > 32.0
        assert np.allclose(decoded.depth[0], 2.0, atol=1e-3)
    late = FrameDecoder()  # joins mid-stream: skips P-frames until the keyframe, then decodes
    assert late.decode(as_frame(2, frames[2][1])) is None
    assert late.decode(as_frame(4, frames[4][1])) is not None
    with pytest.raises(ProtocolError, match="stateful"):
        decode_color("h264", frames[0][1].color[0], 128, 96)


def test_per_view_depth_scale_and_select():
    enc = FrameEncoder(CodecConfig(depth_downscale=1))
    depth = np.full((4, 8, 8), 6.0, np.float32)
    out = enc.encode(np.zeros((4, 8, 8, 3), np.uint8), depth, depth_scale=[1.0, 1.0, 3.0, 3.0])
    for i, z in enumerate((6.0, 6.0, 2.0, 2.0)):
        back = decode_depth(out.depth_codec, out.depth[i], 8, 8, out.depth_near, out.depth_far)
        assert np.abs(back - z).max() <= depth_error_bound(z, out.depth_near, out.depth_far) + 1e-6
    second = out.select(slice(2, 4))
    assert second.depth == out.depth[2:] and second.color == out.color[2:] and second.width == 8
    torch_out = enc.encode(torch.zeros(4, 8, 8, 3, dtype=torch.uint8), torch.from_numpy(depth), depth_scale=[1.0, 1.0, 3.0, 3.0])
    assert torch_out.depth == out.depth
