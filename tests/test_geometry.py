"""Exact geometry: position maps built from canonical_vertices under known transforms."""
import numpy as np
import pytest

from realtime_prn.face import Face
from realtime_prn.geometry.pose import (
    estimate_pose,
    euler_from_matrix,
    matrix_from_euler,
)

ANGLES = [(0, 0, 0), (10, -25, 5), (-20, 60, -15), (5, 89.5, 0), (0, -90, 0), (30, 75, 40),
          (-45, -85, 20), (15, 90, -10)]


@pytest.mark.parametrize("angles", ANGLES)
def test_pose_recovers_known_rotation(assets, synth, angles):
    rot = matrix_from_euler(*angles)
    t = np.array([320.0, 240.0, 50.0])
    pos, verts = synth(assets, rot, t, 1.7)
    pose = estimate_pose(verts, assets.canonical_vertices)
    # rotation angle between estimated and true rotation
    err = np.degrees(np.arccos(np.clip((np.trace(pose.rotation.T @ rot) - 1) / 2, -1, 1)))
    assert err < 0.1
    assert abs(pose.scale - 1.7) < 1e-4
    np.testing.assert_allclose(pose.translation, t, atol=1e-2)
    if abs(angles[1]) < 89:  # away from gimbal lock every angle is recovered
        np.testing.assert_allclose(pose.angles, angles, atol=0.1)
    else:  # at ±90° yaw only yaw and pitch+roll are defined; the matrix must round-trip
        assert abs(pose.yaw - angles[1]) < 0.1
        np.testing.assert_allclose(matrix_from_euler(*pose.angles), rot, atol=2e-3)


def test_euler_round_trip_dense():
    rng = np.random.default_rng(0)
    for _ in range(500):
        a = rng.uniform([-89, -89.9, -179], [89, 89.9, 179])
        np.testing.assert_allclose(euler_from_matrix(matrix_from_euler(*a)), a, atol=1e-6)


def test_noisy_pose_uses_all_vertices(assets, synth):
    rot = matrix_from_euler(5, 40, -3)
    _, verts = synth(assets, rot, np.array([100.0, 120.0, 10.0]), 0.8)
    noisy = verts + np.random.default_rng(1).normal(0, 2.0, verts.shape)
    pose = estimate_pose(noisy, assets.canonical_vertices)
    np.testing.assert_allclose(pose.angles, [5, 40, -3], atol=0.2)


def _face(assets, pos, h=480, w=640):
    return Face(position_map=pos, image=np.zeros((h, w, 3), np.uint8), assets=assets)


def test_landmarks_and_vertices_at_known_pixels(assets, synth):
    rot = matrix_from_euler(0, 20, 0)
    pos, verts = synth(assets, rot, None, 1.2, centre=(320, 200, 0))
    face = _face(assets, pos)
    kpt_vertex = np.searchsorted(assets.face_ind, assets.kpt_flat)
    assert np.array_equal(assets.face_ind[kpt_vertex], assets.kpt_flat)
    np.testing.assert_allclose(face.landmarks, verts[kpt_vertex], atol=1e-3)
    np.testing.assert_allclose(face.vertices, verts, atol=1e-3)
    assert face.vertices.shape == (43867, 3)


def test_depth_equals_known_z_where_visible(assets, synth):
    pos, verts = synth(assets, matrix_from_euler(0, 0, 0), None, 1.0, centre=(320, 240, 100))
    face = _face(assets, pos)
    depth = face.depth_image()
    # Frontal face: the nose tip (landmark 30) is visible and is the nearest point.
    x, y, z = face.landmarks[30]
    px = depth[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2]
    assert abs(px.max() - z) < 1.0
    # The z-buffer keeps the nearest surface: never below a vertex that lands on a pixel.
    ix = np.round(verts[:, :2]).astype(int)
    at = depth[ix[:, 1], ix[:, 0]]
    assert (at > 0).mean() > 0.97  # only mesh-border vertices round to uncovered pixels
    exact = (np.abs(verts[:, :2] - ix) < 0.01).all(1) & (at > 0)
    assert exact.sum() > 5
    assert (at[exact] >= verts[exact, 2] - 0.3).all()
    assert depth[depth > 0].max() <= verts[:, 2].max() + 1e-3


def test_depth_of_a_tilted_plane_is_exact(assets):
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    z = 0.3 * xx - 0.2 * yy + 100
    pos = np.dstack([xx * 1.5 + 10, yy * 1.5 + 20, z * 1.5])
    face = _face(assets, pos)
    depth = face.depth_image()
    on = depth > 0
    py, px = np.nonzero(on)
    u, v = (px - 10) / 1.5, (py - 20) / 1.5
    np.testing.assert_allclose(depth[on], (0.3 * u - 0.2 * v + 100) * 1.5, atol=1e-3)
    assert on.sum() > 0.95 * assets.n_vertices * 1.5 ** 2


def test_depth_hides_far_side_at_profile(assets, synth):
    pos, verts = synth(assets, matrix_from_euler(0, 80, 0), None, 1.0, centre=(320, 240, 100))
    face = _face(assets, pos)
    from realtime_prn.geometry.depth import visible_vertices
    vis = visible_vertices(verts, face.zbuffer)
    assert 0.3 < vis.mean() < 0.9  # a profile hides a real part of the face
    # Ry(+80°) turns canonical x < 0 toward the camera (z' = −sin·x + cos·z): that half is
    # seen, the other half is hidden behind the nose and cheek.
    cx = assets.canonical_vertices[:, 0]
    assert vis[cx < -20].mean() > 0.9
    assert vis[cx > 20].mean() < 0.3


def test_texture_remap_returns_known_image(assets):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (300, 320, 3), np.uint8)
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    pos = np.dstack([xx + 20, yy + 30, np.full_like(xx, 5.0)])  # a flat face, shifted
    face = Face(position_map=pos, image=image, assets=assets)
    tex = face.texture()
    np.testing.assert_array_equal(tex, image[30:286, 20:276])
    vis = face.texture_visibility()
    assert vis[assets.face_mask].mean() > 0.99 and not vis[~assets.face_mask].any()


def test_colors_sample_image_rgb(assets, synth):
    image = np.zeros((480, 640, 3), np.uint8)
    image[..., 0] = 10   # B
    image[..., 2] = 200  # R
    pos, _ = synth(assets, np.eye(3), None, 1.0, centre=(320, 240, 100))
    face = Face(position_map=pos, image=image, assets=assets)
    np.testing.assert_allclose(face.colors[0], [200 / 255, 0, 10 / 255], atol=1e-6)


def test_grid_triangles_cover_mask(assets):
    tri = assets.triangles
    assert tri.min() == 0 and tri.max() == assets.n_vertices - 1
    assert len(np.unique(tri)) > 0.999 * assets.n_vertices
    # Every triangle is a right triangle of unit legs on the UV grid.
    uv = np.stack([assets.face_ind % 256, assets.face_ind // 256], 1)
    e1 = uv[tri[:, 1]] - uv[tri[:, 0]]
    e2 = uv[tri[:, 2]] - uv[tri[:, 0]]
    area = np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    assert np.all(area == 1)
