"""`timewalk build / info / export-ply` end to end on a synthetic RGB-D dataset with exact geometry and
ground-truth motion masks, and every kind of bad input (exit 2, one line naming the file, no output)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gen_server import cameras
from gen_server.cli import main as cli
from gen_server.world.store import load_world
from gen_server.world.synth import write_synthetic_dataset

WIDTH, HEIGHT, SECONDS, FPS = 160, 90, 1.0, 24


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth") / "clip", WIDTH, HEIGHT, SECONDS, FPS, seed=0)


@pytest.fixture(scope="module")
def built(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("worlds") / "world"
    assert cli(["build", str(dataset), "-o", str(out), "--quiet", "--device", "cpu"]) == 0
    meta = json.loads((dataset / "transforms.json").read_text())
    frames = meta["frames"]
    depths = [np.asarray(Image.open(dataset / f["depth_file_path"]), np.float64) * meta["depth_unit_scale_factor"]
              for f in frames]
    masks = [np.asarray(Image.open(dataset / f["dynamic_mask_path"])) > 127 for f in frames]
    return out, load_world(out), depths, masks


def _visible_static_points(world, f):
    """Static points that win the z-buffer of frame f: (pixel (M, 2) float, z (M,))."""
    w, h = world.image_size
    uv, z = cameras.project_points(world.static.positions.astype(np.float64), world.camera_poses[f], world.intrinsics[f])
    ok = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= w - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= h - 1)
    uv, z = uv[ok], z[ok]
    pix = np.round(uv).astype(int)
    flat = pix[:, 1] * w + pix[:, 0]
    order = np.lexsort((z, flat))
    first = np.ones(len(order), bool)
    first[1:] = flat[order][1:] != flat[order][:-1]
    win = order[first]
    return uv[win], z[win]


def _bilinear(image, uv):
    h, w = image.shape
    x0 = np.clip(np.floor(uv[:, 0]).astype(int), 0, w - 2)
    y0 = np.clip(np.floor(uv[:, 1]).astype(int), 0, h - 2)
    ax, ay = uv[:, 0] - x0, uv[:, 1] - y0
    corners = np.stack([image[y0, x0], image[y0, x0 + 1], image[y0 + 1, x0], image[y0 + 1, x0 + 1]])
    weights = np.stack([(1 - ax) * (1 - ay), ax * (1 - ay), (1 - ax) * ay, ax * ay])
    valid = (corners > 0).all(0)
    return (corners * weights).sum(0), valid


def test_build_summary_and_manifest(built, dataset, capsys):
    out, world, depths, _ = built
    assert world.frame_count == SECONDS * FPS and world.image_size == (WIDTH, HEIGHT)
    assert np.allclose(world.times, np.arange(world.frame_count) / FPS)
    assert world.source["depth_source"] == "given" and world.source["pose_source"] == "given"
    assert world.source["kind"] == "transforms_json"
    assert (out / "source.mp4").is_file()
    from gen_server.video_io import read_video_frames

    info, frames = read_video_frames(out / "source.mp4", max_side=None)
    assert sum(1 for _ in frames) == world.frame_count and (info.width, info.height) == (WIDTH, HEIGHT)
    assert cli(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"frames: {world.frame_count} at 24 fps" in text and f"static points: {len(world.static):,}" in text
    assert cli(["info", str(out), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["layers"]["static_points"] == len(world.static)
    assert manifest["layers"]["dynamic_points"] == len(world.dynamic)


def test_static_layer_reprojects_onto_every_frames_depth(built):
    """The fused static layer, projected into each source camera, lies on that frame's depth: the nearest
    static point per pixel has the depth the frame measured at its sub-pixel position (static pixels)."""
    _, world, depths, masks = built
    errors, covered = [], []
    for f in range(world.frame_count):
        uv, z = _visible_static_points(world, f)
        d, valid = _bilinear(depths[f], uv)
        pix = np.round(uv).astype(int)
        static = valid & ~masks[f][pix[:, 1], pix[:, 0]]
        errors.append(np.abs(z - d)[static])
        covered.append(static.sum() / max(((depths[f] > 0) & ~masks[f]).sum(), 1))
    errors = np.concatenate(errors)
    median, p90 = np.median(errors), np.percentile(errors, 90)
    print(f"static reprojection: median {median * 1000:.2f} mm, p90 {p90 * 1000:.2f} mm, "
          f"pixels covered {np.mean(covered):.2f}")
    assert median < 0.005 and p90 < 0.03
    assert np.mean(covered) > 0.4  # voxels are 1-2 pixels wide: a point every ~1-4 pixels


def test_dynamic_layers_match_ground_truth_masks(built):
    _, world, _, masks = built
    w, h = world.image_size
    tp = fp = fn = 0
    for f, truth in enumerate(masks):
        layer = world.dynamic_frame(f)
        uv, z = cameras.project_points(layer.positions.astype(np.float64), world.camera_poses[f], world.intrinsics[f])
        found = np.zeros((h, w), bool)
        pix = np.round(uv).astype(int)
        found[pix[:, 1], pix[:, 0]] = True
        assert np.abs(uv - pix).max() < 1e-2  # dynamic points are the frame's own pixels
        tp, fp, fn = tp + (found & truth).sum(), fp + (found & ~truth).sum(), fn + (~found & truth).sum()
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    print(f"dynamic pixels: precision {precision:.3f} recall {recall:.3f} ({tp + fn} moving pixels)")
    assert precision >= 0.9 and recall >= 0.85
    # radii: half the pixel diagonal at the point's depth
    layer = world.dynamic_frame(10)
    _, z = cameras.project_points(layer.positions.astype(np.float64), world.camera_poses[10], world.intrinsics[10])
    k = world.intrinsics[10]
    assert np.allclose(layer.radii, z * max(1 / k[0, 0], 1 / k[1, 1]) * np.sqrt(2) / 2, rtol=1e-4)


def test_static_layer_holds_what_frame_0_does_not_see(built):
    """Static surface seen in later frames but hidden (occluded or out of view) in frame 0 is in the
    static layer: the world holds more than any single frame."""
    from scipy.spatial import cKDTree

    _, world, depths, masks = built
    w, h = world.image_size
    tree = cKDTree(world.static.positions)
    hidden_points, spacing = [], []
    for f in range(4, world.frame_count, 4):
        sel = (depths[f] > 0) & ~masks[f]
        pts = cameras.unproject_depth(depths[f], world.intrinsics[f], world.camera_poses[f])[sel]
        uv, z = cameras.project_points(pts, world.camera_poses[0], world.intrinsics[0])
        pix = np.round(uv).astype(int)
        inside = (z > 0) & (pix[:, 0] >= 0) & (pix[:, 0] < w) & (pix[:, 1] >= 0) & (pix[:, 1] < h)
        d0 = np.zeros(len(z))
        d0[inside] = depths[0][pix[inside, 1], pix[inside, 0]]
        hidden = ~inside | ((d0 > 0) & (z > d0 * 1.1))
        hidden_points.append(pts[hidden])
        spacing.append(depths[f][sel][hidden] / world.intrinsics[f][0, 0])
    hidden_points, spacing = np.concatenate(hidden_points), np.concatenate(spacing)
    assert len(hidden_points) > 200
    dist, _ = tree.query(hidden_points)
    near = dist < 2.0 * spacing
    print(f"hidden in frame 0: {len(hidden_points)} pixels, {near.mean():.3f} within 2 pixel footprints")
    assert near.mean() > 0.9


def test_export_ply_static_and_frame(built, tmp_path, capsys):
    out, world, _, _ = built
    ply = tmp_path / "static.ply"
    assert cli(["export-ply", str(out), str(ply)]) == 0
    positions, colors = _read_ply(ply)
    assert np.array_equal(positions, world.static.positions) and np.array_equal(colors, world.static.colors)
    assert cli(["export-ply", str(out), str(tmp_path / "f5.ply"), "--frame", "5"]) == 0
    positions, _ = _read_ply(tmp_path / "f5.ply")
    assert len(positions) == len(world.static) + len(world.dynamic_frame(5))
    assert np.array_equal(positions[len(world.static):], world.dynamic_frame(5).positions)
    capsys.readouterr()
    assert cli(["export-ply", str(out), str(tmp_path / "bad.ply"), "--frame", str(world.frame_count)]) == 2
    assert "--frame" in capsys.readouterr().err and not (tmp_path / "bad.ply").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _read_ply(path: Path):
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    n = int(next(line.split()[2] for line in header if line.startswith("element vertex")))
    props = [line.split()[1:] for line in header if line.startswith("property")]
    assert props == [["float", "x"], ["float", "y"], ["float", "z"], ["uchar", "red"], ["uchar", "green"], ["uchar", "blue"]]
    rec = np.frombuffer(data[end:], np.dtype([("p", "<f4", 3), ("c", "u1", 3)]), count=n)
    assert len(data) == end + 15 * n
    return rec["p"], rec["c"]


# ---------------------------------------------------------------------------------------------------
# Bad input: exit 2, one line naming the file, nothing left behind
# ---------------------------------------------------------------------------------------------------
def _fails(capsys, args, out: Path, *needles: str) -> str:
    capsys.readouterr()
    assert cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []
    return err


def _copy(dataset: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "clip"
    shutil.copytree(dataset, copy)
    return copy


def test_missing_empty_and_non_video_inputs(tmp_path, capsys):
    out = tmp_path / "world"
    _fails(capsys, ["build", str(tmp_path / "nope.mp4"), "-o", str(out)], out, "nope.mp4", "no such")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    _fails(capsys, ["build", str(empty), "-o", str(out), "--depth-model", "x"], out, "empty.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    _fails(capsys, ["build", str(text), "-o", str(out), "--depth-model", "x"], out, "notes.mp4")
    folder = tmp_path / "folder"
    folder.mkdir()
    _fails(capsys, ["build", str(folder), "-o", str(out)], out, "folder", "transforms.json")


def test_plain_video_without_depth_model_names_the_flag(dataset, tmp_path, capsys):
    out = tmp_path / "world"
    _fails(capsys, ["build", str(dataset / "video.mp4"), "-o", str(out), "--quiet"], out, "video.mp4", "--depth-model")


def test_invalid_json(dataset, tmp_path, capsys):
    clip = _copy(dataset, tmp_path)
    (clip / "transforms.json").write_text('{"frames": [')
    out = tmp_path / "world"
    _fails(capsys, ["build", str(clip), "-o", str(out), "--quiet"], out, "transforms.json", "JSON")


def test_depth_count_mismatch(dataset, tmp_path, capsys):
    clip = _copy(dataset, tmp_path)
    meta = json.loads((clip / "transforms.json").read_text())
    del meta["frames"][3]["depth_file_path"]
    (clip / "transforms.json").write_text(json.dumps(meta))
    out = tmp_path / "world"
    _fails(capsys, ["build", str(clip / "transforms.json"), "-o", str(out), "--quiet"], out, "transforms.json", "depth")


def test_depth_size_mismatch(dataset, tmp_path, capsys):
    clip = _copy(dataset, tmp_path)
    meta = json.loads((clip / "transforms.json").read_text())
    depth_path = clip / meta["frames"][7]["depth_file_path"]
    Image.fromarray(np.full((HEIGHT // 2, WIDTH // 2), 2000, np.uint16)).save(depth_path)
    out = tmp_path / "world"
    _fails(capsys, ["build", str(clip), "-o", str(out), "--quiet"], out, depth_path.name)


@pytest.mark.parametrize("bad", [np.nan, -1.0])
def test_nan_or_negative_depth(dataset, tmp_path, capsys, bad):
    clip = _copy(dataset, tmp_path)
    meta = json.loads((clip / "transforms.json").read_text())
    depth = np.full((HEIGHT, WIDTH), 2.0, np.float32)
    depth[10, 20] = bad
    np.save(clip / "bad_depth.npy", depth)
    meta["frames"][5]["depth_file_path"] = "bad_depth.npy"
    meta.pop("depth_unit_scale_factor", None)
    for frame in meta["frames"]:  # keep the others in metres too
        if frame is not meta["frames"][5]:
            d = np.asarray(Image.open(clip / frame["depth_file_path"]), np.float32) / 1000.0
            np.save(clip / (frame["depth_file_path"] + ".npy"), d)
            frame["depth_file_path"] += ".npy"
    (clip / "transforms.json").write_text(json.dumps(meta))
    out = tmp_path / "world"
    _fails(capsys, ["build", str(clip), "-o", str(out), "--quiet"], out, "bad_depth.npy")


def test_damaged_or_newer_world_dir(built, tmp_path, capsys):
    src, _, _, _ = built
    damaged = tmp_path / "damaged"
    shutil.copytree(src, damaged)
    layers = damaged / "layers.safetensors"
    data = bytearray(layers.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layers.write_bytes(bytes(data))
    ply = tmp_path / "out.ply"
    for args in (["info", str(damaged)], ["export-ply", str(damaged), str(ply)]):
        capsys.readouterr()
        assert cli(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "layers.safetensors" in err and "checksum" in err, err
        assert not ply.exists()
    newer = tmp_path / "newer"
    shutil.copytree(src, newer)
    manifest = json.loads((newer / "world.json").read_text())
    manifest["format_version"] = 99
    (newer / "world.json").write_text(json.dumps(manifest))
    for args in (["info", str(newer)], ["export-ply", str(newer), str(ply)]):
        capsys.readouterr()
        assert cli(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "world.json" in err and "newer" in err, err
    assert not ply.exists()
    capsys.readouterr()
    assert cli(["info", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


def _tiny_metric_depth_model(folder: Path) -> str:
    """A randomly initialised, tiny metric Depth Anything saved like a downloaded one (no weights committed)."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, image_size=56,
                            patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 64],
                                 fusion_hidden_size=16, head_hidden_size=8, depth_estimation_type="metric", max_depth=10)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      do_pad=False).save_pretrained(folder)
    return str(folder)


def test_plain_video_with_depth_model_is_a_static_camera_world(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = _tiny_metric_depth_model(tmp_path / "depth_model")
    out = tmp_path / "world"
    capsys.readouterr()
    assert cli(["build", str(dataset / "video.mp4"), "-o", str(out), "--depth-model", model, "--depth-scale", "2",
                "--max-side", "96", "--quiet", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "static camera" in printed and "transforms" not in printed
    world = load_world(out)
    assert world.source["kind"] == "video" and world.source["depth_source"] == model
    assert world.source["pose_source"] == "static camera (no poses given)"
    assert np.allclose(world.camera_poses, np.eye(4)) and world.image_size[0] <= 96
    assert world.frame_count == SECONDS * FPS
    # depth 2x the model's metric output (<= 10 m): every point within 20 m of the camera
    everything = np.concatenate([world.static.positions, world.dynamic.positions])
    assert len(everything) > 0 and np.linalg.norm(everything, axis=1).max() < 20 * 1.5


def test_inspatio_step2_folder(tmp_path, capsys):
    """A step-2 folder (their layout: JPEG frames, float32-bytes RGBA depth PNGs, np.savetxt K and 3x4
    world-to-camera in OpenCV axes) builds with its poses and depth intact."""
    from gen_server.world.inspatio_step2 import encode_rgba_depth
    from gen_server.world.synth import SyntheticScene

    scene, w, h, n = SyntheticScene(0), 64, 48, 10
    k = scene.default_intrinsics(w, h)
    folder = tmp_path / "step2"
    (folder / "frames").mkdir(parents=True)
    (folder / "depth").mkdir()
    poses = []
    with open(folder / "intrinsic.txt", "w") as fi, open(folder / "extrinsic.txt", "w") as fe:
        for i in range(n):
            pose = scene.camera_path(i / 24)
            rgb, depth, _ = scene.render(pose, k, w, h, i / 24)
            Image.fromarray(rgb).save(folder / "frames" / f"{i:04d}.jpg", quality=95)
            Image.fromarray(encode_rgba_depth(depth), mode="RGBA").save(folder / "depth" / f"{i:04d}.png")
            np.savetxt(fi, k)
            np.savetxt(fe, np.linalg.inv(cameras.xr_world_from_cv_world_pose(pose))[:3, :])
            poses.append(pose)
    out = tmp_path / "world"
    assert cli(["build", str(folder), "-o", str(out), "--fps", "24", "--quiet", "--no-source-video"]) == 0
    world = load_world(out)
    assert world.source["kind"] == "inspatio_step2" and world.frame_count == n
    assert np.allclose(world.camera_poses, np.stack(poses), atol=1e-6) and np.allclose(world.times, np.arange(n) / 24)
    assert not (out / "source.mp4").exists()
    # static points sit on the surfaces the depth describes
    uv, z = _visible_static_points(world, 0)
    d0 = scene.render(poses[0], k, w, h, 0.0)[1].astype(np.float64)
    d, valid = _bilinear(d0, uv)
    assert valid.sum() > 0.3 * w * h and np.median(np.abs(z - d)[valid]) < 0.005


def test_flag_errors_leave_nothing(dataset, tmp_path, capsys):
    out = tmp_path / "world"
    _fails(capsys, ["build", str(dataset), "-o", str(out), "--poses", str(dataset / "scene.json"), "--quiet"], out,
           "--poses")
    _fails(capsys, ["build", str(dataset), "-o", str(out), "--fps", "12", "--quiet"], out, "--fps")
    _fails(capsys, ["build", str(dataset), "-o", str(out), "--depth-scale", "0", "--quiet"], out, "--depth-scale")
    import torch

    if not torch.cuda.is_available():
        _fails(capsys, ["build", str(dataset), "-o", str(out), "--device", "cuda", "--quiet"], out, "--device cuda")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert cli(["build", str(dataset), "-o", str(precious), "--quiet"]) == 2
    assert "not a world directory" in capsys.readouterr().err and (precious / "notes.txt").read_text() == "keep me"
