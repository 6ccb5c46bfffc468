"""Self-distillation labels: a release's own predictions, averaged over views, as training labels.

Why: the teacher's labels are the ceiling of what a student can copy, and the release already
beats them where it is averaged over views at inference. On AFLW2000-3D the release alone
(uvreg-wise-t234) scores a GT bin mean of 3.810 and with flip averaging 3.699, while the teacher
gives 3.908, or 3.757 flip-averaged. So the release's own view-averaged prediction is the
best label this machine can make without ground truth. Labelling the real training faces with it
asks one pass of the network to do what flip and jitter averaging do at twice to eight times the
cost.

Only the real faces are relabelled. A turned face (:func:`uvreg_data.synthesise_large_poses`) is
rendered from its label's own mesh, so its label is exact for its image whoever made it; the
validation set keeps the teacher's labels, so its scores stay comparable with every earlier run.

A view is a small similarity of the un-augmented crop (well inside the paper's augmentation),
plain or mirrored. Each view's prediction is moved back to the cache frame (the camera follows the
similarity exactly; a mirrored view's label is mirrored back in parameter space by
:class:`uvreg_data.LabelMirror`, exact to ~0.25 % of the face) and the 62 numbers are averaged,
as :func:`uvreg_data.flip_averaged` does for the teacher's two labels.

Measured (session 23, README "Self-distillation"): fine-tuning the release on these labels did not gain.
At lr 3e-5 it left the soup and landed where a fine-tune from the teacher lands (3.930). At 3e-6 it was
worse beyond noise (3.856 vs 3.810). A control on the teacher's labels lost more at 2,000 steps (3.895 vs
3.882): the loss is the fine-tune leaving the soup. The labels themselves help a little, so use them in
fine-tunes from the teacher that are souped afterwards.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from realtime_prn.crop import RES
from realtime_prn.io.atomic import atomic_open
from realtime_prn.training.augment import similarity_about_centre, warp_crop
from realtime_prn.training.uvreg_data import _CACHE_AS_CROP, move_params, to_input

#: Bump when what :func:`view_averaged_labels` makes for the same inputs changes.
RELABEL_VERSION = "relabel/1"
#: (rotation degrees, scale, shift x, shift y in 256-crop pixels): the identity and three small
#: jitters, each seen plain and mirrored -- 8 views.
VIEWS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 1.0, 0.0, 0.0),
    (5.0, 1.04, 5.0, -5.0),
    (-5.0, 0.96, -5.0, 5.0),
    (0.0, 1.0, 6.0, 6.0),
)

Predict = Callable[[np.ndarray], np.ndarray]  # (N, 256, 256, 3) RGB [0, 1] -> (N, 62) crop params


def view_matrices(views: tuple = VIEWS) -> list[np.ndarray]:
    """Cache -> crop 3x3 matrices of the views (before mirroring)."""
    return [similarity_about_centre(a, s, (x, y)) @ _CACHE_AS_CROP.matrix(RES) for a, s, x, y in views]


def view_averaged_labels(cache: np.ndarray, rows: np.ndarray, predict: Predict, mirror: object,
                         views: tuple = VIEWS, batch: int = 64,
                         progress: Callable[[int], None] | None = None) -> np.ndarray:
    """(len(rows), 62) cache-frame labels: the mean over ``views`` x {plain, mirrored} of
    ``predict``'s crop-frame params, each moved back to the cache frame."""
    mats = view_matrices(views)
    back = [np.linalg.inv(m) for m in mats]
    out = np.zeros((len(rows), 62), np.float64)
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        for m, inv in zip(mats, back):
            crops = np.stack([warp_crop(cache[r], m) for r in chunk])
            plain = predict(crops)
            flipped = predict(np.ascontiguousarray(crops[:, :, ::-1]))
            for i in range(len(chunk)):
                out[start + i] += move_params(plain[i], inv) + move_params(mirror(flipped[i]), inv)
        if progress is not None:
            progress(len(chunk))
    return out / (2 * len(mats))


def release_predictor(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> Predict:
    """The release's backbone as a crop -> 62 crop-frame params function (what its PRN-I/O model
    decodes into the map)."""
    import tensorflow as tf

    from realtime_prn.network.uvreg import input_size, load_weights

    backbone, p_mean, p_std, meta = load_weights(path, data_root)
    size = input_size(meta.get("arch", "resnet"))
    run = tf.function(lambda x: backbone(x, training=False), reduce_retracing=True)

    def predict(crops: np.ndarray) -> np.ndarray:
        x = np.stack([to_input(c, size) for c in crops])
        return np.asarray(run(tf.constant(x)), np.float64) * p_std + p_mean

    return predict


def relabel_key(release_sha: str, cache: np.ndarray, q: np.ndarray, rows: np.ndarray, views: tuple) -> str:
    """Content hash of a relabelling's inputs: the release, the views, the rows' images (every 4th
    pixel: the backgrounds and the split change them) and their current labels."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{RELABEL_VERSION}|{release_sha}|{views!r}|{cache.shape}".encode())
    h.update(np.ascontiguousarray(rows, np.int64).tobytes())
    h.update(np.ascontiguousarray(cache[rows, ::4, ::4]).tobytes())
    h.update(np.ascontiguousarray(q[rows], np.float64).tobytes())
    return h.hexdigest()


def cached_view_averaged_labels(folder: str | os.PathLike | None, release: str | os.PathLike,
                                cache: np.ndarray, q: np.ndarray, rows: np.ndarray, mirror: object,
                                data_root: str | os.PathLike | None = None,
                                views: tuple = VIEWS) -> tuple[np.ndarray, Path | None, bool]:
    """:func:`view_averaged_labels` of ``release`` for ``rows``, kept in ``folder`` (a resume
    reloads them in a second); returns (labels, file or None, whether it was cached)."""
    from tqdm import tqdm

    from realtime_prn.paths import sha256_file

    path = None
    if folder is not None:
        key = relabel_key(sha256_file(Path(release)), cache, q, rows, views)
        path = Path(folder) / f"relabel-{len(rows)}-{key[:16]}.npy"
        if path.exists():
            return np.load(path), path, True
    with tqdm(total=len(rows), desc=f"relabel ({2 * len(views)} views)", unit="face") as bar:
        labels = view_averaged_labels(cache, rows, release_predictor(release, data_root), mirror, views,
                                      progress=bar.update)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as fh:
            np.save(fh, labels)
    return labels, path, False
