"""The OpenXR <-> OpenCV conversion module, checked against hand-computed geometry."""

import numpy as np
import pytest

from gen_server import cameras as C


def test_point_straight_ahead_lands_on_principal_point():
    fov = C.Fov.symmetric(np.deg2rad(90), 1.0)
    k = C.fov_to_intrinsics(fov, 101, 101)
    assert k[0, 2] == pytest.approx(50.0) and k[1, 2] == pytest.approx(50.0)
    assert k[0, 0] == pytest.approx(50.5)  # 101 px span tan(45)*2
    uv, z = C.project_points(np.array([[0.0, 0.0, -2.0]]), np.eye(4), k)
    np.testing.assert_allclose(uv[0], [50, 50], atol=1e-9)
    assert z[0] == pytest.approx(2.0)


def test_known_head_pose_known_pixel():
    # Head at (1, 1.6, 0) turned 90 degrees left (yaw +90: -Z forward becomes -X).
    pose = C.pose_to_matrix(np.array([1.0, 1.6, 0.0]), np.array([0, np.sin(np.pi / 4), 0, np.cos(np.pi / 4)]))
    k = C.fov_to_intrinsics(C.Fov(-0.5, 0.5, 0.4, -0.4), 200, 160)
    # A point 3 m ahead (at x = -2), 0.3 m higher and 0.6 m to the viewer's right (+Z after the turn... right is -Z? no)
    # After yaw +90, camera +X (right) maps to world -Z.
    point = np.array([[1.0 - 3.0, 1.6 + 0.3, -0.6]])
    uv, z = C.project_points(point, pose, k)
    assert z[0] == pytest.approx(3.0)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    np.testing.assert_allclose(uv[0], [cx + fx * 0.6 / 3.0, cy - fy * 0.3 / 3.0], atol=1e-9)


def test_stereo_disparity_sign():
    k = C.fov_to_intrinsics(C.Fov.symmetric(np.deg2rad(90), 1.0), 128, 128)
    left, right = C.eye_poses(np.eye(4), 0.064)
    point = np.array([[0.0, 0.0, -1.0]])
    ul = C.project_points(point, left, k)[0][0, 0]
    ur = C.project_points(point, right, k)[0][0, 0]
    assert ul > ur  # a near point sits further right in the left eye
    assert ul - ur == pytest.approx(k[0, 0] * 0.064 / 1.0)


def test_fov_intrinsics_round_trip_asymmetric():
    fov = C.Fov(-0.7, 0.6, 0.65, -0.8)
    k = C.fov_to_intrinsics(fov, 1440, 1600)
    back = C.intrinsics_to_fov(k, 1440, 1600)
    np.testing.assert_allclose(back.as_tuple(), fov.as_tuple(), atol=1e-12)


def test_unproject_inverts_project():
    rng = np.random.default_rng(0)
    pose = C.look_at([0.3, 1.2, 2.0], [0.0, 0.5, -1.0])
    k = C.fov_to_intrinsics(C.Fov.symmetric(1.0, 4 / 3), 64, 48)
    depth = rng.uniform(0.5, 5.0, (48, 64))
    pts = C.unproject_depth(depth, k, pose)
    uv, z = C.project_points(pts.reshape(-1, 3), pose, k)
    u, v = C.pixel_grid(64, 48)
    np.testing.assert_allclose(uv[:, 0], u.ravel(), atol=1e-8)
    np.testing.assert_allclose(uv[:, 1], v.ravel(), atol=1e-8)
    np.testing.assert_allclose(z, depth.ravel(), atol=1e-9)


def test_quaternion_round_trip_and_cv_world_conversion():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(20, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 3] < 0] *= -1
    np.testing.assert_allclose(C.matrix_to_quat(C.quat_to_matrix(q)), q, atol=1e-12)
    # An OpenCV-world camera 1 m along +z_cv (forward) ends up 1 m along -z in OpenXR.
    m = np.eye(4)
    m[2, 3] = 1.0
    assert C.xr_world_from_cv_world_pose(m)[2, 3] == pytest.approx(-1.0)
    np.testing.assert_allclose(C.xr_world_from_cv_world_pose(m)[:3, :3], np.eye(3))


def test_gl_projection_matches_intrinsics():
    fov = C.Fov(-0.6, 0.5, 0.45, -0.55)
    k = C.fov_to_intrinsics(fov, 320, 240)
    p = C.gl_projection(fov, 0.1, 100.0)
    point = np.array([0.3, -0.2, -2.5, 1.0])
    clip = p @ point
    ndc = clip[:3] / clip[3]
    u = (ndc[0] + 1) / 2 * 320 - 0.5
    v = (1 - ndc[1]) / 2 * 240 - 0.5
    uv, _ = C.project_points(point[None, :3], np.eye(4), k)
    np.testing.assert_allclose([u, v], uv[0], atol=1e-9)
