"""The streaming benchmark measures what it says: frames counted per pose rate, latencies ordered as the
pipeline is (server time inside pose->decoded), and the undecoded client decoding nothing."""

import pytest

from gen_server.benchmarks.serve_bench import SERVER_SEGMENTS, run


@pytest.mark.parametrize("decode", [True, False])
def test_open_loop_numbers_are_consistent(decode):
    r = run(None, "cpu", 128, 96, 1, 2.0, static_points=20_000, pose_hz=30.0, decode=decode)
    assert r["clients_decode"] is decode and r["timeouts"] == 0
    assert 10.0 <= r["fps_per_client_min"] <= 30.0 * 1.1  # never more frames than poses sent
    assert 0 < r["server_pose_to_send_ms_p50"] <= r["latency_ms_p50"]  # the server's part is inside the round trip
    assert r["server_pose_to_send_ms_p50"] <= r["server_pose_to_send_ms_p99"]
    segments = r["server_segments_ms_p50_p99"]
    assert set(segments) == set(SERVER_SEGMENTS)
    assert all(0 <= p50 <= p99 for p50, p99 in segments.values())
    assert segments["render"][0] <= r["server_pose_to_send_ms_p50"]
    assert (r["client_decode_ms_p50"] > 0) is decode
