"""video_io: real files written with PyAV in several containers, read back with sizes, counts, fps resampling,
rotation metadata and every kind of bad file."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from gen_server.errors import InputError
from gen_server.video_io import VideoWriter, output_size, read_video_frames


def _gray_frames(n, w, h, step=8):
    """Frame i is a flat grey of level i*step: the decoded level tells which source frame was picked."""
    return [np.full((h, w, 3), min(255, i * step), np.uint8) for i in range(n)]


def _write(path, frames, fps, codec="h264"):
    h, w = frames[0].shape[:2]
    with VideoWriter(path, fps, w, h, codec=codec, crf=10) as writer:
        for f in frames:
            writer.write(f)
    return path


CONTAINERS = [("mp4", "h264"), ("mkv", "h264"), ("mov", "mpeg4")]
if "libvpx-vp9" in av.codecs_available:
    CONTAINERS.append(("webm", "vp9"))


@pytest.mark.parametrize("ext,codec", CONTAINERS)
def test_containers_round_trip_count_size_levels(tmp_path, ext, codec):
    frames = _gray_frames(20, 64, 48)
    path = _write(tmp_path / f"clip.{ext}", frames, 20, codec)
    info, it = read_video_frames(path)
    out = list(it)
    assert (info.width, info.height, info.fps, info.source_fps) == (64, 48, 20.0, 20.0)
    assert info.frame_count == 20 and len(out) == 20
    times = np.array([t for t, _ in out])
    np.testing.assert_allclose(times, np.arange(20) / 20.0, atol=1e-9)
    levels = np.array([f.mean() for _, f in out])
    np.testing.assert_allclose(levels, np.arange(20) * 8, atol=3.0)
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for _, f in out)


def test_fps_resampling_picks_nearest_frame(tmp_path):
    path = _write(tmp_path / "fast.mp4", _gray_frames(30, 32, 32), 60)  # 0.5 s at 60 fps
    # Default: capped at 30 fps -> every second frame.
    info, it = read_video_frames(path)
    out = list(it)
    assert info.fps == 30.0 and info.source_fps == 60.0
    assert len(out) == info.frame_count == 15
    np.testing.assert_allclose([f.mean() for _, f in out], np.arange(15) * 2 * 8, atol=3.0)
    # 25 fps: output time k/25 -> nearest source index round(2.4 k); last time 12/25 = 0.48 s <= 29.5/60.
    info, it = read_video_frames(path, fps=25)
    out = list(it)
    expected = np.round(np.arange(13) * 2.4) * 8
    assert len(out) == 13
    np.testing.assert_allclose([f.mean() for _, f in out], expected, atol=3.0)
    np.testing.assert_allclose([t for t, _ in out], np.arange(13) / 25, atol=1e-9)


def test_resize_keeps_aspect_even_dims(tmp_path):
    assert output_size(1280, 720, 320) == (320, 180)
    assert output_size(640, 360, 960) == (640, 360)  # never upscales
    assert output_size(1000, 563, 500) == (500, 282)  # 281.5 -> even
    frames = [np.zeros((720, 1280, 3), np.uint8) for _ in range(3)]
    frames[0][:, :640] = (255, 0, 0)
    info, it = read_video_frames(_write(tmp_path / "big.mp4", frames, 24), max_side=320)
    t0, f0 = next(it)
    assert (info.width, info.height) == (320, 180) and f0.shape == (180, 320, 3)
    assert f0[90, 40, 0] > 200 and f0[90, 280, 0] < 50  # left half red survives scaling


def _write_rotated(path, degrees):
    frame = np.zeros((32, 64, 3), np.uint8)
    frame[:8, :8] = (255, 0, 0)  # red top-left corner in the stored (landscape) image
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(24))
        s.width, s.height, s.pix_fmt = 64, 32, "yuv420p"
        s.set_display_rotation(degrees)
        for _ in range(4):
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.mark.parametrize("degrees,corner", [(90, "bottom_left"), (-90, "top_right"), (180, "bottom_right")])
def test_rotation_metadata_applied(tmp_path, degrees, corner):
    info, it = read_video_frames(_write_rotated(tmp_path / "rot.mp4", degrees))
    _, f = next(it)
    portrait = degrees % 180 != 0
    assert (info.width, info.height) == ((32, 64) if portrait else (64, 32))
    assert f.shape == ((64, 32, 3) if portrait else (32, 64, 3))
    h, w = f.shape[:2]
    red = {"top_left": f[2, 2], "top_right": f[2, w - 3], "bottom_left": f[h - 3, 2], "bottom_right": f[h - 3, w - 3]}
    for name, px in red.items():
        if name == corner:
            assert px[0] > 200 and px[1] < 60, (name, px)
        else:
            assert px[0] < 60, (name, px)


def test_legacy_rotate_tag(tmp_path):
    """No display matrix, only an old-style clockwise 'rotate' tag (kept by Matroska): still applied."""
    path = tmp_path / "tag.mkv"
    frame = np.zeros((32, 64, 3), np.uint8)
    frame[:8, :8] = (255, 0, 0)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(24))
        s.width, s.height, s.pix_fmt = 64, 32, "yuv420p"
        s.metadata["rotate"] = "90"
        for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    info, it = read_video_frames(path)
    _, f = next(it)
    assert info.rotation == 270 and f.shape == (64, 32, 3)
    assert f[2, 29, 0] > 200 and f[2, 2, 0] < 60  # clockwise: top-left corner -> top-right


def test_writer_is_atomic(tmp_path):
    out = tmp_path / "x.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(out, 24, 32, 32) as w:
            w.write(np.zeros((32, 32, 3), np.uint8))
            assert not out.exists()
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        VideoWriter(out, 24, 31, 32)
    with VideoWriter(out, 24, 32, 32) as w:
        with pytest.raises(ValueError):
            w.write(np.zeros((16, 32, 3), np.uint8))
        w.write(np.zeros((32, 32, 3), np.uint8))
    assert out.exists() and [p.name for p in tmp_path.iterdir()] == ["x.mp4"]
    with pytest.raises(ValueError):  # a video with no frames is never published
        with VideoWriter(tmp_path / "none.mp4", 24, 32, 32):
            pass
    assert not (tmp_path / "none.mp4").exists() and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("ext,codec", [("mkv", "h264")] + [c for c in CONTAINERS if c[0] == "webm"])
def test_truncated_stream_detected_after_partial_frames(tmp_path, ext, codec):
    """Matroska keeps playing up to the cut: the reader compares with the declared length and says so."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(24)]
    good = _write(tmp_path / f"good.{ext}", frames, 24, codec)
    assert len(list(read_video_frames(good)[1])) == 24  # the untruncated file passes the check
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(good.read_bytes()[: int(good.stat().st_size * 0.6)])
    info, it = read_video_frames(cut)
    got = []
    with pytest.raises(InputError) as e:
        for item in it:
            got.append(item)
    assert 0 < len(got) < 24
    assert str(cut) in str(e.value) and "truncated" in str(e.value) and "declares 1.0" in str(e.value)


def test_bad_files_rejected_naming_file(tmp_path):
    good = _write(tmp_path / "good.mp4", _gray_frames(10, 32, 32), 24)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    audio = tmp_path / "audio.wav"
    with av.open(str(audio), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    no_frames = tmp_path / "noframes.y4m"  # a valid header declaring a video stream, then nothing
    no_frames.write_bytes(b"YUV4MPEG2 W32 H32 F24:1 Ip A1:1 C420jpeg\n")
    cases = {
        tmp_path / "missing.mp4": "no such file",
        empty: "empty",
        truncated: "truncated",
        text: "not a readable video",
        audio: "no video stream",
        no_frames: "no frames",
    }
    for bad_fps in (0, -5, float("nan")):
        with pytest.raises(InputError, match="invalid target fps"):
            read_video_frames(good, fps=bad_fps)
    for path, words in cases.items():
        with pytest.raises(InputError) as e:
            info, it = read_video_frames(path)
            list(it)
        msg = str(e.value)
        assert str(path) in msg and words in msg and "\n" not in msg, msg
