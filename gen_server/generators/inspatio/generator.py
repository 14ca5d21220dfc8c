"""The InSpatio generator for the server seam: geometric renders -> streaming causal DiT -> TAEHV -> eyes.

Per 12-frame block: the geometric renderer draws the condition views (480x832 + validity) at the block's
poses and world times; TAEHV encodes them (temporal memory carried across blocks); the reference latents are
the source video's TAEHV latents at the same times (indexed by tau, so pause / reverse / slow motion just
pick other reference latents); the DiT denoises the block; TAEHV decodes it. Each generated frame keeps the
pose and depth (from the geometric render) it was made for, and `render_views` reprojects it to the eyes the
server asks for, so head motion since the block started is bridged like the client's reprojection does.

Stereo modes: "reproject" (default) generates one centre view and reprojects it to both eyes; "batched"
generates both eyes as a batch of two (twice the DiT cost).

Scheduling: synchronous by default (a call that finds no frame waits for a block). With
`asynchronous=True` a worker thread generates blocks ahead from the latest requested pose and time, and
`render_views` never waits: it returns the generated frame for tau if one is ready, else the plain geometric
render (the anchored world state keeps head motion real-time; the DiT refines when it can).
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gen_server import cameras
from gen_server.errors import InputError
from gen_server.generators.base import Views

from .checkpoint import file_sha256, load_dit, load_taehv
from .config import DiTConfig, StreamConfig, TAEHVConfig
from .engines import make_runner
from .stereo import relative_cv_transforms, reproject_views
from .streaming import BlockStreamer, pack_mask
from .taehv import TAEHVStream
from .text_embed import PROMPT_FILE, load_prompt_embedding

SOURCE_VIDEO = "source.mp4"


@dataclass
class GeneratedFrame:
    """One decoded frame with what it was generated for. color (V,H,W,3) uint8, depth (V,H,W) metres."""
    color: torch.Tensor
    depth: torch.Tensor
    world_from_view: np.ndarray  # (V, 4, 4) OpenXR
    intrinsics: np.ndarray  # (V, 3, 3) OpenCV at the stream size
    tau: float


def encode_source_latents(path: Path, tae_stream: TAEHVStream, stream: StreamConfig, device,
                          dtype) -> tuple[torch.Tensor, float]:
    """Source video -> TAEHV latents (L, 16, h, w) at stream size and the frame rate they were read at."""
    from gen_server.video_io import read_video_frames

    info, frames = read_video_frames(path, fps=None, max_side=None)
    fps = float(getattr(info, "fps", 0) or 0)
    chunk, latents, times = [], [], []
    size = (stream.height, stream.width)

    def flush(batch):
        x = torch.stack(batch).to(device).permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        latents.append(tae_stream.encode(x[None].to(dtype))[0])

    for t, rgb in frames:
        times.append(t)
        chunk.append(torch.from_numpy(np.ascontiguousarray(rgb)))
        if len(chunk) == stream.video_frames_per_block:
            flush(chunk)
            chunk = []
    if chunk:
        chunk += [chunk[-1]] * ((-len(chunk)) % stream.frames_per_latent)
        flush(chunk)
    if not latents:
        raise InputError(f"{path}: no frames")
    if not fps and len(times) > 1:
        fps = (len(times) - 1) / (times[-1] - times[0])
    return torch.cat(latents), fps or 24.0


class InSpatioGenerator:
    """`Generator` (gen_server.generators.base) backed by the InSpatio-World-compatible causal DiT.

    Options: checkpoint (InSpatio-World-1.3B.safetensors), taehv (taew2_1.pth), world_dir (holds source.mp4
    and prompt_embedding.safetensors), engine eager|cudagraph|compile|tensorrt, prompt_embedding (a stored
    file, default world_dir/prompt_embedding.safetensors), stereo reproject|batched, engine_cache (TensorRT).
    """

    #: A jump in world time larger than this (seconds) between calls is a seek: restart the stream.
    SEEK_S = 0.5

    def __init__(self, world, device: str | None = None, *, checkpoint: str, taehv: str,
                 world_dir: str | None = None, engine: str = "eager", prompt_embedding: str | None = None,
                 stereo: str = "reproject", engine_cache: str | None = None, seed: int = 0,
                 dit_config: DiTConfig | None = None, taehv_config: TAEHVConfig | None = None,
                 stream_config: StreamConfig | None = None, asynchronous: bool = False, **_options) -> None:
        from gen_server.render.renderer import RenderConfig, Renderer

        if stereo not in ("reproject", "batched"):
            raise InputError(f"--stereo {stereo!r}: expected reproject or batched")
        if world_dir is None:
            raise InputError("--generator inspatio needs the world directory (source.mp4, prompt embedding)")
        world_dir = Path(world_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        cuda = self.device.type == "cuda"
        self.stream = stream_config or StreamConfig()
        self.stereo = stereo
        self.world = world
        # No CUDA graphs for the condition renders: the DiT engine runs (and captures its own graphs) on
        # the producer thread, and a capture must not overlap GPU work on another thread.
        self.renderer = Renderer(world, device=self.device, config=RenderConfig(cuda_graphs=False))
        self.uses_gpu_on_own_threads = True
        self.dit = load_dit(checkpoint, dit_config, self.device, torch.bfloat16 if cuda else torch.float32)
        tae = load_taehv(taehv, taehv_config, self.device, torch.float16 if cuda else torch.float32)
        self.tae_dtype = next(tae.parameters()).dtype
        cfg = self.dit.cfg
        prompt = load_prompt_embedding(prompt_embedding or world_dir / PROMPT_FILE, cfg.text_dim, cfg.text_len)
        views = 1 if stereo == "reproject" else 2
        text = self.dit.text_context(prompt[None].expand(views, -1, -1).to(self.device))
        ckpt_hash = file_sha256(checkpoint) if engine == "tensorrt" else ""
        runner = make_runner(engine, self.dit, text, self.stream, views, cache_dir=engine_cache,
                             checkpoint_hash=ckpt_hash)
        self.streamer = BlockStreamer(runner, self.stream, seed=seed)
        source = world_dir / SOURCE_VIDEO
        if not source.is_file():
            raise InputError(f"{source}: missing (the world's source video gives the reference latents)")
        self.reference, self.source_fps = encode_source_latents(source, TAEHVStream(tae), self.stream,
                                                                self.device, self.tae_dtype)
        self.cond_tae, self.out_tae = TAEHVStream(tae), TAEHVStream(tae)
        self.queue: deque[GeneratedFrame] = deque()
        self.last_tau: float | None = None
        self.dtau = 1.0 / max(world.fps, 1e-6)
        self._lock = threading.Lock()
        self._request = None  # latest (world_from_eye, fovs, tau, dtau) for the worker
        self._reset_pending = False
        self._wake, self._stop = threading.Event(), threading.Event()
        self.worker_error: BaseException | None = None
        self._worker = None
        if asynchronous:
            self._worker = threading.Thread(target=self._produce, name="inspatio-generator", daemon=True)
            self._worker.start()

    def close(self) -> None:
        """Stop the worker thread (asynchronous mode)."""
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=30)

    # -- stream control ------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Start a new stream (after a seek): fresh DiT context and TAEHV memories."""
        self.streamer.reset()
        self.cond_tae.reset()
        self.out_tae.reset()
        self.queue.clear()

    def reference_latents(self, taus: np.ndarray) -> torch.Tensor:
        """Reference latent for each latent frame of a block: the source latent covering its first frame."""
        step = self.stream.frames_per_latent
        idx = [min(max(int(round(t * self.source_fps)) // step, 0), len(self.reference) - 1) for t in taus[::step]]
        return self.reference[idx]

    def _view_poses(self, world_from_eye: np.ndarray, fovs) -> tuple[np.ndarray, list]:
        """Poses the DiT generates: both eyes ("batched") or one centre view between the first two eyes."""
        if self.stereo == "batched":
            if len(world_from_eye) < 2:
                return np.repeat(world_from_eye[:1], 2, 0), [fovs[0], fovs[0]]
            return world_from_eye[:2].copy(), list(fovs[:2])
        centre = world_from_eye[0].copy()
        if len(world_from_eye) > 1:
            centre[:3, 3] = 0.5 * (world_from_eye[0, :3, 3] + world_from_eye[1, :3, 3])
            f0, f1 = fovs[0], fovs[1]
            fov = cameras.Fov(min(f0.angle_left, f1.angle_left), max(f0.angle_right, f1.angle_right),
                              max(f0.angle_up, f1.angle_up), min(f0.angle_down, f1.angle_down))
            return centre[None], [fov]
        return centre[None], [fovs[0]]

    @torch.no_grad()
    def generate_block(self, world_from_view: np.ndarray, fovs, tau0: float, dtau: float) -> int:
        """Generate one block for poses (V,4,4) held over its 12 frames at taus tau0 + k*dtau. Returns frames queued."""
        s = self.stream
        n = s.video_frames_per_block
        taus = tau0 + dtau * np.arange(n)
        ks = np.stack([cameras.fov_to_intrinsics(f, s.width, s.height) for f in fovs])
        renders = [self.renderer.render(world_from_view, ks, s.width, s.height, float(t)) for t in taus]
        color = torch.stack([r.color for r in renders], 1)  # (V, 12, H, W, 3) uint8
        depth = torch.stack([r.depth for r in renders], 1)
        valid = torch.stack([r.valid for r in renders], 1)
        cond = color.permute(0, 1, 4, 2, 3).to(self.tae_dtype) / 255.0
        render_lat = self.cond_tae.encode(cond)
        mask = pack_mask(valid, s.latent_hw, s.frames_per_latent)
        v = len(world_from_view)
        ref = self.reference_latents(taus)[None].expand(v, -1, -1, -1, -1)
        dt = next(self.dit.parameters()).dtype
        latents = self.streamer.denoise_block(ref.to(dt), render_lat.to(dt), mask.to(dt))
        frames = self.out_tae.decode(latents.to(self.tae_dtype))  # (V, <=12, 3, H, W) in [0, 1]
        first = n - frames.shape[1]  # the stream's first block loses the decoder's startup frames
        rgb = (frames.float() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2)
        made = [GeneratedFrame(rgb[:, i], depth[:, first + i], world_from_view, ks, float(taus[first + i]))
                for i in range(frames.shape[1])]
        with self._lock:
            self.queue.extend(made)
        return len(made)

    # -- asynchronous worker -------------------------------------------------------------------------------
    def _produce(self) -> None:
        """Keep about one block of frames ahead of the latest request; resets happen here, between blocks."""
        while not self._stop.is_set():
            self._wake.wait(0.05)
            self._wake.clear()
            with self._lock:
                request, reset = self._request, self._reset_pending
                self._reset_pending = False
                backlog = len(self.queue)
                tail_tau = self.queue[-1].tau if self.queue else None
            if reset:
                self.reset()
                tail_tau = None
            if request is None or backlog >= self.stream.video_frames_per_block:
                continue
            world_from_eye, fovs, tau, dtau = request
            start = tau if tail_tau is None else tail_tau + dtau  # continue the queued frames' timeline
            try:
                poses, vfovs = self._view_poses(world_from_eye, fovs)
                self.generate_block(poses, vfovs, start, dtau)
            except BaseException as exc:  # noqa: BLE001 - surfaced by render_views, the server stays up
                self.worker_error = exc
                return

    def _render_async(self, world_from_eye, fovs, width: int, height: int, tau: float, seek: bool) -> Views:
        period = 1.0 / max(self.world.fps, 1e-6)
        if self.worker_error is not None:
            raise RuntimeError(f"inspatio generator worker failed: {self.worker_error!r}")
        frame = None
        with self._lock:
            if seek:
                self.queue.clear()
                self._reset_pending = True
            ahead = 1.0 if self.dtau >= 0 else -1.0
            while self.queue and ahead * (tau - self.queue[0].tau) > 0.5 * period:
                self.queue.popleft()  # frames for times already passed
            if self.queue and abs(self.queue[0].tau - tau) <= 1.5 * period:
                frame = self.queue.popleft()
            self._request = (world_from_eye.copy(), list(fovs), tau, self.dtau)
        self._wake.set()
        if frame is None:  # nothing generated for this time yet: the anchored world's own render
            out = self.renderer.render_fov(world_from_eye, list(fovs), width, height, tau)
            return Views(color=out.color, depth=out.depth, valid=out.valid)
        return self._to_eyes(frame, world_from_eye, fovs, width, height)

    # -- the seam ------------------------------------------------------------------------------------------
    def render_views(self, world_from_eye: np.ndarray, fovs: list, width: int, height: int, tau: float) -> Views:
        """Convention: world_from_eye (B,4,4) OpenXR poses, OpenXR fovs; returns Views (torch, on device):
        color (B,H,W,3) uint8, depth (B,H,W) z metres, valid (B,H,W) bool."""
        world_from_eye = np.asarray(world_from_eye, np.float64)
        if world_from_eye.ndim != 3 or world_from_eye.shape[1:] != (4, 4) or len(fovs) != len(world_from_eye):
            raise ValueError(f"render_views: world_from_eye (B, 4, 4) with B fovs expected, got "
                             f"{world_from_eye.shape}, {len(fovs)} fovs")
        seek = self.last_tau is not None and abs(tau - self.last_tau) > self.SEEK_S
        if self.last_tau is not None and not seek:
            self.dtau = tau - self.last_tau  # 0 while paused: the block holds its time; < 0 in reverse
        self.last_tau = tau
        if self._worker is not None:
            return self._render_async(world_from_eye, fovs, width, height, tau, seek)
        if seek or (self.queue and abs(self.queue[0].tau - tau) > self.SEEK_S):
            self.reset()  # the queued frames and the DiT context are for another time
        while not self.queue:
            poses, vfovs = self._view_poses(world_from_eye, fovs)
            self.generate_block(poses, vfovs, tau, self.dtau)
        frame = self.queue.popleft()
        return self._to_eyes(frame, world_from_eye, fovs, width, height)

    def _to_eyes(self, frame: GeneratedFrame, world_from_eye, fovs, width: int, height: int) -> Views:
        """Reproject the generated view(s) to the requested eyes at stream pixel density, then resize."""
        s = self.stream
        scale = min(1.0, max(s.width, s.height) / max(width, height))
        ho, wo = max(1, round(height * scale)), max(1, round(width * scale))
        colors, depths, valids = [], [], []
        for i, (pose, fov) in enumerate(zip(world_from_eye, fovs)):
            src = min(i, len(frame.world_from_view) - 1)
            rel = relative_cv_transforms(frame.world_from_view[src], pose[None])
            k_dst = torch.from_numpy(cameras.fov_to_intrinsics(fov, wo, ho))[None]
            c, d, v = reproject_views(frame.color[src][None], frame.depth[src][None],
                                      torch.from_numpy(frame.intrinsics[src]), torch.from_numpy(rel), k_dst,
                                      out_hw=(ho, wo))
            colors.append(c[0, 0]), depths.append(d[0, 0]), valids.append(v[0, 0])
        color, depth, valid = torch.stack(colors), torch.stack(depths), torch.stack(valids)
        if (ho, wo) != (height, width):
            color = F.interpolate(color.permute(0, 3, 1, 2).float(), size=(height, width), mode="bilinear",
                                  align_corners=False).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
            depth = F.interpolate(depth[:, None], size=(height, width), mode="nearest")[:, 0]
            valid = F.interpolate(valid[:, None].float(), size=(height, width), mode="nearest")[:, 0] > 0.5
        return Views(color=color.contiguous(), depth=depth.contiguous(), valid=valid.contiguous())
