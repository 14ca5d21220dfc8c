"""The per-vsync client pipeline shared by every front-end (headset, desktop window, headless):

    input -> timeline controls -> server      pose (predicted) -> server
    newest decoded frame -> upload once -> reproject to each eye's current pose -> HUD

If the server goes away the last frame keeps being reprojected and the HUD says RECONNECTING; the
stream client reconnects by itself. Poses go out in the *virtual* stage: the stage moved by the user's
world grab (stage_from_virtual), and frames come back rendered in it, so reprojection compares like with
like.
"""

from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass

import numpy as np

from gen_server import cameras
from gen_server.cameras import Fov
from gen_server.protocol import Pose
from xr_client.hud import HudOverlay, HudState
from xr_client.reprojection import EyeImage, ReprojectionConfig, Reprojector
from xr_client.timeline_controls import ControlOutput, HandState, TimelineControls

try:  # numpy-only; feeds the pose-prediction horizon when the calibration package is installed
    from calibration.latency import shared_tracker
except ImportError:  # pragma: no cover - client-only installs without calibration/
    shared_tracker = None


def yaw_degrees(world_from_eye: np.ndarray) -> float:
    """Heading of a pose about +Y in degrees (0 = looking down -Z, positive = turned left).

    Convention: OpenXR axes.
    """
    m = np.asarray(world_from_eye)
    return math.degrees(math.atan2(m[0, 2], m[2, 2]))


@dataclass(frozen=True)
class PipelineConfig:
    reprojection: ReprojectionConfig = ReprojectionConfig()
    hud: bool = True
    background: tuple[float, float, float] = (0.08, 0.08, 0.1)  # before the first frame arrives
    record: bool = True        # keep per-vsync records for --stats
    hud_distance_m: float = 1.5  # the HUD panel appears this far ahead (stereo disparity)
    ipd: float = 0.063


class ViewPipeline:
    """Needs a current OpenGL 3.3 context at construction and for :meth:`draw_eye`."""

    def __init__(self, stream, config: PipelineConfig = PipelineConfig(), controls: TimelineControls | None = None):
        self.stream = stream
        self.config = config
        self.controls = controls or TimelineControls()
        self.reprojector = Reprojector(config.reprojection)
        self.near, self.far = config.reprojection.near, config.reprojection.far
        self.hud = HudOverlay() if config.hud else None
        self.hud_state = HudState()
        self.stage_from_virtual = np.eye(4)
        self.frame = None              # the DecodedFrame being shown
        self._pose_sent_ns: dict[int, int] = {}
        self._vsyncs: collections.deque = collections.deque(maxlen=120)
        self.latencies_ms: list[float] = []
        self.records: list[dict] = []
        self.controls_sent: list[tuple] = []
        self.frames_shown = 0
        self._last_pose_yaw = None
        self._inputs: tuple[float, float] | None = None  # (left, right) trigger, for the records

    # -- per vsync, before drawing -------------------------------------------------------------------
    def apply_input(self, left: HandState, right: HandState) -> ControlOutput:
        """Map controller state to timeline controls and send them; returns haptics / HUD toggle."""
        out = self.controls.update(left, right)
        for command, value, name in out.controls:
            self.stream.send_control(command, value, name)
            self.controls_sent.append((time.monotonic(), command, value, name))
        if out.toggle_hud:
            self.hud_state.visible = not self.hud_state.visible
        self.stage_from_virtual = out.stage_from_virtual
        self._inputs = (left.trigger, right.trigger)
        return out

    def send_pose(self, head: np.ndarray, eyes: list[np.ndarray], fovs: list[Fov], display_time_ns: int = 0) -> int:
        """Send predicted stage-space head and eye poses (4, 4 each), converted to the virtual stage."""
        virtual_from_stage = cameras.invert_rigid(self.stage_from_virtual)
        seq = self.stream.send_pose(Pose.from_matrix(virtual_from_stage @ head),
                                    tuple(Pose.from_matrix(virtual_from_stage @ e) for e in eyes),
                                    display_time_ns=display_time_ns, fovs=tuple(fovs))
        now = time.monotonic_ns()
        self._pose_sent_ns[seq] = now
        if len(self._pose_sent_ns) > 512:
            for k in sorted(self._pose_sent_ns)[:256]:
                del self._pose_sent_ns[k]
        self._last_pose_yaw = yaw_degrees(virtual_from_stage @ head)
        return seq

    def refresh(self) -> bool:
        """Upload the newest decoded frame if there is one; True when a new frame came in."""
        now = time.monotonic()
        self._vsyncs.append(now)
        frame = self.stream.latest_frame()
        new = frame is not None and (self.frame is None or frame.seq != self.frame.seq)
        if new:
            for slot in range(2):
                eye = min(slot, len(frame.color) - 1)
                depth = frame.depth[eye] if eye < len(frame.depth) else None
                self.reprojector.upload(slot, EyeImage(frame.color[eye], depth, frame.poses[eye].matrix(),
                                                       frame.fovs[eye]))
            self.frame = frame
            self.frames_shown += 1
            sent = self._pose_sent_ns.get(frame.pose_seq)
            if sent is not None and "received_ns" in frame.timings:
                received = frame.timings["received_ns"]
                ready = received + frame.timings.get("decode_ns", 0)
                self.latencies_ms.append((ready - sent) / 1e6)
                if shared_tracker is not None:
                    try:  # one client-clock timeline per frame: what pose prediction needs
                        shared_tracker().add_frame({"pose_sampled": sent, "frame_received": received,
                                                    "decoded": ready, "displayed": time.monotonic_ns()})
                    except ValueError:
                        pass
        self._update_hud()
        if self.config.record:
            rec = {"t": round(now, 4), "pose_yaw": self._last_pose_yaw, "state": self.stream.state}
            if self.frame is not None:
                sent = self._pose_sent_ns.get(self.frame.pose_seq)
                rec.update(seq=self.frame.seq, tau=round(self.frame.tau, 4),
                           frame_yaw=round(yaw_degrees(self.frame.poses[0].matrix()), 3),
                           pose_t=None if sent is None else round(sent / 1e9, 4))
                if "render_start_ns" in self.frame.timings:  # server clock (same host: same monotonic)
                    rec["render_t"] = round(self.frame.timings["render_start_ns"] / 1e9, 4)
            if self._inputs is not None:
                rec["triggers"] = [round(v, 3) for v in self._inputs]
            self.records.append(rec)
        return new

    def _update_hud(self) -> None:
        s = self.hud_state
        s.waiting = self.frame is None
        s.reconnecting = self.stream.state == "reconnecting"
        if self.frame is not None:
            s.tau = self.frame.tau
            s.rate = float(self.frame.timeline.get("rate", s.rate))
            s.paused = bool(self.frame.timeline.get("paused", s.paused))
        welcome = getattr(self.stream, "welcome", None)
        if welcome is not None:
            s.duration = float(welcome.world.get("duration", s.duration) or 0.0)
        s.bookmarks = [0.0] * self.controls.bookmarks
        if len(self._vsyncs) > 2:
            s.fps = (len(self._vsyncs) - 1) / max(self._vsyncs[-1] - self._vsyncs[0], 1e-6)
        s.latency_ms = float(np.median(self.latencies_ms[-30:])) if self.latencies_ms else None
        if self.hud is not None:
            self.hud.update(s)

    # -- per eye --------------------------------------------------------------------------------------
    def draw_eye(self, eye: int, world_from_eye: np.ndarray, fov: Fov, width: int, height: int) -> None:
        """Draw eye ``eye`` (0 left, 1 right) at its current stage pose into the bound framebuffer."""
        from OpenGL import GL

        GL.glViewport(0, 0, width, height)
        if self.frame is None:
            GL.glClearColor(*self.config.background, 1.0)
            GL.glClear(GL.GL_COLOR_BUFFER_BIT | GL.GL_DEPTH_BUFFER_BIT)
        else:
            virtual_from_stage = cameras.invert_rigid(self.stage_from_virtual)
            self.reprojector.draw(eye, virtual_from_stage @ world_from_eye, fov)
        if self.hud is not None:
            # Eye 0 (left) sees a panel straight ahead of the head displaced to the right, eye 1 to the left.
            offset = (0.5 if eye == 0 else -0.5) * self.config.ipd / self.config.hud_distance_m
            self.hud.draw(width, height, 2.0 * offset / (math.tan(fov.angle_right) - math.tan(fov.angle_left)))

    def stats(self) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        return {
            "frames_shown": self.frames_shown,
            "latency_ms": {"p50": float(np.nanpercentile(lat, 50)), "p90": float(np.nanpercentile(lat, 90)),
                           "p99": float(np.nanpercentile(lat, 99)), "n": len(self.latencies_ms)},
            "controls_sent": [list(c) for c in self.controls_sent],
            "last_frame": None if self.frame is None else {
                "seq": self.frame.seq, "tau": self.frame.tau, "size": [self.frame.width, self.frame.height],
                "eyes": [{"pose": p.matrix().tolist(), "fov": list(f.as_tuple())}
                         for p, f in zip(self.frame.poses, self.frame.fovs)]},
        }

    def release(self) -> None:
        self.reprojector.release()
        if self.hud is not None:
            self.hud.release()
