#!/usr/bin/env python
"""Prove the mb05 port and the mb05uv model on AFLW2000-3D (evaluation only; nothing is tuned here).

Why: the TF port of 3DDFA_V2's mb05 has no torch reference on this machine, so it is checked
against the published protocol figure (TEACHER.md section 1: NME 3.384 on all 2000, 3.808 mean of
yaw bins). Then the PRN-compatible 256 model is run the way PRN's api.py runs a network, under
three crop rules, and the dense UV basis is checked against the teacher's sparse landmarks.

Sections printed:
  (a) teacher protocol: landmark ROI sqrt(2)*max(w,h), 3DDFA crop_img, cv2.resize to 120, BGR;
  (b) the 256 model (TF, or ONNX with --onnx): PRN crop (cv2.warpAffine), landmarks at uv_kpt_ind,
      mapped back by the inverse transform; crop rules prn1.6, teacher (sqrt2*max) and det1.58
      (the detector-box rule with the GT 68-point box standing in for a detector box);
  (c) dense vs sparse: the 68 map points at uv_kpt_ind against the sparse-basis landmarks of the
      same params, for random params and for the teacher's params on these images (256-crop px).

NME = mean 2D error / sqrt(w*h) of the GT 68-point box, in %. Yaw bins use abs(yaw) from
AFLW2000-3D.pose.npy: [0,30], (30,60], (60, inf): the 7 wrapped yaws (> 90 deg) fall in the last bin,
as in 3DDFA's protocol.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from realtime_prn.paths import DataNotFoundError, data_file

CROP = 256
RULES = ("prn1.6", "teacher", "det1.58")
BIN_EDGES = (30.0, 60.0)


# --------------------------------------------------------------------------- data


def load_aflw(
    limit: int | None = None, data_root: str | None = None
) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Sorted image paths, pts68 (n, 3, 68) and yaw in degrees (n,), the 3DDFA test-config order."""
    cfg = data_file("eval", "aflw2000", "3ddfa_test_configs", override=data_root)
    files = sorted(cfg.parent.glob("image*.jpg"))
    pts = np.load(cfg / "AFLW2000-3D.pts68.npy")
    yaw = np.load(cfg / "AFLW2000-3D.pose.npy")
    if len(files) != len(pts):
        raise DataNotFoundError(f"{cfg.parent}: {len(files)} images but {len(pts)} pts68 entries")
    n = len(files) if limit is None else min(limit, len(files))
    return files[:n], pts[:n].astype(np.float64), yaw[:n].astype(np.float64)


def nme(pred_xy: np.ndarray, gt_pts: np.ndarray) -> np.ndarray:
    """Per-image NME in %: pred (n, 68, 2) vs GT (n, 3+, 68), normalised by sqrt(w*h) of the GT box."""
    g = gt_pts[:, :2].transpose(0, 2, 1)
    wh = g.max(axis=1) - g.min(axis=1)
    return 100.0 * np.linalg.norm(pred_xy - g, axis=2).mean(axis=1) / np.sqrt(wh[:, 0] * wh[:, 1])


def yaw_bins(yaw: np.ndarray) -> list[np.ndarray]:
    """Masks of the three abs(yaw) bins; wrapped yaws (> 90) stay in the last bin."""
    a = np.abs(yaw)
    return [a <= BIN_EDGES[0], (a > BIN_EDGES[0]) & (a <= BIN_EDGES[1]), a > BIN_EDGES[1]]


def summarise(per_image: np.ndarray, yaw: np.ndarray) -> dict[str, float]:
    """All-image NME, each bin's NME and the mean of the bins (NaN for an empty bin)."""
    bins = [float(per_image[m].mean()) if m.any() else float("nan") for m in yaw_bins(yaw)]
    return {
        "all": float(per_image.mean()),
        "b0": bins[0],
        "b1": bins[1],
        "b2": bins[2],
        "bin_mean": float(np.nanmean(bins)),
    }


# --------------------------------------------------------------------------- (a) teacher


def teacher_protocol(
    files: list[Path], pts: np.ndarray, batch: int = 64
) -> tuple[np.ndarray, np.ndarray, list]:
    """3DDFA_V2's own pipeline on GT-landmark ROIs: per-image NME, the 62 de-normalised params, ROIs."""
    import cv2

    from realtime_prn.network.mb05 import (
        build_mb05_model,
        crop_img,
        load_param_stats,
        normalise_bgr,
        roi_box_from_landmarks,
    )

    model = build_mb05_model()
    p_mean, p_std = load_param_stats()
    rois, inputs = [], []
    for f, p in zip(files, pts):
        img = cv2.imread(str(f))
        roi = roi_box_from_landmarks(p)
        rois.append(roi)
        inputs.append(
            normalise_bgr(cv2.resize(crop_img(img, roi), (120, 120), interpolation=cv2.INTER_LINEAR))
        )
    out = model.predict(np.stack(inputs), batch_size=batch, verbose=0)
    params = out.astype(np.float64) * p_std + p_mean
    lms = teacher_landmarks(params, rois)
    return nme(lms[:, :, :2], pts), params, rois


def teacher_landmarks(params: np.ndarray, rois: list) -> np.ndarray:
    """Sparse 68 landmarks (n, 68, 3) in original-image pixels, as 3DDFA_V2 reconstructs them."""
    from realtime_prn.network.mb05 import similar_transform
    from realtime_prn.network.mb05uv import camera
    from realtime_prn.network.uv_basis import load_sparse68, sparse_vertices

    sp = load_sparse68()
    v = camera(params, sparse_vertices(sp, params[:, 12:]))  # (n, 68, 3) in the 120 frame
    return np.stack([similar_transform(v[i].T, rois[i]).T for i in range(len(rois))])


# --------------------------------------------------------------------------- (b) 256 model


def crop_square(pts: np.ndarray, rule: str) -> tuple[float, float, float]:
    """(centre x, centre y, side) of the square PRN crops for one face's GT landmarks under ``rule``."""
    x0, y0, x1, y1 = pts[0].min(), pts[1].min(), pts[0].max(), pts[1].max()
    w, h = x1 - x0, y1 - y0
    cx, cy = x1 - w / 2.0, y1 - h / 2.0
    if rule == "prn1.6":  # PRNet api.py, image_info = landmarks
        return cx, cy, float(int(1.6 * (w + h) / 2))
    if rule == "teacher":  # 3DDFA_V2's landmark ROI
        return cx, cy, float(np.sqrt(2.0) * max(w, h))
    if rule == "det1.58":  # PRNet api.py / 3DDFA_V2 for detector boxes
        old = (w + h) / 2
        return cx, cy + 0.14 * old, float(int(1.58 * old))
    raise ValueError(f"unknown crop rule {rule!r}; choose from {', '.join(RULES)}")


def crop_matrix(cx: float, cy: float, side: float) -> np.ndarray:
    """2x3 similarity: src square corners [c - side/2, c + side/2] -> dst pixels 0..255 (api.py)."""
    k = (CROP - 1) / side
    x0, y0 = cx - side / 2, cy - side / 2
    return np.array([[k, 0.0, -k * x0], [0.0, k, -k * y0]])


def prn_crop(img_bgr: np.ndarray, m: np.ndarray) -> np.ndarray:
    """PRN's network input: the warped 256 crop, RGB float32 in [0, 1]."""
    import cv2

    crop = cv2.warpAffine(img_bgr, m, (CROP, CROP), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return (crop[:, :, ::-1].astype(np.float32) / 255.0).copy()


def uncrop(pts_crop: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Inverse of :func:`crop_matrix` for (..., 3) crop-frame points (z divided by the scale, as api.py)."""
    k = m[0, 0]
    out = np.empty_like(pts_crop)
    out[..., 0] = (pts_crop[..., 0] - m[0, 2]) / k
    out[..., 1] = (pts_crop[..., 1] - m[1, 2]) / k
    out[..., 2] = pts_crop[..., 2] / k
    return out


def make_runner(onnx_path: Path | None, threads: int) -> tuple[object, str]:
    """A callable crops (n,256,256,3) -> position maps, from the Keras model or an ONNX file."""
    if onnx_path is None:
        from realtime_prn.network.mb05uv import build_mb05uv_model

        model = build_mb05uv_model()
        return (lambda x: model.predict(x, batch_size=len(x), verbose=0)), "tf"
    from realtime_prn.engines.onnxruntime import OnnxRuntimeEngine

    # the project's engine, so the port is checked with the session settings users run
    engine = OnnxRuntimeEngine(onnx_path, threads=threads, providers=["CPUExecutionProvider"], max_batch=64)
    return engine.infer, f"onnx:{onnx_path.name}"


def model_256(
    files: list[Path], pts: np.ndarray, rules: tuple[str, ...], runner: object, chunk: int = 50
) -> dict[str, np.ndarray]:
    """Per-image NME for each crop rule, running the position-map model like PRNet api.py."""
    import cv2

    from realtime_prn.network.mb05uv import landmarks_from_posmap
    from realtime_prn.network.uv_basis import uv_kpt_ind

    ind = uv_kpt_ind()
    out = {r: np.zeros(len(files)) for r in rules}
    for s in range(0, len(files), chunk):
        imgs = [cv2.imread(str(f)) for f in files[s : s + chunk]]
        for rule in rules:
            ms = [crop_matrix(*crop_square(p, rule)) for p in pts[s : s + chunk]]
            pos = runner(np.stack([prn_crop(im, m) for im, m in zip(imgs, ms)]))
            lm = np.stack([uncrop(landmarks_from_posmap(pos[i], ind), ms[i]) for i in range(len(ms))])
            out[rule][s : s + len(ms)] = nme(lm[:, :, :2], pts[s : s + chunk])
    return out


# --------------------------------------------------------------------------- (c) dense vs sparse


def random_params(rng: np.random.Generator, n: int, scale: float = 5.8e-4) -> np.ndarray:
    """Plausible de-normalised params: alpha ~ N(mean, std) of the teacher's stats, a random similarity
    camera (|yaw| <= 80, |pitch|, |roll| <= 25 deg) at the teacher's median scale on AFLW (5.8e-4),
    face centred in the 120 frame."""
    from realtime_prn.network.mb05 import load_param_stats
    from realtime_prn.network.uv_basis import load_sparse68

    p_mean, p_std = load_param_stats()
    alpha = p_mean[12:] + p_std[12:] * rng.standard_normal((n, 50))
    centre = load_sparse68().u_base.mean(axis=0)
    out = np.zeros((n, 62))
    for i in range(n):
        yaw, pitch, roll = np.radians(rng.uniform([-80, -25, -25], [80, 25, 25]))
        cy, sy, cp, spi, cr, sr = (
            np.cos(yaw),
            np.sin(yaw),
            np.cos(pitch),
            np.sin(pitch),
            np.cos(roll),
            np.sin(roll),
        )
        rx = np.array([[1, 0, 0], [0, cp, -spi], [0, spi, cp]])
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        r = scale * rz @ ry @ rx
        t = np.array([60.0, 60.0, 0.0]) - r @ centre
        out[i, :12] = np.concatenate([r, t[:, None]], axis=1).ravel()
        out[i, 12:] = alpha[i]
    return out


def dense_vs_sparse(params: np.ndarray, chunk: int = 32) -> dict[str, float]:
    """Map landmarks (uv_kpt_ind) vs sparse-basis landmarks of the same params, in 256-crop pixels."""
    from realtime_prn.network.mb05uv import (
        camera,
        landmarks_from_posmap,
        params_to_posmap_np,
        similar_transform_crop,
        sparse_landmarks_crop,
    )
    from realtime_prn.network.uv_basis import load_sparse68, load_uv_basis, uv_kpt_ind

    ub, sp, ind = load_uv_basis(), load_sparse68(), uv_kpt_ind()
    err, dz, worst = [], [], []
    for s in range(0, len(params), chunk):
        p = params[s : s + chunk]
        pos = params_to_posmap_np(p, ub)
        dense = landmarks_from_posmap(pos, ind)  # (n, 68, 3)
        sparse = sparse_landmarks_crop(p, sp.u_base, sp.w_shp, sp.w_exp)
        # the map's z is shifted so its covered min is 0: apply the same shift to the sparse points
        # (recovered from the unshifted z of the dense points at the landmark pixels)
        kb = ub.basis[ind[1], ind[0]]  # (68, 3, 50)
        raw = similar_transform_crop(
            camera(p, ub.mean[ind[1], ind[0]] + np.einsum("kcj,nj->nkc", kb, p[:, 12:]))
        )
        sparse[..., 2] -= (raw[..., 2] - dense[..., 2]).mean(axis=1, keepdims=True)
        e = np.linalg.norm(dense[..., :2] - sparse[..., :2], axis=-1)
        err.append(e)
        dz.append(np.abs(dense[..., 2] - sparse[..., 2]))
        worst.append(e.mean(axis=1))
    e, z, w = np.concatenate(err), np.concatenate(dz), np.concatenate(worst)
    return {
        "mean": float(e.mean()),
        "median": float(np.median(e)),
        "p95": float(np.percentile(e, 95)),
        "max": float(e.max()),
        "worst_mean": float(w.max()),
        "dz_mean": float(z.mean()),
        "dz_max": float(z.max()),
    }


# --------------------------------------------------------------------------- main


def _row(name: str, s: dict[str, float]) -> str:
    return f"{name:<34} {s['all']:7.3f} {s['b0']:7.3f} {s['b1']:7.3f} {s['b2']:7.3f} {s['bin_mean']:9.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--limit", type=int, default=None, help="first N images in sorted order (default: all 2000)"
    )
    ap.add_argument(
        "--rules", default=",".join(RULES), help=f"crop rules for (b), comma-separated: {','.join(RULES)}"
    )
    ap.add_argument(
        "--onnx", type=Path, default=None, help="run (b) with this ONNX file instead of the TF model"
    )
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--random", type=int, default=200, help="random parameter sets for (c)")
    ap.add_argument("--skip", default="", help="sections to skip, e.g. 'b' or 'b,c'")
    args = ap.parse_args(argv)
    rules = tuple(r for r in args.rules.split(",") if r)
    bad = [r for r in rules if r not in RULES]
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be >= 1")
    if bad:
        ap.error(f"unknown crop rule(s) {bad}; choose from {', '.join(RULES)}")
    if args.onnx is not None and not args.onnx.is_file():
        ap.error(f"no ONNX file at {args.onnx}")
    skip = set(args.skip.split(","))
    try:
        files, pts, yaw = load_aflw(args.limit)
    except DataNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "b" not in skip:  # after the data check, before minutes of (a): a wrong file fails at once
        try:
            runner, label = make_runner(args.onnx, args.threads)
        except ValueError as exc:  # not a model, or not PRN's 256 I/O
            print(f"error: {exc}", file=sys.stderr)
            return 2
    n_bins = [int(m.sum()) for m in yaw_bins(yaw)]
    print(
        f"AFLW2000-3D: {len(files)} images; |yaw| bins [0,30] {n_bins[0]}, (30,60] {n_bins[1]}, "
        f">60 {n_bins[2]} (incl. {int((np.abs(yaw) > 90).sum())} wrapped > 90)"
    )
    print(f"{'NME %':<34} {'all':>7} {'0-30':>7} {'30-60':>7} {'60-90+':>7} {'bin mean':>9}")

    t = time.perf_counter()
    per, params, _ = teacher_protocol(files, pts)
    print(
        _row("(a) teacher protocol (mb05, 120)", summarise(per, yaw))
        + f"   [{time.perf_counter() - t:.0f} s]"
    )

    if "b" not in skip:
        t = time.perf_counter()
        res = model_256(files, pts, rules, runner)
        dt = time.perf_counter() - t
        for rule in rules:
            print(_row(f"(b) {label} 256, crop {rule}", summarise(res[rule], yaw)))
        print(f"    (b) took {dt:.0f} s for {len(files) * len(rules)} crops")

    if "c" not in skip:
        rng = np.random.default_rng(0)
        print(
            "(c) dense map at uv_kpt_ind vs sparse-basis landmarks, 256-crop px "
            "(2D: mean/median/p95/max, worst face mean; |dz| mean/max)"
        )
        for name, p in (
            ("random params", random_params(rng, args.random)),
            ("teacher params on these images", params),
        ):
            s = dense_vs_sparse(p)
            print(
                f"    {name:<32} n={len(p):<5} {s['mean']:.3f} / {s['median']:.3f} / {s['p95']:.2f} / "
                f"{s['max']:.2f}, worst {s['worst_mean']:.2f}; dz {s['dz_mean']:.2f} / {s['dz_max']:.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
