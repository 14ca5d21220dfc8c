"""Client benchmark (``timewalk bench client`` calls :func:`run`): CPU time per vsync for reprojecting both
eyes (upload amortised, draw, finish) and decode time per received frame (JPEG colour + inverse-depth).

Offscreen EGL: on a machine without a GPU this is Mesa llvmpipe (software) and the numbers say so in
``gl_renderer``. No torch.
"""

from __future__ import annotations

import math
import os
import platform
import time

import numpy as np
import simplejpeg

from gen_server import cameras
from gen_server.cameras import Fov
from gen_server.codec import CodecConfig, pack_depth, quantize_inverse_depth

DEPTH = CodecConfig().depth_codec  # what the server sends by default


def _synthetic_eye(width: int, height: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    u, v = cameras.pixel_grid(width, height)
    rgb = np.stack([128 + 100 * np.sin(u / 23.0), 128 + 100 * np.cos(v / 17.0), 128 + 60 * np.sin((u + v) / 31.0)], -1)
    rgb = np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
    depth = (2.0 + 1.5 * np.sin(u / 97.0) * np.cos(v / 83.0)).astype(np.float32)
    return rgb, depth


def run(width: int = 1440, height: int = 1600, vsyncs: int = 120, frame_every: int = 4, depth_downscale: int = 2,
        grid_step: int = 4) -> dict:
    """Per-eye ``width`` x ``height`` (the server's eye size and the display's); a new frame arrives every
    ``frame_every`` vsyncs (24 FPS content on a 90 Hz display ~ 3.75). Returns timings in ms."""
    from xr_client.gl_context import create_egl_context

    ctx = create_egl_context()
    from OpenGL import GL

    from xr_client.frame_decode import decode_color, decode_depth
    from xr_client.render_target import RenderTarget
    from xr_client.reprojection import EyeImage, ReprojectionConfig, Reprojector

    fov = Fov.symmetric(math.radians(100), width / height)
    near, far = 0.1, 100.0
    dw, dh = width // depth_downscale, height // depth_downscale
    eyes = [_synthetic_eye(width, height, i) for i in range(2)]
    payloads = [(simplejpeg.encode_jpeg(rgb, quality=85, colorspace="RGB"),
                 pack_depth(quantize_inverse_depth(depth[::depth_downscale, ::depth_downscale], near, far), DEPTH))
                for rgb, depth in eyes]

    decode_ms = []
    for _ in range(max(3, vsyncs // frame_every)):
        t0 = time.perf_counter()
        for jpg, dep in payloads:
            decode_color("jpeg", jpg, width, height)
            decode_depth(DEPTH, dep, dw, dh, near, far)
        decode_ms.append((time.perf_counter() - t0) * 1e3)
    decoded = [(decode_color("jpeg", j, width, height), decode_depth(DEPTH, d, dw, dh, near, far))
               for j, d in payloads]

    reproj = Reprojector(ReprojectionConfig(grid_step=grid_step, near=near, far=far))
    targets = [RenderTarget(width, height) for _ in range(2)]
    head0 = cameras.look_at([0, 1.6, 0], [0, 1.6, -1])
    upload_ms, vsync_ms = [], []
    for i in range(vsyncs + 5):
        t0 = time.perf_counter()
        if i % frame_every == 0:
            t_up = time.perf_counter()
            src_eyes = cameras.eye_poses(head0, 0.063)
            for slot, (rgb, depth) in enumerate(decoded):
                reproj.upload(slot, EyeImage(rgb, depth, src_eyes[slot], fov))
            up = (time.perf_counter() - t_up) * 1e3
        # The head keeps moving between frames: a few degrees and centimetres.
        head = head0 @ cameras.pose_to_matrix([0.02 * math.sin(i / 7), 0.0, 0.01 * math.cos(i / 5)],
                                              cameras.matrix_to_quat(cameras.yaw_pitch_to_matrix(0.05 * math.sin(i / 9))))
        for slot, eye in enumerate(cameras.eye_poses(head, 0.063)):
            targets[slot].bind()
            reproj.draw(slot, eye, fov)
        GL.glFinish()  # count the GPU (here: llvmpipe) work, not just command submission
        if i >= 5:  # warm-up excluded
            vsync_ms.append((time.perf_counter() - t0) * 1e3)
            if i % frame_every == 0:
                upload_ms.append(up)
    renderer = GL.glGetString(GL.GL_RENDERER).decode()
    for t in targets:
        t.release()
    reproj.release()
    ctx.release()

    def summary(values):
        if not values:
            return {"mean": None, "p50": None, "p95": None}
        return {"mean": float(np.mean(values)), "p50": float(np.percentile(values, 50)),
                "p95": float(np.percentile(values, 95))}

    return {
        "eye_size": [width, height], "depth_size": [dw, dh], "vsyncs": vsyncs, "frame_every": frame_every,
        "grid_step": grid_step,
        "vsync_ms_both_eyes": summary(vsync_ms),      # upload (when a frame came) + reprojection + finish
        "upload_ms_per_frame": summary(upload_ms),
        "decode_ms_per_frame": summary(decode_ms),     # both eyes: JPEG + depth
        "gl_renderer": renderer, "software_gl": "llvmpipe" in renderer.lower() or "softpipe" in renderer.lower(),
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "system": platform.platform()},
    }


if __name__ == "__main__":
    import json
    import sys

    w, h, n = (int(a) for a in (sys.argv[1:4] if len(sys.argv) >= 4 else (1440, 1600, 60)))
    print(json.dumps(run(w, h, n), indent=1))
