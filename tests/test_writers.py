"""Writers: files read back equal what was written, and meshes face the viewer, right way up."""
import cv2
import numpy as np
import scipy.io

from realtime_prn.face import Face
from realtime_prn.geometry.pose import matrix_from_euler
from realtime_prn.io.mesh import read_obj
from realtime_prn.outputs import OutputKinds, write_face


def _face(assets, synth, h=480, w=640):
    pos, _ = synth(assets, matrix_from_euler(0, 15, 0), None, 1.0, centre=(320, 240, 100))
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8)
    return Face(position_map=pos, image=img, assets=assets)


def test_obj_reads_back_right_way_up_and_facing_camera(tmp_path, assets, synth):
    face = _face(assets, synth)
    paths = write_face(face, tmp_path / "f", OutputKinds(obj=True))
    mesh = read_obj(paths[0])
    assert mesh["vertices"].shape == (43867, 3)
    np.testing.assert_allclose(mesh["vertices"][:, 0], face.vertices[:, 0], atol=1e-3)
    np.testing.assert_allclose(mesh["vertices"][:, 1], 479 - face.vertices[:, 1], atol=1e-3)
    np.testing.assert_allclose(mesh["colors"], face.colors, atol=1e-4)
    np.testing.assert_array_equal(mesh["faces"], face.triangles)
    # Right way up: the brows (landmark 19) are above the chin (landmark 8) once y points up.
    kv = np.searchsorted(assets.face_ind, assets.kpt_flat)
    assert mesh["vertices"][kv[19], 1] > mesh["vertices"][kv[8], 1]
    # Facing the viewer: the area-weighted mean normal points to +z.
    v, f = mesh["vertices"], mesh["faces"]
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    mean = n.sum(0) / np.linalg.norm(n.sum(0))
    assert mean[2] > 0.8


def test_textured_obj_ply_npz_mat_and_text(tmp_path, assets, synth):
    face = _face(assets, synth)
    kinds = OutputKinds(textured_obj=True, ply=True, npz=True, mat=True, kpt=True, pose=True,
                        depth=True, texture=True, mask=True)
    paths = write_face(face, tmp_path / "f", kinds)
    names = sorted(p.name for p in paths)
    assert names == sorted(["f_textured.obj", "f_textured.mtl", "f_textured.png", "f.ply", "f.npz",
                            "f.mat", "f_kpt.txt", "f_pose.txt", "f_depth.png", "f_texture.png",
                            "f_texture_mask.png"])
    mesh = read_obj(tmp_path / "f_textured.obj")
    assert mesh["uv"].shape == (43867, 2) and (mesh["uv"] >= 0).all() and (mesh["uv"] <= 1).all()
    assert "map_Kd f_textured.png" in (tmp_path / "f_textured.mtl").read_text()
    tex = cv2.imread(str(tmp_path / "f_textured.png"))
    np.testing.assert_array_equal(tex, face.texture())
    ply = (tmp_path / "f.ply").read_text().splitlines()
    assert "element vertex 43867" in ply and f"element face {len(face.triangles)}" in ply
    data = np.load(tmp_path / "f.npz")
    np.testing.assert_allclose(data["landmarks"], face.landmarks)
    np.testing.assert_allclose(data["pose_angles"], face.pose.angles)
    mat = scipy.io.loadmat(tmp_path / "f.mat")
    np.testing.assert_allclose(mat["vertices"], face.vertices, rtol=1e-6)
    np.testing.assert_allclose(np.loadtxt(tmp_path / "f_kpt.txt"), face.landmarks, atol=1e-3)
    angles = np.loadtxt(tmp_path / "f_pose.txt", max_rows=1)
    np.testing.assert_allclose(angles, [0, 15, 0], atol=0.01)
    depth = cv2.imread(str(tmp_path / "f_depth.png"), cv2.IMREAD_GRAYSCALE)
    assert depth.shape == (480, 640) and (depth > 0).sum() > 20000
    mask = cv2.imread(str(tmp_path / "f_texture_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (256, 256) and 0 < (mask > 0).sum() <= assets.face_mask.sum()


def test_rewrite_replaces_atomically(tmp_path, assets, synth):
    face = _face(assets, synth)
    write_face(face, tmp_path / "f", OutputKinds(kpt=True))
    write_face(face, tmp_path / "f", OutputKinds(kpt=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f_kpt.txt"]  # no .part files left
