"""The heads-up display: timeline (tau, rate, paused, bookmarks), fps, latency and "reconnecting".

The HUD is drawn on the CPU into a small RGBA image (a built-in 3x5 pixel font: the client carries no
font files or imaging library) and shown as a textured quad near the bottom of each eye. The image is
redrawn only when its text changes. "RECONNECTING" shows even when the HUD is toggled off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# 3x5 glyphs, rows top to bottom, '1' = lit.
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", "A": "010101111101101", "B": "110101110101110",
    "C": "011100100100011", "D": "110101101101110", "E": "111100110100111", "F": "111100110100100",
    "G": "011100101101011", "H": "101101111101101", "I": "111010010010111", "J": "001001001101010",
    "K": "101101110101101", "L": "100100100100111", "M": "101111111101101", "N": "110101101101101",
    "O": "010101101101010", "P": "110101110100100", "Q": "010101101110011", "R": "110101110101101",
    "S": "011100010001110", "T": "111010010010010", "U": "101101101101111", "V": "101101101101010",
    "W": "101101111111101", "X": "101101010101101", "Y": "101101010010010", "Z": "111001010100111",
    " ": "000000000000000", ".": "000000000000010", ":": "000010000010000", "-": "000000111000000",
    "+": "000010111010000", "/": "001001010100100", "%": "101001010100101", "=": "000111000111000",
    "|": "010010010010010",
}
GLYPH_W, GLYPH_H = 3, 5


@dataclass
class HudState:
    tau: float = 0.0
    duration: float = 0.0
    rate: float = 1.0
    paused: bool = False
    bookmarks: list[float] = field(default_factory=list)
    fps: float = 0.0
    latency_ms: float | None = None
    reconnecting: bool = False
    waiting: bool = False      # no frame received yet
    visible: bool = True

    def lines(self) -> list[str]:
        out = []
        if self.visible:
            out.append(f"T {self.tau:5.1f}S/{self.duration:.1f}  RATE {self.rate:+.2f}X" + ("  PAUSED" if self.paused else ""))
            lat = "--" if self.latency_ms is None else f"{self.latency_ms:.0f}MS"
            out.append(f"FPS {self.fps:.0f}  LATENCY {lat}  BOOKMARKS {len(self.bookmarks)}")
        if self.waiting:
            out.append("WAITING FOR SERVER")
        elif self.reconnecting:
            out.append("RECONNECTING")
        return out


def draw_text(image: np.ndarray, text: str, x: int, y: int, scale: int, color) -> None:
    """Draw upper-cased ``text`` into an (H, W, 4) uint8 image at pixel (x, y) (top-left), in place."""
    for i, ch in enumerate(text.upper()):
        glyph = _GLYPHS.get(ch, _GLYPHS["-"])  # unknown characters show as a dash
        bits = np.array([c == "1" for c in glyph]).reshape(GLYPH_H, GLYPH_W)
        block = np.kron(bits, np.ones((scale, scale), bool))
        x0 = x + i * (GLYPH_W + 1) * scale
        h, w = block.shape
        region = image[y:y + h, x0:x0 + w]
        region[block[:region.shape[0], :region.shape[1]]] = color


def render_hud(state: HudState, width: int = 320, scale: int = 2) -> np.ndarray:
    """The HUD as an (H, W, 4) uint8 RGBA image, top row first; H fits the lines and the timeline bar."""
    line_h = (GLYPH_H + 2) * scale
    lines = state.lines()
    bar = state.visible and state.duration > 0
    height = max(1, len(lines) * line_h + (4 * scale if bar else 0) + 2 * scale)
    img = np.zeros((height, width, 4), np.uint8)
    if not lines:
        return img
    img[..., 3] = 150  # translucent dark panel
    y = scale
    for text in lines:
        color = (255, 80, 80, 255) if text in ("RECONNECTING", "WAITING FOR SERVER") else (255, 255, 255, 255)
        draw_text(img, text, scale, y, scale, color)
        y += line_h
    if bar:
        x0, x1, yb = scale, width - scale, y + scale
        img[yb:yb + scale, x0:x1] = (160, 160, 160, 255)
        for b in state.bookmarks:
            bx = x0 + int(round(np.clip(b / state.duration, 0, 1) * (x1 - x0 - 1)))
            img[yb - scale:yb + 2 * scale, bx] = (255, 200, 0, 255)
        tx = x0 + int(round(np.clip(state.tau / state.duration, 0, 1) * (x1 - x0 - 1)))
        img[yb - scale:yb + 2 * scale, max(tx - 1, 0):tx + 2] = (80, 200, 255, 255)
    return img


_VS = """
#version 330 core
uniform vec4 u_rect;  // x0, y0, x1, y1 in NDC
out vec2 v_uv;
void main() {
    vec2 c = vec2((gl_VertexID == 1 || gl_VertexID == 2) ? 1.0 : 0.0, (gl_VertexID >= 2) ? 1.0 : 0.0);
    v_uv = vec2(c.x, 1.0 - c.y);  // image rows are top first
    gl_Position = vec4(mix(u_rect.xy, u_rect.zw, c), 0.0, 1.0);
}
"""
_FS = """
#version 330 core
in vec2 v_uv;
uniform sampler2D u_tex;
out vec4 frag;
void main() { frag = texture(u_tex, v_uv); }
"""


class HudOverlay:
    """Uploads the HUD image when it changes and draws it as a quad over the bound framebuffer."""

    def __init__(self, width_fraction: float = 0.5):
        from OpenGL import GL

        from xr_client.reprojection import _compile

        self.width_fraction = width_fraction
        self._prog = _compile(_VS, _FS)
        self._vao = GL.glGenVertexArrays(1)
        self._tex = GL.glGenTextures(1)
        GL.glBindTexture(GL.GL_TEXTURE_2D, self._tex)
        GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MIN_FILTER, GL.GL_LINEAR)
        GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MAG_FILTER, GL.GL_NEAREST)
        GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_WRAP_S, GL.GL_CLAMP_TO_EDGE)
        GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_WRAP_T, GL.GL_CLAMP_TO_EDGE)
        self._lines: list[str] | None = None
        self._size = (0, 0)

    def update(self, state: HudState) -> None:
        from OpenGL import GL

        lines = state.lines() + [f"{state.tau / max(state.duration, 1e-9):.2f}"]  # bar moves too
        if lines == self._lines:
            return
        self._lines = lines
        img = render_hud(state)
        self._size = (img.shape[1], img.shape[0]) if state.lines() else (0, 0)
        GL.glBindTexture(GL.GL_TEXTURE_2D, self._tex)
        GL.glPixelStorei(GL.GL_UNPACK_ALIGNMENT, 1)
        GL.glTexImage2D(GL.GL_TEXTURE_2D, 0, GL.GL_RGBA8, img.shape[1], img.shape[0], 0, GL.GL_RGBA,
                        GL.GL_UNSIGNED_BYTE, np.ascontiguousarray(img))

    def draw(self, viewport_w: int, viewport_h: int, shift_x: float = 0.0) -> None:
        """Centred, ``width_fraction`` of the viewport wide, a little below the centre; ``shift_x`` (NDC)
        gives each eye the disparity of a panel at a comfortable distance instead of infinity."""
        from OpenGL import GL

        w, h = self._size
        if w == 0:
            return
        half_w = self.width_fraction
        half_h = half_w * (h / w) * (viewport_w / viewport_h)
        GL.glDisable(GL.GL_DEPTH_TEST)
        GL.glEnable(GL.GL_BLEND)
        GL.glBlendFunc(GL.GL_SRC_ALPHA, GL.GL_ONE_MINUS_SRC_ALPHA)
        GL.glUseProgram(self._prog)
        GL.glActiveTexture(GL.GL_TEXTURE0)
        GL.glBindTexture(GL.GL_TEXTURE_2D, self._tex)
        GL.glUniform1i(GL.glGetUniformLocation(self._prog, "u_tex"), 0)
        GL.glUniform4f(GL.glGetUniformLocation(self._prog, "u_rect"), shift_x - half_w, -0.35 - half_h,
                       shift_x + half_w, -0.35 + half_h)
        GL.glBindVertexArray(self._vao)
        GL.glDrawArrays(GL.GL_TRIANGLE_FAN, 0, 4)
        GL.glBindVertexArray(0)
        GL.glUseProgram(0)
        GL.glDisable(GL.GL_BLEND)

    def release(self) -> None:
        from OpenGL import GL

        GL.glDeleteProgram(self._prog)
        GL.glDeleteVertexArrays(1, [self._vao])
        GL.glDeleteTextures(1, [self._tex])
