"""Training and validation sets for ``tools/train.py``: the corpus split by group, the dense
datasets (resfcn256 / student) and uvreg's cached ones with synthesised large poses, and uvreg's
closed-form loss.

Why apart from the loop (:mod:`realtime_prn.training.trainer`): this is what differs per model;
the loop is shared.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from realtime_prn.training.augment import NO_AUGMENT, AugmentConfig
from realtime_prn.training.trainer import FaceData, split_by_group
from realtime_prn.training.uvreg_data import SYNTH_DEG

ImageLoader = Callable[[int], np.ndarray]


def split_corpus(labels: object, seed: int, val_fraction: float, val_max: int, data_root: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray, dict, Callable[[np.ndarray], ImageLoader]]:
    """Train / val label rows (ok rows only, split by group), split info, and ``loader(rows)``: a
    function that reads image i of those rows (BGR uint8) or raises OSError naming the file."""
    import cv2

    from realtime_prn.training.labels import corpus_dir

    root = corpus_dir(data_root)
    ok = np.flatnonzero(labels.ok)
    is_val = split_by_group(labels.groups[ok], val_fraction, seed, val_max)
    tr, va = ok[~is_val], ok[is_val]
    info = {"n_train": len(tr), "n_val": len(va), "val_groups": int(len(np.unique(labels.groups[va]))),
            "dropped_not_ok": int((~labels.ok).sum())}

    def loader(rows: np.ndarray) -> ImageLoader:
        files = labels.files[rows]

        def load(i: int) -> np.ndarray:
            img = cv2.imread(str(root / files[i]), cv2.IMREAD_COLOR)
            if img is None:
                raise OSError(f"cannot read {root / files[i]}")
            return img

        return load

    return tr, va, info, loader


def make_datasets(labels: object, seed: int, val_fraction: float, val_max: int, cfg: AugmentConfig,
                  data_root: str | None = None, yaw: bool = False) -> tuple[FaceData, FaceData, dict]:
    """Train / val FaceData from a LabelSet (ok rows only), split by group."""
    from realtime_prn.assets import grid_triangles
    from realtime_prn.training.labels import PosmapDecoder

    tr, va, info, loader = split_corpus(labels, seed, val_fraction, val_max, data_root)
    dec = PosmapDecoder()
    tris = grid_triangles(dec.covered) if yaw else None

    def subset(rows: np.ndarray, c: AugmentConfig) -> FaceData:
        return FaceData(labels.params[rows], labels.roi[rows], labels.landmarks[rows], loader(rows), dec, c,
                        seed, tris)

    return subset(tr, cfg), subset(va, NO_AUGMENT), info


def uvreg_loss(rows: np.ndarray, weights: np.ndarray, p_mean: np.ndarray, p_std: np.ndarray) -> Callable:
    """PRN's weighted position-map loss for uvreg, per image, in closed form from the 62 parameters.

    See :mod:`realtime_prn.training.uvreg_data`: ``|dC_d @ F_d|^2 / sum(w)`` per axis, where C is
    the (3, 154) coefficient block of the decoded map; equal to the dense weighted MSE (z centred).
    """
    import tensorflow as tf

    from realtime_prn.training.uvreg_data import gram_factors

    f_xy, f_z, wsum = gram_factors(rows, weights)
    nb = (rows.shape[0] - 1) // 3
    factors = tf.constant(np.stack([f_xy, f_xy, f_z]))  # (3, 154, 154)
    mean, std = tf.constant(p_mean[None], tf.float32), tf.constant(p_std[None], tf.float32)

    def coef(q: tf.Tensor) -> tf.Tensor:
        cam = tf.reshape(q[:, :12], (-1, 3, 4))
        alpha = tf.concat([tf.ones_like(q[:, :1]), q[:, 12:]], axis=1)  # (N, 51)
        c = tf.reshape(cam[:, :, :3, None] * alpha[:, None, None, :], (-1, 3, 3 * nb))
        return tf.concat([c, cam[:, :, 3:]], axis=2)  # (N, 3, 154)

    def loss(pred_norm: tf.Tensor, q: tf.Tensor) -> tf.Tensor:
        e = tf.einsum("ndk,dkj->ndj", coef(pred_norm * std + mean) - coef(q), factors)
        return tf.reduce_sum(tf.square(e), axis=(1, 2)) / wsum

    return loss


# The keys of make_uvreg_datasets' info that say what the training samples were (not the split or
# the validation set): a release records them, so its weights can be traced to their data.
UVREG_DATA_KEYS = ("n_synth", "synth_deg", "synth_method", "recrop", "synth_pitch", "backgrounds",
                   "data_seed", "flip_prob", "teacher_flip", "degrade_prob", "synth_source_bias",
                   "synth_max_padding")


def make_uvreg_datasets(labels: object, seed: int, val_fraction: float, val_max: int, cfg: AugmentConfig,
                        data_root: str | None = None, synth: int = 0, val_synth: int = 0,
                        synth_deg: tuple[float, float] = SYNTH_DEG, synth_method: str = "warp",
                        recrop: bool = True, synth_pitch: float = 0.0, backgrounds: bool = False,
                        data_seed: int | None = None, mirrored: object | None = None,
                        synth_source_bias: float = 0.0, synth_max_padding: float | None = None,
                        bank_dir: str | os.PathLike | None = None,
                        relabel: str | os.PathLike | None = None) -> tuple[object, object, dict]:
    """Train / val UVRegData (cached face images, see ``training/uvreg_data.py``), split by group;
    ``synth`` / ``val_synth`` large-pose faces, turned by ``synth_deg`` degrees, synthesised from the
    training / validation faces join their set (validation ones only from held-out groups);
    ``synth_method`` / ``recrop`` / ``synth_pitch``: see :func:`uvreg_data.synthesise_large_poses`;
    ``backgrounds``: fill the black padding of tight crops (:func:`uvreg_data.fill_padding`), donors
    from the same side of the split, before any face is turned (so turned faces keep the context).
    ``cfg.flip_prob``: mirror that share of training samples, labelled by
    :class:`uvreg_data.LabelMirror`; ``cfg.degrade_prob``: degrade that share
    (:func:`augment.degrade`). ``data_seed`` (default ``seed``) draws the training set's
    random content (donors, turned faces, augmentation): a fine-tune of a release gives it a new
    value to see faces turned and filled afresh, while ``seed`` keeps the split and the validation
    set, so scores stay comparable. ``mirrored``: the teacher's LabelSet of the mirrored images
    (``labels.build_labels(mirrored=True)``); every label, training and validation, is then the
    flip average of the two (:func:`uvreg_data.flip_averaged`). ``synth_source_bias`` (degrees, 0 =
    uniform): the training bank's turned faces favour already turned sources
    (:func:`uvreg_data.source_weights`); the validation bank stays uniform, so scores compare.
    ``synth_max_padding`` (a share, None = any): the training bank turns only faces whose plain crop
    is at most that much padding (:func:`uvreg_data.crop_padding`: real context round the head, no
    pasted square); the validation bank is unchanged, so scores compare. ``bank_dir``: keep the
    turned faces there and reload them when the same inputs come again (a ``--resume``; see
    :mod:`training.synth_bank`); None synthesises every time. ``relabel`` (a release file): the
    training set's real faces take that release's view-averaged predictions as labels instead of
    the teacher's (self-distillation, :mod:`training.relabel`; kept in ``bank_dir``); turned faces
    and validation keep theirs."""
    import cv2

    from realtime_prn.training.labels import PosmapDecoder
    from realtime_prn.training.synth_bank import cached_large_poses
    from realtime_prn.training.uvreg_data import LabelMirror, UVRegData, build_cache, synthesise_large_poses

    tr, va, info, loader = split_corpus(labels, seed, val_fraction, val_max, data_root)
    info.update(n_synth=synth, n_val_synth=val_synth, synth_deg=list(synth_deg), synth_method=synth_method,
                recrop=recrop, synth_pitch=synth_pitch, backgrounds=backgrounds,
                data_seed=seed if data_seed is None else data_seed)
    dec = PosmapDecoder()
    mirror = None
    if cfg.flip_prob or mirrored is not None or relabel is not None:
        from realtime_prn.assets import load_assets

        mirror = LabelMirror(dec, load_assets(data_root).face_mask)
    if cfg.flip_prob:
        info["flip_prob"] = cfg.flip_prob  # recorded only when used: older checkpoints' configs compare
    if cfg.degrade_prob:
        info["degrade_prob"] = cfg.degrade_prob  # likewise
    if synth_source_bias:
        info["synth_source_bias"] = synth_source_bias  # likewise
    if synth_max_padding is not None:
        info["synth_max_padding"] = synth_max_padding  # likewise
    if mirrored is not None:
        if len(mirrored) != len(labels) or not np.array_equal(mirrored.files, labels.files):
            raise ValueError("the mirrored label set is not of the same images as the labels")
        info["teacher_flip"] = True
        info["teacher_flip_ok"] = int((mirrored.ok & labels.ok).sum())
    cv2.setNumThreads(2)

    def subset(rows: np.ndarray, c: AugmentConfig, n_turned: int, s: int, aug_seed: int,
               bias: float = 0.0, max_padding: float | None = None, relabel_with: object = None) -> object:
        second = None if mirrored is None else (mirrored.params[rows], mirrored.roi[rows], mirrored.ok[rows])
        padding = np.zeros(len(rows)) if max_padding is not None else None
        cache, q = build_cache(labels.landmarks[rows], loader(rows), labels.params[rows], labels.roi[rows],
                               dec, backgrounds=backgrounds, seed=s, mirrored=second, mirror=mirror,
                               padding_out=padding)
        turned = np.zeros(len(q), bool)
        if n_turned:
            sources = None if padding is None else padding <= max_padding
            if sources is not None:
                info["n_synth_sources"] = int(sources.sum())
                if not sources.any():
                    raise ValueError(f"no training face has at most {max_padding:.0%} padding to turn "
                                     f"(least: {padding.min():.0%}); raise --synth-max-padding")
            kw = dict(min_deg=synth_deg[0], max_deg=synth_deg[1], method=synth_method, recrop=recrop,
                      pitch_deg=synth_pitch, source_bias_deg=bias, sources=sources)
            if bank_dir is None:
                c2, q2 = synthesise_large_poses(cache, q, dec, n_turned, s, **kw)
            else:
                c2, q2 = cached_large_poses(bank_dir, cache, q, dec, n_turned, s, **kw)
            cache, q = np.concatenate([cache, c2]), np.concatenate([q, q2])
            turned = np.concatenate([turned, np.ones(n_turned, bool)])
        if relabel_with is not None:
            # after the bank: turned faces were rendered from (and keep) the teacher's labels
            from realtime_prn.training.relabel import cached_view_averaged_labels

            real = np.flatnonzero(~turned)
            new, path, cached = cached_view_averaged_labels(bank_dir, relabel_with, cache, q, real, mirror,
                                                            data_root)
            move = np.hypot(new[:, 3] - q[real, 3], new[:, 7] - q[real, 7]).mean()  # camera origin, px
            q = q.copy()
            q[real] = new
            info.update(relabel=str(relabel_with), n_relabelled=len(real))
            print(f"relabelled {len(real)} real faces with {relabel_with}'s view-averaged predictions"
                  f"{' (cached)' if cached else ''}{f' -> {path}' if path else ''}; the labels' origin "
                  f"moved {move:.2f} cache px on average")
        return UVRegData(cache, q, dec, c, aug_seed, turned, mirror)

    ds = info["data_seed"]
    train = subset(tr, cfg, synth, ds, ds, synth_source_bias, synth_max_padding, relabel)
    return train, subset(va, NO_AUGMENT, val_synth, seed + 1, seed), info
