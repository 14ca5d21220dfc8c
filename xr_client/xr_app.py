"""The headset front-end: glues the OpenXR session's frame loop to the shared view pipeline.

Each runtime frame: read controllers (when FOCUSED) -> timeline controls + haptic ticks; send the head
and eye poses predicted at display time + latency; take the newest decoded frame; reproject it to each
eye's pose at display time; HUD. The stream client is created on the first frame, when the swapchain
size and the eyes' FOVs are known (they go to the server in ``hello``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from xr_client.openxr_session import EyeView, FrameInfo, XrSession
from xr_client.pipeline import PipelineConfig, ViewPipeline

log = logging.getLogger(__name__)

DEFAULT_LATENCY_S = 0.05
MAX_PREDICTION_S = 0.25  # extrapolating a head further ahead than this does more harm than good


def latency_estimate_s() -> float:
    """Pose-to-display latency used for prediction: calibration's measured horizon (the pipeline feeds
    calibration.latency's shared tracker every frame) once it has one, else 50 ms; at most 250 ms."""
    try:
        from calibration import latency

        value = float(latency.estimated_latency_s())
        if value >= 0.0:
            return min(value, MAX_PREDICTION_S)
    except (ImportError, AttributeError, ValueError, TypeError):
        pass
    return DEFAULT_LATENCY_S


@dataclass(frozen=True)
class XrAppConfig:
    server: str
    eye_scale: float = 0.5           # server-rendered eye size relative to the swapchain
    server_public_key: str | None = None
    client_keys: str | None = None
    pipeline: PipelineConfig = PipelineConfig()
    hud_visible: bool = True


class XrApp:
    """A :class:`xr_client.openxr_session.FrameRenderer`."""

    def __init__(self, config: XrAppConfig):
        self.config = config
        self.stream = None
        self.pipeline: ViewPipeline | None = None
        self.near = config.pipeline.reprojection.near
        self.far = config.pipeline.reprojection.far

    def _start(self, frame: FrameInfo, session: XrSession) -> None:
        from xr_client.stream_client import StreamClient, StreamConfig

        w, h = frame.views[0].width, frame.views[0].height
        s = self.config.eye_scale
        refresh = 1e9 / frame.period_ns if frame.period_ns > 0 else 90.0
        ipd = float(abs(frame.views[1].world_from_eye[0, 3] - frame.views[0].world_from_eye[0, 3])) or 0.063
        cfg = StreamConfig(eye_width=max(16, int(w * s)), eye_height=max(16, int(h * s)),
                           fovs=(frame.views[0].fov, frame.views[1].fov), ipd=min(max(ipd, 0.04), 0.08),
                           display_refresh_hz=refresh, client_name="timewalk-xr")
        self.stream = StreamClient(self.config.server, cfg, server_public_key=self.config.server_public_key,
                                   client_keys=self.config.client_keys).start()
        self.pipeline = ViewPipeline(self.stream, dataclasses.replace(self.config.pipeline, ipd=cfg.ipd))
        self.pipeline.hud_state.visible = self.config.hud_visible
        log.info("streaming %dx%d per eye from %s", cfg.eye_width, cfg.eye_height, self.config.server)

    def begin(self, frame: FrameInfo, session: XrSession) -> None:
        if self.pipeline is None:
            self._start(frame, session)
        p = self.pipeline
        if frame.focused and session.input is not None:
            hands = session.input.read(session.session, session.space, frame.display_time_ns)
            out = p.apply_input(hands["left"], hands["right"])
            for hand in out.haptics:
                session.input.tick(session.session, hand)
        p.send_pose(frame.predicted_head, [v.world_from_eye for v in frame.predicted_views],
                    [v.fov for v in frame.predicted_views], frame.display_time_ns)
        p.refresh()

    def draw_eye(self, eye: int, view: EyeView) -> None:
        self.pipeline.draw_eye(eye, view.world_from_eye, view.fov, view.width, view.height)

    def close(self) -> dict:
        out = {}
        if self.pipeline is not None:
            out = self.pipeline.stats()
            out["records"] = self.pipeline.records
        if self.stream is not None:
            self.stream.close()
        return out
