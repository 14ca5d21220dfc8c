"""``WORLD_DIR/calibration.json``: the current calibration plus a history for undo.

Written to a temporary sibling and renamed, so a crash never leaves a half-written file. A damaged file
raises :class:`CalibrationFileError` naming it; :func:`load_or_auto` then falls back to the automatic
alignment and returns the error text as a warning.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np

from calibration.auto_align import AutoAlignConfig, auto_calibration
from calibration.record import Calibration
from gen_server.atomic_write import write_json_atomic
from gen_server.errors import InputError

FILE_NAME = "calibration.json"
FORMAT = "timewalk-calibration"
VERSION = 1
MAX_HISTORY = 100


class CalibrationFileError(InputError):
    """A calibration.json that cannot be used; the message names the file and the problem."""


class CalibrationFile(NamedTuple):
    current: Calibration
    history: list  # older Calibrations, oldest first


class LoadResult(NamedTuple):
    """``(calibration, warning)``; ``warning`` is None unless a damaged file was replaced by auto."""

    calibration: Calibration
    warning: str | None

    @property
    def world_from_stage(self) -> np.ndarray:
        return self.calibration.world_from_stage


def calibration_path(world_dir: str | os.PathLike) -> Path:
    return Path(world_dir) / FILE_NAME


def _stamp(c: Calibration) -> Calibration:
    if c.created:
        return c
    return Calibration(c.transform, c.sources, c.note, datetime.now(timezone.utc).isoformat(timespec="seconds"))


def save_calibration(world_dir: str | os.PathLike, current: Calibration, history: list | None = None) -> Path:
    """Write calibration.json atomically; keeps the newest MAX_HISTORY history entries."""
    path = calibration_path(world_dir)
    history = [_stamp(h) for h in (history or [])][-MAX_HISTORY:]
    doc = {"format": FORMAT, "version": VERSION, "current": _stamp(current).to_dict(),
           "history": [h.to_dict() for h in history]}
    return write_json_atomic(path, doc)


def load_calibration(world_dir: str | os.PathLike) -> CalibrationFile | None:
    """The stored calibration, or None when there is no file. Raises CalibrationFileError if damaged."""
    path = calibration_path(world_dir)
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CalibrationFileError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CalibrationFileError(f"{path}: not a timewalk calibration file (format != {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise CalibrationFileError(f"{path}: unsupported version {doc.get('version')!r} (this timewalk reads {VERSION})")
    history = doc.get("history", [])
    if not isinstance(history, list):
        raise CalibrationFileError(f"{path}: 'history' must be a list")
    try:
        current = Calibration.from_dict(doc.get("current"), "current")
        older = [Calibration.from_dict(h, f"history[{i}]") for i, h in enumerate(history)]
    except ValueError as e:
        raise CalibrationFileError(f"{path}: {e}") from None
    return CalibrationFile(current, older)


def _load_world(world_dir):
    from gen_server.world.store import load_world  # numpy + safetensors only

    return load_world(world_dir)


def load_or_auto(world_dir: str | os.PathLike, world=None, config: AutoAlignConfig | None = None) -> LoadResult:
    """The stored calibration, else the automatic one (not written). A damaged file gives the automatic
    one and a one-line warning naming the file. ``world`` (a WorldState) is loaded from ``world_dir``
    only when the automatic alignment is needed and none was given."""
    warning = None
    try:
        stored = load_calibration(world_dir)
        if stored is not None:
            return LoadResult(stored.current, None)
    except CalibrationFileError as e:
        warning = f"{e}; using the automatic alignment"
    if world is None:
        world = _load_world(world_dir)
    return LoadResult(auto_calibration(world, config), warning)
