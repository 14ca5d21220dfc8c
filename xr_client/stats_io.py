"""Writing a front-end's statistics: JSON, atomically (temp file + rename), so no half-written stats."""

from __future__ import annotations

from pathlib import Path

from gen_server.atomic_write import write_json_atomic as _write


def write_json_atomic(path: str | Path, data: dict) -> None:
    _write(path, data, indent=1)
