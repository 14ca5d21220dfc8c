"""Desktop and headless front-ends on the shared pipeline (no headset needed).

* Headless (:func:`run_headless`): an offscreen EGL context, a scripted head path and time script, both
  eyes reprojected every tick and written side by side to an mp4 (what the eyes saw), plus statistics.
* Desktop (:func:`run_desktop`): a glfw window showing the left eye; mouse look (drag), WASD/QE to move,
  Right/Left arrow hold = play forward/backward (Shift = full speed), Space pauses, B bookmarks,
  H toggles the HUD, Esc quits.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from gen_server import cameras
from gen_server.cameras import Fov
from xr_client.timeline_controls import HandState


@dataclass
class ScriptStep:
    """One instant of a scripted walk: stage_from_head (4, 4) OpenXR and both controllers."""

    head: np.ndarray
    left: HandState = field(default_factory=HandState)
    right: HandState = field(default_factory=HandState)


Script = Callable[[float, float], ScriptStep]  # (t seconds since start, total seconds) -> step


def head_pose(position, yaw: float, pitch: float = 0.0) -> np.ndarray:
    """stage_from_head (4, 4) at ``position`` turned ``yaw`` (+ = left) and ``pitch`` (+ = up), radians.

    Convention: OpenXR stage (+Y up, -Z forward).
    """
    out = np.eye(4)
    out[:3, :3] = cameras.yaw_pitch_to_matrix(yaw, pitch)
    out[:3, 3] = position
    return out


def default_script(t: float, total: float) -> ScriptStep:
    """Look around and sway a little; first third plays normally, then the right trigger (forward, faster),
    then the left trigger (backward)."""
    head = head_pose([0.25 * math.sin(2 * math.pi * t / 6.0), 1.6, -0.1 * math.sin(2 * math.pi * t / 4.0)],
                     0.6 * math.sin(2 * math.pi * t / 8.0), 0.1 * math.sin(2 * math.pi * t / 5.0))
    third = total / 3.0
    return ScriptStep(head, left=HandState(trigger=0.6 if t >= 2 * third else 0.0),
                      right=HandState(trigger=0.8 if third <= t < 2 * third else 0.0))


@dataclass(frozen=True)
class ViewerConfig:
    width: int = 640                 # per eye
    height: int = 640
    vertical_fov_deg: float = 90.0
    ipd: float = 0.063
    fps: float = 30.0                # headless tick rate (and video rate)
    grid_step: int = 4
    hud: bool = True


def _fov(cfg: ViewerConfig) -> Fov:
    return Fov.symmetric(math.radians(cfg.vertical_fov_deg), cfg.width / cfg.height)


def run_headless(server: str, seconds: float, out: str | Path | None, stats: str | Path | None,
                 width: int = 640, height: int = 640, script: Script | None = None,
                 config: ViewerConfig | None = None) -> dict:
    """Walk a scripted path for ``seconds`` against ``server``; write both eyes side by side to ``out``
    (mp4, atomically) and statistics JSON to ``stats`` (when given). Returns the statistics.

    Real time: ticks at ``config.fps`` on the wall clock, so the server sees a live client.
    """
    from gen_server.errors import InputError

    if width < 16 or height < 16 or width % 2 or height % 2:
        raise InputError(f"headless viewer: --width/--height must be even and >= 16, got {width}x{height}")
    if not seconds > 0:
        raise InputError(f"headless viewer: --seconds must be positive, got {seconds}")
    cfg = config or ViewerConfig()
    cfg = ViewerConfig(width=width, height=height, vertical_fov_deg=cfg.vertical_fov_deg, ipd=cfg.ipd,
                       fps=cfg.fps, grid_step=cfg.grid_step, hud=cfg.hud)
    script = script or default_script

    from xr_client.gl_context import create_egl_context

    ctx = create_egl_context()
    from xr_client.pipeline import PipelineConfig, ViewPipeline
    from xr_client.render_target import RenderTarget
    from xr_client.reprojection import ReprojectionConfig
    from xr_client.stream_client import StreamClient, StreamConfig

    fov = _fov(cfg)
    stream = StreamClient(server, StreamConfig(eye_width=width, eye_height=height, fovs=(fov, fov), ipd=cfg.ipd,
                                               display_refresh_hz=cfg.fps, client_name="timewalk-view-headless"))
    stream.start()
    pipeline = ViewPipeline(stream, PipelineConfig(reprojection=ReprojectionConfig(grid_step=cfg.grid_step),
                                                   hud=cfg.hud, ipd=cfg.ipd))
    targets = [RenderTarget(width, height) for _ in range(2)]
    writer = None
    if out is not None:
        from gen_server.video_io import VideoWriter

        writer = VideoWriter(out, cfg.fps, 2 * width, height)
        writer.open()
    cpu_ms, ticks = [], 0
    try:
        stream.wait_connected(10.0)  # the script starts once connected (or after 10 s, showing "waiting")
        start = time.monotonic()
        while True:
            now = time.monotonic() - start
            if now >= seconds:
                break
            step = script(now, seconds)
            t0 = time.perf_counter()
            pipeline.apply_input(step.left, step.right)
            eyes = cameras.eye_poses(step.head, cfg.ipd)
            pipeline.send_pose(step.head, list(eyes), [fov, fov], time.monotonic_ns())
            pipeline.refresh()
            sides = []
            for i, target in enumerate(targets):
                target.bind()
                pipeline.draw_eye(i, eyes[i], fov, width, height)
                sides.append(target.read_rgb())
            cpu_ms.append((time.perf_counter() - t0) * 1e3)
            if writer is not None:
                writer.write(np.concatenate(sides, axis=1))
            ticks += 1
            next_tick = start + ticks / cfg.fps
            time.sleep(max(0.0, next_tick - time.monotonic()))
        if writer is not None:
            writer.close()
            writer = None
    finally:
        if writer is not None:  # interrupted: no half-written video
            writer.abort()
        stream.close()
        for target in targets:
            target.release()
        pipeline.release()
        ctx.release()
    elapsed = time.monotonic() - start if ticks else 0.0
    result = {
        "mode": "headless", "server": server, "seconds": elapsed, "ticks": ticks, "fps": ticks / max(elapsed, 1e-9),
        "eye_size": [width, height], "video": None if out is None else str(out),
        "cpu_ms_per_tick": {"mean": float(np.mean(cpu_ms)) if cpu_ms else 0.0,
                            "p95": float(np.percentile(cpu_ms, 95)) if cpu_ms else 0.0},
        **pipeline.stats(), "records": pipeline.records,
    }
    if stats is not None:
        from xr_client.stats_io import write_json_atomic

        write_json_atomic(stats, result)
    return result


# ---------------------------------------------------------------------------------------------------
# Desktop
# ---------------------------------------------------------------------------------------------------
@dataclass
class DesktopCamera:
    """Mouse-look + WASD camera in the stage (OpenXR axes)."""

    position: np.ndarray = field(default_factory=lambda: np.array([0.0, 1.6, 0.0]))
    yaw: float = 0.0
    pitch: float = 0.0

    def look(self, dx_pixels: float, dy_pixels: float, radians_per_pixel: float = 0.004) -> None:
        self.yaw -= dx_pixels * radians_per_pixel           # drag right -> turn right
        self.pitch = float(np.clip(self.pitch - dy_pixels * radians_per_pixel, -1.5, 1.5))

    def move(self, forward: float, right: float, up: float, metres: float) -> None:
        m = head_pose(self.position, self.yaw)
        self.position = self.position + metres * (forward * -m[:3, 2] + right * m[:3, 0] + up * np.array([0, 1.0, 0]))

    def head(self) -> np.ndarray:
        return head_pose(self.position, self.yaw, self.pitch)


def keys_to_hands(pressed: set[str]) -> tuple[HandState, HandState]:
    """Desktop keys -> controller states: 'right'/'left' arrows = triggers (half pull; with 'shift' full),
    'space' = A (pause), 'b' = B (bookmark), 'h' = menu (HUD)."""
    pull = 1.0 if "shift" in pressed else 0.7
    left = HandState(trigger=pull if "left" in pressed else 0.0, menu="h" in pressed)
    right = HandState(trigger=pull if "right" in pressed else 0.0, primary="space" in pressed,
                      secondary="b" in pressed)
    return left, right


def run_desktop(server: str, width: int = 1280, height: int = 720, seconds: float = 0.0,
                stats: str | Path | None = None, config: ViewerConfig | None = None, max_fps: float = 90.0) -> dict:
    """Open a window and walk the world until Esc / window close (or ``seconds``)."""
    import glfw

    from gen_server.errors import InputError
    from xr_client.gl_context import GLContextError, create_glfw_context

    cfg = config or ViewerConfig()
    try:
        ctx = create_glfw_context(width, height, "timewalk view", visible=True)
    except GLContextError as e:
        raise InputError(f"desktop viewer: {e} (use --headless without a display)") from None
    from xr_client.pipeline import PipelineConfig, ViewPipeline
    from xr_client.reprojection import ReprojectionConfig
    from xr_client.stream_client import StreamClient, StreamConfig

    fov = Fov.symmetric(math.radians(cfg.vertical_fov_deg), width / height)
    eye_w, eye_h = (width // 2) * 2, (height // 2) * 2
    stream = StreamClient(server, StreamConfig(eye_width=eye_w, eye_height=eye_h, fovs=(fov, fov), ipd=cfg.ipd,
                                               client_name="timewalk-view")).start()
    # One eye on a flat screen: the HUD needs no stereo disparity.
    pipeline = ViewPipeline(stream, PipelineConfig(reprojection=ReprojectionConfig(grid_step=cfg.grid_step), ipd=0.0))
    camera = DesktopCamera()
    names = {glfw.KEY_RIGHT: "right", glfw.KEY_LEFT: "left", glfw.KEY_SPACE: "space", glfw.KEY_B: "b",
             glfw.KEY_H: "h", glfw.KEY_LEFT_SHIFT: "shift", glfw.KEY_RIGHT_SHIFT: "shift"}
    moves = {glfw.KEY_W: (1, 0, 0), glfw.KEY_S: (-1, 0, 0), glfw.KEY_D: (0, 1, 0), glfw.KEY_A: (0, -1, 0),
             glfw.KEY_E: (0, 0, 1), glfw.KEY_Q: (0, 0, -1)}
    last_cursor = None
    start = last = time.monotonic()
    frames = 0
    glfw.swap_interval(1)
    try:
        while not glfw.window_should_close(ctx.window):
            now = time.monotonic()
            if seconds and now - start >= seconds:
                break
            dt, last = now - last, now
            glfw.poll_events()
            if glfw.get_key(ctx.window, glfw.KEY_ESCAPE) == glfw.PRESS:
                break
            cursor = glfw.get_cursor_pos(ctx.window)
            if glfw.get_mouse_button(ctx.window, glfw.MOUSE_BUTTON_LEFT) == glfw.PRESS and last_cursor is not None:
                camera.look(cursor[0] - last_cursor[0], cursor[1] - last_cursor[1])
            last_cursor = cursor
            for key, (f, r, u) in moves.items():
                if glfw.get_key(ctx.window, key) == glfw.PRESS:
                    camera.move(f, r, u, 1.5 * dt)
            pressed = {name for key, name in names.items() if glfw.get_key(ctx.window, key) == glfw.PRESS}
            pipeline.apply_input(*keys_to_hands(pressed))
            head = camera.head()
            eyes = cameras.eye_poses(head, cfg.ipd)
            pipeline.send_pose(head, list(eyes), [fov, fov], time.monotonic_ns())
            pipeline.refresh()
            fb_w, fb_h = glfw.get_framebuffer_size(ctx.window)
            from OpenGL import GL

            GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, 0)
            pipeline.draw_eye(0, eyes[0], fov, fb_w, fb_h)
            glfw.swap_buffers(ctx.window)
            frames += 1
            # swap_interval is not honoured everywhere (Xvfb, some drivers): never spin faster than max_fps.
            time.sleep(max(0.0, 1.0 / max_fps - (time.monotonic() - now)))
    finally:
        stream.close()
        pipeline.release()
        ctx.release()
    elapsed = time.monotonic() - start
    result = {"mode": "desktop", "server": server, "seconds": elapsed, "frames": frames,
              "fps": frames / max(elapsed, 1e-9), **pipeline.stats()}
    if stats is not None:
        from xr_client.stats_io import write_json_atomic

        write_json_atomic(stats, result)
    return result
