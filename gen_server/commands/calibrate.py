"""``timewalk calibrate WORLD``: align a world to the floor, scale and origin; edit, undo, print.

Actions (at most one): ``--auto [--camera-height M | --distance X1 Y1 Z1 X2 Y2 Z2 METRES]`` recomputes the
automatic alignment; ``--scale S`` (world units per real metre: 1 = true size for a metric world, 2 = the
world looks half size), ``--floor-offset M`` (raise the world's floor M metres above the real floor),
``--yaw DEG`` (turn relative to the source camera's heading, counter-clockwise seen from above) edit the
current one; ``--undo`` goes back one step; ``--reset`` returns to the automatic alignment. Every change
is kept in ``WORLD_DIR/calibration.json``'s history. With no action it prints the current calibration.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="timewalk calibrate", description="Align a world to the user's floor, scale and origin.")
    p.add_argument("world", type=Path, help="world directory (from `timewalk build`)")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--auto", action="store_true", help="recompute the automatic alignment (floor, origin, yaw, scale)")
    act.add_argument("--scale", type=float, metavar="S", help="world units per real metre (1 = true size)")
    act.add_argument("--floor-offset", type=float, metavar="M", help="raise the world's floor M metres")
    act.add_argument("--yaw", type=float, metavar="DEG", help="turn relative to the source camera's heading")
    act.add_argument("--undo", action="store_true", help="go back to the previous calibration")
    act.add_argument("--reset", action="store_true", help="back to the automatic alignment (kept in history)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--camera-height", type=float, metavar="M", help="with --auto: the source camera's true height (m)")
    how.add_argument("--distance", type=float, nargs=7, metavar=("X1", "Y1", "Z1", "X2", "Y2", "Z2", "METRES"),
                     help="with --auto: two world points and their true distance (m)")
    p.add_argument("--json", action="store_true", help="print the calibration as JSON")
    return p


def _print(calibration, json_out: bool, history_len: int, where: str) -> None:
    d = calibration.to_dict()
    if json_out:
        print(json.dumps({**d, "history_length": history_len, "stored": where}, indent=2))
        return
    t = calibration.transform
    print(f"calibration: {where}")
    print(f"scale: {t.scale:.6g} world units per metre ({d['sources'].get('scale', '?')})")
    print(f"floor: up {[round(v, 4) + 0.0 for v in t.up]}, floor offset {t.floor_offset:g} m ({d['sources'].get('floor', '?')})")
    print(f"origin: {[round(v, 4) + 0.0 for v in t.origin]} ({d['sources'].get('origin', '?')})")
    print(f"yaw: heading {math.degrees(t.heading):.2f} deg + user {math.degrees(t.yaw_offset):.2f} deg")
    print(f"history: {history_len} earlier version(s); last change: {calibration.note or '-'}")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from calibration import adjust
    from calibration.auto_align import AutoAlignConfig, auto_calibration
    from calibration.store import CalibrationFileError, calibration_path, load_calibration, save_calibration
    from gen_server.errors import InputError
    from gen_server.world.store import load_world

    if (args.camera_height is not None or args.distance is not None) and not (args.auto or args.reset):
        raise InputError("--camera-height / --distance go with --auto or --reset")
    if args.camera_height is not None and not args.camera_height > 0:
        raise InputError(f"--camera-height: must be > 0 metres, got {args.camera_height}")
    path = calibration_path(args.world)
    if not args.world.is_dir():
        raise InputError(f"{args.world}: not a world directory")
    try:
        stored = load_calibration(args.world)  # a damaged file -> one-line error naming it ...
    except CalibrationFileError as e:
        if not (args.auto or args.reset):
            raise InputError(f"{e}; `timewalk calibrate {args.world} --reset` replaces it") from None
        print(f"timewalk calibrate: warning: {e}; replacing it", file=sys.stderr)  # ... unless replacing it
        stored = None
    cfg = AutoAlignConfig(camera_height=args.camera_height,
                          known_distance=None if args.distance is None else
                          (tuple(args.distance[:3]), tuple(args.distance[3:6]), args.distance[6]))

    def auto():
        try:
            return auto_calibration(load_world(args.world), cfg)
        except ValueError as e:
            raise InputError(f"{args.world}: automatic alignment failed: {e}") from None

    current, history = (stored.current, list(stored.history)) if stored else (None, [])
    changed = True
    try:
        if args.auto or args.reset:
            new = auto()
            if args.reset:
                new = new.with_parts("reset")
        elif args.undo:
            if not history:
                raise InputError(f"{path}: nothing to undo")
            new, history, current = history[-1], history[:-1], None
        elif args.scale is not None:
            new = adjust.set_scale(current or auto(), args.scale)
        elif args.floor_offset is not None:
            new = adjust.set_floor_offset(current or auto(), args.floor_offset)
        elif args.yaw is not None:
            new = adjust.set_yaw(current or auto(), args.yaw)
        else:
            changed, new = False, current or auto()
    except ValueError as e:
        if isinstance(e, InputError):
            raise
        raise InputError(str(e)) from None

    if changed:
        if current is not None:
            history.append(current)
        save_calibration(args.world, new, history)
        stored = load_calibration(args.world)
        new, history = stored.current, stored.history
    where = str(path) if (changed or stored) else "automatic (not saved; run with --auto to store it)"
    _print(new, args.json, len(history), where)
    return 0
