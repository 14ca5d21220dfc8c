"""Novel-view quality: our fused world state vs InSpatio-World's single-frame forward warp.

On the synthetic scene (exact ground truth from ``SyntheticScene.render``) a world is built with
``build_world``; held-out cameras sit ``offset`` metres sideways of the source camera of frame f. Two
renders of each held-out view are compared with the ground truth:

* ours: ``Renderer`` on the fused world at tau = time of frame f (hole-filled);
* single-frame warp (InSpatio-World's condition renderer): only source frame f, forward-warped to the
  target with bilinear splatting and a depth-based weight that favours near surfaces; holes stay black.

PSNR is reported over the whole image and over the pixels the single-frame warp cannot see (its holes),
where the fused state has to supply content from other frames. "Whole image" means every pixel that sees
scene geometry: the synthetic room has open sky (ground-truth depth 0, no surface at all), which no
geometric method can render and which is excluded for both methods.

    python -m gen_server.benchmarks.quality --width 192 --height 128 --seconds 2
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from gen_server import cameras


# ----------------------------------------------------------------------------------------------------
# The baseline: single-frame forward warping
# ----------------------------------------------------------------------------------------------------
def single_frame_warp(rgb: np.ndarray, depth: np.ndarray, src_k: np.ndarray, src_pose: np.ndarray,
                      dst_pose: np.ndarray, dst_k: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Forward-warp one RGB-D frame to another camera -> (rgb (H, W, 3) uint8, valid (H, W) bool).

    Convention: OpenXR poses, OpenCV intrinsics, z-depth metres (<= 0 = no depth). Each source pixel is
    splatted bilinearly onto its 4 neighbouring target pixels with weight ``bilinear * exp(-50 *
    log(1 + z) / log(1 + z_max))`` (near surfaces dominate, as in InSpatio-World's warper); pixels that
    no source pixel reaches are holes: black and invalid.
    """
    if rgb.shape[:2] != depth.shape:
        raise ValueError(f"single_frame_warp: rgb {rgb.shape} and depth {depth.shape} differ")
    pts = cameras.unproject_depth(depth, src_k, src_pose).reshape(-1, 3)
    ok = np.isfinite(pts).all(1)
    uv, z = cameras.project_points(pts[ok], dst_pose, dst_k)
    colors = rgb.reshape(-1, 3)[ok].astype(np.float64)
    front = z > 1e-3
    uv, z, colors = uv[front], z[front], colors[front]
    log_z = np.log1p(np.clip(z, 0, 1000))
    depth_weight = np.exp(-50.0 * log_z / max(log_z.max(initial=0.0), 1e-6))
    x0, y0 = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
    fx, fy = uv[:, 0] - x0, uv[:, 1] - y0
    acc = np.zeros((height * width, 3))
    wsum = np.zeros(height * width)
    cover = np.zeros(height * width)  # bilinear coverage alone (the depth weight only arbitrates)
    for dx, dy, wb in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        x, y = x0 + dx, y0 + dy
        inside = (x >= 0) & (x < width) & (y >= 0) & (y < height) & (wb > 0)
        idx = y[inside] * width + x[inside]
        w = wb[inside] * depth_weight[inside]
        np.add.at(wsum, idx, w)
        np.add.at(cover, idx, wb[inside])
        np.add.at(acc, idx, colors[inside] * w[:, None])
    valid = (cover > 1e-6) & (wsum > 0)
    out = np.zeros((height * width, 3))
    out[valid] = acc[valid] / wsum[valid, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(height, width, 3), valid.reshape(height, width)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB between uint8 images over ``mask`` (all pixels if None); inf if identical."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    if mask is not None:
        diff = diff[mask]
    if diff.size == 0:
        return float("nan")
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


# ----------------------------------------------------------------------------------------------------
# The comparison
# ----------------------------------------------------------------------------------------------------
@dataclass
class QualityResult:
    width: int
    height: int
    frames_evaluated: int
    offset_m: float
    ours_psnr: float
    warp_psnr: float
    ours_psnr_warp_holes: float
    warp_psnr_warp_holes: float
    warp_hole_fraction: float  # of the scene pixels
    ours_invalid_fraction: float  # of the scene pixels
    sky_fraction: float  # pixels without geometry, excluded from both

    def lines(self) -> list[str]:
        return [
            f"held-out views {self.offset_m:g} m sideways, {self.frames_evaluated} frames at {self.width}x{self.height}",
            f"PSNR whole image:            ours {self.ours_psnr:6.2f} dB   single-frame warp {self.warp_psnr:6.2f} dB",
            f"PSNR on warp's holes ({100 * self.warp_hole_fraction:.1f}%): ours {self.ours_psnr_warp_holes:6.2f} dB   "
            f"single-frame warp {self.warp_psnr_warp_holes:6.2f} dB",
            f"ours: {100 * self.ours_invalid_fraction:.1f}% of scene pixels hole-filled (no splat); "
            f"{100 * self.sky_fraction:.1f}% sky pixels (no geometry) excluded from both",
        ]


def held_out_pose(world_from_camera: np.ndarray, offset: float) -> np.ndarray:
    """The camera moved ``offset`` metres along its own +X (right) axis. Convention: OpenXR pose."""
    shift = np.eye(4)
    shift[0, 3] = offset
    return world_from_camera @ shift


def evaluate(world, scene, frames: list[int], offset: float = 0.5, device: str | None = None) -> QualityResult:
    """Compare both methods on held-out views next to the source cameras of ``frames``."""
    from gen_server.render.renderer import Renderer

    renderer = Renderer(world, device)
    w, h = world.image_size
    gts, ours, warps, warp_valid, ours_valid, geometry = [], [], [], [], [], []
    for f in frames:
        t = float(world.times[f])
        k, src = world.intrinsics[f], world.camera_poses[f]
        dst = held_out_pose(src, offset)
        src_rgb, src_depth, _ = scene.render(src, k, w, h, t)
        gt, gt_depth, _ = scene.render(dst, k, w, h, t)
        geometry.append(gt_depth > 0)
        out = renderer.render(dst, k, w, h, t)
        warped, valid = single_frame_warp(src_rgb, src_depth, k, src, dst, k, w, h)
        gts.append(gt)
        ours.append(out.color[0].cpu().numpy())
        ours_valid.append(out.valid[0].cpu().numpy())
        warps.append(warped)
        warp_valid.append(valid)
    gt, mine, warp = np.stack(gts), np.stack(ours), np.stack(warps)
    scene_px = np.stack(geometry)
    holes = ~np.stack(warp_valid) & scene_px
    return QualityResult(
        w, h, len(frames), offset,
        psnr(mine, gt, scene_px), psnr(warp, gt, scene_px), psnr(mine, gt, holes), psnr(warp, gt, holes),
        float(holes.sum() / scene_px.sum()), float(1.0 - np.stack(ours_valid)[scene_px].mean()), float(1.0 - scene_px.mean()),
    )


def run(width: int = 192, height: int = 128, seconds: float = 2.0, fps: float = 8.0, seed: int = 0,
        offset: float = 0.5, eval_frames: int = 4, device: str | None = None, work_dir: str | Path | None = None) -> QualityResult:
    """Write the synthetic dataset, build a world from it, evaluate ``eval_frames`` frames spread over it."""
    from gen_server.world.build import build_world
    from gen_server.world.store import load_world
    from gen_server.world.synth import SyntheticScene, write_synthetic_dataset

    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        data, world_dir = Path(tmp) / "synthetic", Path(tmp) / "world"
        write_synthetic_dataset(data, width, height, seconds, fps, seed)
        build_world(data, world_dir, device=device, progress=False, write_source_video=False)
        world = load_world(world_dir)
    frames = sorted(set(np.linspace(0, world.frame_count - 1, eval_frames).round().astype(int).tolist()))
    return evaluate(world, SyntheticScene(seed=seed), frames, offset, device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="quality", description="fused world vs single-frame warping on held-out views")
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offset", type=float, default=0.5, help="metres sideways of the source camera")
    p.add_argument("--eval-frames", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    r = run(args.width, args.height, args.seconds, args.fps, args.seed, args.offset, args.eval_frames, args.device)
    print(json.dumps(asdict(r), indent=1) if args.json else "\n".join(r.lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
