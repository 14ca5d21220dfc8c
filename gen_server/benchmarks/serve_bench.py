"""Streaming benchmark: loopback pose-to-frame latency and frames/s through the real server and client.

    python -m gen_server.benchmarks.serve_bench --device cpu --width 512 --height 512 --clients 1 4
    python -m gen_server.benchmarks.serve_bench --device cuda --width 1440 --height 1600 --clients 1 4

The server (geometric generator + codec + ROUTER socket) runs in its own process, as `timewalk serve`
would; each client is an :class:`xr_client.stream_client.StreamClient` that sends a head pose, waits for
the frame answering it to be *decoded*, and sends the next one at once (closed loop: the rate is that of
one pose in flight at a time), or with ``--pose-hz 90`` sends poses at a headset's rate and times every
new frame (open loop: server, network and decoding overlap, as in use). Latency = pose sent -> frame
decoded on the client's clock; the server's own pose-in -> frame-out comes from the frame's timings.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing as mp
import threading
import time
from pathlib import Path

import numpy as np

from gen_server.benchmarks.machine import describe, machine_info
from gen_server.codec import GPU_JPEG_ENCODERS


def smooth_colors(positions: np.ndarray) -> np.ndarray:
    """Colours varying smoothly over surfaces (like photographed walls), so JPEG sizes and decode times
    are representative: the render benchmark's per-point random colours are noise, JPEG's worst case."""
    p = positions.astype(np.float64)
    waves = [np.sin(1.7 * p[:, 0] + 0.9 * p[:, 2]), np.sin(2.3 * p[:, 1] - 1.1 * p[:, 0]), np.sin(1.3 * p[:, 2] + 0.7 * p[:, 1])]
    return np.clip(128 + 90 * np.stack(waves, -1), 0, 255).astype(np.uint8)


def bench_world(static_points: int, noise_colors: bool = False):
    """render_bench's room of points (+ moving dynamic sphere), smooth colours unless ``noise_colors``."""
    from dataclasses import replace

    from gen_server.benchmarks.render_bench import random_world

    world = random_world(static_points, static_points // 8, frames=8)
    if noise_colors:
        return world
    return replace(world, static=replace(world.static, colors=smooth_colors(world.static.positions)),
                   dynamic=replace(world.dynamic, colors=smooth_colors(world.dynamic.positions)))


def _serve(world_dir, device, static_points, fps, color_codec, noise_colors, threads, ready, stop,
           gpu_jpeg: str = "auto") -> None:
    """Server process body: build/load the world, serve until ``stop`` is set."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    from gen_server.codec import CodecConfig
    from gen_server.commands.serve import world_info
    from gen_server.generators import make_generator
    from gen_server.server import ServerConfig, StreamServer

    if world_dir is None:
        world = bench_world(static_points, noise_colors)
        info = world_info(world, Path("random-room"))
    else:
        from gen_server.world.store import load_world

        world = load_world(world_dir)
        info = world_info(world, Path(world_dir))
    generator = make_generator("geometric", world, device=device)
    server = StreamServer(generator, info, ServerConfig(bind="tcp://127.0.0.1:*", fps=fps, status_line=False,
                                                        client_timeout_s=30.0, codec=CodecConfig(color_codec=color_codec,
                                                                                          gpu_jpeg=gpu_jpeg)))
    server.warm_up()  # kernels compiled before the clients' clocks start, as `timewalk serve` does
    ready.put((server.address, machine_info(device)))
    threading.Thread(target=lambda: (stop.wait(), server.request_stop()), daemon=True).start()
    server.serve_forever()
    ready.put(server.status())  # render/encode ms and encoder backend as the server saw them


def _head_pose(rng: np.random.Generator, t: float | None = None):
    """A head pose: random (closed loop) or, given time ``t``, a smooth look-around (a headset's motion)."""
    from gen_server import cameras
    from gen_server.protocol import Pose

    if t is None:
        eye = rng.uniform([-1.5, 1.4, -0.5], [1.5, 1.8, 2.0])
        target = eye + np.array([rng.uniform(-1, 1), rng.uniform(-0.3, 0.3), -1.0])
    else:
        eye = np.array([0.5 * math.sin(0.3 * t), 1.6, 0.5])
        target = eye + np.array([math.sin(0.8 * t), 0.2 * math.sin(0.5 * t), -1.0])
    head_m = cameras.look_at(eye, target)
    left, right = cameras.eye_poses(head_m, 0.064)
    return Pose.from_matrix(head_m), (Pose.from_matrix(left), Pose.from_matrix(right))


# Consecutive stretches of the server's pose-in -> frame-out, from the frame's own timings.
SERVER_SEGMENTS = {
    "wait": ("pose_received_ns", "render_start_ns"),     # pose queued behind other work
    "render": ("render_start_ns", "render_end_ns"),      # generator call (launches; may not sync)
    "handoff": ("render_end_ns", "encode_start_ns"),
    "encode": ("encode_start_ns", "encode_end_ns"),      # includes waiting for the GPU to finish
    "send": ("encode_end_ns", "send_ns"),
}


def _record(frame, sent_ns: int, acc: dict) -> None:
    t = frame.timings
    acc["latencies"].append((t["received_ns"] + t["decode_ns"] - sent_ns) / 1e6)
    acc["server_ms"].append((t["send_ns"] - t["pose_received_ns"]) / 1e6)
    for name, (a, b) in SERVER_SEGMENTS.items():  # where the server's time goes, frame by frame
        acc.setdefault(name, []).append((t[b] - t[a]) / 1e6)
    acc["transport_ms"].append((t["received_ns"] - t["send_ns"]) / 1e6)  # one host: one monotonic clock
    acc["decode_ms"].append(t["decode_ns"] / 1e6)
    acc["nbytes"].append(t.get("payload_bytes", 0))
    acc["frames"] += 1


def _client_loop(client, seconds: float, rng: np.random.Generator, out: dict, min_frames: int = 0,
                 pose_hz: float = 0.0) -> None:
    """Closed loop (``pose_hz`` 0): pose, wait for its decoded frame, repeat. Open loop: a pose every
    1/pose_hz s as a headset sends them; each newly decoded frame is timed against its pose's send."""
    acc = {k: [] for k in ("latencies", "server_ms", "transport_ms", "decode_ms", "nbytes")}
    acc.update(frames=0, timeouts=0)
    decoded_before = client.stats["frames_decoded"]
    start = time.monotonic()
    end = start + seconds
    sent: dict[int, int] = {}
    last_seq = 0
    while time.monotonic() < end or acc["frames"] < min_frames:
        if time.monotonic() > end + 60:
            break
        if pose_hz <= 0:
            head, eyes = _head_pose(rng)
            sent_ns = time.monotonic_ns()
            seq = client.send_pose(head, eyes)
            frame = client.wait_frame(pose_seq=seq, timeout=5.0)
            if frame is None or frame.pose_seq != seq:
                acc["timeouts"] += 1
                continue
            _record(frame, sent_ns, acc)
            continue
        tick = time.monotonic()
        head, eyes = _head_pose(rng, tick - start)
        sent[client.send_pose(head, eyes)] = time.monotonic_ns()
        frame = client.latest_frame()
        if frame is not None and frame.seq != last_seq and frame.pose_seq in sent:
            last_seq = frame.seq
            _record(frame, sent[frame.pose_seq], acc)
        for old in [s for s in sent if s < (frame.pose_seq if frame else 0)]:
            del sent[old]
        time.sleep(max(0.0, 1.0 / pose_hz - (time.monotonic() - tick)))
    # Open loop samples the newest frame once per pose (for latency); frames/s counts every frame the
    # client decoded and published, including any that two published between one pose and the next.
    acc["decoded"] = client.stats["frames_decoded"] - decoded_before
    acc["elapsed"] = time.monotonic() - start
    out.update(acc)


class UndecodedClient:
    """A client that validates frames (header, payload sizes) but decodes no images: with it the host's
    cores stay with the server, which is how the server's own pose-in -> frame-out is measured (a
    headset PC decodes its frames on its own CPU). Offers what :func:`_client_loop` uses of a
    :class:`xr_client.stream_client.StreamClient`."""

    def __init__(self, address: str, hello):
        import zmq

        from gen_server import protocol as P

        self._P = P
        ctx = zmq.Context.instance()
        self._sock = ctx.socket(zmq.DEALER)  # used by the IO thread only
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(address)
        # Outgoing messages reach the IO thread through an inproc pipe it polls with the socket, so it
        # sleeps in poll instead of napping and re-checking a queue (four such loops cost the server,
        # on the same host, measurable jitter).
        pipe = f"inproc://undecoded-{id(self)}"
        self._pipe_rx, self._pipe_tx = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        self._pipe_rx.bind(pipe)
        self._pipe_tx.connect(pipe)
        self._seq = itertools.count(1)
        self._cv = threading.Condition()
        self._latest = None
        self._welcome = threading.Event()
        self.stats = {"frames_decoded": 0}
        self._thread = threading.Thread(target=self._io_loop, daemon=True)
        self._thread.start()
        self._pipe_tx.send_multipart(P.encode(hello))

    def wait_connected(self, timeout: float) -> bool:
        return self._welcome.wait(timeout)

    def send_pose(self, head, eyes) -> int:
        """Called from one client thread only (a PAIR socket is not shared between threads)."""
        seq = next(self._seq)
        self._pipe_tx.send_multipart(self._P.encode(self._P.PoseUpdate(seq=seq, head=head, eyes=tuple(eyes))))
        return seq

    def _io_loop(self) -> None:
        from types import SimpleNamespace

        import zmq

        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._pipe_rx, zmq.POLLIN)
        while True:
            events = dict(poller.poll(1000))
            if events.get(self._pipe_rx):
                parts = self._pipe_rx.recv_multipart()
                if parts == [b"stop"]:
                    return
                self._sock.send_multipart(parts)
            if not events.get(self._sock):
                continue
            parts = self._sock.recv_multipart()
            received = time.monotonic_ns()
            msg = self._P.decode(parts)  # header and payload sizes validated; images left encoded
            if isinstance(msg, self._P.Welcome):
                self._welcome.set()
            elif isinstance(msg, self._P.Frame):
                timings = dict(msg.timings, received_ns=received, decode_ns=0,
                               payload_bytes=sum(map(len, (*msg.color, *msg.depth))))
                with self._cv:
                    self._latest = SimpleNamespace(seq=msg.seq, pose_seq=msg.pose_seq, timings=timings)
                    self.stats["frames_decoded"] += 1
                    self._cv.notify_all()

    def latest_frame(self):
        return self._latest

    def wait_frame(self, pose_seq: int, timeout: float):
        with self._cv:
            self._cv.wait_for(lambda: self._latest is not None and self._latest.pose_seq >= pose_seq, timeout)
            return self._latest

    def close(self) -> None:
        self._pipe_tx.send_multipart(self._P.encode(self._P.Bye()))
        self._pipe_tx.send_multipart([b"stop"])  # the IO thread forwards the bye, then returns
        self._thread.join(timeout=5)
        for sock in (self._sock, self._pipe_rx, self._pipe_tx):
            sock.close()


def run(world_dir_or_none, device: str, width: int, height: int, clients: int, seconds: float,
        static_points: int | None = None, fps: float = 1000.0, color_codec: str = "jpeg",
        noise_colors: bool = False, pose_hz: float = 0.0, threads: int | None = None, decode: bool = True,
        gpu_jpeg: str = "auto") -> dict:
    """Serve in a subprocess, run ``clients`` clients for ``seconds``; returns the numbers. ``decode``
    False: :class:`UndecodedClient` instead of the real client (the server's numbers without the
    benchmark's own JPEG decoding competing for this host's cores)."""
    from gen_server.cameras import Fov
    from xr_client.stream_client import StreamClient, StreamConfig

    static_points = static_points or (2_000_000 if str(device).startswith("cuda") else 300_000)
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_serve, args=(world_dir_or_none, device, static_points, fps, color_codec, noise_colors,
                                            threads, ready, stop, gpu_jpeg), daemon=True)
    proc.start()
    try:
        address, info = ready.get(timeout=300)
        fov = Fov.symmetric(math.radians(100), width / height)
        config = StreamConfig(eye_width=width, eye_height=height, fovs=(fov, fov), timeout_s=30.0,
                              color_codecs=(color_codec, "jpeg"))
        if decode:
            streams = [StreamClient(address, config).start() for _ in range(clients)]
        else:
            from gen_server import protocol as P

            hello = P.Hello(eye_width=width, eye_height=height, fovs=(fov, fov), ipd=0.064, display_refresh_hz=90.0,
                            color_codecs=(color_codec,), depth_codecs=P.DEPTH_CODECS, client_name="undecoded")
            streams = [UndecodedClient(address, hello) for _ in range(clients)]
        for s in streams:
            if not s.wait_connected(60.0):
                raise RuntimeError(f"benchmark: no welcome from {address}")
        # Warm-up (the first renders allocate and tune kernels: ~1 s each on a CPU), then measure.
        warm = [dict() for _ in streams]
        _run_threads(streams, 1.0, warm, min_frames=5)
        results = [dict() for _ in streams]
        _run_threads(streams, seconds, results, pose_hz=pose_hz)
        for s in streams:
            s.close()
        stop.set()
        server_status = ready.get(timeout=60)
    finally:
        stop.set()
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    lat = np.concatenate([r["latencies"] for r in results]) if results else np.zeros(0)
    srv = np.concatenate([r["server_ms"] for r in results]) if results else np.zeros(0)
    transport = np.concatenate([r["transport_ms"] for r in results]) if results else np.zeros(0)
    decode_ms = np.concatenate([r["decode_ms"] for r in results]) if results else np.zeros(0)
    per_client_fps = [(r["frames"] if pose_hz <= 0 else r["decoded"]) / r["elapsed"] for r in results]

    def pct(a, q):
        return round(float(np.percentile(a, q)), 2) if len(a) else None

    return {
        "machine": describe(info), "device": device, "width": width, "height": height, "clients": clients,
        "seconds": seconds, "static_points": static_points if world_dir_or_none is None else None,
        "fps_per_client_min": round(min(per_client_fps), 2), "fps_total": round(sum(per_client_fps), 2),
        "latency_ms_p50": pct(lat, 50), "latency_ms_p99": pct(lat, 99),
        "server_pose_to_send_ms_p50": pct(srv, 50), "server_pose_to_send_ms_p99": pct(srv, 99),
        "timeouts": sum(r["timeouts"] for r in results),
        "send_to_received_ms_p50": pct(transport, 50), "client_decode_ms_p50": pct(decode_ms, 50),
        "color_codec": color_codec, "colors": "noise" if noise_colors else "smooth",
        "server_torch_threads": threads,
        "clients_decode": decode,
        "mode": f"open loop, poses at {pose_hz:g} Hz" if pose_hz > 0 else "closed loop",
        "frame_kib_mean": round(float(np.mean(np.concatenate([r["nbytes"] for r in results]))) / 1024, 1),
        "server_render_ms_p50": server_status.get("render_ms_p50"),
        "server_encode_ms_p50": server_status.get("encode_ms_p50"),
        "encoder": [k[len("encoded_"):] for k in server_status if k.startswith("encoded_")],
        "frames_dropped": server_status.get("frames_dropped", 0),
        "server_segments_ms_p50_p99": {
            name: [pct(v, 50), pct(v, 99)] for name in SERVER_SEGMENTS
            if len(v := np.concatenate([r.get(name, []) for r in results]))},
    }


def _run_threads(streams, seconds: float, outs: list[dict], min_frames: int = 0, pose_hz: float = 0.0) -> None:
    threads = [threading.Thread(target=_client_loop, args=(s, seconds, np.random.default_rng(i), o, min_frames, pose_hz))
               for i, (s, o) in enumerate(zip(streams, outs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="serve_bench", description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, help="world directory (default: a random room of points)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--static-points", type=int)
    p.add_argument("--color-codec", default="jpeg", choices=("jpeg", "h264"))
    p.add_argument("--noise-colors", action="store_true", help="random per-point colours (JPEG's worst case)")
    p.add_argument("--threads", type=int, help="torch CPU threads in the server process")
    p.add_argument("--no-decode", action="store_true",
                   help="clients validate frames but decode no images (the server's own numbers, its host's cores to itself)")
    p.add_argument("--gpu-jpeg", default="auto", choices=GPU_JPEG_ENCODERS,
                   help="CUDA colour encoder (CodecConfig.gpu_jpeg)")
    p.add_argument("--pose-hz", type=float, default=0.0,
                   help="open loop: send poses at this rate like a headset (default 0: closed loop)")
    args = p.parse_args(argv)
    for n in args.clients:
        r = run(args.world, args.device, args.width, args.height, n, args.seconds, args.static_points,
                color_codec=args.color_codec, noise_colors=args.noise_colors, pose_hz=args.pose_hz,
                threads=args.threads, decode=not args.no_decode, gpu_jpeg=args.gpu_jpeg)
        print(json.dumps(r))
        print("serve: server segments p50/p99 ms:", " ".join(f"{k} {a}/{b}" for k, (a, b) in r["server_segments_ms_p50_p99"].items()))
        print(f"serve: {n} client(s) at 2x{args.width}x{args.height} {r['color_codec']} {r['frame_kib_mean']} KiB/frame "
              f"({r['colors']} colours, {r['mode']}{'' if r['clients_decode'] else ', images not decoded'}): {r['fps_per_client_min']:.1f} fps/client "
              f"(total {r['fps_total']:.1f}), pose->decoded p50 {r['latency_ms_p50']} / p99 {r['latency_ms_p99']} ms, "
              f"server pose->send p50 {r['server_pose_to_send_ms_p50']} / p99 {r['server_pose_to_send_ms_p99']} ms (render {r['server_render_ms_p50']} + "
              f"encode {r['server_encode_ms_p50']} ms, {'/'.join(r['encoder'])}; transport {r['send_to_received_ms_p50']} + "
              f"client decode {r['client_decode_ms_p50']} ms) — {r['machine']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
