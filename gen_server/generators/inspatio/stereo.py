"""Stereo from one generated centre view: forward-warp colour with its z-depth to each eye (z-buffered).

Used by the "centre + reproject" stereo mode: the DiT generates one view, both eyes are reprojected from
it; disocclusions come out invalid (the client's reprojection / the geometric layer fills them).
"""
from __future__ import annotations

import numpy as np
import torch

from gen_server.cameras import cv_camera_from_world


def relative_cv_transforms(world_from_src: np.ndarray, world_from_dst: np.ndarray) -> np.ndarray:
    """(4,4) OpenXR source pose, (V,4,4) OpenXR target poses -> (V,4,4) dst_cv_from_src_cv.

    Convention: OpenXR poses in, OpenCV camera frames (x right, y down, +z forward) out; axis conversion by
    gen_server.cameras only.
    """
    src_cv_from_world = cv_camera_from_world(np.asarray(world_from_src, np.float64))
    dst_cv_from_world = cv_camera_from_world(np.asarray(world_from_dst, np.float64))
    return dst_cv_from_world @ np.linalg.inv(src_cv_from_world)


def reproject_views(color: torch.Tensor, depth: torch.Tensor, k_src: torch.Tensor, dst_from_src: torch.Tensor,
                    k_dst: torch.Tensor, out_hw: tuple[int, int] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward-warp frames to V target cameras with nearest-pixel z-buffered splatting.

    Convention: color (T, H, W, 3) uint8, depth (T, H, W) float32 z-depth metres (<= 0 = no surface),
    OpenCV intrinsics k_src (3,3), k_dst (V,3,3), dst_from_src (V,4,4) OpenCV camera-to-camera.
    out_hw: target image size (default: the source size); k_dst must be for that size.
    Returns color (T, V, Ho, Wo, 3) uint8, depth (T, V, Ho, Wo) float32 (target z), valid (T, V, Ho, Wo) bool.
    """
    if color.ndim != 4 or color.shape[-1] != 3 or depth.shape != color.shape[:3]:
        raise ValueError(f"color {tuple(color.shape)} / depth {tuple(depth.shape)}: expected (T,H,W,3) / (T,H,W)")
    t, h, w = depth.shape
    v = dst_from_src.shape[0]
    ho, wo = out_hw or (h, w)
    dev = depth.device
    ys, xs = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float32),
                            torch.arange(w, device=dev, dtype=torch.float32), indexing="ij")
    k_src, k_dst, rel = k_src.float().to(dev), k_dst.float().to(dev), dst_from_src.float().to(dev)
    z = depth.reshape(t, 1, -1)
    rays = torch.stack([(xs.flatten() - k_src[0, 2]) / k_src[0, 0], (ys.flatten() - k_src[1, 2]) / k_src[1, 1],
                        torch.ones(h * w, device=dev)])  # (3, HW)
    pts = rays[None] * z  # (T, 3, HW) source camera
    cam = torch.einsum("vij,tjn->tvin", rel[:, :3, :3], pts) + rel[None, :, :3, 3:]  # (T, V, 3, HW)
    proj = torch.einsum("vij,tvjn->tvin", k_dst, cam)
    zd = cam[:, :, 2]
    u = torch.round(proj[:, :, 0] / zd.clamp_min(1e-6))
    vv = torch.round(proj[:, :, 1] / zd.clamp_min(1e-6))
    ok = (z > 0) & (zd > 1e-6) & (u >= 0) & (u < wo) & (vv >= 0) & (vv < ho)
    target = (vv * wo + u).long().clamp(0, ho * wo - 1)
    # Nearest surface wins: pack (depth in micrometres, source index) into one int64 key for amin.
    src_index = torch.arange(h * w, device=dev).expand_as(target)
    key = (zd.clamp(0, 1e6) * 1e6).long() * (h * w) + src_index
    key = torch.where(ok, key, torch.full_like(key, torch.iinfo(torch.int64).max))
    best = torch.full((t, v, ho * wo), torch.iinfo(torch.int64).max, device=dev, dtype=torch.int64)
    best.scatter_reduce_(2, target, key, reduce="amin")
    valid = best != torch.iinfo(torch.int64).max
    winner = torch.where(valid, best % (h * w), torch.zeros_like(best))
    flat = color.reshape(t, 1, h * w, 3).expand(t, v, h * w, 3)
    out_color = torch.gather(flat, 2, winner[..., None].expand(t, v, ho * wo, 3))
    out_color = torch.where(valid[..., None], out_color, torch.zeros_like(out_color))
    out_depth = torch.where(valid, torch.gather(zd, 2, winner), torch.zeros(1, device=dev))
    return (out_color.reshape(t, v, ho, wo, 3), out_depth.reshape(t, v, ho, wo).float(),
            valid.reshape(t, v, ho, wo))
