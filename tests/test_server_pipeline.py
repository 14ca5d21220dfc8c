"""The server's pipelined encode (``pipeline_encode``): encode of batch N on a worker thread while batch
N+1 renders. Same real sockets and codec as tests/test_server.py, run in both modes; the speed of each
mode is measured by gen_server/benchmarks/serve_bench.py, not here."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from gen_server import protocol as P
from gen_server.codec import depth_error_bound
from test_server_helpers import FOV, eyes_at, make_server, painted_color, painted_depth, raw_dealer, recv_msg
from xr_client.frame_decode import decode_frame


def hello(sock: zmq.Socket, size: int) -> None:
    sock.send_multipart(P.encode(P.Hello(size, size, (FOV, FOV))))
    assert isinstance(recv_msg(sock), P.Welcome)


def x_of(seq: int) -> float:
    return -0.8 + 1.6 * (seq % 97) / 97


@pytest.mark.parametrize("pipeline", [True, False])
def test_open_loop_frames_answer_newest_pose_with_right_poses_and_tau(pipeline):
    """Poses every ~1 ms: frames come back in pose order, each with exactly its pose's eyes, colours and
    the paused tau; after the burst the last frame answers the last pose; the worker is joined on stop."""
    server = make_server(fps=1000.0, pipeline_encode=pipeline, pipeline_encode_cpu=pipeline).start()
    sock = raw_dealer(server.address)
    try:
        hello(sock, 160)
        sock.send_multipart(P.encode(P.Control("pause", seq=1)))
        sock.send_multipart(P.encode(P.Control("seek", 1.25, seq=2)))
        time.sleep(0.1)
        frames, sent = [], 0
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            sent += 1
            head, eyes = eyes_at(x_of(sent))
            sock.send_multipart(P.encode(P.PoseUpdate(sent, head, eyes)))
            while sock.poll(0):  # a headset does not wait for frames: poses keep arriving mid-encode
                msg = P.decode(sock.recv_multipart())
                if isinstance(msg, P.Frame):
                    frames.append(msg)
            time.sleep(0.001)
        deadline = time.monotonic() + 3.0
        while (not frames or frames[-1].pose_seq != sent) and time.monotonic() < deadline:
            msg = recv_msg(sock)
            if isinstance(msg, P.Frame):
                frames.append(msg)
        assert frames[-1].pose_seq == sent  # newest pose wins: the final pose is always answered
        assert len(frames) >= 10
        seqs = [f.pose_seq for f in frames]
        assert seqs == sorted(set(seqs))  # never an older pose after a newer one, never twice
        assert [f.seq for f in frames] == sorted(f.seq for f in frames)
        for f in frames[::max(1, len(frames) // 12)] + [frames[-1]]:
            _, eyes = eyes_at(x_of(f.pose_seq))
            assert [e.pose for e in f.eyes] == list(eyes)
            assert f.tau == pytest.approx(1.25, abs=1e-9)
            t = f.timings
            assert t["pose_received_ns"] <= t["render_start_ns"] <= t["render_end_ns"] <= t["encode_start_ns"]
            assert t["encode_start_ns"] <= t["encode_end_ns"] <= t["send_ns"]
            decoded = decode_frame(f)
            for i in range(2):
                expect = painted_color(eyes[i].matrix()).astype(int)
                assert np.abs(decoded.color[i].astype(int) - expect).max() <= 3
                z = painted_depth(1.25)
                assert np.abs(decoded.depth[i] - z).max() <= depth_error_bound(z, 0.05, 500.0) + 1e-5
        # Overlap, from the frames' own timings: pipelined, some render starts before the previous
        # frame's encode ended; serial, never.
        overlaps = sum(b.timings["render_start_ns"] < a.timings["encode_end_ns"] for a, b in zip(frames, frames[1:]))
        if pipeline:
            assert overlaps >= len(frames) // 4, f"only {overlaps} of {len(frames)} renders overlapped an encode"
        else:
            assert overlaps == 0
        stats = server.status()
        assert stats["frames_sent"] >= len(frames) and stats["encode_ms_p50"] > 0 and stats["render_ms_p50"] >= 0
        assert stats.get("encode_errors", 0) == 0
    finally:
        sock.close()
        server.stop()
    assert not server._thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name == "stream-encode" and t.is_alive()]  # worker joined


@pytest.mark.parametrize("pipeline", [True, False])
def test_cuda_graphs_only_without_other_gpu_threads(pipeline):
    """A CUDA graph capture must not overlap GPU work on another thread, so with the encode worker the
    server turns graphs off in the renderer and the codec."""
    from gen_server.benchmarks.render_bench import random_world
    from gen_server.generators.geometric import GeometricGenerator

    generator = GeometricGenerator(random_world(2_000, 200, 2), device="cpu")
    server = make_server(generator, pipeline_encode=pipeline)
    try:
        assert generator.renderer.config.cuda_graphs is not pipeline
        assert server.encoder.config.cuda_graphs is not pipeline
    finally:
        server.start().stop()
