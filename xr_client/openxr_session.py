"""The OpenXR session: instance, OpenGL binding, session lifecycle, spaces, swapchains, the frame loop.

GL binding: XR_MNDX_egl_enable with an offscreen EGL context where the runtime offers it (Monado; no
window at all), else XR_KHR_opengl_enable with a hidden glfw window (GLX). The frame loop is paced by
the runtime (xrWaitFrame); each frame the caller's :class:`FrameRenderer` draws both eyes into the
swapchain images. Depth is submitted (XR_KHR_composition_layer_depth) when the runtime offers it.

Lifecycle: IDLE -> READY (begin) -> SYNCHRONIZED -> VISIBLE -> FOCUSED (input) ... STOPPING (end) ->
IDLE -> EXITING (quit); LOSS_PENDING and instance loss end the loop with a message.
Spaces: STAGE when the runtime has it, else LOCAL moved down by ``floor_height`` so y = 0 is the floor.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from gen_server.cameras import Fov
from gen_server.errors import InputError

log = logging.getLogger(__name__)


class XrUnavailable(InputError):
    """No OpenXR runtime (or no headset); the message says what to do."""


@dataclass(frozen=True)
class XrSessionConfig:
    app_name: str = "timewalk"
    backend: str = "auto"          # auto | egl | glx
    floor_height: float = 1.6      # metres the LOCAL origin is above the floor when STAGE is missing
    submit_depth: bool = True
    near: float = 0.05
    far: float = 1000.0
    max_frames: int = 0            # 0 = until the runtime or the user ends the session
    max_seconds: float = 0.0


@dataclass
class EyeView:
    """One eye to draw this frame: stage_from_eye (4, 4) OpenXR and its FOV; image size in pixels."""

    world_from_eye: np.ndarray
    fov: Fov
    width: int
    height: int


@dataclass
class FrameInfo:
    """What the renderer gets each frame. ``predicted`` views are located at display time + latency
    (what the server should render for); ``views`` at display time (what to reproject to now)."""

    index: int
    display_time_ns: int
    period_ns: int
    views: list[EyeView]
    head: np.ndarray
    predicted_views: list[EyeView]
    predicted_head: np.ndarray
    focused: bool


class FrameRenderer(Protocol):
    def begin(self, frame: FrameInfo, session: "XrSession") -> None: ...
    def draw_eye(self, eye: int, view: EyeView) -> None: ...


@dataclass
class SessionStats:
    states: list[str] = field(default_factory=list)
    frames_submitted: int = 0
    frames_rendered: int = 0
    wait_times: list[float] = field(default_factory=list)   # monotonic s after each xrWaitFrame
    cpu_ms: list[float] = field(default_factory=list)       # begin..end frame CPU time per frame
    predicted_period_ms: float = 0.0
    runtime: str = ""
    system: str = ""
    backend: str = ""
    space: str = ""
    depth_submitted: bool = False
    swapchain_size: tuple[int, int] = (0, 0)
    end_reason: str = ""
    api_layers: list[str] = field(default_factory=list)   # API layer libraries loaded in this process
    prediction_s: float = 0.0                                # last pose-prediction horizon used

    def summary(self) -> dict:
        dts = np.diff(self.wait_times) if len(self.wait_times) > 2 else np.array([])
        steady = dts[len(dts) // 4:] if len(dts) else dts
        return {
            "states": self.states, "frames_submitted": self.frames_submitted, "frames_rendered": self.frames_rendered,
            "fps": float(1.0 / steady.mean()) if len(steady) else 0.0,
            "predicted_period_ms": self.predicted_period_ms,
            "cpu_ms_mean": float(np.mean(self.cpu_ms)) if self.cpu_ms else 0.0,
            "cpu_ms_p95": float(np.percentile(self.cpu_ms, 95)) if self.cpu_ms else 0.0,
            "runtime": self.runtime, "system": self.system, "backend": self.backend, "space": self.space,
            "depth_submitted": self.depth_submitted, "swapchain_size": list(self.swapchain_size),
            "end_reason": self.end_reason, "api_layers": self.api_layers, "prediction_s": self.prediction_s,
        }


def _name(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def choose_backend(requested: str) -> str:
    """'egl' when the runtime offers XR_MNDX_egl_enable (and we run on Linux), else 'glx'. Sets PyOpenGL's
    platform accordingly, so call it before anything imports OpenGL.GL."""
    # Our own errors say what went wrong in one line; the loader's multi-line log only on request.
    os.environ.setdefault("XR_LOADER_DEBUG", "none")
    import xr

    from xr_client.gl_context import use_platform

    try:
        exts = {_name(e.extension_name) for e in xr.enumerate_instance_extension_properties()}
    except xr.XrException as e:
        raise XrUnavailable(f"no OpenXR runtime available ({type(e).__name__}): start one (Monado's "
                            "monado-service, SteamVR) or set XR_RUNTIME_JSON; XR_LOADER_DEBUG=all shows the "
                            "loader's search") from None
    if requested == "auto":
        requested = "egl" if xr.MNDX_EGL_ENABLE_EXTENSION_NAME in exts and os.name == "posix" else "glx"
    need = xr.MNDX_EGL_ENABLE_EXTENSION_NAME if requested == "egl" else xr.KHR_OPENGL_ENABLE_EXTENSION_NAME
    if need not in exts:
        raise XrUnavailable(f"the OpenXR runtime does not offer {need} (needed for --gl {requested})")
    use_platform(requested)
    return requested


class XrSession:
    """Owns everything OpenXR. Use: ``XrSession(cfg).run(renderer)`` (creates, loops, destroys)."""

    def __init__(self, config: XrSessionConfig = XrSessionConfig(), with_input: bool = True):
        self.config = config
        self.with_input = with_input
        self.stats = SessionStats()
        self.backend = choose_backend(config.backend)
        self.stats.backend = self.backend
        self.state = "UNKNOWN"
        self.input = None
        self._exit_requested = False
        self._stop_asked = False
        self._running = False
        self._gl = None

    def stop(self) -> None:
        """Ask the loop to end the session cleanly (safe from a signal handler)."""
        self._stop_asked = True

    # -- setup ----------------------------------------------------------------------------------------
    def _create(self) -> None:
        import xr
        from OpenGL import GL

        from xr_client.gl_context import GLContextError, create_egl_context, create_glfw_context

        # GL context first: the session needs its handles.
        if self.backend == "egl":
            try:
                self._gl = create_egl_context(4, 5)
            except GLContextError:
                self._gl = create_egl_context(3, 3)
            libegl = ctypes.CDLL("libEGL.so.1")
            binding = xr.GraphicsBindingEGLMNDX(
                get_proc_address=ctypes.cast(libegl.eglGetProcAddress, xr.PFN_xrEglGetProcAddressMNDX),
                display=self._gl.display, config=self._gl.config, context=self._gl.context)
            exts = [xr.KHR_OPENGL_ENABLE_EXTENSION_NAME, xr.MNDX_EGL_ENABLE_EXTENSION_NAME]
        else:
            from OpenGL import GLX

            self._gl = create_glfw_context(64, 64, "timewalk-xr", visible=False, major=4, minor=5)
            binding = xr.GraphicsBindingOpenGLXlibKHR(x_display=GLX.glXGetCurrentDisplay(),
                                                       glx_drawable=GLX.glXGetCurrentDrawable(),
                                                       glx_context=GLX.glXGetCurrentContext())
            exts = [xr.KHR_OPENGL_ENABLE_EXTENSION_NAME]
        offered = {_name(e.extension_name) for e in xr.enumerate_instance_extension_properties()}
        self.depth_ext = self.config.submit_depth and xr.KHR_COMPOSITION_LAYER_DEPTH_EXTENSION_NAME in offered
        if self.depth_ext:
            exts.append(xr.KHR_COMPOSITION_LAYER_DEPTH_EXTENSION_NAME)
        self._binding = binding
        try:
            self.instance = xr.create_instance(xr.InstanceCreateInfo(
                application_info=xr.ApplicationInfo(application_name=self.config.app_name, application_version=1,
                                                    engine_name="timewalk", engine_version=1,
                                                    api_version=xr.Version(1, 0, 0)),
                enabled_extension_names=exts))
        except xr.XrException as e:
            raise XrUnavailable(f"OpenXR runtime refused to start ({type(e).__name__}: {e}); is it running?") from None
        self.stats.api_layers = loaded_api_layers()
        props = xr.get_instance_properties(self.instance)
        self.stats.runtime = f"{_name(props.runtime_name)} {xr.Version(props.runtime_version)}"
        try:
            self.system_id = xr.get_system(self.instance, xr.SystemGetInfo(
                form_factor=xr.FormFactor.HEAD_MOUNTED_DISPLAY))
        except xr.XrException as e:
            raise XrUnavailable(f"OpenXR runtime {self.stats.runtime} sees no headset ({type(e).__name__})") from None
        self.stats.system = _name(xr.get_system_properties(self.instance, self.system_id).system_name)
        self.view_config = xr.ViewConfigurationType.PRIMARY_STEREO
        self.config_views = xr.enumerate_view_configuration_views(self.instance, self.system_id, self.view_config)
        # The runtime insists this is queried before the session is created.
        pfn = ctypes.cast(xr.get_instance_proc_addr(self.instance, "xrGetOpenGLGraphicsRequirementsKHR"),
                          xr.PFN_xrGetOpenGLGraphicsRequirementsKHR)
        req = xr.GraphicsRequirementsOpenGLKHR()
        xr.check_result(xr.Result(pfn(self.instance, self.system_id, ctypes.byref(req))))

        if self.with_input:
            from xr_client.input_actions import InputActions

            self.input = InputActions(self.instance)
        self.session = xr.create_session(self.instance, xr.SessionCreateInfo(
            next=ctypes.cast(ctypes.pointer(binding), ctypes.c_void_p), system_id=self.system_id))
        if self.input is not None:
            self.input.attach(self.session)
        self._gl.make_current()
        self._create_spaces()
        self._create_swapchains(GL)

    def _create_spaces(self) -> None:
        import xr

        kinds = set(xr.enumerate_reference_spaces(self.session))
        if xr.ReferenceSpaceType.STAGE in kinds:
            self.space = xr.create_reference_space(self.session, xr.ReferenceSpaceCreateInfo(
                reference_space_type=xr.ReferenceSpaceType.STAGE))
            self.stats.space = "STAGE"
        else:
            pose = xr.Posef(position=xr.Vector3f(0.0, -self.config.floor_height, 0.0))
            self.space = xr.create_reference_space(self.session, xr.ReferenceSpaceCreateInfo(
                reference_space_type=xr.ReferenceSpaceType.LOCAL, pose_in_reference_space=pose))
            self.stats.space = f"LOCAL-{self.config.floor_height:g}m"
        self.view_space = xr.create_reference_space(self.session, xr.ReferenceSpaceCreateInfo(
            reference_space_type=xr.ReferenceSpaceType.VIEW))

    def _create_swapchains(self, GL) -> None:
        import xr

        formats = list(xr.enumerate_swapchain_formats(self.session))
        # sRGB storage with GL_FRAMEBUFFER_SRGB off: our sRGB bytes are stored as they are and the
        # compositor reads them as sRGB, so the headset shows the server's colours unchanged.
        color_fmt = next((f for f in (GL.GL_SRGB8_ALPHA8, GL.GL_RGBA8) if f in formats), formats[0])
        depth_fmt = next((f for f in (GL.GL_DEPTH_COMPONENT32F, GL.GL_DEPTH_COMPONENT24, GL.GL_DEPTH_COMPONENT16)
                          if f in formats), None)
        self.eyes = []
        for v in self.config_views:
            w, h = v.recommended_image_rect_width, v.recommended_image_rect_height
            color = xr.create_swapchain(self.session, xr.SwapchainCreateInfo(
                usage_flags=xr.SwapchainUsageFlags.COLOR_ATTACHMENT_BIT | xr.SwapchainUsageFlags.SAMPLED_BIT,
                format=color_fmt, sample_count=1, width=w, height=h, face_count=1, array_size=1, mip_count=1))
            color_images = [img.image for img in xr.enumerate_swapchain_images(color, xr.SwapchainImageOpenGLKHR)]
            depth, depth_images, depth_rb = None, [], None
            if self.depth_ext and depth_fmt is not None:
                depth = xr.create_swapchain(self.session, xr.SwapchainCreateInfo(
                    usage_flags=xr.SwapchainUsageFlags.DEPTH_STENCIL_ATTACHMENT_BIT,
                    format=depth_fmt, sample_count=1, width=w, height=h, face_count=1, array_size=1, mip_count=1))
                depth_images = [img.image for img in xr.enumerate_swapchain_images(depth, xr.SwapchainImageOpenGLKHR)]
            else:  # still depth-test the reprojection mesh
                depth_rb = GL.glGenRenderbuffers(1)
                GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, depth_rb)
                GL.glRenderbufferStorage(GL.GL_RENDERBUFFER, GL.GL_DEPTH_COMPONENT32F, w, h)
            self.eyes.append({"w": w, "h": h, "color": color, "color_images": color_images, "depth": depth,
                              "depth_images": depth_images, "depth_rb": depth_rb})
        self.stats.depth_submitted = all(e["depth"] is not None for e in self.eyes)
        self.stats.swapchain_size = (self.eyes[0]["w"], self.eyes[0]["h"])
        self.fbo = GL.glGenFramebuffers(1)
        GL.glDisable(GL.GL_FRAMEBUFFER_SRGB)

    # -- lifecycle ------------------------------------------------------------------------------------
    def request_exit(self) -> None:
        """Ask the runtime to end the session (state goes STOPPING -> IDLE -> EXITING)."""
        import xr

        if self._running and not self._exit_requested:
            self._exit_requested = True
            xr.request_exit_session(self.session)
        elif not self._running:
            self._exit_requested = True

    def _poll_events(self) -> bool:
        """Handle queued events; False when the loop must end."""
        import xr

        while True:
            try:
                event = xr.poll_event(self.instance)
            except xr.EventUnavailable:
                return True
            kind = xr.StructureType(event.type)
            if kind == xr.StructureType.EVENT_DATA_SESSION_STATE_CHANGED:
                ev = ctypes.cast(ctypes.byref(event), ctypes.POINTER(xr.EventDataSessionStateChanged)).contents
                self.state = xr.SessionState(ev.state).name
                self.stats.states.append(self.state)
                log.info("session state -> %s", self.state)
                if self.state == "READY":
                    xr.begin_session(self.session, xr.SessionBeginInfo(primary_view_configuration_type=self.view_config))
                    self._running = True
                    if self._exit_requested:  # asked to quit before we even started
                        self._exit_requested = False
                        self.request_exit()
                elif self.state == "STOPPING":
                    xr.end_session(self.session)
                    self._running = False
                elif self.state == "EXITING":
                    self.stats.end_reason = self.stats.end_reason or "exiting"
                    return False
                elif self.state == "LOSS_PENDING":
                    self.stats.end_reason = "session loss pending (headset lost or runtime going away)"
                    return False
            elif kind == xr.StructureType.EVENT_DATA_INSTANCE_LOSS_PENDING:
                self.stats.end_reason = "OpenXR instance loss pending (runtime shutting down)"
                return False
            elif kind == xr.StructureType.EVENT_DATA_INTERACTION_PROFILE_CHANGED:
                log.info("interaction profile changed")

    def _locate(self, when_ns: int, width_height) -> tuple[list[EyeView], np.ndarray]:
        import xr

        from xr_client.input_actions import pose_matrix

        _, views = xr.locate_views(self.session, xr.ViewLocateInfo(
            view_configuration_type=self.view_config, display_time=when_ns, space=self.space))
        eyes = [EyeView(pose_matrix(v.pose), Fov(v.fov.angle_left, v.fov.angle_right, v.fov.angle_up,
                                                 v.fov.angle_down), w, h)
                for v, (w, h) in zip(views, width_height)]
        head = pose_matrix(xr.locate_space(self.view_space, self.space, when_ns).pose)
        return eyes, head

    def run(self, renderer: FrameRenderer, latency_s: float | Callable[[], float] = 0.05) -> SessionStats:
        """Create everything, loop until EXITING / loss / limits, destroy everything. ``latency_s``: the
        pose-prediction horizon for the server's poses, a number or a function asked every frame."""
        import xr
        from OpenGL import GL

        self._create()
        start = time.monotonic()
        sizes = [(e["w"], e["h"]) for e in self.eyes]
        try:
            while self._poll_events():
                limit_frames = self.config.max_frames and self.stats.frames_submitted >= self.config.max_frames
                limit_time = self.config.max_seconds and time.monotonic() - start >= self.config.max_seconds
                if (limit_frames or limit_time or self._stop_asked) and not self._exit_requested:
                    self.stats.end_reason = "stopped" if self._stop_asked else "frame/time limit reached"
                    self.request_exit()
                if not self._running:
                    if self._exit_requested and self.stats.frames_submitted == 0:
                        self.stats.end_reason += " before the session started (runtime never READY)"
                        break
                    time.sleep(0.01)
                    continue
                frame_state = xr.wait_frame(self.session)
                self.stats.wait_times.append(time.monotonic())
                self.stats.predicted_period_ms = frame_state.predicted_display_period / 1e6
                t0 = time.perf_counter()
                xr.begin_frame(self.session)
                layers = []
                if frame_state.should_render:
                    # The runtime's GL client code may switch contexts inside xrWaitFrame/BeginFrame.
                    self._gl.make_current()
                    t_disp = frame_state.predicted_display_time
                    views, head = self._locate(t_disp, sizes)
                    horizon = latency_s() if callable(latency_s) else latency_s
                    self.stats.prediction_s = horizon
                    pviews, phead = self._locate(t_disp + int(horizon * 1e9), sizes)
                    info = FrameInfo(self.stats.frames_submitted, t_disp, frame_state.predicted_display_period,
                                     views, head, pviews, phead, self.state == "FOCUSED")
                    renderer.begin(info, self)
                    layers = self._render_layers(renderer, views, GL, xr)
                    self.stats.frames_rendered += 1
                xr.end_frame(self.session, xr.FrameEndInfo(
                    display_time=frame_state.predicted_display_time,
                    environment_blend_mode=xr.EnvironmentBlendMode.OPAQUE, layers=layers))
                self.stats.cpu_ms.append((time.perf_counter() - t0) * 1e3)
                self.stats.frames_submitted += 1
        except xr.InstanceLostError:
            self.stats.end_reason = "OpenXR instance lost"
        except xr.SessionLostError:
            self.stats.end_reason = "OpenXR session lost"
        finally:
            self._destroy()
        return self.stats

    def _render_layers(self, renderer: FrameRenderer, views: list[EyeView], GL, xr) -> list:
        proj_views = (xr.CompositionLayerProjectionView * len(views))()
        self._keep = []  # depth infos must stay alive until xrEndFrame
        for i, view in enumerate(views):
            eye = self.eyes[i]
            idx = xr.acquire_swapchain_image(eye["color"], xr.SwapchainImageAcquireInfo())
            xr.wait_swapchain_image(eye["color"], xr.SwapchainImageWaitInfo(timeout=xr.INFINITE_DURATION))
            GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, self.fbo)
            GL.glFramebufferTexture2D(GL.GL_FRAMEBUFFER, GL.GL_COLOR_ATTACHMENT0, GL.GL_TEXTURE_2D,
                                      eye["color_images"][idx], 0)
            if eye["depth"] is not None:
                didx = xr.acquire_swapchain_image(eye["depth"], xr.SwapchainImageAcquireInfo())
                xr.wait_swapchain_image(eye["depth"], xr.SwapchainImageWaitInfo(timeout=xr.INFINITE_DURATION))
                GL.glFramebufferTexture2D(GL.GL_FRAMEBUFFER, GL.GL_DEPTH_ATTACHMENT, GL.GL_TEXTURE_2D,
                                          eye["depth_images"][didx], 0)
            else:
                GL.glFramebufferRenderbuffer(GL.GL_FRAMEBUFFER, GL.GL_DEPTH_ATTACHMENT, GL.GL_RENDERBUFFER,
                                             eye["depth_rb"])
            GL.glViewport(0, 0, eye["w"], eye["h"])
            renderer.draw_eye(i, view)
            GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, 0)
            xr.release_swapchain_image(eye["color"], xr.SwapchainImageReleaseInfo())
            pv = proj_views[i]
            pv.type = xr.StructureType.COMPOSITION_LAYER_PROJECTION_VIEW
            pv.pose = _posef(view.world_from_eye, xr)
            pv.fov = xr.Fovf(*view.fov.as_tuple())
            pv.sub_image.swapchain = eye["color"]
            pv.sub_image.image_rect.extent.width = eye["w"]
            pv.sub_image.image_rect.extent.height = eye["h"]
            if eye["depth"] is not None:
                xr.release_swapchain_image(eye["depth"], xr.SwapchainImageReleaseInfo())
                info = xr.CompositionLayerDepthInfoKHR(
                    sub_image=xr.SwapchainSubImage(swapchain=eye["depth"], image_rect=xr.Rect2Di(
                        extent=xr.Extent2Di(eye["w"], eye["h"]))),
                    min_depth=0.0, max_depth=1.0, near_z=renderer_near(renderer, self.config.near),
                    far_z=renderer_far(renderer, self.config.far))
                self._keep.append(info)
                pv.next = ctypes.cast(ctypes.pointer(info), ctypes.c_void_p)
        layer = xr.CompositionLayerProjection(space=self.space, views=proj_views)
        self._keep.append((layer, proj_views))
        return [ctypes.cast(ctypes.byref(layer), ctypes.POINTER(xr.CompositionLayerBaseHeader))]

    def _destroy(self) -> None:
        import xr

        for eye in getattr(self, "eyes", []):
            for key in ("color", "depth"):
                if eye[key] is not None:
                    xr.destroy_swapchain(eye[key])
        if self.input is not None and hasattr(self, "session"):
            self.input.destroy()
        for attr in ("view_space", "space"):
            if hasattr(self, attr):
                xr.destroy_space(getattr(self, attr))
        if hasattr(self, "session"):
            xr.destroy_session(self.session)
        if hasattr(self, "instance"):
            xr.destroy_instance(self.instance)
        if self._gl is not None:
            self._gl.release()


def loaded_api_layers() -> list[str]:
    """Names of OpenXR API layer libraries mapped into this process (Linux; empty elsewhere)."""
    try:
        with open("/proc/self/maps") as maps:
            return sorted({os.path.basename(line.split()[-1]) for line in maps if "XrApiLayer" in line})
    except OSError:
        return []


def renderer_near(renderer, default: float) -> float:
    return float(getattr(renderer, "near", default))


def renderer_far(renderer, default: float) -> float:
    return float(getattr(renderer, "far", default))


def _posef(matrix: np.ndarray, xr):
    from gen_server.cameras import matrix_to_pose

    p, q = matrix_to_pose(matrix)
    return xr.Posef(orientation=xr.Quaternionf(*q), position=xr.Vector3f(*p))
