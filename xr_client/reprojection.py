"""Depth reprojection in OpenGL: draw a received eye image, rendered at one pose + FOV, as seen from the
eye's current pose + FOV.

Two passes into the bound framebuffer:
1. *Rotation-only* full-screen pass: every output pixel looks up the source image along its view ray as if
   the scene were infinitely far (clamped to the edge outside the source), so no pixel is ever left black.
   This alone is the reprojection for frames without depth.
2. *Depth mesh* pass (frames with depth): a grid with one vertex per ``grid_step`` source pixels, displaced
   in the vertex shader by the frame's depth (unprojected with the render pose + FOV) and projected with
   the current pose + FOV; depth-tested, so near surfaces win. Across depth edges triangles stretch.

The fragment shader interpolates OpenCV camera coordinates (affine over a planar triangle) and divides
per pixel, so planar surfaces reproject exactly; the numpy reference in reprojection_reference.py says
where each source pixel must land and the tests compare the two.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np
from OpenGL import GL

from gen_server import cameras
from gen_server.cameras import Fov

_MESH_VS = """
#version 330 core
layout(location = 0) in vec2 a_pix;   // source *depth* pixel centre (OpenCV: x right, y down)
uniform sampler2D u_depth;            // z-depth, metres (may be smaller than the colour image)
uniform vec2 u_dsize;                 // depth width, height
uniform vec4 u_kd;                    // fx, fy, cx, cy of the depth image
uniform mat4 u_clip_from_cv;          // dst clip <- source OpenCV camera coordinates
uniform float u_far_fill;             // depth used where the frame has none (<= 0, NaN, inf)
out vec3 v_cv;
void main() {
    float d = textureLod(u_depth, (a_pix + 0.5) / u_dsize, 0.0).r;
    if (!(d > 0.0) || isinf(d)) d = u_far_fill;
    v_cv = vec3((a_pix.x - u_kd.z) / u_kd.x * d, (a_pix.y - u_kd.w) / u_kd.y * d, d);
    gl_Position = u_clip_from_cv * vec4(v_cv, 1.0);
}
"""

_MESH_FS = """
#version 330 core
in vec3 v_cv;
uniform sampler2D u_color;
uniform vec2 u_size;                  // colour width, height
uniform vec4 u_k;                     // fx, fy, cx, cy of the colour image
out vec4 frag;
void main() {
    vec2 pix = vec2(u_k.x * v_cv.x / v_cv.z + u_k.z, u_k.y * v_cv.y / v_cv.z + u_k.w);
    frag = vec4(texture(u_color, (pix + 0.5) / u_size).rgb, 1.0);
}
"""

_RAY_VS = """
#version 330 core
out vec2 v_ndc;
void main() {
    // One triangle covering the viewport; at the far plane so the depth mesh always wins.
    vec2 p = vec2((gl_VertexID == 1) ? 3.0 : -1.0, (gl_VertexID == 2) ? 3.0 : -1.0);
    v_ndc = p;
    gl_Position = vec4(p, 1.0, 1.0);
}
"""

_RAY_FS = """
#version 330 core
in vec2 v_ndc;
uniform sampler2D u_color;
uniform vec2 u_size;
uniform vec4 u_dst_tan;          // tan(left), tan(right), tan(down), tan(up) of the current eye
uniform mat3 u_srcpix_from_eye;  // K_src * R(source OpenCV camera <- current eye, OpenXR axes)
out vec4 frag;
void main() {
    vec2 t = 0.5 * (v_ndc + 1.0);
    vec3 dir = vec3(mix(u_dst_tan.x, u_dst_tan.y, t.x), mix(u_dst_tan.z, u_dst_tan.w, t.y), -1.0);
    vec3 c = u_srcpix_from_eye * dir;
    // Behind the source camera: push far outside so clamp-to-edge picks the nearest border.
    vec2 pix = (c.z > 1e-6) ? c.xy / c.z : c.xy * 1e6;
    frag = vec4(texture(u_color, (pix + 0.5) / u_size).rgb, 1.0);
}
"""


@dataclass
class EyeImage:
    """One eye of a received frame: what reprojection needs.

    rgb (H, W, 3) uint8 top row first; depth (Hd, Wd) float32 z-depth metres (0 = no surface) or None,
    any size covering the same FOV (the server sends it smaller than colour); ``world_from_eye``
    (4, 4) the OpenXR pose it was rendered with (stage space); ``fov`` the FOV it was rendered with.
    """

    rgb: np.ndarray
    depth: np.ndarray | None
    world_from_eye: np.ndarray
    fov: Fov

    def __post_init__(self):
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3 or self.rgb.dtype != np.uint8:
            raise ValueError(f"EyeImage.rgb: expected (H, W, 3) uint8, got {self.rgb.shape} {self.rgb.dtype}")
        if self.depth is not None and self.depth.ndim != 2:
            raise ValueError(f"EyeImage.depth: expected (Hd, Wd), got {self.depth.shape}")
        if np.shape(self.world_from_eye) != (4, 4):
            raise ValueError(f"EyeImage.world_from_eye: expected (4, 4), got {np.shape(self.world_from_eye)}")


@dataclass(frozen=True)
class ReprojectionConfig:
    grid_step: int = 4         # source pixels per mesh cell
    near: float = 0.05         # metres; also the near plane of the submitted depth
    far: float = 1000.0
    far_fill: float = 1000.0   # depth assumed where a frame has no valid depth


def _compile(vs: str, fs: str) -> int:
    prog = GL.glCreateProgram()
    for src, kind in ((vs, GL.GL_VERTEX_SHADER), (fs, GL.GL_FRAGMENT_SHADER)):
        sh = GL.glCreateShader(kind)
        GL.glShaderSource(sh, src)
        GL.glCompileShader(sh)
        if not GL.glGetShaderiv(sh, GL.GL_COMPILE_STATUS):
            raise RuntimeError(f"reprojection shader: {GL.glGetShaderInfoLog(sh).decode(errors='replace')}")
        GL.glAttachShader(prog, sh)
        GL.glDeleteShader(sh)
    GL.glLinkProgram(prog)
    if not GL.glGetProgramiv(prog, GL.GL_LINK_STATUS):
        raise RuntimeError(f"reprojection program: {GL.glGetProgramInfoLog(prog).decode(errors='replace')}")
    return prog


def grid_vertices(width: int, height: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid vertex pixel centres (N, 2) float32 and triangle indices (M, 3) uint32.

    Convention: OpenCV pixel centres; columns 0, step, ..., width-1 (last one always included).
    """
    xs = np.unique(np.r_[np.arange(0, width, step), width - 1]).astype(np.float32)
    ys = np.unique(np.r_[np.arange(0, height, step), height - 1]).astype(np.float32)
    gx, gy = np.meshgrid(xs, ys)
    verts = np.stack([gx.ravel(), gy.ravel()], -1)
    nx, ny = len(xs), len(ys)
    i = np.arange(ny - 1)[:, None] * nx + np.arange(nx - 1)[None, :]
    a, b, c, d = i, i + 1, i + nx, i + nx + 1
    tris = np.stack([np.stack([a, c, b], -1), np.stack([b, c, d], -1)], -2).reshape(-1, 3)
    return verts, tris.astype(np.uint32)


def source_matrices(src_pose: np.ndarray, src_fov: Fov, src_size: tuple[int, int], dst_pose: np.ndarray,
                    dst_fov: Fov, near: float, far: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K_src (3, 3), clip_from_cv (4, 4), srcpix_from_eye (3, 3)) for one eye.

    Convention: poses are OpenXR world_from_eye (same space for both); K is OpenCV for a source image
    of ``src_size`` = (width, height); clip is OpenGL (cameras.gl_projection).
    """
    w, h = src_size
    k = cameras.fov_to_intrinsics(src_fov, w, h)
    world_from_cv = cameras.invert_rigid(cameras.cv_camera_from_world(src_pose))
    clip_from_cv = cameras.gl_projection(dst_fov, near, far) @ cameras.invert_rigid(dst_pose) @ world_from_cv
    cv_from_eye = cameras.cv_camera_from_world(src_pose) @ dst_pose
    return k, clip_from_cv, k @ cv_from_eye[:3, :3]


class Reprojector:
    """Holds per-slot (per-eye) source textures and draws them reprojected. Needs a current GL 3.3 context."""

    def __init__(self, config: ReprojectionConfig = ReprojectionConfig(), slots: int = 2):
        self.config = config
        self._mesh = _compile(_MESH_VS, _MESH_FS)
        self._ray = _compile(_RAY_VS, _RAY_FS)
        self._u = {(prog, name): GL.glGetUniformLocation(prog, name)
                   for prog, names in ((self._mesh, ("u_color", "u_depth", "u_size", "u_k", "u_dsize", "u_kd",
                                                     "u_far_fill", "u_clip_from_cv")),
                                       (self._ray, ("u_color", "u_size", "u_dst_tan", "u_srcpix_from_eye")))
                   for name in names}
        self._empty_vao = GL.glGenVertexArrays(1)
        self._grids: dict[tuple[int, int, int], tuple[int, int, int, int]] = {}  # (w, h, step) -> vao, vbo, ebo, n
        self._tex = [(GL.glGenTextures(1), GL.glGenTextures(1)) for _ in range(slots)]
        self._images: list[EyeImage | None] = [None] * slots
        for color, depth in self._tex:
            for tex, filt in ((color, GL.GL_LINEAR), (depth, GL.GL_NEAREST)):
                GL.glBindTexture(GL.GL_TEXTURE_2D, tex)
                GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MIN_FILTER, filt)
                GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MAG_FILTER, filt)
                GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_WRAP_S, GL.GL_CLAMP_TO_EDGE)
                GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_WRAP_T, GL.GL_CLAMP_TO_EDGE)
        GL.glBindTexture(GL.GL_TEXTURE_2D, 0)

    # -- upload ---------------------------------------------------------------------------------------
    def upload(self, slot: int, image: EyeImage) -> None:
        """Copy one eye's colour (and depth) to the GPU; call once per received frame, not per vsync."""
        color, depth = self._tex[slot]
        old = self._images[slot]
        GL.glPixelStorei(GL.GL_UNPACK_ALIGNMENT, 1)
        # Same size as last time: overwrite in place (no reallocation), else (re)allocate.
        same = old is not None and old.rgb.shape == image.rgb.shape
        self._load(color, GL.GL_RGB8, GL.GL_RGB, GL.GL_UNSIGNED_BYTE, np.ascontiguousarray(image.rgb), same)
        if image.depth is not None:
            same = old is not None and old.depth is not None and old.depth.shape == image.depth.shape
            self._load(depth, GL.GL_R32F, GL.GL_RED, GL.GL_FLOAT, np.ascontiguousarray(image.depth, np.float32), same)
        GL.glBindTexture(GL.GL_TEXTURE_2D, 0)
        self._images[slot] = image

    @staticmethod
    def _load(tex: int, internal, fmt, kind, data: np.ndarray, same_size: bool) -> None:
        h, w = data.shape[:2]
        GL.glBindTexture(GL.GL_TEXTURE_2D, tex)
        if same_size:
            GL.glTexSubImage2D(GL.GL_TEXTURE_2D, 0, 0, 0, w, h, fmt, kind, data)
        else:
            GL.glTexImage2D(GL.GL_TEXTURE_2D, 0, internal, w, h, 0, fmt, kind, data)

    def has_image(self, slot: int) -> bool:
        return self._images[slot] is not None

    # -- draw -----------------------------------------------------------------------------------------
    def draw(self, slot: int, world_from_eye: np.ndarray, fov: Fov) -> None:
        """Draw slot's image as seen from ``world_from_eye`` with ``fov`` into the bound framebuffer and
        viewport (clears depth; every pixel of the viewport is written).

        Convention: OpenXR pose in the same space as the image's render pose.
        """
        image = self._images[slot]
        if image is None:
            raise RuntimeError(f"reprojection: nothing uploaded to slot {slot}")
        if np.shape(world_from_eye) != (4, 4):
            raise ValueError(f"world_from_eye: expected (4, 4), got {np.shape(world_from_eye)}")
        cfg = self.config
        h, w = image.rgb.shape[:2]
        k, clip_from_cv, srcpix_from_eye = source_matrices(
            image.world_from_eye, image.fov, (w, h), world_from_eye, fov, cfg.near, cfg.far)
        color, depth = self._tex[slot]
        GL.glActiveTexture(GL.GL_TEXTURE0)
        GL.glBindTexture(GL.GL_TEXTURE_2D, color)
        GL.glClearDepth(1.0)
        GL.glClear(GL.GL_DEPTH_BUFFER_BIT)
        GL.glDisable(GL.GL_BLEND)
        GL.glDisable(GL.GL_CULL_FACE)

        # 1. rotation-only background (no depth test: it covers every pixel)
        GL.glDisable(GL.GL_DEPTH_TEST)
        GL.glUseProgram(self._ray)
        tans = np.tan([fov.angle_left, fov.angle_right, fov.angle_down, fov.angle_up])
        GL.glUniform1i(self._u[self._ray, "u_color"], 0)
        GL.glUniform2f(self._u[self._ray, "u_size"], w, h)
        GL.glUniform4f(self._u[self._ray, "u_dst_tan"], *tans)
        GL.glUniformMatrix3fv(self._u[self._ray, "u_srcpix_from_eye"], 1, GL.GL_TRUE,
                              srcpix_from_eye.astype(np.float32))
        GL.glBindVertexArray(self._empty_vao)
        GL.glDrawArrays(GL.GL_TRIANGLES, 0, 3)

        # 2. depth mesh
        if image.depth is not None:
            GL.glEnable(GL.GL_DEPTH_TEST)
            GL.glDepthFunc(GL.GL_LESS)
            GL.glUseProgram(self._mesh)
            GL.glActiveTexture(GL.GL_TEXTURE1)
            GL.glBindTexture(GL.GL_TEXTURE_2D, depth)
            GL.glUniform1i(self._u[self._mesh, "u_color"], 0)
            GL.glUniform1i(self._u[self._mesh, "u_depth"], 1)
            GL.glUniform2f(self._u[self._mesh, "u_size"], w, h)
            GL.glUniform4f(self._u[self._mesh, "u_k"], k[0, 0], k[1, 1], k[0, 2], k[1, 2])
            dh, dw = image.depth.shape
            kd = cameras.fov_to_intrinsics(image.fov, dw, dh)
            GL.glUniform2f(self._u[self._mesh, "u_dsize"], dw, dh)
            GL.glUniform4f(self._u[self._mesh, "u_kd"], kd[0, 0], kd[1, 1], kd[0, 2], kd[1, 2])
            GL.glUniform1f(self._u[self._mesh, "u_far_fill"], cfg.far_fill)
            GL.glUniformMatrix4fv(self._u[self._mesh, "u_clip_from_cv"], 1, GL.GL_TRUE,
                                  clip_from_cv.astype(np.float32))
            step = max(1, round(cfg.grid_step * dw / w))  # grid_step is in colour pixels
            vao, count = self._grid(dw, dh, step)
            GL.glBindVertexArray(vao)
            GL.glDrawElements(GL.GL_TRIANGLES, count, GL.GL_UNSIGNED_INT, ctypes.c_void_p(0))
            GL.glActiveTexture(GL.GL_TEXTURE0)
        GL.glBindVertexArray(0)
        GL.glUseProgram(0)

    def _grid(self, w: int, h: int, step: int) -> tuple[int, int]:
        key = (w, h, step)
        if key not in self._grids:
            verts, tris = grid_vertices(w, h, step)
            vao = GL.glGenVertexArrays(1)
            GL.glBindVertexArray(vao)
            vbo, ebo = GL.glGenBuffers(2)
            GL.glBindBuffer(GL.GL_ARRAY_BUFFER, vbo)
            GL.glBufferData(GL.GL_ARRAY_BUFFER, verts.nbytes, verts, GL.GL_STATIC_DRAW)
            GL.glEnableVertexAttribArray(0)
            GL.glVertexAttribPointer(0, 2, GL.GL_FLOAT, GL.GL_FALSE, 8, ctypes.c_void_p(0))
            GL.glBindBuffer(GL.GL_ELEMENT_ARRAY_BUFFER, ebo)
            GL.glBufferData(GL.GL_ELEMENT_ARRAY_BUFFER, tris.nbytes, tris, GL.GL_STATIC_DRAW)
            GL.glBindVertexArray(0)
            self._grids[key] = (vao, vbo, ebo, tris.size)
        vao, _, _, count = self._grids[key]
        return vao, count

    def release(self) -> None:
        GL.glDeleteProgram(self._mesh)
        GL.glDeleteProgram(self._ray)
        for vao, vbo, ebo, _ in self._grids.values():
            GL.glDeleteVertexArrays(1, [vao])
            GL.glDeleteBuffers(2, [vbo, ebo])
        GL.glDeleteVertexArrays(1, [self._empty_vao])
        for pair in self._tex:
            GL.glDeleteTextures(2, list(pair))
        self._grids.clear()
