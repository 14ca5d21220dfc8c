"""The client benchmark runs and reports sane numbers at a tiny size (speed itself is not asserted)."""

import pytest

pytestmark = pytest.mark.gl


def test_bench_client_reports_timings():
    from xr_client.bench_client import run

    out = run(64, 48, vsyncs=8, frame_every=4)
    for key in ("vsync_ms_both_eyes", "upload_ms_per_frame", "decode_ms_per_frame"):
        assert out[key]["mean"] > 0 and out[key]["p95"] >= out[key]["p50"] > 0
    assert out["eye_size"] == [64, 48] and out["depth_size"] == [32, 24]
    assert out["gl_renderer"] and isinstance(out["software_gl"], bool)
