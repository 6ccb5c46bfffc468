"""AFLW2000-3D metrics (realtime_prn.evaluation) and the evaluation tool, end to end.

Pure-metric tests use hand-computed cases; the convention and the tool are checked on real
AFLW2000-3D images through the real default model (skipped with a reason if either is missing).
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from realtime_prn import evaluation as ev
from realtime_prn.geometry.pose import euler_from_matrix, matrix_from_euler

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "evaluate_aflw2000.py"


def _box_points(w: float = 100.0, h: float = 200.0, seed: int = 0) -> np.ndarray:
    """68 points in [10, 10+w] × [20, 20+h] whose box is exactly that (corners included)."""
    rng = np.random.default_rng(seed)
    pts = np.c_[rng.uniform(10, 10 + w, 68), rng.uniform(20, 20 + h, 68), rng.normal(0, 30, 68)]
    pts[0, :2], pts[1, :2] = (10, 20), (10 + w, 20 + h)
    return pts


@pytest.fixture(scope="module")
def aflw(eval_dir):
    d = eval_dir / "aflw2000"
    if not (d / "3ddfa_test_configs" / "AFLW2000-3D.pts68.npy").is_file():
        pytest.skip(f"AFLW2000-3D not found at {d}")
    return d


# --------------------------------------------------------------------------- NME


def test_nme_zero_for_ground_truth():
    g = _box_points()
    assert ev.nme(g, g) == 0.0
    assert ev.nme_3d(g, g) == 0.0


def test_nme_zero_on_real_ground_truth(aflw):
    gt = np.load(aflw / "3ddfa_test_configs" / "AFLW2000-3D.pts68.npy")[:50]  # (n, 3, 68) layout
    np.testing.assert_array_equal(ev.nme(gt, gt), 0.0)
    np.testing.assert_array_equal(ev.nme_3d(gt, gt), 0.0)


def test_nme_known_shift():
    """Every point moved by (3, 4) px: error 5 px, box 100×200 → 5 / sqrt(20000)."""
    g = _box_points(100, 200)
    p = g.copy()
    p[:, :2] += (3, 4)
    assert ev.nme(p, g) == pytest.approx(5 / np.sqrt(100 * 200), rel=1e-12)
    # the dataset's (3, 68) layout and batches give the same
    assert ev.nme(p.T, g.T) == pytest.approx(5 / np.sqrt(20000), rel=1e-12)
    np.testing.assert_allclose(ev.nme(np.stack([p, g]), np.stack([g, g])), [5 / np.sqrt(20000), 0])
    # z offsets are ignored by the 3D NME (each set centred on its own mean z) ...
    q = p.copy()
    q[:, 2] += 1000.0
    assert ev.nme_3d(q, g) == pytest.approx(5 / np.sqrt(20000), rel=1e-12)
    # ... but a z error adds in quadrature: (3, 4) in x, y and ±12 in z (zero mean) → 13 px
    q[:, 2] = g[:, 2] + np.where(np.arange(68) % 2, 12.0, -12.0)
    assert ev.nme_3d(q, g) == pytest.approx(13 / np.sqrt(20000), rel=1e-12)


def test_nme_normaliser_is_gt_box_not_prediction():
    g = _box_points(100, 200)
    p = 2 * g  # a prediction twice the size must not change the normaliser
    expected = np.linalg.norm(p[:, :2] - g[:, :2], axis=1).mean() / np.sqrt(20000)
    assert ev.nme(p, g) == pytest.approx(expected)


# --------------------------------------------------------------------------- bins


def test_yaw_bins_known_values():
    yaws = [0, 30, 30.01, -30.5, 60, 60.01, -89.9, 90, -103.0, 118.9, -351.2, 187.8]
    assert ev.yaw_bins(yaws).tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2]


def test_yaw_bins_real_wrapped_entries(aflw):
    """The 7 wrapped yaws of AFLW2000-3D.pose.npy all land in the (60, 90] bin (3DDFA's rule)."""
    yaw = np.load(aflw / "3ddfa_test_configs" / "AFLW2000-3D.pose.npy")
    wrapped = np.abs(yaw) > 90
    assert wrapped.sum() == 7
    assert (ev.yaw_bins(yaw[wrapped]) == 2).all()
    assert np.bincount(ev.yaw_bins(yaw)).tolist() == [1312, 383, 305]


def test_summarize_bins_and_mean_of_bins():
    e = np.array([0.01, 0.03, 0.02, 0.04, 0.10, np.nan])
    yaw = np.array([5, -20, 45, -50, 70, 10])
    s = ev.summarize(e, yaw)
    assert s["bins"] == pytest.approx([2.0, 3.0, 10.0])
    assert s["bin_mean"] == pytest.approx(5.0)
    assert s["all"] == pytest.approx(4.0)
    assert s["bin_counts"] == [2, 2, 1] and s["n"] == 5 and s["n_missing"] == 1


# --------------------------------------------------------------------------- pose


def test_angle_error_wraps():
    assert ev.angle_error(179, -179) == pytest.approx(2.0)
    assert ev.angle_error(-170, 170) == pytest.approx(20.0)
    assert ev.angle_error(10, 370) == pytest.approx(0.0, abs=1e-9)


def test_pose_mae_wraparound():
    pred = np.array([[0.0, 10.0, 179.0]])
    gt = np.array([[0.0, 10.0, -179.0]])
    m = ev.pose_mae(pred, gt)
    assert m["roll"] == pytest.approx(2.0) and m["yaw"] == pytest.approx(0.0, abs=1e-9)
    assert m["mean"] == pytest.approx(2.0 / 3)


def test_canonical_angles_other_branch():
    """(p+180, 180-y, r+180) is the same rotation as (p, y, r): it must score zero error."""
    p, y, r = 12.0, 75.0, -20.0
    other = np.array([p + 180, 180 - y, r + 180 - 720])
    np.testing.assert_allclose(ev.canonical_angles(other), [p, y, r], atol=1e-9)
    assert ev.pose_mae(np.array([[p, y, r]]), other[None])["mean"] == pytest.approx(0, abs=1e-9)
    # AFLW image03123: raw (-713.7, -351.2, -972.3) is a small yaw after unwinding
    assert abs(ev.canonical_angles(np.array([-713.7, -351.2, -972.3]))[1]) < 10


def _angle2matrix_3ddfa(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """AFLW2000-3D / 3DDFA's R (radians), transposed elementary rotations, 3DMM frame (y up)."""
    x, y, z = pitch, yaw, roll
    rx = np.array([[1, 0, 0], [0, np.cos(x), np.sin(x)], [0, -np.sin(x), np.cos(x)]])
    ry = np.array([[np.cos(y), 0, -np.sin(y)], [0, 1, 0], [np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(z), np.sin(z), 0], [-np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return rx @ ry @ rz


@pytest.mark.parametrize("pose_para", [(0.2, 0.5, -0.3), (-0.4, -1.1, 0.6), (0.05, 1.4, 0.1)])
def test_to_aflw_angles_matches_the_derivation(pose_para):
    """Zhu's R in the y-up model frame, seen in our y-down image frame, decomposed our way,
    then mapped by to_aflw_angles, gives back Pose_Para (the docstring's argument, in numbers)."""
    flip = np.diag([1.0, -1.0, 1.0])
    r_image = flip @ _angle2matrix_3ddfa(*pose_para) @ flip
    np.testing.assert_allclose(ev.to_aflw_angles(euler_from_matrix(r_image)),
                               np.degrees(pose_para), atol=1e-9)


def _turned(angles_aflw: np.ndarray, axis: np.ndarray, degrees: float) -> np.ndarray:
    """AFLW angles of the pose ``angles_aflw`` turned further by ``degrees`` about ``axis``."""
    import cv2

    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    turn = cv2.Rodrigues(axis * np.radians(degrees))[0]
    r = matrix_from_euler(*-np.asarray(angles_aflw, np.float64)) @ turn  # AFLW: negated angles
    return -euler_from_matrix(r)


def test_rotation_error_is_the_angle_between_the_rotations():
    """Exact: a pose turned by 5 deg about any axis is 5 deg away, the other Euler branch of the
    same rotation (or a wound angle) 0 away; near 90 deg yaw a 3 deg turn moves pitch and roll by
    tens of degrees each, which is why the geodesic error is reported beside the per-angle MAE."""
    rng = np.random.default_rng(0)
    gt = np.array([[10.0, 30.0, -5.0], [-20.0, 70.0, 15.0], [5.0, -45.0, 40.0]])
    pred = np.array([_turned(g, rng.normal(size=3), 5.0) for g in gt])
    np.testing.assert_allclose(ev.rotation_error(pred, gt), 5.0, atol=1e-6)
    other = gt + [180.0, 0.0, 180.0]
    other[:, 1] = 180.0 - gt[:, 1]
    np.testing.assert_allclose(ev.rotation_error(other, gt), 0.0, atol=1e-5)
    np.testing.assert_allclose(ev.rotation_error(gt + [720.0, 0, 0], gt), 0.0, atol=1e-5)
    near = np.array([0.0, 88.0, 0.0])
    off = _turned(near, [1.0, 0.0, 0.0], 3.0)
    assert ev.rotation_error(off, near)[0] == pytest.approx(3.0, abs=1e-6)
    assert ev.angle_error(off[0], near[0]) > 20 and ev.angle_error(off[2], near[2]) > 20
    assert np.isnan(ev.rotation_error([np.nan, 0, 0], [0, 0, 0])[0])


def test_fsanet_mask():
    a = np.array([[0, 0, 0], [99, -99, 0], [0, 99.5, 0], [-100, 0, 0]])
    assert ev.fsanet_mask(a).tolist() == [True, True, False, False]


# --------------------------------------------------------------------------- CED, boxes


def test_ced_counts_misses_as_failures():
    x, y = ev.ced(np.array([0.01, 0.02, np.nan, 0.2]), max_error=0.1, steps=11)
    assert y[0] == 0 and y[1] == pytest.approx(0.25) and y[2] == pytest.approx(0.5)
    assert y[-1] == pytest.approx(0.5)  # the NaN and the 20 % error never count
    assert ev.ced_auc(np.zeros(4)) == pytest.approx(1.0)


def test_box_iou():
    assert ev.box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == pytest.approx(1)
    assert ev.box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert ev.box_iou([0, 0, 10, 10], [10, 10, 20, 20]) == 0.0


# --------------------------------------------------------------------------- real model

# From the full run (all 2000, GT crop, default mb05uv fp32): on the 621 images with GT
# |yaw| 15-60 and |pitch|, |roll| < 25 (the kind picked below), the per-image error of
# to_aflw_angles(ours) vs Pose_Para has 99th percentiles of 15.9 / 14.6 / 11.3 deg
# (pitch / yaw / roll; medians 3.1 / 2.7 / 1.6, 95th 10.2 / 10.2 / 6.6). The 8 images picked
# here reach 8.7 deg; 16 deg flags a real regression, not one unlucky image.
ANGLE_TOL = 16.0


@pytest.fixture(scope="module")
def recon():
    from realtime_prn import FaceReconstructor, Options
    from realtime_prn.errors import user_errors

    try:
        return FaceReconstructor(Options())
    except user_errors() as exc:
        pytest.skip(f"default model unavailable: {exc}")


def test_to_aflw_angles_on_real_images(aflw, recon):
    """Pitch and roll keep their sign and yaw flips, on real faces turned both ways."""
    import cv2
    import scipy.io as sio

    files = sorted(aflw.glob("image*.jpg"))
    gt68 = np.load(aflw / "3ddfa_test_configs" / "AFLW2000-3D.pts68.npy")
    picked, ours, theirs = 0, [], []
    for i, f in enumerate(files):
        pose = np.degrees(sio.loadmat(str(f.with_suffix(".mat")), variable_names=["Pose_Para"])
                          ["Pose_Para"][0][:3])
        if not (15 < abs(pose[1]) < 60 and abs(pose[0]) < 25 and abs(pose[2]) < 25):
            continue
        face = recon.reconstruct(cv2.imread(str(f)), landmarks=gt68[i].T[:, :2])[0]
        ours.append(face.pose.angles)
        theirs.append(pose)
        picked += 1
        if picked == 8:
            break
    ours, theirs = np.array(ours), np.array(theirs)
    assert (np.sign(theirs[:, 1]) > 0).any() and (np.sign(theirs[:, 1]) < 0).any()
    mapped = ev.to_aflw_angles(ours)
    err = ev.angle_error(mapped, theirs)
    assert err.max() < ANGLE_TOL, (mapped.round(1), theirs.round(1))
    assert (np.sign(mapped[:, 1]) == np.sign(theirs[:, 1])).all()
    # unmapped, yaw is wrong by about 2·|yaw| (> 19.5 deg on all 621 such images): the flip is needed
    assert (ev.angle_error(ours[:, 1], theirs[:, 1]) > 15).all()


def test_tool_end_to_end_limit_20(aflw, recon, tmp_path):
    """The tool on the first 20 images. Bounds: the full run gives 2D NME 3.48 % (GT crop) and
    3.66 % (detector), the first 20 give 2.93 % / 3.19 %; PRN's paper reports 3.27 %. A wrong crop,
    landmark order or frame lands far above 10 %, so < 5 % separates working from broken with a
    wide margin. Pose: the 20 give 2.9 deg (GT crop); without the yaw flip of to_aflw_angles they
    give 17.9, so < 8 catches a convention slip."""
    out = tmp_path / "eval"
    cmd = [sys.executable, str(TOOL), "--limit", "20", "--data", str(aflw), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    for crop in ("gt", "detector"):
        r = res["results"][crop]
        assert r["n_images"] == 20
        assert 1.0 < r["nme2d"]["all"] < 5.0
        assert r["nme2d"]["all"] <= r["nme3d"]["all"] < 8.0
        assert r["pose_fsanet"]["mean"] < 8.0
        by_yaw = r["pose_by_yaw"]
        assert by_yaw["le60"]["n"] + by_yaw["gt60"]["n"] == r["pose_fsanet"]["n"]
        assert by_yaw["le60"]["n"] > 0
        rot = r["rotation_error_by_yaw"]  # working: ~6 deg; random rotations average ~126
        assert 0 < rot["le60"] < 15
        assert r["timing_ms"]["median"] > 0
    assert res["results"]["detector"]["miss_rate"] <= 0.1
    assert (out / "results.md").is_file() and (out / "ced.png").stat().st_size > 1000
    assert "pose MAE by GT yaw" in (out / "results.md").read_text()
    assert "rotation error (geodesic" in (out / "results.md").read_text()
    import csv

    rows = [r for r in csv.DictReader(open(out / "per_image.csv")) if r["crop"] == "gt"]
    ours = [[float(r[k]) for k in ("pitch", "yaw", "roll")] for r in rows]
    theirs = [[float(r[k]) for k in ("pitch_gt", "yaw_gt_mat", "roll_gt")] for r in rows]
    np.testing.assert_allclose([float(r["rotation_error"]) for r in rows], ev.rotation_error(ours, theirs),
                               atol=5e-3)
    assert "reproduce:" in proc.stdout


@pytest.mark.parametrize("args", [["--limit", "0"], ["--engine", "nope"], ["--data", "/nonexistent/x"]])
def test_tool_bad_input_is_one_error_line(args):
    proc = subprocess.run([sys.executable, str(TOOL), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
