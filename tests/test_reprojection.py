"""OpenGL depth reprojection (Mesa, offscreen EGL) against the numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from gen_server import cameras
from gen_server.cameras import Fov
from xr_client import reprojection_reference as ref

pytestmark = pytest.mark.gl

SRC_W, SRC_H = 160, 120
SRC_FOV = Fov.symmetric(np.radians(60.0), SRC_W / SRC_H)
SRC_POSE = cameras.look_at([0.0, 1.5, 0.0], [0.2, 1.4, -3.0])
MARKERS = {  # colour -> source pixel centre (kept away from the near box's border)
    (255, 0, 0): (20, 20), (0, 255, 0): (130, 25), (0, 0, 255): (25, 95),
    (255, 255, 0): (135, 100), (255, 0, 255): (80, 60), (0, 255, 255): (60, 90),
}
NEAR_BOX = (slice(40, 80), slice(60, 100))  # rows, cols of a fronto-parallel patch 1.5 m away


def scene(with_box: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A tilted plane ~3 m away (plus a near patch) with a smooth texture and 7x7 colour markers."""
    k = cameras.fov_to_intrinsics(SRC_FOV, SRC_W, SRC_H)
    u, v = cameras.pixel_grid(SRC_W, SRC_H)
    rays = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1)
    normal = np.array([0.15, -0.3, 1.0])
    depth = (3.0 / (rays @ normal)).astype(np.float32)  # plane n . X = 3 in OpenCV camera coordinates
    if with_box:
        depth[NEAR_BOX] = 1.5
    rgb = np.stack([128 + 60 * np.sin(u / 9.0), 128 + 60 * np.cos(v / 7.0), np.full_like(u, 100.0)], -1)
    rgb = rgb.astype(np.uint8)
    for colour, (x, y) in MARKERS.items():
        rgb[y - 3:y + 4, x - 3:x + 4] = colour
    return rgb, depth


@pytest.fixture(scope="module")
def gl():
    from xr_client.gl_context import GLContextError, create_egl_context

    try:
        ctx = create_egl_context()
    except GLContextError as e:
        pytest.skip(f"no offscreen OpenGL here: {e}")
    from xr_client.reprojection import ReprojectionConfig, Reprojector

    reproj = Reprojector(ReprojectionConfig(grid_step=4))
    yield reproj
    reproj.release()
    ctx.release()


def render(reproj, rgb, depth, dst_pose, dst_fov, size):
    from OpenGL import GL

    from xr_client.render_target import RenderTarget
    from xr_client.reprojection import EyeImage

    reproj.upload(0, EyeImage(rgb, depth, SRC_POSE, SRC_FOV))
    target = RenderTarget(*size)
    target.bind()
    GL.glClearColor(0, 0, 0, 1)
    GL.glClear(GL.GL_COLOR_BUFFER_BIT)
    reproj.draw(0, dst_pose, dst_fov)
    out = target.read_rgb()
    target.release()
    return out


def marker_centroids(img: np.ndarray) -> dict:
    out = {}
    for colour in MARKERS:
        dist = np.linalg.norm(img.astype(np.float64) - np.array(colour, np.float64), axis=-1)
        ys, xs = np.nonzero(dist < 60)
        out[colour] = (xs.mean(), ys.mean()) if len(xs) >= 9 else None
    return out


MOVED_POSE = SRC_POSE @ cameras.pose_to_matrix(
    [0.25, -0.1, 0.2], cameras.matrix_to_quat(cameras.yaw_pitch_to_matrix(np.radians(6), np.radians(3))))
MOVED_FOV = Fov(np.radians(-40), np.radians(35), np.radians(30), np.radians(-34))  # asymmetric, like an HMD
MOVED_SIZE = (200, 150)


def test_reference_translation_matches_hand_computation():
    # A point 2 m straight ahead; stepping 0.5 m right moves it left by fx * 0.5 / 2 pixels.
    fov = Fov.symmetric(np.radians(90), 1.0)
    k = cameras.fov_to_intrinsics(fov, 101, 101)
    right = cameras.pose_to_matrix([0.5, 0, 0], [0, 0, 0, 1])
    uv, z = ref.reproject_pixels([[50.0, 50.0]], [2.0], np.eye(4), fov, (101, 101), right, fov, (101, 101))
    assert np.allclose(uv[0], [50.0 - k[0, 0] * 0.25, 50.0], atol=1e-9)
    assert np.isclose(z[0], 2.0)
    # Rotation-only ignores translation entirely.
    uv_inf = ref.reproject_pixels_at_infinity([[50.0, 50.0]], np.eye(4), fov, (101, 101), right, fov, (101, 101))
    assert np.allclose(uv_inf[0], [50.0, 50.0])


@pytest.mark.parametrize("with_depth", [True, False])
def test_identity_pose_reproduces_input(gl, with_depth):
    rgb, depth = scene()
    out = render(gl, rgb, depth if with_depth else None, SRC_POSE, SRC_FOV, (SRC_W, SRC_H))
    diff = np.abs(out.astype(int) - rgb.astype(int))
    assert diff.max() <= 1, f"identity reprojection changed pixels by up to {diff.max()}"


def test_markers_land_where_the_reference_says(gl):
    rgb, depth = scene()
    out = render(gl, rgb, depth, MOVED_POSE, MOVED_FOV, MOVED_SIZE)
    found = marker_centroids(out)
    for colour, (x, y) in MARKERS.items():
        want, _ = ref.reproject_pixels([[x, y]], [depth[y, x]], SRC_POSE, SRC_FOV, (SRC_W, SRC_H),
                                       MOVED_POSE, MOVED_FOV, MOVED_SIZE)
        assert found[colour] is not None, f"marker {colour} missing"
        err = np.hypot(*(np.array(found[colour]) - want[0]))
        assert err < 0.75, f"marker {colour}: at {found[colour]}, reference {want[0]} ({err:.2f} px)"
    # Parallax is real: the near-patch marker moved differently from what rotation-only would give.
    x, y = MARKERS[(255, 0, 255)]
    inf = ref.reproject_pixels_at_infinity([[x, y]], SRC_POSE, SRC_FOV, (SRC_W, SRC_H), MOVED_POSE, MOVED_FOV,
                                           MOVED_SIZE)[0]
    assert np.hypot(*(np.array(found[(255, 0, 255)]) - inf)) > 5.0


def test_rotation_only_without_depth(gl):
    rgb, _ = scene()
    turned = SRC_POSE.copy()
    turned[:3, :3] = SRC_POSE[:3, :3] @ cameras.yaw_pitch_to_matrix(np.radians(-8), np.radians(4))
    out = render(gl, rgb, None, turned, MOVED_FOV, MOVED_SIZE)
    found = marker_centroids(out)
    for colour, (x, y) in MARKERS.items():
        want = ref.reproject_pixels_at_infinity([[x, y]], SRC_POSE, SRC_FOV, (SRC_W, SRC_H), turned, MOVED_FOV,
                                                MOVED_SIZE)[0]
        if not (4 <= want[0] < MOVED_SIZE[0] - 4 and 4 <= want[1] < MOVED_SIZE[1] - 4):
            continue
        assert found[colour] is not None, f"marker {colour} missing"
        assert np.hypot(*(np.array(found[colour]) - want)) < 0.75


def test_whole_image_matches_forward_splat_reference(gl):
    rgb, depth = scene(with_box=False)  # one plane: no disocclusion, so every covered pixel must agree
    out = render(gl, rgb, depth, MOVED_POSE, SRC_FOV, (SRC_W, SRC_H))
    want, covered = ref.reproject_image(rgb, depth, SRC_POSE, SRC_FOV, MOVED_POSE, SRC_FOV, (SRC_W, SRC_H))
    assert covered.mean() > 0.6
    err = np.abs(out.astype(int) - want.astype(int)).max(-1)[covered]
    assert err.mean() < 4.0, f"mean error {err.mean():.2f}"
    assert np.percentile(err, 95) < 12, f"95th percentile error {np.percentile(err, 95):.1f}"


def test_no_black_holes_after_a_big_step(gl):
    rgb, depth = scene()  # the near patch disoccludes the plane behind it
    step = SRC_POSE @ cameras.pose_to_matrix([0.6, 0.2, 0.3], [0, 0, 0, 1])
    out = render(gl, rgb, depth, step, MOVED_FOV, MOVED_SIZE)
    black = (out.astype(int).sum(-1) == 0).sum()
    assert black == 0, f"{black} black pixels"


def test_half_resolution_depth_lands_markers_too(gl):
    # The server sends depth at a fraction of the colour size; a plane stays a plane at any resolution.
    rgb, _ = scene(with_box=False)
    k = cameras.fov_to_intrinsics(SRC_FOV, SRC_W // 2, SRC_H // 2)
    u, v = cameras.pixel_grid(SRC_W // 2, SRC_H // 2)
    rays = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1)
    half_depth = (3.0 / (rays @ np.array([0.15, -0.3, 1.0]))).astype(np.float32)
    _, full_depth = scene(with_box=False)
    out = render(gl, rgb, half_depth, MOVED_POSE, MOVED_FOV, MOVED_SIZE)
    found = marker_centroids(out)
    for colour, (x, y) in MARKERS.items():
        want, _ = ref.reproject_pixels([[x, y]], [full_depth[y, x]], SRC_POSE, SRC_FOV, (SRC_W, SRC_H),
                                       MOVED_POSE, MOVED_FOV, MOVED_SIZE)
        assert np.hypot(*(np.array(found[colour]) - want[0])) < 0.75, colour


def test_depth_buffer_holds_metric_depth_at_the_new_pose(gl):
    """What is submitted as the XR depth layer: window depth that decodes (near/far) to the reference's z."""
    from xr_client.render_target import RenderTarget
    from xr_client.reprojection import EyeImage

    rgb, depth = scene()
    gl.upload(0, EyeImage(rgb, depth, SRC_POSE, SRC_FOV))
    target = RenderTarget(*MOVED_SIZE)
    target.bind()
    gl.draw(0, MOVED_POSE, MOVED_FOV)
    window_depth = target.read_depth()
    target.release()
    near, far = gl.config.near, gl.config.far
    for colour, (x, y) in MARKERS.items():
        uv, z = ref.reproject_pixels([[x, y]], [depth[y, x]], SRC_POSE, SRC_FOV, (SRC_W, SRC_H), MOVED_POSE,
                                     MOVED_FOV, MOVED_SIZE)
        px, py = np.round(uv[0]).astype(int)
        z_ndc = 2.0 * float(window_depth[py, px]) - 1.0
        z_eye = 2.0 * near * far / ((far + near) - z_ndc * (far - near))
        assert z_eye == pytest.approx(z[0], rel=0.01), colour
