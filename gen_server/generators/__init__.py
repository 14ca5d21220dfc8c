"""Generator registry: name -> "module:Class" built as ``Class(world, device=..., **options)``.

Imported lazily (``make_generator``) so listing names never imports torch.
"""

from __future__ import annotations

import importlib

from gen_server.generators.base import Generator, Views, check_views

GENERATORS: dict[str, str] = {
    "geometric": "gen_server.generators.geometric:GeometricGenerator",
    "inspatio": "gen_server.generators.inspatio.generator:InSpatioGenerator",
}


def make_generator(name: str, world, device: str | None = None, **options) -> Generator:
    """Build the generator registered as ``name``; ValueError naming the choices if unknown."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r} (choices: {', '.join(sorted(GENERATORS))})")
    module_name, _, class_name = GENERATORS[name].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(world, device=device, **options)


__all__ = ["GENERATORS", "Generator", "Views", "check_views", "make_generator"]
