"""AFLW2000-3D accuracy metrics, exactly as the literature computes them (pure functions, no I/O).

Protocol (3DDFA ``benchmark_aflw2000.py``, followed by PRN, 3DDFA_V2 and SynergyNet):

* **2D NME**: mean over the 68 points of the Euclidean (x, y) error, divided by
  ``sqrt(w * h)`` of the bounding box of the *ground-truth* 68 points (x, y only).
  Tables print it in percent.
* **Yaw bins**: ``|yaw|`` in [0, 30], (30, 60], (60, inf) degrees, from the dataset's yaw
  (``AFLW2000-3D.pose.npy`` = degrees(Pose_Para[1])). Seven entries have ``|yaw| > 90``
  because the fitted Euler angles are wrapped (e.g. -351.2 deg, really 8.8 deg); 3DDFA bins
  them by ``abs()`` alone, so they land in the (60, inf) bin. We do the same so figures stay
  comparable, and say so in every report. The headline "mean" of the papers is the mean of
  the three bin means (each bin weighted equally), not the mean over all images.
* **3D NME**: the PRN paper reports NME on the 68 points "with 3D coordinates" normalised by
  "the bounding box size" without code. We use the *same* normaliser as the 2D figure
  (sqrt(w*h) of the GT 2D box) so the two numbers share a denominator, and we align depth by
  subtracting each set's mean z first: AFLW2000-3D's ``pt3d_68`` z has an arbitrary offset
  (its translation carries no meaningful z), while x and y are image pixels; our z is also in
  image-pixel units (z toward the camera), so only the offset differs. The x, y errors are not
  re-centred (they are what the 2D figure measures), so the 3D NME is always >= the 2D NME.
* **Pose MAE**: mean absolute (wrapped) difference of yaw, pitch and roll in degrees, and the
  mean of the three. See :func:`to_aflw_angles` for how our angles map onto AFLW's
  ``Pose_Para`` and :func:`canonical_angles` for the wrapped ground truth.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .geometry.pose import euler_from_matrix, matrix_from_euler

BIN_EDGES = (30.0, 60.0)
BIN_LABELS = ("[0, 30]", "(30, 60]", "(60, 90+]")
FSANET_LIMIT = 99.0


def _as_points(points: np.ndarray) -> np.ndarray:
    """(..., 68, k) float64; a (k, 68) array (the dataset's layout) is transposed."""
    p = np.asarray(points, np.float64)
    if p.ndim >= 2 and p.shape[-1] == 68 and p.shape[-2] in (2, 3):
        p = np.swapaxes(p, -1, -2)
    if p.ndim < 2 or p.shape[-1] < 2:
        raise ValueError(f"expected (..., 68, 2|3) landmarks, got shape {p.shape}")
    return p


def gt_box_size(gt68: np.ndarray) -> np.ndarray:
    """``sqrt(w * h)`` of the GT points' (x, y) box: the 3DDFA / PRN normaliser."""
    g = _as_points(gt68)[..., :2]
    wh = g.max(axis=-2) - g.min(axis=-2)
    return np.sqrt(wh[..., 0] * wh[..., 1])


def nme(pred68: np.ndarray, gt68: np.ndarray) -> np.ndarray | float:
    """2D NME (a fraction, not %) of one face (68×k) or a batch (N×68×k); GT may be k×68."""
    p, g = _as_points(pred68), _as_points(gt68)
    err = np.linalg.norm(p[..., :2] - g[..., :2], axis=-1).mean(axis=-1)
    out = err / gt_box_size(g)
    return float(out) if np.ndim(out) == 0 else out


# iBUG 68-point groups: where a model's error sits (a student vs its teacher differs by part, not evenly)
FACE_PARTS = {"jaw": (0, 17), "brows": (17, 27), "nose": (27, 36), "eyes": (36, 48), "mouth": (48, 68)}


def nme_by_part(pred68: np.ndarray, gt68: np.ndarray) -> dict[str, np.ndarray]:
    """2D NME (fraction) of each :data:`FACE_PARTS` group, per image, on the whole face's normaliser.

    The normaliser stays the 68-point box so parts add up: the landmark-count-weighted mean of the
    parts is exactly :func:`nme`.
    """
    p, g = _as_points(pred68), _as_points(gt68)
    err = np.linalg.norm(p[..., :2] - g[..., :2], axis=-1) / gt_box_size(g)[..., None]
    return {name: err[..., a:b].mean(axis=-1) for name, (a, b) in FACE_PARTS.items()}


def nme_3d(pred68: np.ndarray, gt68: np.ndarray) -> np.ndarray | float:
    """3D NME (fraction): x, y as given, z of each set centred on its own mean (see module doc).

    Normalised by the GT 2D box like :func:`nme`, so for a prediction with perfect depth
    (up to an offset) the 3D and 2D figures coincide.
    """
    p, g = _as_points(pred68), _as_points(gt68)
    if p.shape[-1] < 3 or g.shape[-1] < 3:
        raise ValueError("3D NME needs (x, y, z) for both prediction and ground truth")
    dz = (p[..., 2] - p[..., 2].mean(axis=-1, keepdims=True)) - \
         (g[..., 2] - g[..., 2].mean(axis=-1, keepdims=True))
    dxy = p[..., :2] - g[..., :2]
    err = np.sqrt((dxy ** 2).sum(axis=-1) + dz ** 2).mean(axis=-1)
    out = err / gt_box_size(g)
    return float(out) if np.ndim(out) == 0 else out


def yaw_bins(yaw_deg: np.ndarray | float) -> np.ndarray:
    """Bin index 0, 1, 2 for ``|yaw|`` in [0, 30], (30, 60], (60, inf) — 3DDFA's rule.

    Wrapped yaws (``|yaw| > 90``) go to bin 2 by ``abs()`` alone, as 3DDFA does, even when the
    wrapped angle really is small (image03123: yaw -351.2 deg, i.e. 8.8 deg).
    """
    a = np.abs(np.asarray(yaw_deg, np.float64))
    return (a > BIN_EDGES[0]).astype(np.int64) + (a > BIN_EDGES[1]).astype(np.int64)


def summarize(errors: np.ndarray, yaw_deg: np.ndarray, valid: np.ndarray | None = None) -> dict:
    """NME summary in **percent**: all images, each yaw bin, and the mean/std of the bin means.

    ``valid`` masks images without a prediction (detector misses); they are left out of every
    figure and counted in ``n_missing``. A bin with no valid image reports ``None``.
    """
    e = np.asarray(errors, np.float64)
    ok = np.isfinite(e) if valid is None else (np.asarray(valid, bool) & np.isfinite(e))
    bins = yaw_bins(yaw_deg)
    per_bin, counts = [], []
    for b in range(3):
        sel = ok & (bins == b)
        counts.append(int(sel.sum()))
        per_bin.append(float(100 * e[sel].mean()) if sel.any() else None)
    present = [v for v in per_bin if v is not None]
    return {
        "all": float(100 * e[ok].mean()) if ok.any() else None,
        "median": float(100 * np.median(e[ok])) if ok.any() else None,
        "bins": per_bin,
        "bin_labels": list(BIN_LABELS),
        "bin_counts": counts,
        "bin_mean": float(np.mean(present)) if len(present) == 3 else None,
        "bin_std": float(np.std(present)) if len(present) == 3 else None,
        "n": int(ok.sum()),
        "n_missing": int((~ok).sum()),
    }


def wrap_degrees(angle: np.ndarray | float) -> np.ndarray:
    """Angles wrapped into [-180, 180)."""
    return (np.asarray(angle, np.float64) + 180.0) % 360.0 - 180.0


def angle_error(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Absolute angular difference in degrees, the short way round (179 vs -179 → 2)."""
    return np.abs(wrap_degrees(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


def canonical_angles(angles: np.ndarray) -> np.ndarray:
    """(pitch, yaw, roll) re-expressed with ``|yaw| <= 90`` and each angle in (-180, 180].

    An R = Rx(p)·Ry(y)·Rz(r) has two Euler triples, (p, y, r) and (p+180, 180-y, r+180); our
    poses always come out on the ``|yaw| <= 90`` branch, but 7 AFLW2000-3D fits sit on the
    other (or are wound several turns, e.g. pitch -713.7). Going through the matrix puts the
    ground truth on our branch, so a per-angle comparison measures the rotation, not the
    bookkeeping. The identity holds for either sign convention of the elementary rotations.
    """
    a = np.asarray(angles, np.float64)
    flat = a.reshape(-1, 3)
    out = np.array([euler_from_matrix(matrix_from_euler(*row)) for row in flat])
    return out.reshape(a.shape)


def to_aflw_angles(angles: np.ndarray) -> np.ndarray:
    """Our ``Pose.angles`` (pitch, yaw, roll, degrees) → AFLW2000-3D ``Pose_Para`` convention.

    AFLW2000-3D (Zhu et al.; 3DDFA's ``angle2matrix_3ddfa``) builds R = Rx·Ry·Rz from
    *transposed* elementary rotations (each angle enters with the opposite sign to the
    textbook matrix) and applies it in the 3DMM frame, whose y axis points up; the image
    frame (ours) has y down. Conjugating by diag(1, -1, 1) negates pitch and roll and keeps
    yaw, and the transposed matrices negate all three, so altogether: **same order, pitch and
    roll unchanged, yaw negated**. Verified on real images (GT-landmark crops through the
    default model; see tests/test_evaluation.py and the README): e.g. image03209 AFLW
    (6.2, 48.0, 14.3) vs ours (6.5, -49.3, 14.0).
    """
    a = np.array(angles, np.float64, copy=True)
    a[..., 1] = -a[..., 1]
    return a


def rotation_error(pred_aflw: np.ndarray, gt_aflw: np.ndarray) -> np.ndarray:
    """Degrees of the rotation between two poses (the geodesic angle of R_pred^T R_gt), per row.

    Why beside the per-angle MAE: near 90 deg yaw Euler angles are ill-conditioned (at the
    gimbal only one combination of pitch and roll is defined), so a rotation off by a few
    degrees can show pitch and roll each off by 100. Inputs are N×3 (pitch, yaw, roll) in AFLW's
    convention, whose R = Rx·Ry·Rz is built from transposed elementary rotations (see
    :func:`to_aflw_angles`): the textbook matrices of the negated angles. NaN rows give NaN.
    """
    p = np.asarray(pred_aflw, np.float64).reshape(-1, 3)
    g = np.asarray(gt_aflw, np.float64).reshape(-1, 3)
    out = np.full(len(p), np.nan)
    for i, (a, b) in enumerate(zip(p, g)):
        if np.isfinite(a).all() and np.isfinite(b).all():
            rel = matrix_from_euler(*-a).T @ matrix_from_euler(*-b)
            out[i] = np.degrees(np.arccos(np.clip((np.trace(rel) - 1) / 2, -1.0, 1.0)))
    return out


def fsanet_mask(gt_angles: np.ndarray, limit: float = FSANET_LIMIT) -> np.ndarray:
    """Images kept by the FSA-Net pose protocol: every raw GT angle within ±99 degrees.

    SynergyNet's ``benchmark_FOE`` (and the head-pose literature after FSA-Net) reports pose
    MAE on these 1,969 of the 2,000 images, without any wrap handling.
    """
    return np.all(np.abs(np.asarray(gt_angles, np.float64)) <= limit, axis=-1)


def pose_mae(pred_aflw: np.ndarray, gt_aflw: np.ndarray, valid: np.ndarray | None = None) -> dict:
    """MAE in degrees of yaw, pitch, roll and their mean; both sides canonicalised and wrapped.

    Both inputs are N×3 (pitch, yaw, roll) in AFLW's convention (use :func:`to_aflw_angles`
    on ours). ``valid`` masks rows to use.
    """
    p = np.asarray(pred_aflw, np.float64).reshape(-1, 3)
    g = np.asarray(gt_aflw, np.float64).reshape(-1, 3)
    ok = np.all(np.isfinite(p), axis=1) & np.all(np.isfinite(g), axis=1)
    if valid is not None:
        ok &= np.asarray(valid, bool)
    if not ok.any():
        return {"yaw": None, "pitch": None, "roll": None, "mean": None, "n": 0}
    err = angle_error(canonical_angles(p[ok]), canonical_angles(g[ok]))
    pitch, yaw, roll = (float(v) for v in err.mean(axis=0))
    return {"yaw": yaw, "pitch": pitch, "roll": roll, "mean": (yaw + pitch + roll) / 3,
            "n": int(ok.sum())}


def ced(errors: np.ndarray, max_error: float = 0.10, steps: int = 201) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative error distribution: thresholds (fractions) and the share of images at or below.

    Missing predictions (NaN) count as failures, so a detector miss lowers the whole curve.
    """
    e = np.asarray(errors, np.float64)
    x = np.linspace(0.0, max_error, steps)
    if e.size == 0:
        return x, np.zeros_like(x)
    finite = np.sort(e[np.isfinite(e)])
    y = np.searchsorted(finite, x, side="right") / e.size
    return x, y


def ced_auc(errors: np.ndarray, max_error: float = 0.07) -> float:
    """Area under the CED up to ``max_error``, normalised to [0, 1] (1 = every error is 0)."""
    x, y = ced(errors, max_error, 701)
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / max_error)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x0, y0, x1, y1) boxes; 0 when they do not overlap."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def landmark_box(gt68: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) of the GT points: what a detection must overlap to count as a hit."""
    g = _as_points(gt68)[..., :2]
    return np.concatenate([g.min(axis=-2), g.max(axis=-2)], axis=-1)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, yaw_deg: np.ndarray, *, resamples: int = 2000,
                     level: float = 0.95, seed: int = 0) -> dict:
    """B − A of one per-image metric (same images, two models), with a bootstrap interval.

    Why: consecutive releases differ by a few hundredths of a percent on AFLW2000-3D, less than
    the figures' own sampling noise, so "B beats A" needs an interval, and an unpaired one would
    drown the difference in the images' spread. Resampling is paired (each draw takes the same
    images for both) and stratified by yaw bin (bin sizes fixed), because the headline bin mean
    weighs the bins equally. Images with NaN in either (a detector miss) are left out of both.
    Figures are in the inputs' units: ``diff`` < 0 means B's errors are lower.
    """
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    y = np.asarray(yaw_deg, np.float64).ravel()
    if not len(a) == len(b) == len(y):
        raise ValueError(f"a, b and yaw need the same length, got {len(a)}, {len(b)}, {len(y)}")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError("need resamples >= 1 and 0 < level < 1")
    ok = np.isfinite(a) & np.isfinite(b) & np.isfinite(y)
    a, b, bins = a[ok], b[ok], yaw_bins(y[ok])
    members = [np.flatnonzero(bins == k) for k in range(3)]
    if not all(len(m) for m in members):
        raise ValueError("every yaw bin needs at least one image both sides scored")
    d = b - a
    rng = np.random.default_rng(seed)
    draws = [m[rng.integers(0, len(m), (resamples, len(m)))] for m in members]
    bin_means = np.stack([d[i].mean(axis=1) for i in draws])          # 3 × resamples
    sizes = np.array([len(m) for m in members], np.float64)
    alls = (bin_means * sizes[:, None]).sum(axis=0) / sizes.sum()     # the pooled mean of the draw
    tail = 100 * (1 - level) / 2

    def stat(va: float, vb: float, boot: np.ndarray) -> dict:
        low, high = np.percentile(boot, [tail, 100 - tail])
        return {"a": va, "b": vb, "diff": vb - va, "low": float(low), "high": float(high)}

    def bmean(x: np.ndarray) -> float:
        return float(np.mean([x[m].mean() for m in members]))

    return {
        "n": int(ok.sum()),
        "n_dropped": int((~ok).sum()),
        "bin_mean": stat(bmean(a), bmean(b), bin_means.mean(axis=0)),
        # each bin on its own: where a change moves (v23 gained on frontal faces, lost on profiles)
        "bins": [{**stat(float(a[m].mean()), float(b[m].mean()), bin_means[k]),
                  "b_better": float((d[m] < 0).mean()), "n": len(m)} for k, m in enumerate(members)],
        "all": stat(float(a.mean()), float(b.mean()), alls),
        "b_better": float((d < 0).mean()),
        "level": level,
        "resamples": resamples,
    }
