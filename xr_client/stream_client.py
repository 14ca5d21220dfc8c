"""The client's end of the stream: a background thread talking to ``timewalk serve`` (no torch).

Usage::

    client = StreamClient("tcp://127.0.0.1:5555", StreamConfig(eye_width=1440, eye_height=1600, fovs=(l, r)))
    client.start()
    client.wait_connected(5.0)
    seq = client.send_pose(head, (left_eye, right_eye), display_time_ns=t)   # every display frame
    frame = client.latest_frame()        # DecodedFrame or None: the newest good one, kept until replaced
    client.send_control("rate", -1.0)    # play backwards
    client.close()

Threads: an I/O thread owns the DEALER socket (hello/welcome handshake, pings for clock sync, forwards
what the caller sends through an inproc pipe, reconnects when the server goes quiet or forgets us);
a decode thread hands the newest received frame to a decoder (older undecoded ones are superseded), so
the caller's thread never decodes. JPEG/raw frames are independent, so on a machine with cores to spare
several decode at once (``decode_frames_in_flight``): a 1440x1600 stereo JPEG takes ~20-45 ms on one
core per eye, and a 90 Hz stream needs a new one every 11 ms. H.264 frames decode one after another. ``send_pose``/``send_control`` may be called from any thread.

Convention: poses are OpenXR stage-space :class:`gen_server.protocol.Pose`; clocks ``time.monotonic_ns``.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from gen_server import protocol as P
from gen_server.cameras import Fov
from xr_client.frame_decode import DecodedFrame, FrameDecoder

try:  # numpy-only; the drift-aware, outlier-rejecting fit when the calibration package is installed
    from calibration.clock_sync import ClockSync
except ImportError:  # pragma: no cover - client-only installs without calibration/
    ClockSync = None


@dataclass
class StreamConfig:
    """What the client asks for in ``hello`` and how patient it is."""

    eye_width: int = 512
    eye_height: int = 512
    fovs: tuple[Fov, Fov] = field(default_factory=lambda: (Fov.symmetric(1.6, 1.0), Fov.symmetric(1.6, 1.0)))
    ipd: float = 0.063
    display_refresh_hz: float = 90.0
    color_codecs: tuple[str, ...] = ("jpeg", "raw")  # add "h264" for the low-bandwidth stream (needs PyAV)
    depth_codecs: tuple[str, ...] = P.DEPTH_CODECS
    client_name: str = "timewalk-client"
    ping_interval_s: float = 0.5
    timeout_s: float = 3.0  # nothing from the server this long -> reconnect
    hello_retry_s: float = 1.0
    decode_frames_in_flight: int = 0  # JPEG/raw frames decoding at once; 0 = auto (a quarter of the cores, 1..4)


def auto_frames_in_flight() -> int:
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def load_key_pair(path: str | Path) -> tuple[bytes, bytes]:
    """A ``*.key_secret`` file from ``timewalk keys generate`` -> (public, secret) z85 keys."""
    import zmq.auth  # noqa: PLC0415

    public, secret = zmq.auth.load_certificate(str(path))
    if secret is None:
        raise ValueError(f"{path}: holds no secret key (pass the .key_secret file)")
    return public, secret


def load_public_key(path: str | Path) -> bytes:
    """A ``*.key`` (or ``*.key_secret``) file -> its public z85 key."""
    import zmq.auth  # noqa: PLC0415

    return zmq.auth.load_certificate(str(path))[0]


class StreamClient:
    """Latest-frame stream client. ``server_public_key`` (z85 bytes or a key file path) enables CURVE;
    then ``client_keys`` = (public, secret) z85 or a ``.key_secret`` path (generated if None)."""

    def __init__(self, address: str, config: StreamConfig | None = None, server_public_key=None, client_keys=None):
        self.address = address
        self.config = config or StreamConfig()
        self._curve = None
        if server_public_key is not None:
            if isinstance(server_public_key, Path) or (isinstance(server_public_key, str) and Path(server_public_key).is_file()):
                server_public_key = load_public_key(server_public_key)
            elif isinstance(server_public_key, str):
                server_public_key = server_public_key.encode("ascii")
            if isinstance(client_keys, (str, Path)):
                client_keys = load_key_pair(client_keys)
            if client_keys is None:
                client_keys = zmq.curve_keypair()
            self._curve = (bytes(server_public_key), bytes(client_keys[0]), bytes(client_keys[1]))
        self._ctx = zmq.Context()
        self._lock = threading.Lock()
        self._pipe_addr = f"inproc://stream-client-{id(self)}"
        self._pipe_rx = self._ctx.socket(zmq.PAIR)
        self._pipe_rx.bind(self._pipe_addr)
        self._pipe_tx = self._ctx.socket(zmq.PAIR)
        self._pipe_tx.connect(self._pipe_addr)
        self._seq = itertools.count(1)
        self._stop = threading.Event()
        self._state = "connecting"
        self._connected_event = threading.Event()
        self.welcome: P.Welcome | None = None
        self.last_error: P.Error | None = None
        self.clock_samples: collections.deque = collections.deque(maxlen=64)  # (t0, t1, t2, t3) ns
        self.clock = ClockSync() if ClockSync is not None else None  # fed from the I/O thread
        self.stats = collections.Counter()
        self._clock_lock = threading.Lock()
        self._frame_cv = threading.Condition()
        self._undecoded: collections.deque = collections.deque(maxlen=16)  # (Frame, received ns), oldest first
        self._decoder = FrameDecoder()
        self._chain_broken = False
        self._latest: DecodedFrame | None = None
        self._latest_received_ns = -1
        self._in_flight = 0  # stateless frames being decoded on self._frame_pool
        self._frame_pool: ThreadPoolExecutor | None = None
        self._io_thread = threading.Thread(target=self._io_loop, name="stream-io", daemon=True)
        self._decode_thread = threading.Thread(target=self._decode_loop, name="stream-decode", daemon=True)

    # ------------------------------------------------------------------ public API
    def start(self) -> "StreamClient":
        self._io_thread.start()
        self._decode_thread.start()
        return self

    def close(self) -> None:
        """Say bye, stop the threads, free the sockets."""
        if self._stop.is_set():
            return
        self._forward(P.Bye("client closing"))
        time.sleep(0.01)
        self._stop.set()
        with self._frame_cv:
            self._frame_cv.notify_all()
        self._io_thread.join(timeout=2.0)
        self._decode_thread.join(timeout=2.0)
        if self._frame_pool is not None:
            self._frame_pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._pipe_tx.close(linger=0)
        self._state = "closed"
        if not self._io_thread.is_alive():  # all sockets closed: the context can go
            self._ctx.term()

    def __enter__(self) -> "StreamClient":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def state(self) -> str:
        """"connecting" (first handshake), "connected", "reconnecting" or "closed"."""
        return self._state

    @property
    def connected(self) -> bool:
        return self._state == "connected"

    @property
    def reconnecting(self) -> bool:
        return self._state == "reconnecting"

    def wait_connected(self, timeout: float = 5.0) -> bool:
        return self._connected_event.wait(timeout)

    def send_pose(self, head: P.Pose, eyes: tuple[P.Pose, P.Pose], *, display_time_ns: int = 0,
                  fovs: tuple[Fov, Fov] | None = None, controllers: tuple[P.ControllerState, ...] = ()) -> int:
        """Send the predicted head/eye poses (stage space); returns the pose's sequence number."""
        seq = next(self._seq)
        self._forward(P.PoseUpdate(seq=seq, head=head, eyes=tuple(eyes), client_time_ns=time.monotonic_ns(),
                                   display_time_ns=display_time_ns, fovs=fovs, controllers=tuple(controllers)))
        return seq

    def send_control(self, command: str, value: float | None = None, name: str | None = None) -> int:
        """Timeline/view command (see :class:`gen_server.protocol.Control`); returns its sequence number."""
        seq = next(self._seq)
        msg = P.Control(command=command, value=value, name=name, seq=seq)
        P.decode(P.encode(msg))  # validate here: a bad command is the caller's bug, raise it in their thread
        self._forward(msg)
        return seq

    def latest_frame(self) -> DecodedFrame | None:
        """The newest successfully decoded frame (kept across disconnects), or None before the first."""
        return self._latest

    def wait_frame(self, after_seq: int = 0, timeout: float = 1.0, pose_seq: int | None = None) -> DecodedFrame | None:
        """Block until a decoded frame with ``seq > after_seq`` (and ``pose_seq >= pose_seq`` if given)."""
        deadline = time.monotonic() + timeout
        with self._frame_cv:
            while True:
                f = self._latest
                if f is not None and f.seq > after_seq and (pose_seq is None or f.pose_seq >= pose_seq):
                    return f
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return None
                self._frame_cv.wait(left)

    def clock_offset_ns(self, client_ns: int | None = None) -> int | None:
        """server_clock - client_clock (ns) at ``client_ns`` (default now); None before the first pong.

        Uses :class:`calibration.clock_sync.ClockSync` (drift + outlier rejection) when available,
        else the lowest-round-trip sample (NTP style)."""
        client_ns = time.monotonic_ns() if client_ns is None else client_ns
        with self._clock_lock:
            if self.clock is not None and self.clock.ready:
                return int(round(self.clock.offset_at(client_ns)))
            samples = list(self.clock_samples)
        if not samples:
            return None
        t0, t1, t2, t3 = min(samples, key=lambda s: (s[3] - s[0]) - (s[2] - s[1]))
        return ((t1 - t0) + (t2 - t3)) // 2

    def server_time_ns(self, client_ns: int | None = None) -> int | None:
        """The server's clock reading at client time ``client_ns`` (default now); None before sync."""
        client_ns = time.monotonic_ns() if client_ns is None else client_ns
        offset = self.clock_offset_ns(client_ns)
        return None if offset is None else client_ns + offset

    # ------------------------------------------------------------------ internals
    def _forward(self, msg: P.Message) -> None:
        with self._lock:
            if not self._pipe_tx.closed:
                self._pipe_tx.send_multipart(P.encode(msg), copy=False)

    def _hello(self) -> P.Hello:
        c = self.config
        return P.Hello(eye_width=c.eye_width, eye_height=c.eye_height, fovs=tuple(c.fovs), ipd=c.ipd,
                       display_refresh_hz=c.display_refresh_hz, color_codecs=tuple(c.color_codecs),
                       depth_codecs=tuple(c.depth_codecs), client_name=c.client_name,
                       client_time_ns=time.monotonic_ns())

    def _new_socket(self) -> zmq.Socket:
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 16)
        s.setsockopt(zmq.RCVHWM, 4)  # frames we cannot take pile up at the server, which drops them
        s.setsockopt(zmq.IMMEDIATE, 1)  # no queueing poses towards a connection that is not up
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if self._curve is not None:
            server_key, public, secret = self._curve
            s.curve_serverkey, s.curve_publickey, s.curve_secretkey = server_key, public, secret
        s.connect(self.address)
        return s

    def _send(self, sock: zmq.Socket, frames: list) -> None:
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.stats["send_dropped"] += 1

    def _io_loop(self) -> None:
        sock = self._new_socket()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._pipe_rx, zmq.POLLIN)
        now = time.monotonic()
        last_heard = now
        last_hello = -1e9
        last_ping = -1e9
        welcomed = False
        ping_seq = itertools.count(1)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if not welcomed and now - last_hello > self.config.hello_retry_s:
                    self._send(sock, P.encode(self._hello()))
                    last_hello = now
                if welcomed and now - last_ping > self.config.ping_interval_s:
                    self._send(sock, P.encode(P.Ping(next(ping_seq), time.monotonic_ns())))
                    last_ping = now
                if now - last_heard > self.config.timeout_s:
                    # The server went away (or restarted): new socket, new handshake; keep the last frame.
                    poller.unregister(sock)
                    sock.close(linger=0)
                    sock = self._new_socket()
                    poller.register(sock, zmq.POLLIN)
                    welcomed, last_heard, last_hello = False, now, -1e9
                    self._set_state("reconnecting")
                    continue
                events = dict(poller.poll(50))
                if self._pipe_rx in events:
                    for _ in range(256):
                        try:
                            frames = self._pipe_rx.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        if welcomed:
                            self._send(sock, frames)
                        else:
                            self.stats["unsent_before_welcome"] += 1
                if sock in events:
                    for _ in range(64):
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        last_heard = time.monotonic()
                        welcomed = self._handle(frames, welcomed, last_heard)
                        if not welcomed:
                            last_hello = -1e9  # the server forgot us: say hello again now
        finally:
            try:
                sock.send_multipart(P.encode(P.Bye("client closing")), flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            sock.close(linger=0)
            self._pipe_rx.close(linger=0)

    def _handle(self, frames: list, welcomed: bool, received: float) -> bool:
        t3 = time.monotonic_ns()
        try:
            msg = P.decode(frames)
        except P.ProtocolError as e:
            self.stats["bad_messages"] += 1
            self.last_error = P.Error("bad_message", str(e))
            return welcomed
        if isinstance(msg, P.Welcome):
            self.welcome = msg
            self._set_state("connected")
            return True
        if isinstance(msg, P.Frame):
            self.stats["frames_received"] += 1
            with self._frame_cv:
                if len(self._undecoded) == self._undecoded.maxlen:
                    self._chain_broken = True  # the oldest falls out undecoded: h264 must wait for a keyframe
                self._undecoded.append((msg, t3))
                self._frame_cv.notify_all()
            return welcomed
        if isinstance(msg, P.Pong):
            with self._clock_lock:
                self.clock_samples.append((msg.t0_ns, msg.t1_ns, msg.t2_ns, t3))
                if self.clock is not None:
                    self.clock.add_sample(msg.t0_ns, msg.t1_ns, msg.t2_ns, t3)
            return welcomed
        if isinstance(msg, P.Error):
            self.last_error = msg
            self.stats["errors"] += 1
            if msg.code in ("unknown_client", "not_hello"):
                self._set_state("reconnecting")
                return False
            return welcomed
        if isinstance(msg, P.Bye):
            self._set_state("reconnecting")
            return False
        return welcomed

    def _set_state(self, state: str) -> None:
        if state == "reconnecting" and self._state != "reconnecting":
            self.stats["reconnects"] += 1
        self._state = state
        if state == "connected":
            self._connected_event.set()
        else:
            self._connected_event.clear()

    def _decode_loop(self) -> None:
        limit = self.config.decode_frames_in_flight or auto_frames_in_flight()
        if limit > 1:
            self._frame_pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="stream-frame-decode")
        while not self._stop.is_set():
            with self._frame_cv:
                # A stateless frame waits for a free decode slot (meanwhile newer ones supersede it).
                while not self._stop.is_set() and (not self._undecoded or (
                        self._in_flight >= limit and self._undecoded[-1][0].color_codec != "h264")):
                    self._frame_cv.wait(0.1)
                if self._stop.is_set():
                    return
                batch = list(self._undecoded)
                self._undecoded.clear()
                broken, self._chain_broken = self._chain_broken, False
            if broken:
                self._decoder.chain_broken()
            if batch[-1][0].color_codec != "h264":  # stateless codecs: only the newest frame matters
                self.stats["frames_superseded"] += len(batch) - 1
                msg, received_ns = batch[-1]
                if self._frame_pool is None:
                    self._decode_one(msg, received_ns)
                else:
                    with self._frame_cv:
                        self._in_flight += 1
                        self.stats["decode_in_flight_max"] = max(self.stats["decode_in_flight_max"], self._in_flight)
                    self._frame_pool.submit(self._decode_one, msg, received_ns, True)
                continue
            for i, (msg, received_ns) in enumerate(batch):
                self._decode_one(msg, received_ns, want_image=i == len(batch) - 1)

    def _decode_one(self, msg: P.Frame, received_ns: int, pooled: bool = False, want_image: bool = True) -> None:
        """Decode one frame and publish it unless a newer one was published first (pooled decodes can
        finish out of order)."""
        try:
            decoded = self._decoder.decode(msg, received_ns, want_image=want_image)
        except P.ProtocolError as e:
            decoded = None
            self.stats["bad_frames"] += 1
            self.last_error = P.Error("bad_message", str(e), about="frame", seq=msg.seq)
        except Exception as e:  # noqa: BLE001 - a decoder crash must not kill the stream (pool threads swallow it)
            decoded = None
            self.stats["bad_frames"] += 1
            self.last_error = P.Error("bad_message", f"{type(e).__name__}: {e}", about="frame", seq=msg.seq)
        else:
            if decoded is None:
                self.stats["frames_superseded" if not want_image else "frames_waiting_keyframe"] += 1
        with self._frame_cv:
            if pooled:
                self._in_flight -= 1
            if decoded is not None:
                # Arrival order (frame seqs restart when the server forgets us and we reconnect).
                if received_ns >= self._latest_received_ns:
                    self._latest, self._latest_received_ns = decoded, received_ns
                    self.stats["frames_decoded"] += 1
                else:
                    self.stats["frames_superseded"] += 1  # a newer frame finished decoding first
            self._frame_cv.notify_all()
