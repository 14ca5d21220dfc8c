"""A contact sheet: evenly spaced stills from a walkthrough video, each labelled with its world time
and head pose (from the headless viewer's stats), as one PNG.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from gen_server.atomic_write import atomic_path


def _frame_label(index: int, seconds: float, record: dict | None, label: str | None) -> str:
    parts = [f"#{index}", f"t={seconds:.1f}s"]
    record = record or {}
    if record.get("tau") is not None:
        parts.append(f"tau={record['tau']:.2f}s")
    if record.get("pose_yaw") is not None:
        parts.append(f"yaw={record['pose_yaw']:+.0f}deg")
    if label:
        parts.append(label)
    return "  ".join(parts)


def pick_indices(count: int, stills: int) -> list[int]:
    """``stills`` frame indices spread evenly over ``count`` frames, first and last included."""
    if count <= 0:
        return []
    stills = min(stills, count)
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, stills)})


def write_contact_sheet(video: Path, records: list[dict], out: Path, label: Callable[[float], str] | None = None,
                        stills: int = 8, columns: int = 2, thumb_width: int = 640) -> Path:
    """Write ``out`` (PNG, atomically) from ``video``.

    ``records[i]`` describes video frame i (the headless viewer keeps one per tick: ``tau`` world time,
    ``pose_yaw`` head yaw in degrees); ``label(seconds)`` names what the walkthrough was doing then.
    """
    import av
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 24)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError(f"{video}: no frames to put on a contact sheet")
    # Stills come from frames that show the world (a record with a tau), timed by the records' wall clock:
    # the video's nominal rate is not the tick rate a loaded machine achieved.
    shown = [i for i in range(len(frames)) if i < len(records) and records[i].get("tau") is not None]
    candidates = shown or list(range(len(frames)))
    picks = [candidates[i] for i in pick_indices(len(candidates), stills)]
    t0 = records[0].get("t") if records else None
    h, w = frames[0].shape[:2]
    th = int(round(h * thumb_width / w))
    label_h = 22
    rows = (len(picks) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * thumb_width, rows * (th + label_h)), (16, 16, 16))
    draw = ImageDraw.Draw(sheet)
    for n, idx in enumerate(picks):
        r, c = divmod(n, columns)
        x0, y0 = c * thumb_width, r * (th + label_h)
        sheet.paste(Image.fromarray(frames[idx]).resize((thumb_width, th), Image.BILINEAR), (x0, y0 + label_h))
        record = records[idx] if idx < len(records) else None
        seconds = record["t"] - t0 if record and t0 is not None and "t" in record else idx / fps
        text = _frame_label(idx, seconds, record, label(seconds) if label else None)
        draw.text((x0 + 6, y0 + 5), text, fill=(235, 235, 235))
    with atomic_path(out, suffix=".png") as tmp:
        sheet.save(tmp)
    return out
