"""The streaming server: a ZeroMQ ROUTER that renders each client's newest pose and sends stereo frames.

One loop thread: drain every waiting message (poses only *replace* the client's pending pose, so
a burst collapses to its newest), then render + encode + send for each client that has a new pose and
is under its ``fps`` budget. With ``pipeline_encode`` (accelerator renders) one :class:`EncodeWorker`
thread encodes batch N while the loop renders batch N+1 (at most one batch waiting, one encoding:
memory stays bounded, and the loop keeps collecting newest poses meanwhile); only the loop thread
touches the ROUTER socket. Sends are non-blocking with a tiny high-water mark, so frames a slow
client cannot take are dropped (and counted), never queued. Bad messages get an ``error`` reply; the
server never dies of one. Clients that go quiet are freed after ``client_timeout_s``.

Data flow: pose (stage) -> world_from_stage (calibration, recenter, scale) -> generator -> codec ->
protocol.Frame. Poses in frames are echoed in stage space, depth is converted to stage metres.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import ipaddress
import itertools
import json
import math
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from gen_server import protocol as P
from gen_server.cameras import Fov, invert_rigid, pose_to_matrix, yaw_pitch_to_matrix
from gen_server.codec import CodecConfig, FrameEncoder, H264Config, H264StreamEncoder
from gen_server.errors import InputError
from gen_server.generators.base import check_views
from gen_server.timeline import Timeline, TimelineError


@dataclass
class ServerConfig:
    bind: str = "tcp://127.0.0.1:5555"
    fps: float = 24.0  # per client
    width: int | None = None  # per-eye render size; None = what the client asked for
    height: int | None = None
    independent_timelines: bool = False
    end_mode: str = "loop"
    client_timeout_s: float = 5.0
    max_clients: int = 16
    sndhwm: int = 2  # frames queued per client before we drop
    rcvhwm: int = 256
    max_message_bytes: int = 64 * 1024  # incoming; larger ones drop the connection (zmq MAXMSGSIZE)
    max_drain: int = 2000  # messages handled per loop before rendering again
    keys_dir: Path | None = None
    insecure: bool = False
    codec: CodecConfig = field(default_factory=CodecConfig)  # color_codec "h264": for clients that decode it
    h264: H264Config = field(default_factory=H264Config)
    stats_path: Path | None = None
    status_interval_s: float = 1.0
    status_line: bool | None = None  # None: only on a TTY
    mask_invalid_depth: bool = False  # send 0 (no surface) where the renderer only hole-filled
    max_batch_clients: int = 4  # clients whose eyes are rendered in one generator call
    # Encode batch N on a worker thread while batch N+1 renders (False: the serial path). Applied to
    # accelerator renders only: a CPU render and the encoder share the cores, and on a 2-core machine
    # overlapping them measured slower (torch's threads contend) - pipeline_encode_cpu forces it anyway.
    # Off by default: on an H100 at 2x1440x1600 (2026-11-24, closed-loop clients whose CPU JPEG decode
    # dominates) it gave 22.5 vs 23.7 fps for one client and 15.5 vs 19.0 fps each for four.
    pipeline_encode: bool = False
    pipeline_encode_cpu: bool = False


@dataclass
class ClientState:
    identity: bytes
    client_id: str
    hello: P.Hello
    width: int
    height: int
    timeline: Timeline | None  # own timeline when --independent-timelines
    last_seen: float
    color_codec: str = "jpeg"
    h264: H264StreamEncoder | None = None  # this client's eye streams when color_codec == "h264"
    recenter: np.ndarray = field(default_factory=lambda: np.eye(4))
    scale: float = 1.0
    pending: P.PoseUpdate | None = None
    pending_received_ns: int = 0
    last_pose: P.PoseUpdate | None = None
    last_render: float = -math.inf
    frame_seq: itertools.count = field(default_factory=lambda: itertools.count(1))
    h264_broken: bool = False  # a frame was dropped: send nothing until the encoder's next keyframe
    counters: collections.Counter = field(default_factory=collections.Counter)


def is_loopback(address: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on 127.0.0.0/8, ::1 or localhost."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    if not address.startswith("tcp://"):
        return False
    host = address[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", interface names, hostnames


def check_bind_security(cfg: ServerConfig) -> bool:
    """True when CURVE will be used; InputError when a non-loopback bind has neither keys nor --insecure."""
    if cfg.keys_dir is not None:
        return True
    if not is_loopback(cfg.bind) and not cfg.insecure:
        raise InputError(f"--bind {cfg.bind}: not loopback, so CURVE keys are required (--keys DIR from "
                         "`timewalk keys generate DIR`), or --insecure to stream unencrypted")
    return False


def load_world_from_stage(world_dir: Path | None, world=None) -> np.ndarray:
    """Calibration seam: ``calibration.load_or_auto(world_dir, world)`` (the stored calibration, else
    the automatic floor/scale/yaw alignment) when the calibration package provides it, else
    ``world_from_stage`` from ``WORLD_DIR/calibration.json``, else identity."""
    if world_dir is None:
        return np.eye(4)
    try:
        from calibration import load_or_auto  # noqa: PLC0415 - optional until calibration lands
    except ImportError:
        load_or_auto = None
    if load_or_auto is not None:
        try:
            result = load_or_auto(Path(world_dir), world)
        except ValueError as e:  # e.g. no floor to align to: serve unaligned rather than not at all
            print(f"timewalk serve: warning: automatic calibration failed ({e}); using world_from_stage = identity",
                  file=sys.stderr)
            return np.eye(4)
        if getattr(result, "warning", None):
            print(f"timewalk serve: warning: {result.warning}", file=sys.stderr)
        return np.asarray(result.world_from_stage, np.float64).reshape(4, 4)
    path = Path(world_dir) / "calibration.json"
    if path.is_file():
        try:
            matrix = np.asarray(json.loads(path.read_text())["world_from_stage"], np.float64).reshape(4, 4)
        except (KeyError, ValueError, TypeError) as e:
            raise InputError(f"{path}: no valid 4x4 'world_from_stage' ({e})") from None
        return matrix
    return np.eye(4)


def _similarity_scale(m: np.ndarray) -> float:
    return float(np.cbrt(np.linalg.det(m[:3, :3])))


def _recenter_from_head(head: P.Pose) -> np.ndarray:
    """stage_from_newstage making the head's floor position and yaw the new origin and forward.

    Convention: OpenXR stage (+Y up, -Z forward); height and pitch/roll are kept.
    """
    m = head.matrix()
    forward = -m[:3, 2]
    yaw = math.atan2(-forward[0], -forward[2])
    out = np.eye(4)
    out[:3, :3] = yaw_pitch_to_matrix(yaw)
    out[0, 3], out[2, 3] = m[0, 3], m[2, 3]
    return out


def _on_accelerator(array) -> bool:
    """True for a torch tensor on a non-CPU device (numpy arrays and CPU tensors: False)."""
    device = getattr(array, "device", None)
    return getattr(device, "type", "cpu") != "cpu"


class RollingStats:
    """Windowed counters for the status line and the JSON-lines stats file."""

    def __init__(self, window: int = 256):
        self.render_ms = collections.deque(maxlen=window)
        self.encode_ms = collections.deque(maxlen=window)
        self.latency_ms = collections.deque(maxlen=window)
        self.sent_times = collections.deque(maxlen=window)
        self.totals = collections.Counter()

    def snapshot(self, now: float) -> dict:
        recent = [t for t in self.sent_times if now - t <= 2.0]
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0

        def p(values, q):
            return round(float(np.percentile(values, q)), 3) if values else None

        return {"fps": round(fps, 2), "render_ms_p50": p(self.render_ms, 50), "encode_ms_p50": p(self.encode_ms, 50),
                "latency_ms_p50": p(self.latency_ms, 50), "latency_ms_p99": p(self.latency_ms, 99), **self.totals}


@dataclass
class RenderedBatch:
    """One generator call's output on its way to the encoder: ``jobs`` are (client, pose, received_ns,
    fovs, depth_scale); ``views`` hold every job's eyes in order."""

    jobs: list
    views: object
    tau: float
    state: object
    t_render: int
    t_rendered: int
    force_keyframe: list = field(default_factory=list)  # h264 encoders to restart (set on the worker thread)


@dataclass
class EncodedUnit:
    """One encoder call's outcome: ``members`` index ``RenderedBatch.jobs``; ``error`` or ``encoded``."""

    members: list[int]
    encoded: object
    error: Exception | None
    t_encode: int
    t_encoded: int


class EncodeWorker:
    """One thread running ``encode_fn(batch) -> list[EncodedUnit]`` off the loop thread.

    At most two batches are outstanding (one encoding, one waiting: ``can_submit``), so memory is
    bounded and frames are never queued behind a slow encoder. Results come back on a queue; the
    worker pings an inproc PAIR (``wake``) so the loop's poll returns as soon as one is ready. Loop
    thread: ``submit``, ``collect``, ``close`` and the ``wake`` socket; worker thread: its own end."""

    MAX_OUTSTANDING = 2

    def __init__(self, ctx: zmq.Context, encode_fn):
        self._encode_fn = encode_fn
        self._inbox: queue.Queue = queue.Queue(maxsize=1)
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.outstanding = 0
        address = f"inproc://encode-worker-{id(self)}"
        self.wake = ctx.socket(zmq.PAIR)
        self.wake.setsockopt(zmq.LINGER, 0)
        self.wake.bind(address)
        self._notify = ctx.socket(zmq.PAIR)
        self._notify.setsockopt(zmq.LINGER, 0)
        self._notify.connect(address)
        self._thread = threading.Thread(target=self._run, name="stream-encode", daemon=True)
        self._thread.start()

    def can_submit(self) -> bool:
        return self.outstanding < self.MAX_OUTSTANDING

    def submit(self, batch: RenderedBatch) -> None:
        assert self.can_submit()
        self.outstanding += 1
        self._inbox.put(batch)  # outstanding < 2: at most a short wait for the worker to take the one before

    def collect(self) -> list[tuple[RenderedBatch, list[EncodedUnit]]]:
        while True:  # clear the wake-ups; the queue is the source of truth
            try:
                self.wake.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        done = []
        while True:
            try:
                done.append(self._outbox.get_nowait())
            except queue.Empty:
                break
        self.outstanding -= len(done)
        return done

    def _run(self) -> None:
        try:
            while True:
                batch = self._inbox.get()
                if batch is None:
                    return
                try:
                    units = self._encode_fn(batch)
                except Exception as e:  # noqa: BLE001 - report to every client of the batch, keep the thread
                    now = time.monotonic_ns()
                    units = [EncodedUnit(list(range(len(batch.jobs))), None, e, now, now)]
                self._outbox.put((batch, units))
                try:
                    self._notify.send(b"", zmq.NOBLOCK)
                except zmq.Again:
                    pass  # a wake-up is already waiting
        finally:
            self._notify.close(linger=0)

    def close(self, timeout: float = 10.0) -> bool:
        """Finish the batch in hand, stop the thread and join it; True when it ended in time."""
        try:
            self._inbox.put(None, timeout=timeout)  # at most one batch ahead of it: one encode's wait
        except queue.Full:
            pass
        self._thread.join(timeout)
        self.wake.close(linger=0)
        return not self._thread.is_alive()


class StreamServer:
    """Serve ``generator`` (see :mod:`gen_server.generators`) to ZeroMQ clients.

    ``world_info``: dict with at least ``duration`` and ``fps`` (sent to clients in ``welcome``);
    ``world_from_stage``: 4x4 similarity from calibration (identity if None)."""

    def __init__(self, generator, world_info: dict, config: ServerConfig | None = None,
                 world_from_stage: np.ndarray | None = None):
        self.config = cfg = config or ServerConfig()
        self.generator = generator
        self.world_info = dict(world_info)
        self.world_from_stage = np.eye(4) if world_from_stage is None else np.asarray(world_from_stage, np.float64)
        self.timeline = self._new_timeline()
        # CUDA graph capture must not overlap GPU work on another thread: none when encoding on a worker
        # thread or when the generator computes on threads of its own.
        graphs = not cfg.pipeline_encode and not getattr(generator, "uses_gpu_on_own_threads", False)
        if not graphs and hasattr(generator, "use_cuda_graphs"):
            generator.use_cuda_graphs(False)
        self.encoder = FrameEncoder(cfg.codec if graphs else dataclasses.replace(cfg.codec, cuda_graphs=False))
        self.encoder_backend = ""  # the colour encoder warm_up found ("nvjpeg", "simplejpeg", ...)
        self.clients: dict[bytes, ClientState] = {}
        self.stats = RollingStats()
        self._client_ids = itertools.count(1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ctx = zmq.Context()
        self._auth = None
        self.socket = self._make_socket()
        self.address = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stats_file = open(cfg.stats_path, "a", encoding="utf-8") if cfg.stats_path else None
        self._status_line = sys.stderr.isatty() if cfg.status_line is None else cfg.status_line
        self._last_status = time.monotonic()
        self._worker = EncodeWorker(self._ctx, self._encode_batch) if cfg.pipeline_encode else None
        self._poller = zmq.Poller()
        self._poller.register(self.socket, zmq.POLLIN)
        if self._worker is not None:
            self._poller.register(self._worker.wake, zmq.POLLIN)

    # ------------------------------------------------------------------ setup
    def _new_timeline(self) -> Timeline:
        return Timeline(float(self.world_info["duration"]), float(self.world_info["fps"]), end_mode=self.config.end_mode)

    def _make_socket(self) -> zmq.Socket:
        cfg = self.config
        secure = check_bind_security(cfg)
        if not secure and not is_loopback(cfg.bind):
            print(f"timewalk serve: WARNING: serving {cfg.bind} without encryption or authentication (--insecure)",
                  file=sys.stderr)
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # EAGAIN on a full client instead of silent loss: we count it
        sock.setsockopt(zmq.SNDHWM, cfg.sndhwm)
        sock.setsockopt(zmq.RCVHWM, cfg.rcvhwm)
        sock.setsockopt(zmq.MAXMSGSIZE, cfg.max_message_bytes)
        if secure:
            self._setup_curve(sock, Path(cfg.keys_dir))
        try:
            sock.bind(cfg.bind)
        except zmq.ZMQError as e:
            sock.close()
            raise InputError(f"--bind {cfg.bind}: cannot bind ({e})") from None
        return sock

    def _setup_curve(self, sock: zmq.Socket, keys_dir: Path) -> None:
        import zmq.auth  # noqa: PLC0415
        from zmq.auth.thread import ThreadAuthenticator  # noqa: PLC0415

        secret_file, allow_dir = keys_dir / "server.key_secret", keys_dir / "authorized_clients"
        if not secret_file.is_file():
            raise InputError(f"{secret_file}: missing (create keys with `timewalk keys generate {keys_dir}`)")
        if not allow_dir.is_dir():
            raise InputError(f"{allow_dir}: missing folder of allowed client public keys")
        public, secret = zmq.auth.load_certificate(str(secret_file))
        self._auth = ThreadAuthenticator(self._ctx)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(allow_dir))
        sock.curve_server = True
        sock.curve_publickey, sock.curve_secretkey = public, secret

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "StreamServer":
        """Serve on a background thread (tests, benchmarks); ``stop()`` ends it."""
        self._thread = threading.Thread(target=self.serve_forever, name="stream-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    def request_stop(self) -> None:
        """Signal-handler safe: the loop notices within one poll interval."""
        self._stop.set()

    def warm_up(self, size: int = 64) -> float:
        """Render and encode a small stereo pair at an exact frame and between two (a cross-fade) before
        clients come: the first render JIT-compiles the GPU kernels, which on a fresh machine takes
        seconds the first client would otherwise wait. Returns the seconds it took; a failure is
        reported to the caller's clients later, not raised here."""
        start = time.monotonic()
        fov = Fov.symmetric(1.6, 1.0)
        eyes = np.stack([pose_to_matrix(np.array([x, 1.6, 0.0]), np.array([0.0, 0.0, 0.0, 1.0])) for x in (-0.032, 0.032)])
        period = 1.0 / float(self.world_info.get("fps") or 24.0)
        try:
            for tau in (0.0, 0.5 * period):
                views = self.generator.render_views(eyes, [fov, fov], size, size, tau)
                self.encoder_backend = self.encoder.encode(views.color, views.depth, views.valid).backend
        except Exception as e:  # noqa: BLE001 - serving still starts; renders report their own errors
            print(f"timewalk serve: warm-up render failed ({type(e).__name__}: {e})", file=sys.stderr)
        return time.monotonic() - start

    def serve_forever(self) -> None:
        # Everything allocated so far (torch's and the world's objects) moves out of the collector's
        # reach, so a full collection mid-stream cannot stall a frame walking them.
        gc.collect()
        gc.freeze()
        try:
            while not self._stop.is_set():
                self.step()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        if self._worker is not None and not self._worker.close():
            print("timewalk serve: warning: encoder thread did not finish within 10 s", file=sys.stderr)
        for identity in list(self.clients):
            self._send(identity, P.Bye("server shutting down"))
        self.socket.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self.encoder.close()
        if self._stats_file:
            self._stats_file.close()
        if self._status_line:
            print(file=sys.stderr)
        self._ctx.term()

    # ------------------------------------------------------------------ loop
    def step(self) -> None:
        """One loop iteration: wait (bounded) for input, drain it, render what is due, housekeeping."""
        events = dict(self._poller.poll(self._poll_timeout_ms()))
        if events.get(self.socket):
            self._drain()
        self._deliver_encoded()
        now = time.monotonic()
        due = [c for c in sorted(self.clients.values(), key=lambda c: c.last_render)
               if c.pending is not None and now - c.last_render >= 1.0 / self.config.fps]
        if due:
            self._render_due(due)
        if self._worker is not None and self._worker.outstanding:
            # Wait for the encoder or new input, whichever comes first: a frame leaves as soon as it is
            # encoded, and a pose arriving meanwhile renders (next step) while the encode finishes.
            self._poller.poll(self._poll_timeout_ms(idle_s=1.0, encoder_busy_s=1.0))
            self._deliver_encoded()
        self._expire(time.monotonic())
        self._report(time.monotonic())

    def _poll_timeout_ms(self, idle_s: float = 0.05, encoder_busy_s: float = 0.05) -> int:
        now, waits = time.monotonic(), [idle_s]
        if self._worker is not None and not self._worker.can_submit():
            return int(encoder_busy_s * 1000)  # no render until the encoder frees a slot (it wakes the poll)
        for c in self.clients.values():
            if c.pending is not None:
                waits.append(c.last_render + 1.0 / self.config.fps - now)
        return max(0, int(math.ceil(min(waits) * 1000)))

    def _drain(self) -> None:
        for _ in range(self.config.max_drain):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity, body = frames[0].bytes, frames[1:]
            try:
                self._handle(identity, body)
            except P.ProtocolError as e:
                self.stats.totals["bad_messages"] += 1
                code = "bad_version" if isinstance(e, P.ProtocolVersionError) else "bad_message"
                self._send(identity, P.Error(code, str(e), about=P.peek_type(body) if body else ""))
            except Exception as e:  # noqa: BLE001 - whatever a message triggers, the server stays up
                self.stats.totals["handler_errors"] += 1
                self._send(identity, P.Error("server_error", f"{type(e).__name__}: {e}", about=P.peek_type(body)))

    def _handle(self, identity: bytes, body: list) -> None:
        recv_ns = time.monotonic_ns()
        msg = P.decode(body)
        client = self.clients.get(identity)
        if client is not None:
            client.last_seen = time.monotonic()
        if isinstance(msg, P.Hello):
            self._hello(identity, msg)
        elif isinstance(msg, P.Ping):
            self._send(identity, P.Pong(msg.seq, msg.t0_ns, recv_ns, time.monotonic_ns()))
        elif client is None:
            if not isinstance(msg, P.Bye):
                self._send(identity, P.Error("unknown_client", "send hello first (unknown or expired client)",
                                             about=msg.TYPE, seq=getattr(msg, "seq", None)))
        elif isinstance(msg, P.PoseUpdate):
            client.counters["poses"] += 1
            if client.pending is not None:
                client.counters["poses_superseded"] += 1
            if client.last_pose is None or msg.seq > client.last_pose.seq:  # reordering cannot go back in time
                client.pending, client.pending_received_ns, client.last_pose = msg, recv_ns, msg
        elif isinstance(msg, P.Control):
            self._control(client, msg)
        elif isinstance(msg, P.Bye):
            self._free(identity, "bye")
        else:
            raise P.ProtocolError(f"{msg.TYPE}: not a client-to-server message")

    def _hello(self, identity: bytes, hello: P.Hello) -> None:
        cfg = self.config
        if hello.protocol_version != P.PROTOCOL_VERSION:
            raise P.ProtocolVersionError(f"hello: protocol_version {hello.protocol_version}, server speaks {P.PROTOCOL_VERSION}")
        if "jpeg" not in hello.color_codecs and "raw" not in hello.color_codecs:
            raise P.ProtocolError("hello: no colour codec in common")
        if identity not in self.clients and len(self.clients) >= cfg.max_clients:
            self._send(identity, P.Error("too_many_clients", f"server is full ({cfg.max_clients} clients)", about="hello"))
            return
        color_codec = cfg.codec.color_codec
        if color_codec == "h264" and "h264" not in hello.color_codecs:
            color_codec = "jpeg"  # h264 only for clients that decode it; JPEG for the rest
        depth_codec = cfg.codec.depth_codec
        if color_codec not in hello.color_codecs or depth_codec not in hello.depth_codecs:
            raise P.ProtocolError(f"hello: server encodes {color_codec}/{depth_codec}, client decodes "
                                  f"{'/'.join(hello.color_codecs)} + {'/'.join(hello.depth_codecs)}")
        width, height = cfg.width or hello.eye_width, cfg.height or hello.eye_height
        if color_codec == "h264" and (width % 2 or height % 2):
            raise P.ProtocolError(f"hello: h264 needs an even eye size, got {width}x{height}")
        now = time.monotonic()
        client = ClientState(
            identity=identity, client_id=f"c{next(self._client_ids)}", hello=hello, width=width, height=height,
            timeline=self._new_timeline() if cfg.independent_timelines else None, last_seen=now,
            color_codec=color_codec, h264=H264StreamEncoder(cfg.h264) if color_codec == "h264" else None,
        )
        self.clients[identity] = client
        self.stats.totals["clients_welcomed"] += 1
        self._send(identity, P.Welcome(
            client_id=client.client_id, eye_width=client.width, eye_height=client.height, color_codec=color_codec,
            depth_codec=depth_codec, max_fps=cfg.fps, world=self.world_info,
            timeline=self._timeline_dict(client, now), world_from_stage=self.world_from_stage,
            server_time_ns=time.monotonic_ns()))

    def _timeline_of(self, client: ClientState) -> Timeline:
        return client.timeline if client.timeline is not None else self.timeline

    def _timeline_dict(self, client: ClientState, now: float) -> dict:
        state = dataclasses.asdict(self._timeline_of(client).state(now))
        state["bookmarks"] = list(state["bookmarks"])
        return state

    def _control(self, client: ClientState, msg: P.Control) -> None:
        client.counters["controls"] += 1
        if msg.command == "recenter":
            if client.last_pose is None:
                self._send(client.identity, P.Error("bad_control", "recenter: no head pose received yet",
                                                    about="control", seq=msg.seq))
                return
            client.recenter = invert_rigid(_recenter_from_head(client.last_pose.head))
        elif msg.command == "scale":
            client.scale = float(msg.value)
        else:
            command = {"name": msg.command}
            if msg.value is not None:
                command["value"] = int(msg.value) if msg.command in ("step", "goto_bookmark") else msg.value
            try:
                self._timeline_of(client).apply(command, time.monotonic())
            except TimelineError as e:
                self._send(client.identity, P.Error("bad_control", str(e), about="control", seq=msg.seq))
                return
        # A control changes what the client sees even if the head is still: re-render its last pose.
        if client.pending is None and client.last_pose is not None:
            client.pending, client.pending_received_ns = client.last_pose, time.monotonic_ns()

    # ------------------------------------------------------------------ rendering
    def world_from_stage_for(self, client: ClientState) -> np.ndarray:
        """Calibration @ the client's scale @ its recentering (a similarity, stage -> world)."""
        scale = np.diag([client.scale, client.scale, client.scale, 1.0])
        return self.world_from_stage @ scale @ client.recenter

    def _render_due(self, clients: list[ClientState]) -> None:
        """Render every due client; clients sharing a timeline and eye size go through the generator in
        one batch (one splat pass for all their eyes), up to ``max_batch_clients`` at a time."""
        groups: dict[tuple, list[ClientState]] = {}
        for c in clients:
            groups.setdefault((id(self._timeline_of(c)), c.width, c.height), []).append(c)
        cap = max(1, self.config.max_batch_clients)
        for group in groups.values():
            for i in range(0, len(group), cap):
                if self._worker is not None and not self._worker.can_submit():
                    return  # the rest stay pending (newest pose still wins) until the encoder catches up
                self._render_batch(group[i:i + cap])

    def _render_batch(self, clients: list[ClientState]) -> None:
        now = time.monotonic()
        jobs = []  # (client, pose, received_ns, fovs, scale)
        poses_world, fovs_all = [], []
        for client in clients:
            pose, received_ns = client.pending, client.pending_received_ns
            client.pending, client.last_render = None, now
            fovs = list(pose.fovs or client.hello.fovs)
            stage_from_eye = pose_to_matrix(np.array([e.position for e in pose.eyes]),
                                            np.array([e.orientation for e in pose.eyes]))
            world_from_stage = self.world_from_stage_for(client)
            scale = _similarity_scale(world_from_stage)  # eye poses are rigid: the similarity's scale is theirs
            world_from_eye = world_from_stage @ stage_from_eye
            world_from_eye[:, :3, :3] /= scale  # rigid pose for the renderer; depth rescaled below
            jobs.append((client, pose, received_ns, fovs, scale))
            poses_world.append(world_from_eye)
            fovs_all += fovs
        first = clients[0]
        timeline = self._timeline_of(first)
        tau = timeline.tau(now)
        state = timeline.state(now)
        t_render = time.monotonic_ns()
        try:
            views = self.generator.render_views(np.concatenate(poses_world), fovs_all, first.width, first.height, tau)
            check_views(views, len(fovs_all), first.width, first.height)
        except Exception as e:  # noqa: BLE001 - a generator failure must not take the server down
            self.stats.totals["render_errors"] += 1
            for client, pose, *_ in jobs:
                self._send(client.identity, P.Error("server_error", f"render failed: {type(e).__name__}: {e}",
                                                    about="pose", seq=pose.seq))
            return
        t_rendered = time.monotonic_ns()
        self.stats.render_ms.append((t_rendered - t_render) / 1e6)
        batch = RenderedBatch(jobs, views, tau, state, t_render, t_rendered)
        for client, *_ in jobs:
            if client.h264 is not None and client.h264_broken:
                batch.force_keyframe.append(client.h264)
        if self._worker is not None and (self._worker.outstanding or self.config.pipeline_encode_cpu
                                         or _on_accelerator(views.color)):
            self._worker.submit(batch)  # (a CPU batch behind an outstanding one too: frames keep their order)
        else:
            self._deliver(batch, self._encode_batch(batch))

    def _encode_batch(self, batch: RenderedBatch) -> list[EncodedUnit]:
        """Encode a rendered batch. Runs on the encoder thread when pipelined, so it reads only the
        batch and the encoders (touched by no other thread), never the socket or the stats."""
        jobs, views = batch.jobs, batch.views
        for h264 in batch.force_keyframe:
            h264.force_keyframe()
        # Stateless codecs: one encode for every such client's eyes (one nvJPEG batch, one depth pass);
        # h264 clients each feed their own streams.
        spans, offset = [], 0
        for job in jobs:
            spans.append(slice(offset, offset + len(job[3])))
            offset += len(job[3])
        stateless = [i for i, job in enumerate(jobs) if job[0].h264 is None]
        units = [(stateless, None)] if stateless else []
        units += [([i], jobs[i][0].h264) for i, job in enumerate(jobs) if job[0].h264 is not None]
        out = []
        for members, h264 in units:
            index = [v for i in members for v in range(spans[i].start, spans[i].stop)]
            scales = [jobs[i][4] for i in members for _ in range(spans[i].stop - spans[i].start)]
            t_encode = time.monotonic_ns()
            # All the views in order (one client, or every client stateless): no gather copies.
            pick = (lambda a: a) if index == list(range(len(views.color))) else (lambda a: a[index])
            try:
                encoded, error = self.encoder.encode(
                    pick(views.color), pick(views.depth), pick(views.valid) if self.config.mask_invalid_depth else None,
                    depth_scale=scales, h264=h264), None
            except Exception as e:  # noqa: BLE001 - reported to the clients by _deliver
                encoded, error = None, e
            out.append(EncodedUnit(members, encoded, error, t_encode, time.monotonic_ns()))
        return out

    def _deliver_encoded(self) -> None:
        if self._worker is not None:
            for batch, units in self._worker.collect():
                self._deliver(batch, units)

    def _deliver(self, batch: RenderedBatch, units: list[EncodedUnit]) -> None:
        """Loop thread: stats and sends for an encoded batch."""
        jobs = batch.jobs
        for unit in units:
            if unit.error is not None:
                e = unit.error
                self.stats.totals["encode_errors"] += 1
                for i in unit.members:
                    self._send(jobs[i][0].identity, P.Error("server_error", f"encode failed: {type(e).__name__}: {e}",
                                                            about="pose", seq=jobs[i][1].seq))
                continue
            encoded = unit.encoded
            self.stats.totals[f"encoded_{encoded.backend}"] += len(unit.members)
            self.stats.encode_ms.append((unit.t_encoded - unit.t_encode) / 1e6)
            start = 0
            for i in unit.members:
                client, pose, received_ns, fovs, _ = jobs[i]
                mine = encoded.select(slice(start, start + len(fovs)))
                start += len(fovs)
                if self.clients.get(client.identity) is not client:
                    continue  # freed (bye, timeout) while its frame was encoding
                self._send_frame(client, pose, received_ns, fovs, batch.tau, batch.state, mine,
                                 {"pose_received_ns": received_ns, "render_start_ns": batch.t_render,
                                  "render_end_ns": batch.t_rendered, "encode_start_ns": unit.t_encode,
                                  "encode_end_ns": unit.t_encoded})

    def _send_frame(self, client, pose, received_ns, fovs, tau, state, encoded, timings) -> None:
        if client.h264 is not None and client.h264_broken:
            if not encoded.keyframe:  # encoded before the restart was asked for: undecodable for the client
                client.counters["frames_dropped"] += 1
                self.stats.totals["frames_dropped"] += 1
                return
            client.h264_broken = False
        timings["send_ns"] = time.monotonic_ns()
        frame = P.Frame(
            seq=next(client.frame_seq), pose_seq=pose.seq, tau=tau,
            eyes=tuple(P.EyeView(e, f) for e, f in zip(pose.eyes, fovs)), width=encoded.width, height=encoded.height,
            color_codec=encoded.color_codec, depth_codec=encoded.depth_codec, depth_width=encoded.depth_width,
            depth_height=encoded.depth_height, depth_near=encoded.depth_near, depth_far=encoded.depth_far,
            color=encoded.color, depth=encoded.depth, timeline={"rate": state.rate, "paused": state.paused},
            timings=timings, keyframe=encoded.keyframe,
        )
        if self._send(client.identity, frame):
            client.counters["frames_sent"] += 1
            self.stats.totals["frames_sent"] += 1
            self.stats.sent_times.append(time.monotonic())
            self.stats.latency_ms.append((time.monotonic_ns() - received_ns) / 1e6)
        else:
            client.counters["frames_dropped"] += 1
            self.stats.totals["frames_dropped"] += 1
            if client.h264 is not None:  # the client's decoder never saw this picture: restart the chain
                client.h264_broken = True  # the next encode (on the encoder's thread) forces a keyframe

    def _send(self, identity: bytes, msg: P.Message) -> bool:
        """Non-blocking send; False (and nothing queued) when the client's pipe is full or gone."""
        try:
            frames = P.encode(msg)
        except P.ProtocolError as e:  # e.g. a header grown past the limit: report it, never crash the loop
            self.stats.totals["unencodable"] += 1
            if not isinstance(msg, P.Error):
                self._send(identity, P.Error("server_error", str(e), about=msg.TYPE))
            return False
        try:
            self.socket.send_multipart([identity, *frames], flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:  # peer disconnected: its state goes now
                self._free(identity, "unreachable")
                return False
            raise

    # ------------------------------------------------------------------ housekeeping
    def _free(self, identity: bytes, reason: str) -> None:
        if self.clients.pop(identity, None) is not None:
            self.stats.totals[f"clients_freed_{reason}"] += 1

    def _expire(self, now: float) -> None:
        for identity, c in list(self.clients.items()):
            if now - c.last_seen > self.config.client_timeout_s:
                self._free(identity, "timeout")

    def status(self, now: float | None = None) -> dict:
        now = time.monotonic() if now is None else now
        return {"time": time.time(), "clients": len(self.clients), "tau": round(self.timeline.tau(now), 4),
                **self.stats.snapshot(now)}

    def _report(self, now: float) -> None:
        if now - self._last_status < self.config.status_interval_s:
            return
        self._last_status = now
        if not (self._status_line or self._stats_file):
            return
        s = self.status(now)
        if self._stats_file:
            self._stats_file.write(json.dumps(s) + "\n")
            self._stats_file.flush()
        if self._status_line:
            def f(v):
                return "-" if v is None else f"{v:.1f}"

            line = (f"clients {s['clients']} | {s['fps']:.1f} fps | render {f(s['render_ms_p50'])} ms | "
                    f"encode {f(s['encode_ms_p50'])} ms | latency p50 {f(s['latency_ms_p50'])} p99 "
                    f"{f(s['latency_ms_p99'])} ms | dropped {s.get('frames_dropped', 0)} | tau {s['tau']:.2f}")
            print("\r" + line.ljust(110), end="", file=sys.stderr, flush=True)
