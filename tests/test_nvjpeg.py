"""nvJPEG ctypes binding: library lookup order (anywhere) and real GPU encodes decoded by libjpeg-turbo (CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import simplejpeg
import torch

from gen_server.codec import CodecConfig, FrameEncoder
from gen_server.nvjpeg import library_candidates
from tests.test_codec import psnr, smooth_image
from xr_client.frame_decode import decode_color

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")


def test_library_candidates_prefer_torchs_cuda_major(tmp_path, monkeypatch):
    for rel in ("nvidia/nvjpeg/lib/libnvjpeg.so.12", "nvidia/cu13/lib/libnvjpeg.so.13", "unrelated/libnvjpeg.so.13"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    monkeypatch.setattr("sys.path", [str(tmp_path)])
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    found = [p for p in library_candidates(13) if str(tmp_path) in p]
    assert found == [str(tmp_path / "nvidia/cu13/lib/libnvjpeg.so.13"), str(tmp_path / "nvidia/nvjpeg/lib/libnvjpeg.so.12")]
    found12 = [p for p in library_candidates(12) if str(tmp_path) in p]
    assert found12[0].endswith("libnvjpeg.so.12")


@cuda
@pytest.mark.parametrize("subsampling", ["420", "444"])
def test_nvjpeg_views_decode_to_the_source(subsampling):
    from gen_server.nvjpeg import NvJpegEncoder, NvJpegError

    # Odd sizes: neither a multiple of the 16-pixel MCU nor of each other.
    views = np.stack([smooth_image(123, 201, 0), smooth_image(123, 201, 1), smooth_image(123, 201, 2)])
    enc = NvJpegEncoder("cuda", quality=90, subsampling=subsampling)
    for _ in range(2):  # the second batch reuses the state and stream
        jpegs = enc.encode(torch.from_numpy(views).cuda())
        assert len(jpegs) == 3
        for jpeg, src in zip(jpegs, views):
            h, w, _, sub = simplejpeg.decode_jpeg_header(bytes(jpeg))
            assert (w, h, sub) == (201, 123, subsampling)
            assert psnr(simplejpeg.decode_jpeg(bytes(jpeg), colorspace="RGB"), src) > 34.0
    # Views differ, so their bitstreams do (each view encoded from its own memory, not a neighbour's).
    assert len({bytes(j) for j in jpegs}) == 3
    enc.close()
    enc.close()  # idempotent
    with pytest.raises(NvJpegError, match="after close"):
        enc.encode(torch.from_numpy(views).cuda())


@cuda
def test_nvjpeg_reads_what_the_current_stream_wrote():
    """The encoder's stream waits for the work queued before ``encode``: a view filled just before (on the
    current stream, after a long kernel) is encoded with its new content, not stale memory."""
    from gen_server.nvjpeg import NvJpegEncoder

    enc = NvJpegEncoder("cuda", quality=95)
    src = torch.from_numpy(smooth_image(480, 640, 3)).cuda()
    for _ in range(3):
        views = torch.zeros((2, 480, 640, 3), dtype=torch.uint8, device="cuda")
        big = torch.randn(4096, 4096, device="cuda")
        _ = big @ big @ big  # keeps the current stream busy when the fill below is queued
        views[:] = src
        jpegs = enc.encode(views)
        for jpeg in jpegs:
            assert psnr(simplejpeg.decode_jpeg(bytes(jpeg), colorspace="RGB"), src.cpu().numpy()) > 36.0


@cuda
def test_frame_encoder_cuda_colour_goes_through_the_binding_and_matches_cpu():
    views = np.stack([smooth_image(256, 320, 4), smooth_image(256, 320, 5)])
    depth = np.full((2, 256, 320), 2.5, np.float32)
    gpu = FrameEncoder(CodecConfig(jpeg_quality=85)).encode(torch.from_numpy(views).cuda(), torch.from_numpy(depth).cuda())
    cpu = FrameEncoder(CodecConfig(jpeg_quality=85)).encode(views, depth)
    assert (gpu.backend, cpu.backend) == ("nvjpeg", "simplejpeg")
    for g, c, src in zip(gpu.color, cpu.color, views):
        q_gpu, q_cpu = psnr(decode_color("jpeg", g, 320, 256), src), psnr(decode_color("jpeg", c, 320, 256), src)
        assert abs(q_gpu - q_cpu) < 2.0, (q_gpu, q_cpu)
        assert 0.5 < len(g) / len(c) < 2.0  # same subsampling and quality: similar sizes
    assert [bytes(d) for d in gpu.depth] == [bytes(d) for d in cpu.depth]


@cuda
def test_nvjpeg_reads_planar_memory_as_is_and_any_other_layout_through_a_copy():
    """The renderer's colour is (B, 3, H, W) memory seen as (B, H, W, 3): encoded from the planes; a
    strided crop is made contiguous first. All decode to the same pixels."""
    from gen_server.nvjpeg import NvJpegEncoder

    src = torch.from_numpy(np.stack([smooth_image(96, 130, 6), smooth_image(96, 130, 7)])).cuda()
    planar = src.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    assert planar.stride() == (3 * 96 * 130, 130, 1, 96 * 130)
    wide = torch.zeros((2, 96, 140, 3), dtype=torch.uint8, device="cuda")
    wide[:, :, 5:135] = src
    enc = NvJpegEncoder("cuda", quality=92)
    decoded = {name: [simplejpeg.decode_jpeg(bytes(j), colorspace="RGB") for j in enc.encode(views)]
               for name, views in (("interleaved", src), ("planar", planar), ("crop", wide[:, :, 5:135]))}
    for name, images in decoded.items():
        for img, ref, interleaved in zip(images, src.cpu().numpy(), decoded["interleaved"]):
            assert psnr(img, ref) > 36.0, name
            assert psnr(img, interleaved) > 45.0, name
