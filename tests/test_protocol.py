"""Wire schema: every message round-trips, and every kind of invalid input is refused with a clear line."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest

from gen_server import protocol as P
from gen_server.cameras import Fov, yaw_pitch_to_matrix

FOV = Fov(-0.9, 0.8, 0.85, -0.95)
REPO = Path(__file__).resolve().parents[1]


def frame_msg(**kw) -> P.Frame:
    eyes = (P.EyeView(P.Pose((-0.03, 1.6, 0.0)), FOV), P.EyeView(P.Pose((0.03, 1.6, 0.0)), FOV))
    args = dict(seq=5, pose_seq=9, tau=1.25, eyes=eyes, width=16, height=8, color_codec="raw", depth_codec="inv16",
                depth_width=8, depth_height=4, depth_near=0.1, depth_far=100.0,
                color=[bytes(16 * 8 * 3), bytes(range(256)) * 1 + bytes(16 * 8 * 3 - 256)],
                depth=[np.arange(32, dtype=np.uint16), np.zeros(32, np.uint16)],
                timeline={"rate": 1.0, "paused": False}, timings={"render_start_ns": 10, "send_ns": 20})
    args.update(kw)
    return P.Frame(**args)


def all_messages() -> list[P.Message]:
    head = P.Pose.from_matrix(np.block([[yaw_pitch_to_matrix(0.3, -0.1), np.array([[0.1], [1.7], [-0.2]])],
                                        [np.zeros((1, 3)), np.ones((1, 1))]]))
    return [
        P.Hello(1440, 1600, (FOV, FOV), ipd=0.064, display_refresh_hz=90.0, client_name="quest", client_time_ns=123),
        P.Welcome("c1", 1440, 1600, "jpeg", "inv16-zlib", 24.0, world={"duration": 3.0, "fps": 24.0},
                  timeline={"tau": 0.0, "rate": 1.0, "paused": False, "end_mode": "loop", "bookmarks": []},
                  world_from_stage=np.diag([2.0, 2.0, 2.0, 1.0]), server_time_ns=99),
        P.PoseUpdate(7, head, (head, head), client_time_ns=5, display_time_ns=6, fovs=(FOV, FOV),
                     controllers=(P.ControllerState("left", 0.5, 1.0, (0.0, -1.0), ("a", "menu"), head),
                                  P.ControllerState("right"))),
        P.Control("rate", -0.5, seq=3), P.Control("bookmark", name="take 2"), P.Control("recenter"),
        P.Control("goto_bookmark", 1.0), frame_msg(), P.Ping(1, 2), P.Pong(1, 2, 3, 4),
        P.Error("bad_message", "pose.head: not finite", about="pose", seq=4), P.Bye("done"),
    ]


@pytest.mark.parametrize("msg", all_messages(), ids=lambda m: m.TYPE)
def test_round_trip(msg):
    frames = P.encode(msg)
    back = P.decode(frames)
    assert type(back) is type(msg)
    assert P.encode(back)[0] == frames[0]  # same header bytes after a round trip
    if isinstance(msg, P.Frame):
        assert [bytes(c) for c in back.color] == [bytes(memoryview(c).cast("B")) for c in msg.color]
        assert bytes(back.depth[0]) == msg.depth[0].tobytes()
        assert isinstance(back.color[0], memoryview)  # zero-copy view on the received frame


def test_pose_matrix_round_trip():
    m = np.eye(4)
    m[:3, :3] = yaw_pitch_to_matrix(1.0, 0.4)
    m[:3, 3] = [1, 2, 3]
    np.testing.assert_allclose(P.Pose.from_matrix(m).matrix(), m, atol=1e-12)


def test_decode_accepts_zmq_frames_and_memoryviews():
    import zmq

    frames = P.encode(frame_msg())
    zframes = [zmq.Frame(bytes(memoryview(f).cast("B")) if not isinstance(f, bytes) else f) for f in frames]
    assert isinstance(P.decode(zframes), P.Frame)
    assert isinstance(P.decode([memoryview(f) if isinstance(f, bytes) else f for f in frames]), P.Frame)


def header_of(msg: P.Message) -> dict:
    return msgpack.unpackb(P.encode(msg)[0])


def pose_header() -> dict:
    return header_of(P.PoseUpdate(1, P.Pose(), (P.Pose(), P.Pose())))


def hello_header() -> dict:
    return header_of(P.Hello(64, 64, (FOV, FOV)))


BAD_HEADERS = [
    ("not a map", [1, 2], "not a map"),
    ("unknown type", {"type": "teleport", "v": 1}, "unknown type"),
    ("no type", {"v": 1}, "unknown type"),
    ("wrong version", {**pose_header(), "v": 2}, "protocol version"),
    ("missing field", {k: v for k, v in pose_header().items() if k != "head"}, "missing field 'head'"),
    ("extra field", {**pose_header(), "teleport": 1}, "unknown field 'teleport'"),
    ("nan position", {**pose_header(), "head": [math.nan, 0, 0, 0, 0, 0, 1]}, r"pose\.head\[0\]: not finite"),
    ("inf time", {**pose_header(), "seq": math.inf}, "pose.seq: expected an integer"),
    ("negative seq", {**pose_header(), "seq": -1}, "pose.seq: -1 outside"),
    ("bool as number", {**pose_header(), "head": [True, 0, 0, 0, 0, 0, 1]}, "expected a number"),
    ("non-unit quaternion", {**pose_header(), "head": [0, 0, 0, 0, 0, 0, 1.01]}, "not unit length"),
    ("zero quaternion", {**pose_header(), "head": [0, 0, 0, 0, 0, 0, 0]}, "not unit length"),
    ("short pose", {**pose_header(), "head": [0, 0, 0, 1]}, "expected 7 items"),
    ("one eye", {**pose_header(), "eyes": [[0, 0, 0, 0, 0, 0, 1]]}, "expected 2 items"),
    ("far position", {**pose_header(), "head": [1e9, 0, 0, 0, 0, 0, 1]}, "outside"),
    ("trigger > 1", {**pose_header(), "controllers": [{"hand": "left", "trigger": 1.5}]}, "trigger: 1.5 outside"),
    ("bad hand", {**pose_header(), "controllers": [{"hand": "tail"}]}, "hand: 'tail' is not one of"),
    ("bad button", {**pose_header(), "controllers": [{"hand": "left", "buttons": ["z"]}]}, "buttons"),
    ("degenerate fov", {**hello_header(), "fovs": [[0.5, -0.5, 0.5, -0.5]] * 2}, "degenerate FOV"),
    ("fov past 90 deg", {**hello_header(), "fovs": [[-2.0, 0.5, 0.5, -0.5]] * 2}, "outside"),
    ("huge eye", {**hello_header(), "eye_width": 8192, "eye_height": 8192}, "too large"),
    ("unknown codec", {**hello_header(), "color_codecs": ["webp"]}, "is not one of"),
    ("no codecs", {**hello_header(), "depth_codecs": []}, "at least one codec"),
    ("string ipd", {**hello_header(), "ipd": "63"}, "hello.ipd: expected a number"),
    ("control unknown", {"type": "control", "v": 1, "command": "teleport"}, "is not one of"),
    ("control missing value", {"type": "control", "v": 1, "command": "seek"}, "expected a number"),
    ("control stray value", {"type": "control", "v": 1, "command": "play", "value": 1.0}, "takes no value"),
    ("control nan rate", {"type": "control", "v": 1, "command": "rate", "value": math.nan}, "not finite"),
    ("control fractional step", {"type": "control", "v": 1, "command": "step", "value": 0.5}, "whole number"),
    ("control zero scale", {"type": "control", "v": 1, "command": "scale", "value": 0.0}, "outside"),
    ("pong backwards", {"type": "pong", "v": 1, "seq": 1, "t0_ns": 1, "t1_ns": 5, "t2_ns": 4}, "t2_ns before t1_ns"),
    ("error unknown code", {"type": "error", "v": 1, "code": "oops", "message": ""}, "is not one of"),
    ("long string", {"type": "bye", "v": 1, "reason": "x" * 5000}, "longer than"),
    ("welcome bad matrix", {**header_of(all_messages()[1]), "world_from_stage": [0.0] * 16}, "last row"),
]


@pytest.mark.parametrize("name,header,match", BAD_HEADERS, ids=[b[0] for b in BAD_HEADERS])
def test_rejects_bad_headers(name, header, match):
    with pytest.raises(P.ProtocolError, match=match):
        P.decode([msgpack.packb(header)])


def test_version_error_is_distinguishable():
    with pytest.raises(P.ProtocolVersionError):
        P.decode([msgpack.packb({**pose_header(), "v": 0})])


def test_rejects_garbage_and_structure():
    with pytest.raises(P.ProtocolError, match="no frames"):
        P.decode([])
    with pytest.raises(P.ProtocolError, match="not valid msgpack"):
        P.decode([b"\xc1\xc1\xc1"])
    with pytest.raises(P.ProtocolError, match="not valid msgpack"):
        P.decode([P.encode(P.Ping(1, 2))[0][:-3]])  # truncated
    with pytest.raises(P.ProtocolError, match="exceeds"):
        P.decode([b"\x80" + b"\0" * P.MAX_HEADER_BYTES])
    with pytest.raises(P.ProtocolError, match="carries no payloads"):
        P.decode([*P.encode(P.Ping(1, 2)), b"extra"])
    with pytest.raises(P.ProtocolError, match="at most 5"):
        P.decode([P.encode(P.Ping(1, 2))[0]] + [b""] * 6)
    with pytest.raises(P.ProtocolError, match="unknown type"):
        P.decode([msgpack.packb({"type": 5, "v": 1})])


def test_frame_payload_checks():
    frames = P.encode(frame_msg())
    with pytest.raises(P.ProtocolError, match="expected 4 payloads"):
        P.decode(frames[:-1])
    with pytest.raises(P.ProtocolError, match="differ from declared"):
        P.decode(frames[:1] + [b"\0" * 10] + frames[2:])
    with pytest.raises(P.ProtocolError, match="raw colour is"):
        P.decode(P.encode(frame_msg(color=[bytes(10), bytes(10)])))
    with pytest.raises(P.ProtocolError, match="raw depth is"):
        P.decode(P.encode(frame_msg(depth=[bytes(10), bytes(10)])))
    with pytest.raises(P.ProtocolError, match="not a JPEG"):
        P.decode(P.encode(frame_msg(color_codec="jpeg", color=[b"GIF89a", b"GIF89a"])))
    with pytest.raises(P.ProtocolError, match="depth_far must exceed"):
        P.decode(P.encode(frame_msg(depth_far=0.05)))
    with pytest.raises(P.ProtocolError, match="depth_width"):
        P.decode(P.encode(frame_msg(depth_width=17)))


def test_protocol_and_client_never_import_torch():
    code = ("import sys; import gen_server.protocol, xr_client.stream_client, xr_client.frame_decode; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
