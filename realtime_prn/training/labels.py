"""Teacher labels for unlabelled real faces, and PRN position maps for any crop of them.

Why: no training images with dense ground truth are obtainable here (shared/train/README.md), so the
open pipeline distils 3DDFA_V2's mb05 regressor (the "teacher", TEACHER.md) into PRN-style networks.
A label is the teacher's 62 de-normalised parameters plus the 120-frame ROI they refer to; together
with the dense UV basis (:mod:`realtime_prn.network.uv_basis`) they give the full position map in the
frame of ANY crop, so augmentation (rotation, scale, translation) never resamples a label image:
:func:`posmap_for_crop` recomputes it exactly for the augmented crop matrix.

Labelling recipe (per image), as 3DDFA_V2's video demo runs the teacher:

1. BlazeFace on the image; tight crops (longer side <= ``TIGHT_MAX_SIDE``) are padded first by
   ``PAD_FRACTION`` of their size on every side with a constant black border (BlazeFace letterboxes
   with black anyway, and a constant border avoids the replicated-border streaks TEACHER.md saw;
   reflection would put mirrored half-faces next to the face). If nothing is found the padded image
   is tried, then the whole original image is taken as the face box (``source`` says which).
2. The teacher on the 3DDFA_V2 box ROI (1.58 x box, centre moved down 0.14), then twice on the
   landmark ROI of its own previous 68 points (sqrt(2) x max side).
3. Keep params (62), the final ROI (4), the 68 landmarks in image pixels and the detection.

Everything is cached in one ``.npz`` under ``engines_dir()/train/`` whose name carries a hash of the
inputs (manifest, teacher weights and stats, this recipe's version and the ``--limit``).

CLI: ``python -m realtime_prn.training.labels [--limit N]``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realtime_prn.io.atomic import atomic_open
from realtime_prn.network.mb05 import (
    INPUT_SIZE,
    crop_img,
    roi_box_from_bbox,
    roi_box_from_landmarks,
    similar_transform,
)
from realtime_prn.network.uv_basis import RES, Sparse68, UVBasis, load_sparse68, load_uv_basis
from realtime_prn.paths import data_file, engines_dir

#: Bump when the labelling recipe changes, so cached labels are rebuilt.
LABEL_VERSION = "labels/1"
#: Images whose longer side is at most this are tight face crops and are padded before detection.
TIGHT_MAX_SIDE = 256
#: Constant border added on each side of tight crops, as a fraction of the longer side.
PAD_FRACTION = 0.5
#: Teacher passes: 1 box ROI + 2 landmark re-crops (3DDFA_V2's video demo).
N_PASSES = 3
#: Detection sources recorded per image.
SOURCES = ("plain", "padded", "whole_image")


def corpus_dir(data_root: str | os.PathLike | None = None) -> Path:
    """The shared real-face corpus folder (faces/, with manifest.csv)."""
    return data_file("train", "faces", "manifest.csv", override=data_root).parent


def read_manifest(data_root: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """manifest.csv rows, in file order (which fixes label indices)."""
    with open(corpus_dir(data_root) / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def labels_key(limit: int | None, data_root: str | os.PathLike | None = None, mirrored: bool = False) -> str:
    """Hash of everything a label set depends on: manifest, teacher weights/stats, recipe, limit
    (and, for the mirrored set, that its images are mirrored)."""
    h = hashlib.sha256(LABEL_VERSION.encode())
    h.update(f"limit={limit};pad={PAD_FRACTION};tight={TIGHT_MAX_SIDE};passes={N_PASSES}".encode())
    if mirrored:  # only then, so the unmirrored set keeps its cached name
        h.update(b";mirrored")
    for parts in (
        ("train", "faces", "manifest.csv"),
        ("train", "tddfa_v2", "mb05_120x120.npz"),
        ("train", "tddfa_v2", "param_mean_std_62d_120x120.pkl"),
    ):
        h.update(_sha(data_file(*parts, override=data_root)).encode())
    return h.hexdigest()


def labels_path(limit: int | None, data_root: str | os.PathLike | None = None,
                mirrored: bool = False) -> Path:
    """Where the cached label set for these inputs lives (git-ignored engines/train/)."""
    folder = engines_dir() / "train"
    folder.mkdir(parents=True, exist_ok=True)
    tag = ("all" if limit is None else f"limit{limit}") + ("-mirrored" if mirrored else "")
    return folder / f"labels-{tag}-{labels_key(limit, data_root, mirrored)[:12]}.npz"


@dataclass
class LabelSet:
    """Teacher labels for the corpus; row i belongs to ``files[i]`` (relative to the corpus folder)."""

    files: np.ndarray  # (N,) str
    groups: np.ndarray  # (N,) str: manifest 'group', the unit of the train/val split
    params: np.ndarray  # (N, 62) float32, de-normalised teacher params for ``roi``
    roi: np.ndarray  # (N, 4) float32 [x0, y0, x1, y1] in image pixels: the 120 frame of ``params``
    landmarks: np.ndarray  # (N, 68, 2) float32 teacher landmarks in image pixels
    box: np.ndarray  # (N, 4) float32 detection box in image pixels
    score: np.ndarray  # (N,) float32 detection score (0 for the whole-image fallback)
    source: np.ndarray  # (N,) int8 index into SOURCES
    ok: np.ndarray  # (N,) bool: image readable and landmarks sane
    key: str = ""

    def __len__(self) -> int:
        return len(self.files)


# --------------------------------------------------------------------------------------------
# Teacher


class Teacher:
    """mb05 (Keras port) on 3DDFA_V2 crops: BGR image + ROI -> de-normalised params and landmarks."""

    def __init__(self, data_root: str | os.PathLike | None = None) -> None:
        from realtime_prn.network.mb05 import build_mb05_model, load_param_stats

        self.model = build_mb05_model(data_root)
        self.p_mean, self.p_std = load_param_stats(data_root)
        self.sparse: Sparse68 = load_sparse68(data_root)

    def params(self, images: list[np.ndarray], rois: list[list[float]], batch: int = 64) -> np.ndarray:
        """De-normalised params (N, 62) for each image's ROI crop (zero padded, INTER_LINEAR to 120)."""
        import cv2

        from realtime_prn.network.mb05 import normalise_bgr

        out = np.empty((len(images), 62), np.float32)
        for s in range(0, len(images), batch):
            crops = [
                cv2.resize(crop_img(img, roi), (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
                for img, roi in zip(images[s : s + batch], rois[s : s + batch])
            ]
            x = normalise_bgr(np.stack(crops))
            raw = np.asarray(self.model(x, training=False))
            out[s : s + len(crops)] = raw * self.p_std + self.p_mean
        return out

    def landmarks(self, params: np.ndarray, roi: list[float]) -> np.ndarray:
        """(3, 68) landmarks in image pixels (z shifted to min 0), exactly 3DDFA_V2's recon_vers."""
        return teacher_landmarks(params, roi, self.sparse)


def teacher_landmarks(params: np.ndarray, roi: list[float] | np.ndarray, sp: Sparse68) -> np.ndarray:
    """Sparse-basis 68 points for de-normalised ``params`` in the frame of ``roi`` -> (3, 68)."""
    p = np.asarray(params, np.float64)
    r = p[:12].reshape(3, 4)
    v = sp.u_base + np.einsum("kcj,j->kc", sp.w_shp, p[12:52]) + np.einsum("kcj,j->kc", sp.w_exp, p[52:])
    pts120 = r[:, :3] @ v.T.astype(np.float64) + r[:, 3:]
    return similar_transform(pts120, list(roi))


def pad_image(img: np.ndarray, fraction: float = PAD_FRACTION) -> tuple[np.ndarray, int]:
    """Constant black border of ``fraction`` x longer side on every side; returns (image, pad)."""
    import cv2

    pad = int(round(fraction * max(img.shape[:2])))
    return cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0)), pad


def _pick(dets: list, shape: tuple[int, ...], offset: int) -> tuple[np.ndarray, float] | None:
    """The detection to label: among boxes scoring >= 0.6 x best, the largest whose centre is in the image."""
    h, w = shape[:2]
    best = None
    if not dets:
        return None
    top = max(d.score for d in dets)
    for d in dets:
        box = np.asarray(d.box, np.float64) - offset
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        if d.score < 0.6 * top or not (0 <= cx < w and 0 <= cy < h):
            continue
        area = (box[2] - box[0]) * (box[3] - box[1])
        if best is None or area > best[2]:
            best = (box.astype(np.float32), float(d.score), area)
    return None if best is None else best[:2]


def detect_face(detector: object, img: np.ndarray) -> tuple[np.ndarray, float, int]:
    """(box in image pixels, score, source index); see the module docstring for the fallbacks."""
    h, w = img.shape[:2]
    tight = max(h, w) <= TIGHT_MAX_SIDE
    tries = ["padded", "plain"] if tight else ["plain", "padded"]
    for name in tries:
        if name == "padded":
            im, off = pad_image(img)
        else:
            im, off = img, 0
        found = _pick(detector.detect(im), img.shape, off)
        if found is not None:
            return found[0], found[1], SOURCES.index(name)
    return np.array([0, 0, w, h], np.float32), 0.0, SOURCES.index("whole_image")


def label_images(
    paths: list[Path],
    teacher: Teacher,
    detector: object,
    chunk: int = 256,
    progress: bool = True,
    mirrored: bool = False,
) -> dict[str, np.ndarray]:
    """Detect + 3 teacher passes for every image; chunked so only ``chunk`` images sit in memory.

    ``mirrored``: label each image's left-right mirror instead (``cv2.flip``; every box, ROI and
    landmark is then in the mirror image's pixels), the second opinion of :func:`flip_averaged`."""
    import cv2
    from tqdm import tqdm

    n = len(paths)
    res = {
        "params": np.zeros((n, 62), np.float32),
        "roi": np.zeros((n, 4), np.float32),
        "landmarks": np.zeros((n, 68, 2), np.float32),
        "box": np.zeros((n, 4), np.float32),
        "score": np.zeros(n, np.float32),
        "source": np.zeros(n, np.int8),
        "ok": np.zeros(n, bool),
    }
    bar = tqdm(total=n, desc="labelling", disable=not progress, mininterval=5)
    for s in range(0, n, chunk):
        idx = list(range(s, min(n, s + chunk)))
        imgs, live = [], []
        for i in idx:
            img = cv2.imread(str(paths[i]), cv2.IMREAD_COLOR)
            if img is None:
                continue
            if mirrored:
                img = cv2.flip(img, 1)
            box, score, src = detect_face(detector, img)
            res["box"][i], res["score"][i], res["source"][i] = box, score, src
            imgs.append(img)
            live.append(i)
        rois = [roi_box_from_bbox(res["box"][i]) for i in live]
        for p in range(N_PASSES):
            params = teacher.params(imgs, rois)
            if p < N_PASSES - 1:
                rois = [roi_box_from_landmarks(teacher.landmarks(q, r)) for q, r in zip(params, rois)]
        for k, i in enumerate(live):
            pts = teacher.landmarks(params[k], rois[k])
            res["params"][i] = params[k]
            res["roi"][i] = rois[k]
            res["landmarks"][i] = pts[:2].T
            h, w = imgs[k].shape[:2]
            side = max(np.ptp(pts[0]), np.ptp(pts[1]))
            cx, cy = pts[0].mean(), pts[1].mean()
            res["ok"][i] = bool(np.isfinite(pts).all() and 8 <= side <= 4 * max(h, w)
                                and -0.5 * w <= cx <= 1.5 * w and -0.5 * h <= cy <= 1.5 * h)
        bar.update(len(idx))
    bar.close()
    return res


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    with atomic_open(path, "wb") as fh:
        np.savez(fh, **arrays)


def load_labels(path: Path) -> LabelSet:
    """Read a cached label set."""
    with np.load(path, allow_pickle=False) as z:
        return LabelSet(
            files=z["files"], groups=z["groups"], params=z["params"], roi=z["roi"],
            landmarks=z["landmarks"], box=z["box"], score=z["score"], source=z["source"],
            ok=z["ok"], key=str(z["key"]),
        )


def build_labels(
    limit: int | None = None,
    data_root: str | os.PathLike | None = None,
    *,
    rebuild: bool = False,
    progress: bool = True,
    mirrored: bool = False,
) -> tuple[LabelSet, Path, float]:
    """The cached labels for the corpus (first ``limit`` manifest rows), labelling when stale;
    ``mirrored``: of the mirrored images (:func:`label_images`).

    Returns (labels, cache path, seconds spent labelling; 0 when the cache was used).
    """
    path = labels_path(limit, data_root, mirrored)
    key = labels_key(limit, data_root, mirrored)
    if path.exists() and not rebuild:
        ls = load_labels(path)
        if ls.key == key:
            return ls, path, 0.0
    from realtime_prn.detectors import create_detector

    rows = read_manifest(data_root)[:limit]
    root = corpus_dir(data_root)
    t0 = time.perf_counter()
    teacher = Teacher(data_root)
    detector = create_detector("blazeface")
    res = label_images([root / r["file"] for r in rows], teacher, detector, progress=progress,
                       mirrored=mirrored)
    seconds = time.perf_counter() - t0
    files = np.array([r["file"] for r in rows])
    groups = np.array([r["group"] for r in rows])
    _atomic_savez(path, files=files, groups=groups, key=np.array(key), seconds=np.array(seconds), **res)
    return load_labels(path), path, seconds


# --------------------------------------------------------------------------------------------
# Position maps in any crop frame


def move_camera(g: np.ndarray, m: np.ndarray) -> np.ndarray:
    """A 3x4 camera followed by the 3x3 similarity ``m``: x, y through it, z scaled by its scale."""
    m = np.asarray(m, np.float64)
    lin = m[:2, :2]
    zs = float(np.sqrt(abs(np.linalg.det(lin))))  # similarity scale: z scales like x, y
    out = np.zeros((3, 4))
    out[:2] = lin @ g[:2]
    out[:2, 3] += m[:2, 2]
    out[2] = zs * g[2]
    return out


class PosmapDecoder:
    """Dense position maps from teacher params for arbitrary crops, as one small matmul per map.

    Why a class: the constant ``rows`` (154 x 65536: per axis the mean and 50 basis components,
    plus the covered mask that carries the offset) is built once; a map is then ``coef @ rows``
    with a (3, 154) coefficient block that folds camera, similar_transform and the crop matrix,
    the same layout as mb05uv's graph decoder.
    """

    def __init__(self, ub: UVBasis | None = None) -> None:
        ub = load_uv_basis() if ub is None else ub
        n = RES * RES
        self.nb = ub.basis.shape[-1] + 1
        rows = np.zeros((3 * self.nb + 1, n), np.float32)
        mean, basis = ub.mean.reshape(n, 3), ub.basis.reshape(n, 3, -1)
        for d in range(3):
            rows[d * self.nb] = mean[:, d]
            rows[d * self.nb + 1 : (d + 1) * self.nb] = basis[:, d, :].T
        rows[-1] = ub.covered.reshape(n)
        self.rows = rows
        self.covered = ub.covered
        self._cov_flat = ub.covered.reshape(n)
        self._rows_mean = rows[:, self._cov_flat].astype(np.float64).mean(axis=1)  # for centroid()

    def shape_rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The BFM shape at flat UV pixels ``idx``: mean (n, 3) and basis (n, 3, K), float64, so
        callers that reason in shape space (the mirror label) need not know the layout of ``rows``."""
        rows = self.rows[:, np.asarray(idx)].astype(np.float64)
        mean = np.stack([rows[d * self.nb] for d in range(3)], axis=1)
        basis = np.stack([rows[d * self.nb + 1:(d + 1) * self.nb].T for d in range(3)], axis=1)
        return mean, basis

    def image_affine(self, params: np.ndarray, roi: np.ndarray | list[float]) -> np.ndarray:
        """3x4 affine: BFM point -> image pixels (x, y, and z scaled like them; no min-z shift).

        3DDFA_V2's similar_transform: x' = sx (x - 1) + x0, y' = sy (120 - y) + y0, z' = s (z - 1)
        with s = (sx + sy) / 2, applied after the params' 3x4 camera.
        """
        p = np.asarray(params, np.float64)
        cam = p[:12].reshape(3, 4)
        x0, y0, x1, y1 = (float(v) for v in roi)
        sx, sy = (x1 - x0) / INPUT_SIZE, (y1 - y0) / INPUT_SIZE
        s = (sx + sy) / 2
        a = np.diag([sx, -sy, s]) @ cam
        a[:, 3] += np.array([-sx + x0, INPUT_SIZE * sy + y0, -s])
        return a

    def __call__(self, params: np.ndarray, roi: np.ndarray | list[float],
                 crop_matrix: np.ndarray) -> np.ndarray:
        return self.posmap(params, roi, crop_matrix)

    def crop_camera(self, params: np.ndarray, roi: np.ndarray | list[float],
                    crop_matrix: np.ndarray) -> np.ndarray:
        """3x4 affine: BFM point -> crop pixels (x, y through the crop similarity, z scaled by its
        scale; no min-z shift). With the 50 coefficients ``params[12:]`` it is uvreg's label."""
        return move_camera(self.image_affine(params, roi), crop_matrix)

    def crop_params(self, params: np.ndarray, roi: np.ndarray | list[float],
                    crop_matrix: np.ndarray) -> np.ndarray:
        """(62,) float64 crop-frame parameters: the row-major :meth:`crop_camera` then params[12:]."""
        g = self.crop_camera(params, roi, crop_matrix)
        return np.concatenate([g.reshape(12), np.asarray(params, np.float64)[12:]])

    def posmap(self, params: np.ndarray, roi: np.ndarray | list[float],
               crop_matrix: np.ndarray) -> np.ndarray:
        """(256, 256, 3) float32 position map in the crop frame; see :func:`posmap_for_crop`."""
        return self.posmap_from_crop_params(self.crop_params(params, roi, crop_matrix))

    def coef(self, q: np.ndarray) -> np.ndarray:
        """(3, 154) float64 coefficient block: the map (before the z shift) is ``coef @ rows``."""
        q = np.asarray(q, np.float64)
        g = q[:12].reshape(3, 4)
        alpha = np.concatenate([[1.0], q[12:]])  # (51,)
        coef = np.zeros((3, 3 * self.nb + 1))
        for d in range(3):
            for c in range(3):
                coef[d, c * self.nb : (c + 1) * self.nb] = g[d, c] * alpha
        coef[:, -1] = g[:, 3]
        return coef

    def centroid(self, q: np.ndarray) -> np.ndarray:
        """Mean of the covered points of ``q``'s map before the z shift (the turn centre of the yaw
        synthesis)."""
        return self.coef(q) @ self._rows_mean

    def posmap_from_crop_params(self, q: np.ndarray) -> np.ndarray:
        """(256, 256, 3) float32 position map for (62,) crop-frame parameters (:meth:`crop_params`)."""
        pos = self.coef(q).astype(np.float32) @ self.rows  # (3, n); uncovered pixels are exactly 0
        pos[2] -= pos[2][self._cov_flat].min()
        pos[2] *= self._cov_flat
        return np.ascontiguousarray(pos.T.reshape(RES, RES, 3))


_DECODER: PosmapDecoder | None = None


def posmap_for_crop(params: np.ndarray, roi: np.ndarray | list[float], crop_matrix: np.ndarray) -> np.ndarray:
    """The teacher's position map in the 256-crop frame of ANY PRN crop (TEACHER.md section 2).

    ``params``: 62 de-normalised teacher params; ``roi``: the 120-frame ROI they came from (image
    pixels); ``crop_matrix``: 3x3 image -> crop similarity (``CropRegion.matrix()`` or an augmented
    one, rotation allowed). x, y are crop pixels, z is scaled by the similarity's scale and shifted
    to min 0 over covered pixels, uncovered pixels are 0 -- PRN's convention, the one
    ``crop.restore_position_maps`` inverts.
    """
    global _DECODER
    if _DECODER is None:
        _DECODER = PosmapDecoder()
    return _DECODER.posmap(params, roi, crop_matrix)


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Label the real-face corpus with the 3DDFA_V2 teacher (cached).")
    p.add_argument("--limit", type=int, default=None, help="only the first N manifest rows (quick runs)")
    p.add_argument("--rebuild", action="store_true", help="relabel even when a matching cache exists")
    p.add_argument("--data", default=None,
                   help="shared data folder (default: REALTIME_PRN_DATA or ../shared)")
    args = p.parse_args(argv)
    try:
        ls, path, seconds = build_labels(args.limit, args.data, rebuild=args.rebuild)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    src = np.bincount(ls.source.astype(np.int64), minlength=len(SOURCES))
    print(f"{path}: {len(ls)} images, {int(ls.ok.sum())} ok; detection "
          + ", ".join(f"{n}={c}" for n, c in zip(SOURCES, src)))
    if seconds:
        print(f"labelled in {seconds:.1f} s "
              f"({1000 * seconds / max(1, len(ls)):.1f} ms/image incl. decode+detect)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
