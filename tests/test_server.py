"""The streaming server over real ZeroMQ sockets on loopback, with the xr_client stream library."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgpack
import numpy as np
import psutil
import pytest

from gen_server import protocol as P
from gen_server.codec import depth_error_bound
from gen_server.commands.keys import generate
from gen_server.errors import InputError
from gen_server.server import ServerConfig, StreamServer, is_loopback
from test_server_helpers import (FOV, WORLD_INFO, PosePainter, eyes_at, make_server, painted_color, painted_depth,
                                 raw_dealer, recv_msg)
from xr_client.stream_client import StreamClient, StreamConfig, load_key_pair

REPO = Path(__file__).resolve().parents[1]
SMALL = StreamConfig(eye_width=64, eye_height=64, fovs=(FOV, FOV), timeout_s=1.5, ping_interval_s=0.2)


@pytest.fixture
def server():
    s = make_server().start()
    yield s
    s.stop()


def connect(address, config=SMALL, **kwargs) -> StreamClient:
    client = StreamClient(address, config, **kwargs).start()
    assert client.wait_connected(5.0), f"no welcome from {address}"
    return client


def test_hello_welcome(server):
    client = connect(server.address)
    try:
        w = client.welcome
        assert (w.eye_width, w.eye_height) == (64, 64)
        assert (w.color_codec, w.depth_codec) == ("jpeg", "inv16-zstd")
        assert w.world["duration"] == WORLD_INFO["duration"] and w.max_fps == 60.0
        assert set(w.timeline) >= {"tau", "rate", "paused", "end_mode", "bookmarks"}
        np.testing.assert_array_equal(w.world_from_stage, np.eye(4))
        assert len(server.clients) == 1
    finally:
        client.close()


def test_poses_in_frames_out_right_pose_and_tau(server):
    client = connect(server.address)
    try:
        client.send_control("pause")
        client.send_control("seek", 1.5)
        time.sleep(0.1)
        for x in (0.0, 0.5, -0.7):
            head, eyes = eyes_at(x)
            seq = client.send_pose(head, eyes)
            frame = client.wait_frame(pose_seq=seq, timeout=5.0)
            assert frame is not None and frame.pose_seq == seq
            assert frame.tau == pytest.approx(1.5, abs=1e-9)
            assert frame.poses == list(eyes)  # exact echo of the stage-space eye poses
            for i, eye in enumerate(eyes):
                expect = painted_color(eye.matrix()).astype(int)
                assert np.abs(frame.color[i].astype(int) - expect).max() <= 3  # JPEG of a flat colour
                assert frame.depth[i].shape == (32, 32)  # depth at half resolution
                z = painted_depth(1.5)
                assert np.abs(frame.depth[i] - z).max() <= depth_error_bound(z, 0.05, 500.0) + 1e-5
            assert frame.fovs == [FOV, FOV]
        t = frame.timings
        assert t["pose_received_ns"] <= t["render_start_ns"] <= t["render_end_ns"] <= t["encode_end_ns"] <= t["send_ns"]
    finally:
        client.close()


def test_world_from_stage_scale_reaches_renderer_and_depth(server):
    client = connect(server.address)
    try:
        client.send_control("scale", 2.0)  # one stage metre = two world metres
        head, eyes = eyes_at(0.25, y=0.0)
        seq = client.send_pose(head, eyes)
        frame = client.wait_frame(pose_seq=seq, timeout=5.0)
        world_from_eye = server.generator.calls[-1][0]
        np.testing.assert_allclose(world_from_eye[0][:3, 3], [2 * (0.25 - 0.032), 0, 0], atol=1e-9)
        np.testing.assert_allclose(world_from_eye[0][:3, :3], np.eye(3), atol=1e-12)  # rigid for the renderer
        z_world = painted_depth(frame.tau)
        assert np.abs(frame.depth[0] - z_world / 2).max() <= depth_error_bound(z_world / 2, 0.05, 500.0) + 1e-5
    finally:
        client.close()


def test_latest_pose_wins_under_burst():
    server = make_server(fps=10.0).start()
    sock = raw_dealer(server.address)
    try:
        sock.send_multipart(P.encode(P.Hello(64, 64, (FOV, FOV))))
        assert isinstance(recv_msg(sock), P.Welcome)
        burst = 300
        for seq in range(1, burst + 1):
            head, eyes = eyes_at(seq * 1e-3)
            sock.send_multipart(P.encode(P.PoseUpdate(seq, head, eyes)))
        answered, deadline = [], time.monotonic() + 5.0
        while time.monotonic() < deadline and (not answered or answered[-1] != burst):
            msg = recv_msg(sock)
            if isinstance(msg, P.Frame):
                answered.append(msg.pose_seq)
        assert answered[-1] == burst  # the newest pose is always rendered
        assert len(answered) <= 5  # at 10 fps the burst collapses to a few frames, not 300
        assert answered == sorted(answered)
        (client,) = server.clients.values()
        assert client.counters["poses"] == burst
        assert client.counters["poses_superseded"] >= burst - 5
    finally:
        sock.close()
        server.stop()


def test_shared_timeline_one_scrubs_both_see_it(server):
    a, b = connect(server.address), connect(server.address)
    try:
        a.send_control("pause")
        a.send_control("seek", 2.25)
        time.sleep(0.2)
        for client in (a, b):
            head, eyes = eyes_at(0.0)
            seq = client.send_pose(head, eyes)
            frame = client.wait_frame(pose_seq=seq, timeout=5.0)
            assert frame.tau == pytest.approx(2.25, abs=1e-9)
            assert frame.timeline["paused"] is True
    finally:
        a.close()
        b.close()


def test_independent_timelines():
    server = make_server(independent_timelines=True).start()
    a, b = connect(server.address), connect(server.address)
    try:
        a.send_control("pause")
        a.send_control("seek", 3.0)
        b.send_control("pause")
        b.send_control("seek", 0.5)
        time.sleep(0.2)
        for client, tau in ((a, 3.0), (b, 0.5)):
            seq = client.send_pose(*eyes_at(0.0))
            assert client.wait_frame(pose_seq=seq, timeout=5.0).tau == pytest.approx(tau, abs=1e-9)
    finally:
        a.close()
        b.close()
        server.stop()


def test_bad_control_gets_error_reply(server):
    sock = raw_dealer(server.address)
    try:
        sock.send_multipart(P.encode(P.Control("seek", 1.0)))
        err = recv_msg(sock)
        assert isinstance(err, P.Error) and err.code == "unknown_client"
        sock.send_multipart(P.encode(P.Hello(64, 64, (FOV, FOV))))
        assert isinstance(recv_msg(sock), P.Welcome)
        sock.send_multipart(P.encode(P.Control("seek", 99.0, seq=7)))  # beyond the 4 s clip
        err = recv_msg(sock)
        assert isinstance(err, P.Error) and err.code == "bad_control" and err.seq == 7 and "seek" in err.message
    finally:
        sock.close()


def test_curve_accepts_allowed_and_refuses_others(tmp_path):
    keys = tmp_path / "keys"
    generate(keys, ["client"])
    config = ServerConfig(bind="tcp://127.0.0.1:*", keys_dir=keys, status_line=False, fps=60.0)
    server = StreamServer(PosePainter(), WORLD_INFO, config).start()
    try:
        good = connect(server.address, server_public_key=keys / "server.key", client_keys=keys / "client.key_secret")
        seq = good.send_pose(*eyes_at(0.1))
        assert good.wait_frame(pose_seq=seq, timeout=5.0) is not None
        good.close()
        stranger = StreamClient(server.address, SMALL, server_public_key=keys / "server.key").start()  # fresh key pair
        plain = StreamClient(server.address, SMALL).start()  # no CURVE at all
        try:
            assert not stranger.wait_connected(1.5)
            assert not plain.wait_connected(0.2)
            assert len(server.clients) == 0 or all(c.client_id == "c1" for c in server.clients.values())
        finally:
            stranger.close()
            plain.close()
        public, _ = load_key_pair(keys / "client.key_secret")
        assert (keys / "authorized_clients" / "client.key").read_bytes().count(public) == 1
    finally:
        server.stop()


def test_non_loopback_bind_needs_keys_or_insecure():
    assert is_loopback("tcp://127.0.0.1:5555") and is_loopback("tcp://[::1]:5") and is_loopback("tcp://localhost:1")
    assert not is_loopback("tcp://0.0.0.0:5555") and not is_loopback("tcp://*:5555") and not is_loopback("tcp://10.1.2.3:9")
    with pytest.raises(InputError, match="CURVE keys are required"):
        StreamServer(PosePainter(), WORLD_INFO, ServerConfig(bind="tcp://0.0.0.0:*", status_line=False))
    s = StreamServer(PosePainter(), WORLD_INFO, ServerConfig(bind="tcp://0.0.0.0:*", insecure=True, status_line=False))
    s.start()
    s.stop()


def _malformed(rng: random.Random, valid: list[list[bytes]]) -> list[bytes]:
    """One of many kinds of broken message."""
    kind = rng.randrange(9)
    base = rng.choice(valid)
    header = msgpack.unpackb(base[0])
    if kind == 0:
        return [rng.randbytes(rng.randrange(0, 200))]
    if kind == 1:
        return [base[0][: rng.randrange(len(base[0]))]]
    if kind == 2:
        key = rng.choice([k for k in header if k not in ("type", "v")])
        header[key] = rng.choice(["x", None, [], {}, -1, 2**64 - 1 if rng.random() < 0.5 else 1e308, True])
    elif kind == 3:
        for k, v in header.items():
            if isinstance(v, list) and v and isinstance(v[0], float):
                header[k] = [float("nan")] + v[1:]
        header.setdefault("seq", float("inf"))
    elif kind == 4:
        header["v"] = rng.choice([0, 2, 99, "1", None])
    elif kind == 5:
        header["type"] = rng.choice(["frame", "welcome", "pong", "nope", 5, None])
    elif kind == 6:
        return [base[0], rng.randbytes(64)]  # payload on a message that has none
    elif kind == 7:
        header["junk"] = "x" * rng.randrange(1, 2000)
    else:
        header["head"] = [0, 0, 0, 0.1, 0.2, 0.3, 0.4]  # non-unit quaternion
    return [msgpack.packb(header)]


def test_fuzz_server_survives_and_memory_bounded(server):
    good = connect(server.address)
    fuzz = raw_dealer(server.address)
    rng = random.Random(4)
    head, eyes = eyes_at(0.2)
    valid = [P.encode(m) for m in (P.Hello(64, 64, (FOV, FOV)), P.PoseUpdate(1, head, eyes), P.Control("rate", 1.0),
                                   P.Ping(1, 5))]
    process = psutil.Process()
    try:
        def burst(n):
            for _ in range(n):
                fuzz.send_multipart(_malformed(rng, valid))

        burst(500)  # warm up allocations before measuring
        rss_before = process.memory_info().rss
        frames_before = good.stats["frames_decoded"]
        for _ in range(8):
            burst(500)
            seq = good.send_pose(*eyes_at(rng.uniform(-1, 1)))
            assert good.wait_frame(pose_seq=seq, timeout=5.0) is not None, "server stopped answering the good client"
        # Oversized messages drop that connection (MAXMSGSIZE), nothing else.
        big = raw_dealer(server.address)
        big.send_multipart([msgpack.packb({"type": "pose", "v": 1}), b"\0" * (1 << 20)])
        big.close()
        seq = good.send_pose(*eyes_at(0.0))
        assert good.wait_frame(pose_seq=seq, timeout=5.0) is not None
        assert good.stats["frames_decoded"] >= frames_before + 8
        codes = []
        while fuzz.poll(200):
            msg = P.decode(fuzz.recv_multipart())
            codes.append(msg.code if isinstance(msg, P.Error) else msg.TYPE)
        # Replies to a peer that does not read are dropped at the high-water mark, but they are errors.
        assert len(codes) >= 2 and set(codes) <= {"bad_message", "bad_version", "unknown_client", "welcome", "pong", "frame"}
        assert codes.count("bad_message") >= 1
        totals = server.stats.totals
        assert totals["bad_messages"] >= 3500, totals  # of 4500 sent; a few mutations stay valid (e.g. a name "x")
        assert totals["handler_errors"] == 0, totals  # every rejection came from validation, none from a crash
        growth = process.memory_info().rss - rss_before
        assert growth < 40 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB during 4000 malformed messages"
        assert len(server.clients) <= 2
    finally:
        fuzz.close()
        good.close()


CHILD = textwrap.dedent("""
    import sys, time
    sys.path[:0] = [{repo!r}, {repo!r} + "/tests"]
    from test_server_helpers import FOV, eyes_at
    from xr_client.stream_client import StreamClient, StreamConfig
    c = StreamClient({address!r}, StreamConfig(eye_width=64, eye_height=64, fovs=(FOV, FOV))).start()
    assert c.wait_connected(10)
    print("connected", flush=True)
    while True:
        c.send_pose(*eyes_at(0.1))
        time.sleep(0.03)
""")


def test_client_killed_midstream_is_freed(server):
    observer = connect(server.address)
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(repo=str(REPO), address=server.address)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "connected"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(c.counters["frames_sent"] > 3 for c in server.clients.values()):
            time.sleep(0.05)
        assert len(server.clients) == 2
        child.kill()
        child.wait()
        killed_at = time.monotonic()
        while time.monotonic() - killed_at < 6 and len(server.clients) > 1:
            observer.send_pose(*eyes_at(0.0))
            time.sleep(0.05)
        assert len(server.clients) == 1  # the killed client's state is gone ...
        freed = {k: v for k, v in server.stats.totals.items() if k.startswith("clients_freed")}
        assert sum(freed.values()) == 1, freed
        seq = observer.send_pose(*eyes_at(0.3))  # ... and the other one is still served
        assert observer.wait_frame(pose_seq=seq, timeout=5.0) is not None
    finally:
        if child.poll() is None:
            child.kill()
        observer.close()


def test_client_reconnects_after_server_restart():
    server = make_server().start()
    address = server.address
    client = connect(address)
    try:
        seq = client.send_pose(*eyes_at(0.0))
        first = client.wait_frame(pose_seq=seq, timeout=5.0)
        server.stop()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not client.reconnecting:
            time.sleep(0.05)
        assert client.reconnecting and client.latest_frame() is first  # last good frame kept
        port = address.rsplit(":", 1)[1]
        server = make_server(bind=f"tcp://127.0.0.1:{port}").start()
        assert client.wait_connected(8.0)
        seq = client.send_pose(*eyes_at(0.4))
        assert client.wait_frame(pose_seq=seq, timeout=5.0).poses[0] == eyes_at(0.4)[1][0]
        assert client.stats["reconnects"] >= 1
    finally:
        client.close()
        server.stop()


def test_clock_sync_samples(server):
    client = connect(server.address)
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len(client.clock_samples) < 3:
            time.sleep(0.05)
        assert len(client.clock_samples) >= 3
        for t0, t1, t2, t3 in client.clock_samples:
            assert t0 <= t1 <= t2 <= t3  # same monotonic clock on both ends here
        assert abs(client.clock_offset_ns()) < 20_000_000  # same host: offset ~0 within RTT/2
    finally:
        client.close()


def test_clients_on_one_timeline_render_in_one_batch():
    """Driven step by step (no server thread): two clients' poses pending together -> one generator call
    with all four eyes, and each client gets the frame for its own eyes."""
    server = make_server(fps=1000.0)
    a, b = raw_dealer(server.address), raw_dealer(server.address)
    try:
        for sock in (a, b):
            sock.send_multipart(P.encode(P.Hello(64, 64, (FOV, FOV))))
        deadline = time.monotonic() + 5
        while len(server.clients) < 2 and time.monotonic() < deadline:
            server.step()
        assert isinstance(recv_msg(a), P.Welcome) and isinstance(recv_msg(b), P.Welcome)
        poses = {a: eyes_at(-0.5), b: eyes_at(0.6)}
        for sock, (head, eyes) in poses.items():
            sock.send_multipart(P.encode(P.PoseUpdate(1, head, eyes)))
        time.sleep(0.2)  # both poses are waiting in the socket
        calls_before = len(server.generator.calls)
        server.step()
        calls = server.generator.calls[calls_before:]
        assert len(calls) == 1 and len(calls[0][0]) == 4  # one batch of 2 clients x 2 eyes
        for sock, (head, eyes) in poses.items():
            frame = recv_msg(sock)
            assert isinstance(frame, P.Frame) and frame.eyes[0].pose == eyes[0]
            from xr_client.frame_decode import decode_frame

            decoded = decode_frame(frame)
            for i in range(2):
                expect = painted_color(eyes[i].matrix()).astype(int)
                assert np.abs(decoded.color[i].astype(int) - expect).max() <= 3
    finally:
        a.close()
        b.close()
        server.request_stop()
        server.serve_forever()  # returns at once (stop set) and shuts down


def test_h264_for_clients_that_decode_it_jpeg_for_others():
    from dataclasses import replace

    from gen_server.codec import CodecConfig

    server = make_server(codec=CodecConfig(color_codec="h264", depth_downscale=2)).start()
    h264 = connect(server.address, replace(SMALL, color_codecs=("h264", "jpeg")))
    jpeg = connect(server.address)
    try:
        assert h264.welcome.color_codec == "h264" and jpeg.welcome.color_codec == "jpeg"
        for x in (0.1, 0.3, 0.5):
            for client in (h264, jpeg):
                head, eyes = eyes_at(x)
                seq = client.send_pose(head, eyes)
                frame = client.wait_frame(pose_seq=seq, timeout=5.0)
                assert frame is not None
                for i, eye in enumerate(eyes):
                    expect = painted_color(eye.matrix()).astype(int)
                    assert np.abs(frame.color[i].astype(int) - expect).max() <= 6  # flat colour through either codec
        (state,) = [c for c in server.clients.values() if c.color_codec == "h264"]
        assert state.counters["frames_sent"] >= 3 and h264.stats["bad_frames"] == 0
    finally:
        h264.close()
        jpeg.close()
        server.stop()


def test_client_decodes_several_frames_at_once_and_publishes_in_order():
    server = make_server(fps=1000.0).start()
    config = StreamConfig(eye_width=512, eye_height=512, fovs=(FOV, FOV), timeout_s=3.0, decode_frames_in_flight=3)
    client = connect(server.address, config)
    try:
        seen, sent = [], {}
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            head, eyes = eyes_at(random.uniform(-1, 1))
            sent[client.send_pose(head, eyes)] = eyes
            frame = client.latest_frame()
            if frame is not None and (not seen or frame.seq != seen[-1].seq):
                seen.append(frame)
            time.sleep(0.004)
        assert len(seen) >= 10
        assert [f.seq for f in seen] == sorted(f.seq for f in seen)  # never an older frame after a newer one
        for frame in seen[-5:]:  # each published frame shows its own pose's colours
            for i, eye in enumerate(sent[frame.pose_seq]):
                assert np.abs(frame.color[i].astype(int) - painted_color(eye.matrix()).astype(int)).max() <= 3
        assert 1 <= client.stats["decode_in_flight_max"] <= 3
        assert client.stats["frames_decoded"] >= len(seen)
    finally:
        client.close()
        server.stop()


def test_warm_up_renders_an_exact_frame_and_a_cross_fade():
    painter = PosePainter()
    server = make_server(painter)
    try:
        assert server.encoder_backend == "" and server.warm_up() > 0
        assert server.encoder_backend == "simplejpeg"  # numpy views: the CPU encoder, named for the start-up line
        assert [(w, h, tau) for _, _, w, h, tau in painter.calls] == [(64, 64, 0.0), (64, 64, 0.05)]  # 10 fps world
        eyes = painter.calls[0][0]
        assert eyes.shape == (2, 4, 4) and np.isclose(eyes[1, 0, 3] - eyes[0, 0, 3], 0.064)

        class Broken:
            def render_views(self, *args):
                raise RuntimeError("no GPU")

        broken = make_server(Broken())
        assert broken.warm_up() >= 0  # reported, not raised: serving still starts
        broken.start().stop()
    finally:
        server.stop()
