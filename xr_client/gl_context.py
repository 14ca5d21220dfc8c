"""OpenGL contexts for the client: an offscreen EGL context (no display at all; Mesa llvmpipe in CI) and a
hidden glfw window (X11/GLX, what XR_KHR_opengl_enable's Xlib binding needs).

PyOpenGL binds its function loader to one platform at first import, so the choice must be made before
``OpenGL.GL`` is imported anywhere: call :func:`use_platform` early (front-ends do it first thing).
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass


class GLContextError(RuntimeError):
    """No OpenGL context could be created; the message says what to install or set."""


_PLATFORMS = {"egl": ("OpenGL.platform.egl", "EGLPlatform"), "glx": ("OpenGL.platform.glx", "GLXPlatform")}


def use_platform(platform: str) -> None:
    """Bind PyOpenGL to ``platform`` ('egl' or 'glx') before OpenGL.GL is imported.

    ``OpenGL.platform`` may already be imported (pyopenxr imports it, and on Linux swaps in a GLX
    platform object without re-exporting its functions): then install the wanted platform again, so
    that the current-context lookups PyOpenGL makes match the context we create.
    """
    if platform not in _PLATFORMS:
        raise GLContextError(f"unknown OpenGL platform {platform!r} (egl or glx)")
    if "OpenGL.GL" in sys.modules:
        current = os.environ.get("PYOPENGL_PLATFORM", "glx")
        if current != platform:
            raise GLContextError(f"OpenGL already imported for platform {current!r}; cannot switch to {platform!r}")
        return
    os.environ["PYOPENGL_PLATFORM"] = platform
    if "OpenGL.platform" in sys.modules:
        import importlib

        import OpenGL.platform as gl_platform

        module, cls = _PLATFORMS[platform]
        getattr(importlib.import_module(module), cls)().install(vars(gl_platform))


@dataclass
class EGLContext:
    """An offscreen OpenGL core context with no default framebuffer (render into FBOs)."""

    display: object
    config: object
    context: object

    def make_current(self) -> None:
        from OpenGL import EGL

        if not EGL.eglMakeCurrent(self.display, EGL.EGL_NO_SURFACE, EGL.EGL_NO_SURFACE, self.context):
            raise GLContextError("eglMakeCurrent failed")

    def release(self) -> None:
        from OpenGL import EGL

        EGL.eglMakeCurrent(self.display, EGL.EGL_NO_SURFACE, EGL.EGL_NO_SURFACE, EGL.EGL_NO_CONTEXT)
        EGL.eglDestroyContext(self.display, self.context)


def create_egl_context(major: int = 3, minor: int = 3) -> EGLContext:
    """Offscreen EGL context (surfaceless). Needs libEGL + Mesa (libegl-mesa0, libgl1-mesa-dri)."""
    use_platform("egl")
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("EGL_PLATFORM", "surfaceless")  # Mesa: no window system at all
    try:
        from OpenGL import EGL
    except ImportError as e:  # pragma: no cover - depends on the system
        raise GLContextError(f"PyOpenGL EGL unavailable ({e}); install libegl1 libegl-mesa0") from e
    dpy = EGL.eglGetDisplay(EGL.EGL_DEFAULT_DISPLAY)
    ma, mi = EGL.EGLint(), EGL.EGLint()
    if not dpy or not EGL.eglInitialize(dpy, ctypes.byref(ma), ctypes.byref(mi)):
        raise GLContextError("eglInitialize failed: install libegl-mesa0 libgl1-mesa-dri (Mesa)")
    attrs = (EGL.EGLint * 15)(
        EGL.EGL_RED_SIZE, 8, EGL.EGL_GREEN_SIZE, 8, EGL.EGL_BLUE_SIZE, 8, EGL.EGL_ALPHA_SIZE, 8,
        EGL.EGL_RENDERABLE_TYPE, EGL.EGL_OPENGL_BIT, EGL.EGL_SURFACE_TYPE, EGL.EGL_PBUFFER_BIT, EGL.EGL_NONE,
        0, 0,
    )
    cfg, n = EGL.EGLConfig(), EGL.EGLint()
    if not EGL.eglChooseConfig(dpy, attrs, ctypes.byref(cfg), 1, ctypes.byref(n)) or n.value < 1:
        raise GLContextError("eglChooseConfig found no RGBA8 OpenGL config")
    EGL.eglBindAPI(EGL.EGL_OPENGL_API)
    ctx_attrs = (EGL.EGLint * 7)(
        EGL.EGL_CONTEXT_MAJOR_VERSION, major, EGL.EGL_CONTEXT_MINOR_VERSION, minor,
        EGL.EGL_CONTEXT_OPENGL_PROFILE_MASK, EGL.EGL_CONTEXT_OPENGL_CORE_PROFILE_BIT, EGL.EGL_NONE,
    )
    ctx = EGL.eglCreateContext(dpy, cfg, EGL.EGL_NO_CONTEXT, ctx_attrs)
    if not ctx:
        raise GLContextError(f"eglCreateContext failed for OpenGL {major}.{minor} core")
    out = EGLContext(dpy, cfg, ctx)
    out.make_current()
    return out


@dataclass
class GlfwContext:
    """A glfw window (hidden unless asked) with an OpenGL core context current on this thread."""

    window: object

    def make_current(self) -> None:
        import glfw

        glfw.make_context_current(self.window)

    def release(self) -> None:
        import glfw

        glfw.destroy_window(self.window)
        glfw.terminate()


def create_glfw_context(width: int = 64, height: int = 64, title: str = "timewalk", visible: bool = False,
                        major: int = 3, minor: int = 3) -> GlfwContext:
    """glfw window + GL context (GLX on X11). Needs DISPLAY (a desktop or Xvfb)."""
    import glfw

    # The context comes from EGL when PyOpenGL is bound to EGL (the Linux default), else GLX/WGL.
    egl = os.environ.get("PYOPENGL_PLATFORM") == "egl"

    if not glfw.init():
        raise GLContextError(f"glfw could not initialise (DISPLAY={os.environ.get('DISPLAY')!r}): "
                             "run on a desktop or under Xvfb")
    glfw.window_hint(glfw.VISIBLE, glfw.TRUE if visible else glfw.FALSE)
    glfw.window_hint(glfw.CONTEXT_VERSION_MAJOR, major)
    glfw.window_hint(glfw.CONTEXT_VERSION_MINOR, minor)
    glfw.window_hint(glfw.OPENGL_PROFILE, glfw.OPENGL_CORE_PROFILE)
    glfw.window_hint(glfw.OPENGL_FORWARD_COMPAT, glfw.TRUE)
    if egl:
        glfw.window_hint(glfw.CONTEXT_CREATION_API, glfw.EGL_CONTEXT_API)
    if not visible:
        glfw.window_hint(glfw.DOUBLEBUFFER, glfw.FALSE)
    window = glfw.create_window(width, height, title, None, None)
    if not window:
        glfw.terminate()
        raise GLContextError(f"glfw could not create an OpenGL {major}.{minor} core window")
    glfw.make_context_current(window)
    return GlfwContext(window)
