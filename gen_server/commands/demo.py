"""`timewalk demo`: the one-command main job.

Builds the embedded synthetic world (cached), starts `timewalk serve` on loopback, and opens the best
front-end available: the headset when an OpenXR runtime is active, the desktop window when there is a
display, otherwise a headless scripted walkthrough written to ``demo_out/`` (mp4, contact sheet, stats).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gen_server.errors import InputError

DEMO_WORLD_VERSION = 1  # bump when the synthetic scene or the builder changes what the cache holds


@dataclass(frozen=True)
class DemoConfig:
    width: int = 640
    height: int = 360
    seconds: float = 4.0
    fps: int = 24
    eye_width: int = 512
    eye_height: int = 512
    walk_seconds: float = 12.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="timewalk demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="where the walkthrough goes (default demo_out/)")
    p.add_argument("--frontend", choices=["auto", "xr", "window", "headless"], default="auto")
    p.add_argument("--seconds", type=float, default=DemoConfig.walk_seconds, help="length of the headless walkthrough")
    p.add_argument("--eye-size", type=int, nargs=2, default=(DemoConfig.eye_width, DemoConfig.eye_height),
                   metavar=("W", "H"), help="per-eye resolution streamed by the server")
    p.add_argument("--scene-size", type=int, nargs=2, default=(DemoConfig.width, DemoConfig.height),
                   metavar=("W", "H"), help="resolution of the synthetic source clip")
    p.add_argument("--scene-seconds", type=float, default=DemoConfig.seconds)
    p.add_argument("--cache", type=Path, default=None, help="cache folder (default ~/.cache/timewalk)")
    p.add_argument("--device", default=None, help="server torch device (default: cuda if available)")
    p.add_argument("--port", type=int, default=0, help="loopback port for the server (default: a free one)")
    return p


def _cache_root(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "timewalk"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openxr_runtime_active() -> bool:
    """True when an OpenXR runtime manifest is selected (XR_RUNTIME_JSON or an active_runtime.json)."""
    if os.environ.get("XR_RUNTIME_JSON"):
        return Path(os.environ["XR_RUNTIME_JSON"]).is_file()
    dirs = [os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")]
    dirs += (os.environ.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":")
    return any(Path(d, "openxr", "1", "active_runtime.json").is_file() for d in dirs)


def choose_frontend(requested: str) -> str:
    if requested != "auto":
        return requested
    if openxr_runtime_active():
        return "xr"
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return "window"
    return "headless"


def ensure_world(cache: Path, width: int, height: int, seconds: float, fps: int) -> Path:
    """Synthetic clip -> world, both cached by their parameters. Returns the world directory."""
    from gen_server.world.build import build_world
    from gen_server.world.store import WorldFormatError, read_manifest
    from gen_server.world.synth import write_synthetic_dataset

    key = f"v{DEMO_WORLD_VERSION}-{width}x{height}-{seconds:g}s-{fps}fps"
    scene_dir, world_dir = cache / f"synth-{key}", cache / f"world-{key}"
    try:
        read_manifest(world_dir)
        print(f"demo: using cached world {world_dir}")
        return world_dir
    except WorldFormatError:
        pass
    if not (scene_dir / "transforms.json").is_file():
        print(f"demo: rendering the synthetic scene ({width}x{height}, {seconds:g} s at {fps} fps) -> {scene_dir}")
        write_synthetic_dataset(scene_dir, width=width, height=height, seconds=seconds, fps=fps)
    print(f"demo: building the world -> {world_dir}")
    summary = build_world(scene_dir / "transforms.json", world_dir)
    print(f"demo: {summary}")
    return world_dir


class ServerProcess:
    """`timewalk serve` as a child process on loopback; stopped with SIGTERM (clean shutdown)."""

    def __init__(self, world_dir: Path, port: int, eye_size: tuple[int, int], device: str | None, stats: Path):
        self.address = f"tcp://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "gen_server.cli", "serve", str(world_dir), "--bind", self.address,
               "--width", str(eye_size[0]), "--height", str(eye_size[1]), "--stats", str(stats)]
        if device:
            cmd += ["--device", device]
        self.proc = subprocess.Popen(cmd)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise InputError(f"timewalk serve exited with code {self.proc.returncode} (see its output above)")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# The headless tour, as fractions of its length: (start, label, right trigger, left trigger).
# Trigger values follow the client's mapping (rate = 4 * s^2, s = pull past the 0.08 dead zone):
# 0.54 -> 1x, 0.31 -> 0.25x. A/X presses (pause toggles) happen at the start of the pause and reverse phases.
TOUR_PHASES = (
    (0.00, "roam, play 1x", 0.0, 0.0),
    (0.30, "pause: frozen time, moving head", 0.0, 0.0),
    (0.50, "reverse 1x", 0.0, 0.54),
    (0.75, "slow motion 0.25x", 0.31, 0.0),
)
TOUR_PRESS_AT = (0.30, 0.50)  # A/X toggles pause here (pause, then resume for the reverse)


class WalkthroughScript:
    """Headless script for the demo: (t, total) -> xr_client.viewer.ScriptStep.

    The head roams around the stage origin (where the source camera stood at tau = 0, facing the scene),
    and the controllers drive time exactly as a user's would: play, pause, reverse, slow motion.
    """

    press_seconds = 0.2

    def phase(self, t: float, total: float) -> tuple[str, float, float]:
        label, right, left = TOUR_PHASES[0][1:]
        for start, *rest in TOUR_PHASES:
            if t >= start * total:
                label, right, left = rest
        return label, right, left

    def __call__(self, t: float, total: float):
        from xr_client.timeline_controls import HandState
        from xr_client.viewer import ScriptStep, head_pose

        u = t / total
        position = [0.45 * math.sin(2 * math.pi * u), 1.6 + 0.05 * math.sin(6 * math.pi * u),
                     -0.35 * math.sin(math.pi * u)]
        yaw = math.radians(22) * math.sin(2 * math.pi * 1.5 * u)
        _, right, left = self.phase(t, total)
        press = any(0 <= t - at * total < self.press_seconds for at in TOUR_PRESS_AT)
        return ScriptStep(head_pose(position, yaw, math.radians(-4)),
                          left=HandState(trigger=left), right=HandState(trigger=right, primary=press))


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    cfg = DemoConfig(width=args.scene_size[0], height=args.scene_size[1], seconds=args.scene_seconds)
    frontend = choose_frontend(args.frontend)
    t_start = time.perf_counter()
    world_dir = ensure_world(_cache_root(args.cache), cfg.width, cfg.height, cfg.seconds, cfg.fps)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    port = args.port or _free_port()
    server = ServerProcess(world_dir, port, tuple(args.eye_size), args.device, out / "server_stats.jsonl")
    try:
        time.sleep(0.5)
        server.check_alive()
        print(f"demo: server on {server.address}; front-end: {frontend}")
        if frontend == "xr":
            from xr_client.commands.xr import main as xr_main

            return xr_main(["--server", server.address])
        if frontend == "window":
            from xr_client.commands.view import main as view_main

            return view_main(["--server", server.address])
        return _headless(server, out, args.seconds, tuple(args.eye_size), t_start)
    finally:
        server.stop()


def _headless(server: ServerProcess, out: Path, seconds: float, eye_size: tuple[int, int], t_start: float) -> int:
    from gen_server.contact_sheet import write_contact_sheet
    from xr_client.viewer import run_headless

    walk, stats_path, sheet = out / "walkthrough.mp4", out / "stats.json", out / "contact_sheet.png"
    stats = run_headless(server=server.address, seconds=seconds, out=walk, stats=stats_path,
                         width=eye_size[0], height=eye_size[1], script=WalkthroughScript())
    server.check_alive()
    script = WalkthroughScript()
    write_contact_sheet(walk, stats.get("records", []), sheet, label=lambda t: script.phase(t, seconds)[0])
    summary = {k: stats[k] for k in ("ticks", "fps", "frames_shown", "latency_ms") if k in stats}
    print("demo: done in {:.1f} s".format(time.perf_counter() - t_start))
    print(f"  walkthrough  {walk}")
    print(f"  contact sheet {sheet}")
    print(f"  stats        {stats_path}")
    print("  " + json.dumps(summary))
    return 0
