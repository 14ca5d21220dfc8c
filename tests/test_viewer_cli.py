"""`timewalk xr` without a runtime: one clear line, exit 2 (no headset or runtime needed for this)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_xr_without_runtime_says_so_in_one_line(tmp_path):
    env = {**os.environ, "XR_RUNTIME_JSON": str(tmp_path / "no_such_runtime.json")}
    env.pop("XR_LOADER_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "gen_server.cli", "xr", "--server", "tcp://127.0.0.1:9"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no OpenXR runtime" in lines[0], proc.stderr


def test_xr_bad_eye_scale_is_input_error():
    proc = subprocess.run([sys.executable, "-m", "gen_server.cli", "xr", "--server", "tcp://127.0.0.1:9",
                           "--eye-scale", "7"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--eye-scale" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
