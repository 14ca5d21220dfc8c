"""Fusion into the anchored world state: fast torch paths vs slow references, dynamic detection on
constructed cases, and a synthetic RGB-D clip with known geometry and ground-truth motion masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gen_server import cameras
from gen_server.world.dynamic_detect import (DetectionView, DynamicDetectConfig, detect_dynamic, detection_colors,
                                                neighbour_evidence)
from gen_server.world.frames import SourceFrame
from gen_server.world.fusion import (FusionConfig, VoxelAccumulator, WorldFuser, fuse_frames, pixel_footprint,
                                     unproject_depth_torch)

W, H = 64, 48
K = cameras.fov_to_intrinsics(cameras.Fov.symmetric(math.radians(60), W / H), W, H)


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float32)


def _view(depth: np.ndarray, rgb: np.ndarray, pose: np.ndarray) -> DetectionView:
    return DetectionView(_t(depth), _colors(rgb), _t(K), _t(cameras.cv_camera_from_world(pose)), 1)


def _colors(rgb: np.ndarray) -> torch.Tensor:
    return detection_colors(_t(rgb) / 255.0)


# ---------------------------------------------------------------------------------------------------
# Fast paths vs references
# ---------------------------------------------------------------------------------------------------
def test_unproject_matches_cameras_reference():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 8.0, (H, W)).astype(np.float32)
    pose = cameras.look_at([0.3, 1.6, 2.0], [-0.5, 1.0, -3.0])
    ref = cameras.unproject_depth(depth, K, pose)
    world_from_cv = np.linalg.inv(cameras.cv_camera_from_world(pose))
    fast = unproject_depth_torch(_t(depth), _t(K), _t(world_from_cv)).numpy()
    assert np.abs(fast - ref).max() < 1e-4
    # and round-trips through the reference projection to the pixel grid
    uv, z = cameras.project_points(fast.reshape(-1, 3).astype(np.float64), pose, K)
    u, v = cameras.pixel_grid(W, H)
    assert np.abs(uv - np.stack([u.ravel(), v.ravel()], -1)).max() < 1e-3
    assert np.abs(z - depth.ravel()).max() < 1e-4


def _voxel_reference(points, colors, footprint, factor=1.0, base=1e-3):
    """Obviously-correct per-sample loop: dict voxel -> list of samples."""
    groups: dict = {}
    for p, c, f in zip(points, colors, footprint):
        level = max(0, math.ceil(math.log2(factor * f / base)))
        size = base * 2.0**level
        key = (level, *np.floor(p / size).astype(int))
        groups.setdefault(key, []).append((p, c))
    out = {}
    for key, samples in groups.items():
        ps = np.array([s[0] for s in samples], np.float64)
        cs = np.array([s[1] for s in samples], np.float64)
        out[key] = (ps.mean(0), np.round(cs.mean(0)), len(samples))
    return out


def test_voxel_accumulator_matches_reference_across_merges():
    rng = np.random.default_rng(1)
    n = 3000
    points = rng.uniform(-2, 2, (n, 3)).astype(np.float32) * np.float32([1, 0.02, 1])  # a thin slab
    colors = rng.integers(0, 256, (n, 3)).astype(np.float32)
    footprint = rng.choice([0.02, 0.05, 0.3], n).astype(np.float32)
    acc = VoxelAccumulator(torch.device("cpu"), merge_min=700)  # several merges
    use = rng.random(n) < 0.8
    for chunk in np.array_split(np.arange(n), 7):
        acc.add(_t(np.concatenate([points[chunk], colors[chunk], footprint[chunk, None]], 1)), torch.from_numpy(use[chunk]))
    layer = acc.layer()
    ref = _voxel_reference(points[use].astype(np.float64), colors[use], footprint[use].astype(np.float64))
    assert len(layer) == len(ref)
    ref_pos = np.array([v[0] for v in ref.values()])
    ref_col = np.array([v[1] for v in ref.values()])
    order_ref = np.lexsort(ref_pos.T)
    order = np.lexsort(layer.positions.astype(np.float64).T)
    assert np.abs(layer.positions[order] - ref_pos[order_ref]).max() < 1e-5
    assert np.abs(layer.colors[order].astype(int) - ref_col[order_ref]).max() <= 1
    # radius = half the voxel face diagonal, voxel size in [f, 2f) for footprint f
    assert np.all(layer.radii >= 0.02 * math.sqrt(2) / 2 - 1e-7)
    assert np.all(layer.radii < 0.3 * 2 * math.sqrt(2) / 2 + 1e-6)


def test_pixel_footprint_is_depth_over_focal():
    depth = _t([[1.0, 4.0]])
    f = pixel_footprint(depth, _t(K)).numpy()
    assert np.allclose(f, np.array([[1.0, 4.0]]) / min(K[0, 0], K[1, 1]), rtol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Dynamic detection on constructed cases
# ---------------------------------------------------------------------------------------------------
def _wall_frame(pose, wall_z=-5.0, box=None):
    """A textured wall at z = wall_z (OpenXR world) seen by ``pose``; optional box (x0, x1, y0, y1, z) in
    front of it as a fronto-parallel square at depth plane z. Returns rgb, depth, box mask."""
    u, v = cameras.pixel_grid(W, H)
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    world_from_cv = np.linalg.inv(cameras.cv_camera_from_world(pose))
    d = rays @ world_from_cv[:3, :3].T
    o = world_from_cv[:3, 3]
    t_wall = (wall_z - o[2]) / d[..., 2]
    p = o + t_wall[..., None] * d
    checker = (np.floor(p[..., 0] * 4) + np.floor(p[..., 1] * 4)) % 2
    rgb = np.stack([60 + 150 * checker, 90 + 0 * checker, 200 - 150 * checker], -1)
    depth = t_wall.copy()
    mask = np.zeros((H, W), bool)
    if box is not None:
        x0, x1, y0, y1, z = box
        t_box = (z - o[2]) / d[..., 2]
        q = o + t_box[..., None] * d
        mask = (q[..., 0] > x0) & (q[..., 0] < x1) & (q[..., 1] > y0) & (q[..., 1] < y1)
        depth[mask] = t_box[mask]
        rgb[mask] = [230, 200, 30]
    return rgb.astype(np.uint8), depth.astype(np.float32), mask


def _points(depth, pose):
    world_from_cv = np.linalg.inv(cameras.cv_camera_from_world(pose))
    return unproject_depth_torch(_t(depth), _t(K), _t(world_from_cv))


def test_static_wall_agrees_from_moved_camera():
    pose_a = cameras.look_at([0, 1, 0], [0, 1, -5])
    pose_b = cameras.look_at([0.4, 1.1, 0.3], [0, 1, -5])
    rgb_a, depth_a, _ = _wall_frame(pose_a)
    rgb_b, depth_b, _ = _wall_frame(pose_b)
    cfg = DynamicDetectConfig()
    agree, disagree = neighbour_evidence(_points(depth_a, pose_a), _colors(rgb_a), _t(depth_a) > 0,
                                         _view(depth_b, rgb_b, pose_b), cfg)
    assert not disagree.any()
    assert agree.float().mean() > 0.85  # the rest falls outside b's view


def test_moved_box_disagrees_and_occluder_is_no_evidence():
    pose = cameras.look_at([0, 1, 0], [0, 1, -5])
    box_a = (-1.0, -0.2, 0.5, 1.5, -3.0)
    box_b = (0.2, 1.0, 0.5, 1.5, -3.0)  # the box moved right by 1.2 m
    rgb_a, depth_a, mask_a = _wall_frame(pose, box=box_a)
    rgb_b, depth_b, mask_b = _wall_frame(pose, box=box_b)
    cfg = DynamicDetectConfig()
    agree, disagree = neighbour_evidence(_points(depth_a, pose), _colors(rgb_a), _t(depth_a) > 0,
                                         _view(depth_b, rgb_b, pose), cfg)
    agree, disagree = agree.numpy(), disagree.numpy()
    inner_a = mask_a & np.roll(mask_a, 1, 1) & np.roll(mask_a, -1, 1)  # away from silhouettes
    assert disagree[inner_a].mean() > 0.95  # b sees the wall through where the box was
    inner_b = mask_b & np.roll(mask_b, 1, 1) & np.roll(mask_b, -1, 1) & np.roll(mask_b, 1, 0) & np.roll(mask_b, -1, 0)
    wall_hidden_in_b = ~mask_a & inner_b
    assert wall_hidden_in_b.sum() > 50
    assert not disagree[wall_hidden_in_b].any()  # b's box is nearer: occlusion, not motion
    assert not agree[wall_hidden_in_b].any()
    assert agree[~mask_a & ~mask_b].mean() > 0.95


def test_colour_change_at_same_depth_is_dynamic():
    pose = cameras.look_at([0, 1, 0], [0, 1, -5])
    rgb, depth, _ = _wall_frame(pose)
    changed = rgb.copy()
    changed[10:20, 10:30] = [250, 250, 30]  # a poster appeared on the wall
    views = [_view(depth, changed, pose), _view(depth, changed, pose)]
    dyn, conf = detect_dynamic(_points(depth, pose), _colors(rgb), _t(depth) > 0, views, DynamicDetectConfig())
    expect = np.zeros((H, W), bool)
    expect[10:20, 10:30] = True
    assert (dyn.numpy() == expect).mean() > 0.99
    assert np.allclose(conf.numpy()[12:18, 12:28], 1.0)


# ---------------------------------------------------------------------------------------------------
# A whole clip: camera dollying past a wall while a box slides in front of it
# ---------------------------------------------------------------------------------------------------
CLIP_FRAMES, CLIP_FPS = 12, 12.0


def _clip():
    frames, masks = [], []
    for i in range(CLIP_FRAMES):
        pose = cameras.look_at([0.05 * i - 0.3, 1.0, 0.0], [0.0, 1.0, -5.0])
        x = -1.8 + 0.2 * i  # box slides right 0.2 m per frame
        rgb, depth, mask = _wall_frame(pose, box=(x, x + 0.8, 0.5, 1.5, -3.0))
        frames.append(SourceFrame(i, i / CLIP_FPS, rgb, K, pose, depth))
        masks.append(mask)
    return frames, masks


def _reprojected_dynamic_mask(world, f):
    layer = world.dynamic_frame(f)
    mask = np.zeros((H, W), bool)
    uv, _ = cameras.project_points(layer.positions.astype(np.float64), world.camera_poses[f], world.intrinsics[f])
    ij = np.round(uv).astype(int)
    mask[ij[:, 1], ij[:, 0]] = True
    return mask


@pytest.fixture(scope="module")
def clip_world():
    frames, masks = _clip()
    return frames, masks, fuse_frames(frames, CLIP_FPS, {"kind": "test"}, device="cpu")


def test_clip_dynamic_precision_recall(clip_world):
    frames, masks, world = clip_world
    tp = fp = fn = 0
    for f, truth in enumerate(masks):
        found = _reprojected_dynamic_mask(world, f)
        tp, fp, fn = tp + (found & truth).sum(), fp + (found & ~truth).sum(), fn + (~found & truth).sum()
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert precision > 0.95 and recall > 0.9, (precision, recall)


def test_clip_static_layer_is_the_wall_and_fills_behind_the_box(clip_world):
    frames, masks, world = clip_world
    # The static layer is the wall plane z = -5: the box leaks in only at a few silhouette pixels of
    # partly covered rows, which the speck filter drops (< 0.5 % of the points).
    off_wall = np.abs(world.static.positions[:, 2] + 5.0) > 0.02
    assert off_wall.mean() < 0.005, off_wall.sum()
    # Wall behind frame 0's box is in the static layer: it was seen once the box moved on.
    hidden = cameras.unproject_depth(np.where(masks[0], 5.0, 0.0), K, frames[0].world_from_camera)[masks[0]]
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(world.static.positions).query(hidden)
    spacing = 5.0 / K[0, 0]
    assert np.mean(dist < 2 * spacing) > 0.95
    assert world.times.tolist() == [f.time for f in frames] and world.source == {"kind": "test"}


def test_streaming_holds_only_the_neighbour_window():
    frames, _ = _clip()
    config = FusionConfig()
    fuser = WorldFuser(config, "cpu")
    window = max(config.detect.offsets) - min(config.detect.offsets) + 1
    for frame in frames:
        fuser.add(frame)
        assert len(fuser._ring) <= window
    assert fuser.finish(CLIP_FPS).frame_count == len(frames)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
def test_cuda_matches_cpu():
    frames, _ = _clip()
    cpu = fuse_frames(frames, CLIP_FPS, device="cpu")
    gpu = fuse_frames(frames, CLIP_FPS, device="cuda")
    assert len(cpu.static) == len(gpu.static) and np.array_equal(cpu.dynamic_offsets, gpu.dynamic_offsets)
    assert np.abs(cpu.static.positions - gpu.static.positions).max() < 1e-4
    assert np.abs(cpu.dynamic.positions - gpu.dynamic.positions).max() < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
def test_compiled_detection_matches_eager_on_cuda():
    frames, _ = _clip()
    eager = fuse_frames(frames, CLIP_FPS, config=FusionConfig(compile=False), device="cuda")
    compiled = fuse_frames(frames, CLIP_FPS, config=FusionConfig(compile=True), device="cuda")
    assert np.array_equal(eager.dynamic_offsets, compiled.dynamic_offsets) and len(eager.static) == len(compiled.static)


def test_carving_removes_an_object_that_sat_still_then_left():
    """A box stands still for 12 frames (its first frames have no neighbour that saw it move, so they are
    static), then is gone: later frames see the wall through where it stood, and carving drops it."""
    pose = cameras.look_at([0.0, 1.0, 0.0], [0.0, 1.0, -5.0])
    frames = []
    for i in range(24):
        box = (-1.0, -0.2, 0.5, 1.5, -3.0) if i < 12 else None
        rgb, depth, _ = _wall_frame(pose, box=box)
        frames.append(SourceFrame(i, i / CLIP_FPS, rgb, K, pose, depth))

    def off_wall(config):
        world = fuse_frames(frames, CLIP_FPS, config=config, device="cpu")
        return int((np.abs(world.static.positions[:, 2] + 5.0) > 0.02).sum())

    # Small merge batches: carving sees voxels once merged (a 64x48 frame has 3 k samples).
    assert off_wall(FusionConfig(carve_every=0, merge_min=4096)) > 50  # without carving the box stays
    assert off_wall(FusionConfig(carve_every=4, merge_min=4096)) == 0
