"""`timewalk serve` as a real subprocess on a loopback port, for client tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, world: Path, log_dir: Path, fps: float = 12.0, extra: list[str] | None = None):
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.stats_path = Path(log_dir) / "server_stats.jsonl"
        self.log_path = Path(log_dir) / "server.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gen_server.cli", "serve", str(world), "--bind", self.address, "--fps", str(fps),
                 "--device", "cpu", "--stats", str(self.stats_path), *(extra or [])],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        """Abrupt death (what a crashed or unplugged server looks like to the client)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
