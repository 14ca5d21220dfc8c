"""A world's calibration: the world_from_stage parts plus how each part was determined."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from calibration.alignment import WorldFromStage


@dataclass(frozen=True)
class Calibration:
    """``transform``: the parts of world_from_stage; ``sources``: part name ("scale", "floor", "origin",
    "yaw", "floor_offset") -> how it was determined; ``note``: what made this version (for history)."""

    transform: WorldFromStage = field(default_factory=WorldFromStage)
    sources: dict = field(default_factory=dict)
    note: str = ""
    created: str = ""

    @property
    def world_from_stage(self) -> np.ndarray:
        return self.transform.matrix()

    @property
    def scale(self) -> float:
        return self.transform.scale

    def with_parts(self, note: str, source_updates: dict | None = None, **parts) -> "Calibration":
        """A new calibration with some transform parts replaced (pure)."""
        sources = dict(self.sources)
        sources.update(source_updates or {})
        return replace(self, transform=replace(self.transform, **parts), sources=sources, note=note, created="")

    def to_dict(self) -> dict:
        t = self.transform
        return {
            "world_from_stage": [float(v) for v in t.matrix().reshape(16)],
            "scale": t.scale,
            "up": list(t.up),
            "heading_deg": math.degrees(t.heading),
            "yaw_offset_deg": math.degrees(t.yaw_offset),
            "origin": list(t.origin),
            "floor_offset": t.floor_offset,
            "sources": dict(self.sources),
            "note": self.note,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "calibration") -> "Calibration":
        """Inverse of :meth:`to_dict`; raises ValueError (naming ``where``) for a missing or bad field or a
        stored matrix that disagrees with the parts."""
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected an object, got {type(d).__name__}")
        try:
            transform = WorldFromStage(
                scale=float(d["scale"]), heading=math.radians(float(d["heading_deg"])),
                yaw_offset=math.radians(float(d["yaw_offset_deg"])), origin=tuple(map(float, d["origin"])),
                up=tuple(map(float, d["up"])), floor_offset=float(d["floor_offset"]))
            stored = np.asarray(d["world_from_stage"], np.float64).reshape(4, 4)
        except KeyError as e:
            raise ValueError(f"{where}: missing field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None
        if not np.allclose(stored, transform.matrix(), rtol=1e-6, atol=1e-6 * max(1.0, transform.scale)):
            raise ValueError(f"{where}: world_from_stage does not match its parts (edited by hand?)")
        sources = d.get("sources", {})
        if not isinstance(sources, dict):
            raise ValueError(f"{where}: 'sources' must be an object")
        return cls(transform, {str(k): str(v) for k, v in sources.items()}, str(d.get("note", "")),
                   str(d.get("created", "")))
