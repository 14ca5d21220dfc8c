"""The trixie root (scripts/xr_root.sh) and processes inside it: Xvfb, monado-service, the client.

Processes are started from the host with ``chroot ROOT env -i ...`` (chroot and env exec, so the Popen
pid is the program's own pid) and stopped by that pid only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "xr_root.sh"
RUN = "/run/twxr"                 # inside the root
XDG = f"{RUN}/xdg"
BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}


def can_build() -> str | None:
    """None when the root can be built/used here, else the reason to skip."""
    if os.geteuid() != 0:
        return "needs root (chroot, mount) for the Monado trixie root"
    if shutil.which("debootstrap") is None and not (Path(root_path()) / ".timewalk-stamp").exists():
        return "needs debootstrap (apt-get install debootstrap) to build the Monado trixie root"
    return None


def root_path() -> str:
    return subprocess.run(["bash", str(SCRIPT), "path"], capture_output=True, text=True, check=True).stdout.strip()


class XrRoot:
    def __init__(self, log_dir: Path):
        self.path = Path(root_path())
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.display = ""

    def build(self) -> None:
        subprocess.run(["bash", str(SCRIPT), "build"], check=True)

    def mount(self) -> None:
        subprocess.run(["bash", str(SCRIPT), "mount", str(REPO)], check=True)
        run_dir = self.path / RUN.lstrip("/")
        shutil.rmtree(run_dir, ignore_errors=True)
        (run_dir / "xdg").mkdir(parents=True)
        os.chmod(run_dir / "xdg", 0o700)

    def umount(self) -> None:
        subprocess.run(["bash", str(SCRIPT), "umount"], check=False)

    def host_path(self, inside: str) -> Path:
        return self.path / inside.lstrip("/")

    def _argv(self, argv: list[str], env: dict[str, str]) -> list[str]:
        merged = {**BASE_ENV, **env}
        return ["chroot", str(self.path), "env", "-i", *[f"{k}={v}" for k, v in merged.items()], *argv]

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")
        proc = subprocess.Popen(self._argv(argv, env or {}), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=pass_fds)
        log.close()
        self.procs[name] = proc
        return proc

    def run(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(self._argv(argv, env or {}), capture_output=True, timeout=timeout)

    def log(self, name: str) -> str:
        p = self.log_dir / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self, name: str, timeout: float = 5.0) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)

    # -- the services ---------------------------------------------------------------------------------
    def start_xvfb(self) -> str:
        """Start Xvfb on a free display (X's abstract sockets are shared with the host, so no fixed
        number); returns and remembers the DISPLAY value."""
        read_fd, write_fd = os.pipe()
        try:
            self.start("xvfb", ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1280x1024x24",
                                "-nolisten", "tcp", "-noreset"], pass_fds=(write_fd,))
            os.close(write_fd)
            write_fd = -1
            number = b""
            deadline = time.monotonic() + 15
            while not number.endswith(b"\n") and time.monotonic() < deadline:
                chunk = os.read(read_fd, 16)
                if not chunk:
                    break
                number += chunk
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
        if not number.strip().isdigit():
            raise RuntimeError(f"Xvfb did not come up:\n{self.log('xvfb')}")
        self.display = f":{number.strip().decode()}"
        if self.run(["xdpyinfo"], {"DISPLAY": self.display}, timeout=10).returncode != 0:
            raise RuntimeError(f"Xvfb on {self.display} does not answer:\n{self.log('xvfb')}")
        return self.display

    def start_monado(self, compositor: str, display: str | None = None, framerate: int | None = None) -> None:
        env = {"XDG_RUNTIME_DIR": XDG, "XRT_NO_STDIN": "1", "XRT_LOG": "info", "P_OVERRIDE_ACTIVE_CONFIG": "remote"}
        if compositor == "null":
            env["XRT_COMPOSITOR_NULL"] = "1"
        else:
            # Half-size eyes: llvmpipe on a 2-core CI machine, not a headset.
            env.update(XRT_COMPOSITOR_FORCE_XCB="1", DISPLAY=display or self.display,
                       XRT_COMPOSITOR_SCALE_PERCENTAGE="50")
        if framerate:
            env["XRT_COMPOSITOR_DEFAULT_FRAMERATE"] = str(framerate)
        sock = self.host_path(XDG) / "monado_comp_ipc"
        if sock.exists():
            sock.unlink()
        self.start("monado", ["monado-service"], env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if sock.exists():
                return
            if self.procs["monado"].poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"monado-service did not come up:\n{self.log('monado')[-3000:]}")

    def screenshot(self, inside_path: str) -> Path:
        out = self.run(["xwd", "-root", "-silent", "-out", inside_path], {"DISPLAY": self.display}, timeout=20)
        if out.returncode != 0:
            raise RuntimeError(f"xwd failed: {out.stderr.decode(errors='replace')}")
        return self.host_path(inside_path)


def read_xwd(path: Path):
    """An X window dump (32 bpp TrueColor, as Xvfb writes) -> (H, W, 3) uint8 RGB."""
    import numpy as np

    data = path.read_bytes()
    h = np.frombuffer(data[:100], ">u4")
    header_size, width, height, byte_order, bpp, bpl, ncolors = (int(h[i]) for i in (0, 4, 5, 7, 11, 12, 19))
    if bpp != 32:
        raise ValueError(f"{path}: {bpp} bits per pixel, expected 32")
    off = header_size + ncolors * 12
    px = np.frombuffer(data[off:off + bpl * height], np.uint8).reshape(height, bpl)[:, :width * 4]
    px = px.reshape(height, width, 4)
    return px[..., [2, 1, 0]].copy() if byte_order == 0 else px[..., [1, 2, 3]].copy()
