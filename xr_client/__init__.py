"""The headset/desktop client: OpenXR session, input, stream receiver, decoder, reprojection.

Never imports torch: it installs with ``timewalk[client]`` on a headset PC.
"""

import os as _os
import sys as _sys

# PyOpenGL binds to one platform at first import. On Linux the client renders through EGL everywhere
# (offscreen, glfw windows with an EGL context, OpenXR via XR_MNDX_egl_enable); `timewalk xr --gl glx`
# overrides this before OpenGL is imported (gl_context.use_platform).
if _sys.platform.startswith("linux"):
    _os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
