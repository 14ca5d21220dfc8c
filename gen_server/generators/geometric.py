"""The geometric generator: the world state's points splatted by :class:`gen_server.render.renderer.Renderer`."""

from __future__ import annotations

import numpy as np

from gen_server.cameras import Fov
from gen_server.world.state import WorldState


class GeometricGenerator:
    """Renders both eyes in one batch; the world's tensors stay on ``device`` between frames."""

    def __init__(self, world: WorldState, device: str | None = None, **_options):
        from gen_server.render.renderer import Renderer  # noqa: PLC0415 - torch only when serving

        self.world = world
        self.renderer = Renderer(world, device=device)

    def use_cuda_graphs(self, enabled: bool) -> None:
        """Graph capture is only safe while no other thread of the process uses the GPU: the server turns
        it off when it encodes on a thread of its own."""
        from dataclasses import replace  # noqa: PLC0415

        self.renderer.config = replace(self.renderer.config, cuda_graphs=enabled)

    def render_views(self, world_from_eye: np.ndarray, fovs: list[Fov], width: int, height: int, tau: float):
        """Convention: ``world_from_eye`` (B, 4, 4) OpenXR poses in the world frame; returns RenderOutput
        (torch, on the renderer's device) with depth in world metres."""
        world_from_eye = np.asarray(world_from_eye, np.float64)
        if world_from_eye.ndim != 3 or world_from_eye.shape[1:] != (4, 4) or len(fovs) != len(world_from_eye):
            raise ValueError(f"render_views: world_from_eye (B, 4, 4) with B fovs expected, got {world_from_eye.shape}, {len(fovs)} fovs")
        return self.renderer.render_fov(world_from_eye, list(fovs), width, height, tau)
