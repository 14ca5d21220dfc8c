"""The wire schema between ``timewalk serve`` and its clients: one typed class per message.

Imports numpy, msgpack and zmq only (the headset client uses it; never torch).

A message on the wire is a ZeroMQ multipart message::

    [msgpack header {"type": str, "v": PROTOCOL_VERSION, <fields>}, payload 0, payload 1, ...]

Only ``frame`` carries payloads (per-eye colour, then per-eye depth); they travel as their own zmq frames
so neither side copies image bytes into the header. :func:`decode` validates *everything* (types,
ranges, finite numbers, unit quaternions, payload count and sizes against the declared shapes, size
limits) and raises :class:`ProtocolError` with one line naming the message and the problem.

Convention: poses are OpenXR (+Y up, -Z forward), position in metres + unit quaternion (x, y, z, w),
in the client's **stage** space; FOVs are OpenXR ``XrFovf`` angles in radians; clocks are each
sender's monotonic nanoseconds; ``tau`` is world time in seconds of source video.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import msgpack
import numpy as np

from gen_server.cameras import Fov, matrix_to_pose, pose_to_matrix

PROTOCOL_VERSION = 1

MAX_HEADER_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = 32 * 1024 * 1024  # one eye's colour or depth
MAX_EYE_PIXELS = 4096 * 4096
MAX_STRING = 1024
MAX_LIST = 64
QUAT_TOLERANCE = 1e-3  # |‖q‖ - 1| accepted on receipt (float32 headsets drift a little)
POSITION_LIMIT_M = 1e5
MAX_TIME_NS = 2**63 - 1

COLOR_CODECS = ("jpeg", "raw", "h264")  # raw = H x W x 3 uint8; h264 = one Annex-B access unit per eye
DEPTH_CODECS = ("inv16-zstd", "inv16-zlib", "inv16")  # 16-bit quantised inverse depth: zstd, zlib or raw
BUTTONS = ("a", "b", "x", "y", "menu", "system", "thumbstick", "trigger_touch", "thumbstick_touch")
CONTROL_COMMANDS = (
    "play", "pause", "toggle_pause", "rate", "seek", "step", "bookmark", "goto_bookmark", "recenter", "scale",
)
CONTROL_NEEDS_VALUE = {"rate", "seek", "step", "scale", "goto_bookmark"}
CONTROL_MAY_NAME = {"bookmark"}  # an optional label
ERROR_CODES = ("bad_message", "bad_version", "not_hello", "unknown_client", "bad_control", "too_many_clients",
               "server_error")


class ProtocolError(ValueError):
    """An invalid message; ``str(err)`` names the message type (when known) and what is wrong."""


class ProtocolVersionError(ProtocolError):
    """A well-formed header from a peer speaking another :data:`PROTOCOL_VERSION`."""


# ----------------------------------------------------------------------------------------------------
# Field checkers (each raises ProtocolError naming the field)
# ----------------------------------------------------------------------------------------------------
def _num(where: str, value: Any, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"{where}: expected a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ProtocolError(f"{where}: not finite ({value})")
    if not lo <= value <= hi:
        raise ProtocolError(f"{where}: {value} outside [{lo}, {hi}]")
    return value


def _int(where: str, value: Any, lo: int = 0, hi: int = MAX_TIME_NS) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{where}: expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ProtocolError(f"{where}: {value} outside [{lo}, {hi}]")
    return value


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(f"{where}: expected a boolean, got {type(value).__name__}")
    return value


def _str(where: str, value: Any, choices: tuple[str, ...] | None = None, max_len: int = MAX_STRING) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{where}: expected a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise ProtocolError(f"{where}: string longer than {max_len}")
    if choices is not None and value not in choices:
        raise ProtocolError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return value


def _list(where: str, value: Any, length: int | None = None, max_len: int = MAX_LIST) -> list:
    if not isinstance(value, (list, tuple)):
        raise ProtocolError(f"{where}: expected a list, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise ProtocolError(f"{where}: expected {length} items, got {len(value)}")
    if len(value) > max_len:
        raise ProtocolError(f"{where}: more than {max_len} items")
    return list(value)


def _dict(where: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: expected a map, got {type(value).__name__}")
    if len(value) > MAX_LIST * 4:
        raise ProtocolError(f"{where}: too many entries")
    return value


def _vec(where: str, value: Any, n: int, lo: float = -math.inf, hi: float = math.inf) -> tuple[float, ...]:
    return tuple(_num(f"{where}[{i}]", v, lo, hi) for i, v in enumerate(_list(where, value, n)))


def _matrix4(where: str, value: Any) -> np.ndarray:
    m = np.array(_vec(where, value, 16, -POSITION_LIMIT_M, POSITION_LIMIT_M)).reshape(4, 4)
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6):
        raise ProtocolError(f"{where}: last row must be 0 0 0 1")
    if abs(np.linalg.det(m[:3, :3])) < 1e-9:
        raise ProtocolError(f"{where}: singular transform")
    return m


# ----------------------------------------------------------------------------------------------------
# Value types
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pose:
    """An OpenXR pose: ``position`` (x, y, z) metres and unit ``orientation`` (x, y, z, w).

    Convention: parent_from_child, OpenXR axes; on the wire always in the client's stage space.
    """

    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)

    def matrix(self) -> np.ndarray:
        """(4, 4) float64 parent_from_child."""
        return pose_to_matrix(np.array(self.position), np.array(self.orientation))

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> "Pose":
        """A rigid (4, 4) transform -> Pose (quaternion normalised, w >= 0)."""
        p, q = matrix_to_pose(np.asarray(matrix, np.float64))
        return cls(tuple(float(v) for v in p), tuple(float(v) for v in q))

    def to_wire(self) -> list:
        return [*map(float, self.position), *map(float, self.orientation)]

    @classmethod
    def from_wire(cls, where: str, value: Any) -> "Pose":
        v = _vec(where, value, 7, -POSITION_LIMIT_M, POSITION_LIMIT_M)
        q = v[3:]
        norm = math.sqrt(sum(c * c for c in q))
        if abs(norm - 1.0) > QUAT_TOLERANCE:
            raise ProtocolError(f"{where}: quaternion is not unit length (norm {norm:.6f})")
        return cls(v[:3], tuple(c / norm for c in q))


def _fov_to_wire(fov: Fov) -> list:
    return [float(a) for a in fov.as_tuple()]


def _fov_from_wire(where: str, value: Any) -> Fov:
    half_pi = math.pi / 2 - 1e-3
    left, right, up, down = _vec(where, value, 4, -half_pi, half_pi)
    if not (right > left and up > down):
        raise ProtocolError(f"{where}: degenerate FOV (needs right > left and up > down)")
    return Fov(left, right, up, down)


@dataclass(frozen=True)
class ControllerState:
    """One hand's input. ``trigger``/``grip`` in [0, 1]; ``thumbstick`` (x, y) in [-1, 1], +y = forward;
    ``buttons`` names the pressed ones (from :data:`BUTTONS`); ``aim`` is the aim pose in stage space."""

    hand: str  # "left" | "right"
    trigger: float = 0.0
    grip: float = 0.0
    thumbstick: tuple[float, float] = (0.0, 0.0)
    buttons: tuple[str, ...] = ()
    aim: Pose | None = None

    def to_wire(self) -> dict:
        out = {"hand": self.hand, "trigger": float(self.trigger), "grip": float(self.grip),
               "thumbstick": [float(v) for v in self.thumbstick], "buttons": list(self.buttons)}
        if self.aim is not None:
            out["aim"] = self.aim.to_wire()
        return out

    @classmethod
    def from_wire(cls, where: str, value: Any) -> "ControllerState":
        d = _dict(where, value)
        _only_keys(where, d, {"hand", "trigger", "grip", "thumbstick", "buttons", "aim"})
        buttons = tuple(_str(f"{where}.buttons", b, BUTTONS) for b in _list(f"{where}.buttons", d.get("buttons", [])))
        aim = d.get("aim")
        return cls(
            hand=_str(f"{where}.hand", d.get("hand"), ("left", "right")),
            trigger=_num(f"{where}.trigger", d.get("trigger", 0.0), 0.0, 1.0),
            grip=_num(f"{where}.grip", d.get("grip", 0.0), 0.0, 1.0),
            thumbstick=_vec(f"{where}.thumbstick", d.get("thumbstick", [0.0, 0.0]), 2, -1.0, 1.0),
            buttons=buttons,
            aim=None if aim is None else Pose.from_wire(f"{where}.aim", aim),
        )


def _only_keys(where: str, d: dict, allowed: set[str]) -> None:
    extra = [k for k in d if k not in allowed]
    if extra:
        raise ProtocolError(f"{where}: unknown field {str(extra[0])[:40]!r}")


# ----------------------------------------------------------------------------------------------------
# Messages
# ----------------------------------------------------------------------------------------------------
class Message:
    """Base of every message: ``TYPE`` names it on the wire; subclasses are dataclasses."""

    TYPE: ClassVar[str] = ""

    def header(self) -> dict:
        raise NotImplementedError

    def payloads(self) -> list:
        return []

    @classmethod
    def parse(cls, h: dict, payloads: list[memoryview]) -> "Message":
        raise NotImplementedError


@dataclass
class Hello(Message):
    """Client -> server, first message: what the client displays and decodes."""

    TYPE: ClassVar[str] = "hello"
    eye_width: int
    eye_height: int
    fovs: tuple[Fov, Fov]
    ipd: float = 0.063
    display_refresh_hz: float = 90.0
    color_codecs: tuple[str, ...] = ("jpeg", "raw")
    depth_codecs: tuple[str, ...] = DEPTH_CODECS
    client_name: str = ""
    client_time_ns: int = 0
    protocol_version: int = PROTOCOL_VERSION

    def header(self) -> dict:
        return {"eye_width": self.eye_width, "eye_height": self.eye_height,
                "fovs": [_fov_to_wire(f) for f in self.fovs], "ipd": float(self.ipd),
                "display_refresh_hz": float(self.display_refresh_hz), "color_codecs": list(self.color_codecs),
                "depth_codecs": list(self.depth_codecs), "client_name": self.client_name,
                "client_time_ns": self.client_time_ns, "protocol_version": self.protocol_version}

    @classmethod
    def parse(cls, h: dict, payloads: list) -> "Hello":
        w = _int("hello.eye_width", h["eye_width"], 8, 8192)
        ht = _int("hello.eye_height", h["eye_height"], 8, 8192)
        if w * ht > MAX_EYE_PIXELS:
            raise ProtocolError(f"hello: eye resolution {w}x{ht} too large")
        color = tuple(_str("hello.color_codecs", c, COLOR_CODECS) for c in _list("hello.color_codecs", h["color_codecs"]))
        depth = tuple(_str("hello.depth_codecs", c, DEPTH_CODECS) for c in _list("hello.depth_codecs", h["depth_codecs"]))
        if not color or not depth:
            raise ProtocolError("hello: color_codecs and depth_codecs must each name at least one codec")
        return cls(
            eye_width=w, eye_height=ht,
            fovs=tuple(_fov_from_wire(f"hello.fovs[{i}]", f) for i, f in enumerate(_list("hello.fovs", h["fovs"], 2))),
            ipd=_num("hello.ipd", h["ipd"], 0.0, 0.2),
            display_refresh_hz=_num("hello.display_refresh_hz", h["display_refresh_hz"], 1.0, 1000.0),
            color_codecs=color, depth_codecs=depth,
            client_name=_str("hello.client_name", h["client_name"], max_len=128),
            client_time_ns=_int("hello.client_time_ns", h["client_time_ns"]),
            protocol_version=_int("hello.protocol_version", h["protocol_version"], 0, 2**31),
        )


@dataclass
class Welcome(Message):
    """Server -> client, answer to hello: the world, the timeline, the calibration, what frames will be."""

    TYPE: ClassVar[str] = "welcome"
    client_id: str
    eye_width: int  # what the server renders (may be below the client's request)
    eye_height: int
    color_codec: str
    depth_codec: str
    max_fps: float
    world: dict = field(default_factory=dict)  # name, duration, fps, frame_count, bounds, ...
    timeline: dict = field(default_factory=dict)  # tau, rate, paused, end_mode, bookmarks
    world_from_stage: np.ndarray = field(default_factory=lambda: np.eye(4))
    server_name: str = "timewalk"
    server_time_ns: int = 0
    protocol_version: int = PROTOCOL_VERSION

    def header(self) -> dict:
        return {"client_id": self.client_id, "eye_width": self.eye_width, "eye_height": self.eye_height,
                "color_codec": self.color_codec, "depth_codec": self.depth_codec, "max_fps": float(self.max_fps),
                "world": self.world, "timeline": self.timeline,
                "world_from_stage": [float(v) for v in np.asarray(self.world_from_stage).reshape(16)],
                "server_name": self.server_name, "server_time_ns": self.server_time_ns,
                "protocol_version": self.protocol_version}

    @classmethod
    def parse(cls, h: dict, payloads: list) -> "Welcome":
        return cls(
            client_id=_str("welcome.client_id", h["client_id"], max_len=128),
            eye_width=_int("welcome.eye_width", h["eye_width"], 8, 8192),
            eye_height=_int("welcome.eye_height", h["eye_height"], 8, 8192),
            color_codec=_str("welcome.color_codec", h["color_codec"], COLOR_CODECS),
            depth_codec=_str("welcome.depth_codec", h["depth_codec"], DEPTH_CODECS),
            max_fps=_num("welcome.max_fps", h["max_fps"], 0.1, 1000.0),
            world=_dict("welcome.world", h["world"]),
            timeline=_dict("welcome.timeline", h["timeline"]),
            world_from_stage=_matrix4("welcome.world_from_stage", h["world_from_stage"]),
            server_name=_str("welcome.server_name", h["server_name"], max_len=128),
            server_time_ns=_int("welcome.server_time_ns", h["server_time_ns"]),
            protocol_version=_int("welcome.protocol_version", h["protocol_version"], 0, 2**31),
        )


@dataclass
class PoseUpdate(Message):
    """Client -> server, every display frame: where the head and eyes will be at ``display_time_ns``.

    Convention: stage space; ``head`` and ``eyes`` = (left, right) are stage_from_head / stage_from_eye
    poses; ``fovs`` None means the ones from hello."""

    TYPE: ClassVar[str] = "pose"
    seq: int
    head: Pose
    eyes: tuple[Pose, Pose]
    client_time_ns: int = 0
    display_time_ns: int = 0
    fovs: tuple[Fov, Fov] | None = None
    controllers: tuple[ControllerState, ...] = ()

    def header(self) -> dict:
        out = {"seq": self.seq, "head": self.head.to_wire(), "eyes": [e.to_wire() for e in self.eyes],
               "client_time_ns": self.client_time_ns, "display_time_ns": self.display_time_ns,
               "controllers": [c.to_wire() for c in self.controllers]}
        if self.fovs is not None:
            out["fovs"] = [_fov_to_wire(f) for f in self.fovs]
        return out

    @classmethod
    def parse(cls, h: dict, payloads: list) -> "PoseUpdate":
        fovs = h.get("fovs")
        return cls(
            seq=_int("pose.seq", h["seq"]),
            head=Pose.from_wire("pose.head", h["head"]),
            eyes=tuple(Pose.from_wire(f"pose.eyes[{i}]", e) for i, e in enumerate(_list("pose.eyes", h["eyes"], 2))),
            client_time_ns=_int("pose.client_time_ns", h["client_time_ns"]),
            display_time_ns=_int("pose.display_time_ns", h["display_time_ns"]),
            fovs=None if fovs is None else tuple(
                _fov_from_wire(f"pose.fovs[{i}]", f) for i, f in enumerate(_list("pose.fovs", fovs, 2))),
            controllers=tuple(ControllerState.from_wire(f"pose.controllers[{i}]", c)
                              for i, c in enumerate(_list("pose.controllers", h["controllers"], max_len=4))),
        )


@dataclass
class Control(Message):
    """Client -> server: timeline and view commands.

    ``rate`` value = playback rate (negative plays backwards); ``seek`` value = tau seconds; ``step``
    value = whole frames (+/-1); ``scale`` value = world metres per stage metre (> 0); ``bookmark``
    stores the current tau (optional ``name`` label); ``goto_bookmark`` value = bookmark index;
    ``recenter`` makes the current head position and yaw the stage origin. The server checks the
    timeline's own limits and answers an ``error`` (code ``bad_control``) when one is exceeded."""

    TYPE: ClassVar[str] = "control"
    command: str
    value: float | None = None
    name: str | None = None
    seq: int = 0

    def header(self) -> dict:
        return {"command": self.command, "value": None if self.value is None else float(self.value),
                "name": self.name, "seq": self.seq}

    @classmethod
    def parse(cls, h: dict, payloads: list) -> "Control":
        command = _str("control.command", h["command"], CONTROL_COMMANDS)
        value, name = h.get("value"), h.get("name")
        if command in CONTROL_NEEDS_VALUE:
            limits = {"rate": (-8.0, 8.0), "seek": (-1e7, 1e7), "step": (-1e6, 1e6), "scale": (1e-3, 1e3),
                      "goto_bookmark": (0, 1e6)}[command]
            value = _num(f"control.value ({command})", value, *limits)
            if command in ("step", "goto_bookmark") and value != int(value):
                raise ProtocolError(f"control.value ({command}): must be a whole number")
        elif value is not None:
            raise ProtocolError(f"control.value: {command} takes no value")
        if command in CONTROL_MAY_NAME and name is not None:
            name = _str(f"control.name ({command})", name, max_len=64)
        elif name is not None:
            raise ProtocolError(f"control.name: {command} takes no name")
        return cls(command=command, value=value, name=name, seq=_int("control.seq", h.get("seq", 0)))


@dataclass
class EyeView:
    """How one eye of a frame was rendered: stage_from_eye pose and FOV (OpenXR)."""

    pose: Pose
    fov: Fov


@dataclass
class Frame(Message):
    """Server -> client: one stereo frame.

    Payloads, in order: colour of each eye (``color_codec``; ``h264``: each eye is its own stream, one
    access unit per frame, decodable alone when ``keyframe``), then depth of each eye (``depth_codec``
    at ``depth_width`` x ``depth_height``). Depth ``inv16*``: uint16 q, 0 = no surface, otherwise
    1/z = 1/far + (q - 1) / 65534 * (1/near - 1/far), z in stage metres along the eye's -Z axis;
    compressed codecs hold bands of whole rows, each stored as its high-byte plane then its low-byte
    plane (bands compress in parallel on the server): ``inv16-zstd`` = u32 band count, u32 size of each
    band (little-endian), then one zstd frame per band; ``inv16-zlib`` = zlib streams back to back.
    ``timings`` are server-clock ns: pose_received, render_start, render_end, encode_end, send."""

    TYPE: ClassVar[str] = "frame"
    seq: int
    pose_seq: int
    tau: float
    eyes: tuple[EyeView, ...]
    width: int
    height: int
    color_codec: str
    depth_codec: str
    depth_width: int
    depth_height: int
    depth_near: float
    depth_far: float
    color: list = field(default_factory=list)  # per-eye bytes / memoryview
    depth: list = field(default_factory=list)
    timeline: dict = field(default_factory=dict)  # rate, paused
    timings: dict = field(default_factory=dict)
    keyframe: bool = True  # h264: decodable without earlier frames (always True for jpeg/raw)

    def header(self) -> dict:
        return {"seq": self.seq, "pose_seq": self.pose_seq, "tau": float(self.tau),
                "eyes": [{"pose": e.pose.to_wire(), "fov": _fov_to_wire(e.fov)} for e in self.eyes],
                "width": self.width, "height": self.height, "color_codec": self.color_codec,
                "depth_codec": self.depth_codec, "depth_width": self.depth_width, "depth_height": self.depth_height,
                "depth_near": float(self.depth_near), "depth_far": float(self.depth_far),
                "color_sizes": [len(_buffer(c)) for c in self.color],
                "depth_sizes": [len(_buffer(d)) for d in self.depth],
                "timeline": self.timeline, "timings": {k: int(v) for k, v in self.timings.items()},
                "keyframe": bool(self.keyframe)}

    def payloads(self) -> list:
        return [*self.color, *self.depth]

    @classmethod
    def parse(cls, h: dict, payloads: list) -> "Frame":
        eyes_raw = _list("frame.eyes", h["eyes"], max_len=2)
        if not eyes_raw:
            raise ProtocolError("frame.eyes: needs at least one eye")
        eyes = []
        for i, e in enumerate(eyes_raw):
            e = _dict(f"frame.eyes[{i}]", e)
            _only_keys(f"frame.eyes[{i}]", e, {"pose", "fov"})
            eyes.append(EyeView(Pose.from_wire(f"frame.eyes[{i}].pose", e["pose"]),
                                _fov_from_wire(f"frame.eyes[{i}].fov", e["fov"])))
        n = len(eyes)
        w, ht = _int("frame.width", h["width"], 8, 8192), _int("frame.height", h["height"], 8, 8192)
        dw, dh = _int("frame.depth_width", h["depth_width"], 1, w), _int("frame.depth_height", h["depth_height"], 1, ht)
        if w * ht > MAX_EYE_PIXELS:
            raise ProtocolError(f"frame: eye resolution {w}x{ht} too large")
        near = _num("frame.depth_near", h["depth_near"], 1e-4, 1e6)
        far = _num("frame.depth_far", h["depth_far"], 1e-4, 1e7)
        if not far > near:
            raise ProtocolError("frame: depth_far must exceed depth_near")
        color_codec = _str("frame.color_codec", h["color_codec"], COLOR_CODECS)
        depth_codec = _str("frame.depth_codec", h["depth_codec"], DEPTH_CODECS)
        if len(payloads) != 2 * n:
            raise ProtocolError(f"frame: expected {2 * n} payloads for {n} eyes, got {len(payloads)}")
        color_sizes = [_int("frame.color_sizes", s, 1, MAX_PAYLOAD_BYTES) for s in _list("frame.color_sizes", h["color_sizes"], n)]
        depth_sizes = [_int("frame.depth_sizes", s, 1, MAX_PAYLOAD_BYTES) for s in _list("frame.depth_sizes", h["depth_sizes"], n)]
        color, depth = payloads[:n], payloads[n:]
        for i in range(n):
            if len(color[i]) != color_sizes[i] or len(depth[i]) != depth_sizes[i]:
                raise ProtocolError(f"frame: eye {i} payload sizes {len(color[i])}/{len(depth[i])} differ from "
                                    f"declared {color_sizes[i]}/{depth_sizes[i]}")
            if color_codec == "raw" and color_sizes[i] != w * ht * 3:
                raise ProtocolError(f"frame: eye {i} raw colour is {color_sizes[i]} bytes, {w}x{ht}x3 needs {w * ht * 3}")
            if color_codec == "jpeg" and bytes(color[i][:2]) != b"\xff\xd8":
                raise ProtocolError(f"frame: eye {i} colour is not a JPEG stream")
            if color_codec == "h264" and not (bytes(color[i][:4]) == b"\0\0\0\1" or bytes(color[i][:3]) == b"\0\0\1"):
                raise ProtocolError(f"frame: eye {i} colour is not an Annex-B H.264 access unit")
            if depth_codec == "inv16" and depth_sizes[i] != dw * dh * 2:
                raise ProtocolError(f"frame: eye {i} raw depth is {depth_sizes[i]} bytes, {dw}x{dh}x2 needs {dw * dh * 2}")
        timings = {_str("frame.timings key", k, max_len=32): _int(f"frame.timings.{k}", v)
                   for k, v in _dict("frame.timings", h["timings"]).items()}
        return cls(
            seq=_int("frame.seq", h["seq"]), pose_seq=_int("frame.pose_seq", h["pose_seq"]),
            tau=_num("frame.tau", h["tau"], -1e7, 1e7), eyes=tuple(eyes), width=w, height=ht,
            color_codec=color_codec, depth_codec=depth_codec, depth_width=dw, depth_height=dh,
            depth_near=near, depth_far=far, color=color, depth=depth,
            timeline=_dict("frame.timeline", h["timeline"]), timings=timings,
            keyframe=_bool("frame.keyframe", h["keyframe"]),
        )


@dataclass
class Ping(Message):
    """Client -> server for clock sync: ``t0_ns`` = client clock at send."""

    TYPE: ClassVar[str] = "ping"
    seq: int
    t0_ns: int

    def header(self) -> dict:
        return {"seq": self.seq, "t0_ns": self.t0_ns}

    @classmethod
    def parse(cls, h: dict, payloads: list) -> "Ping":
        return cls(seq=_int("ping.seq", h["seq"]), t0_ns=_int("ping.t0_ns", h["t0_ns"]))


@dataclass
class Pong(Message):
    """Server -> client: echoes ``t0_ns``; ``t1_ns`` server clock at receipt, ``t2_ns`` at send."""

    TYPE: ClassVar[str] = "pong"
    seq: int
    t0_ns: int
    t1_ns: int
    t2_ns: int

    def header(self) -> dict:
        return {"seq": self.seq, "t0_ns": self.t0_ns, "t1_ns": self.t1_ns, "t2_ns": self.t2_ns}

    @classmethod
    def parse(cls, h: dict, payloads: list) -> "Pong":
        p = cls(*(_int(f"pong.{k}", h[k]) for k in ("seq", "t0_ns", "t1_ns", "t2_ns")))
        if p.t2_ns < p.t1_ns:
            raise ProtocolError("pong: t2_ns before t1_ns")
        return p


@dataclass
class Error(Message):
    """Either direction: ``code`` from :data:`ERROR_CODES`, one-line ``message``, ``about`` = the type
    of the offending message ("" when unknown) and its ``seq`` when it had one."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    about: str = ""
    seq: int | None = None

    def header(self) -> dict:
        return {"code": self.code, "message": self.message[:MAX_STRING], "about": self.about[:64], "seq": self.seq}

    @classmethod
    def parse(cls, h: dict, payloads: list) -> "Error":
        seq = h.get("seq")
        return cls(code=_str("error.code", h["code"], ERROR_CODES), message=_str("error.message", h["message"]),
                   about=_str("error.about", h.get("about", ""), max_len=64),
                   seq=None if seq is None else _int("error.seq", seq))


@dataclass
class Bye(Message):
    """Either direction: the sender is leaving; the receiver frees its state."""

    TYPE: ClassVar[str] = "bye"
    reason: str = ""

    def header(self) -> dict:
        return {"reason": self.reason}

    @classmethod
    def parse(cls, h: dict, payloads: list) -> "Bye":
        return cls(reason=_str("bye.reason", h.get("reason", "")))


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls for cls in (Hello, Welcome, PoseUpdate, Control, Frame, Ping, Pong, Error, Bye)
}


def _header_keys(cls: type[Message]) -> set[str]:
    keys = {f.name for f in fields(cls)} - {"color", "depth"}
    if cls is Frame:
        keys |= {"color_sizes", "depth_sizes"}
    return keys


_KEYS = {name: _header_keys(cls) for name, cls in MESSAGE_TYPES.items()}


# ----------------------------------------------------------------------------------------------------
# Encoding / decoding
# ----------------------------------------------------------------------------------------------------
def encode(msg: Message) -> list:
    """Message -> multipart frames ``[header bytes, *payloads]`` (payloads are passed through, not copied)."""
    header = {"type": msg.TYPE, "v": PROTOCOL_VERSION, **msg.header()}
    packed = msgpack.packb(header, use_bin_type=True)
    if len(packed) > MAX_HEADER_BYTES:
        raise ProtocolError(f"{msg.TYPE}: header of {len(packed)} bytes exceeds {MAX_HEADER_BYTES}")
    return [packed, *msg.payloads()]


# msgpack limits so a hostile header cannot make the unpacker allocate much.
_UNPACK_LIMITS = dict(max_str_len=MAX_HEADER_BYTES, max_bin_len=0, max_array_len=4096, max_map_len=1024, max_ext_len=0)


def _buffer(frame: Any) -> memoryview:
    """bytes / memoryview / zmq.Frame -> a flat byte memoryview (no copy)."""
    buf = getattr(frame, "buffer", frame)
    view = memoryview(buf)
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def peek_type(frames: list) -> str:
    """Best-effort message type of raw frames (for error replies); "" when unreadable."""
    try:
        h = msgpack.unpackb(_buffer(frames[0]), raw=False, **_UNPACK_LIMITS)
        t = h.get("type") if isinstance(h, dict) else None
        return t if isinstance(t, str) and t in MESSAGE_TYPES else ""
    except Exception:  # noqa: BLE001 - anything unreadable simply has no type
        return ""


def decode(frames: list) -> Message:
    """Multipart frames -> a validated :class:`Message`; raises :class:`ProtocolError` on anything wrong."""
    if not isinstance(frames, (list, tuple)) or not frames:
        raise ProtocolError("message: no frames")
    if len(frames) > 1 + 2 * 2:
        raise ProtocolError(f"message: {len(frames)} frames, at most 5 allowed")
    views = [_buffer(f) for f in frames]
    if len(views[0]) > MAX_HEADER_BYTES:
        raise ProtocolError(f"message: header of {len(views[0])} bytes exceeds {MAX_HEADER_BYTES}")
    for v in views[1:]:
        if len(v) > MAX_PAYLOAD_BYTES:
            raise ProtocolError(f"message: payload of {len(v)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        h = msgpack.unpackb(views[0], raw=False, strict_map_key=True, **_UNPACK_LIMITS)
    except Exception as e:  # noqa: BLE001 - msgpack raises many types for garbage
        raise ProtocolError(f"message: header is not valid msgpack ({type(e).__name__})") from None
    if not isinstance(h, dict):
        raise ProtocolError("message: header is not a map")
    kind = h.get("type")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise ProtocolError(f"message: unknown type {str(kind)[:40]!r}")
    version = h.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolVersionError(f"{kind}: protocol version {str(version)[:20]!r}, this end speaks {PROTOCOL_VERSION}")
    cls = MESSAGE_TYPES[kind]
    body = {k: v for k, v in h.items() if k not in ("type", "v")}
    _only_keys(kind, body, _KEYS[kind])
    if cls is not Frame and len(views) > 1:
        raise ProtocolError(f"{kind}: carries no payloads, got {len(views) - 1}")
    try:
        return cls.parse(body, views[1:])
    except KeyError as e:
        raise ProtocolError(f"{kind}: missing field {e.args[0]!r}") from None
