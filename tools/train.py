"""Train resfcn256 or the light student on teacher-labelled real faces (PRN's open training pipeline).

PRN's authors never released a training pipeline; this is the project's. Data: the shared real-face
corpus labelled by the 3DDFA_V2 teacher (``realtime_prn.training.labels``), augmented as the paper
(``realtime_prn.training.augment``), split into train / validation by the manifest's ``group`` with
a fixed seed (one video or person never straddles the split). AFLW2000-3D is never touched here.

Loss: PRN's weighted position-map MSE. ``uv_weight_mask.png`` has grey levels 255 (the 68 landmark
pixels), 117-128 (a halo around some landmarks), 64 (eyes, nose, mouth), 53/58 (their blurred
edges) and 48 (the rest of the face AND the neck/ears/background). The paper's ratio
landmarks : eyes-nose-mouth : other face : neck = 16 : 4 : 3 : 0 is applied as
``>= 200 -> 16``, ``64..199 -> 4``, ``< 64 inside face_ind -> 3``, ``outside face_ind -> 0``; the
neck weight 0 also masks every pixel our labels only extrapolate (neck, ears) or leave at 0
(uncovered). The loss is sum(w * |pred - gt|^2) / sum(w) per image, in crop px^2.

Optimiser: Adam, lr 1e-4 halved every ``--halve-every`` epochs (the paper: every 5), batch 16.

Checkpoints: one ``.npz`` holding the model weights (BN statistics included), every optimiser
variable and a JSON state (step, epoch, position in the epoch, seed, history). Written atomically
(temp file + rename) every ``--ckpt-every`` steps and on SIGINT/SIGTERM; ``--resume`` continues
exactly, because the data order is a permutation seeded by (seed, epoch) and every sample's
augmentation RNG is seeded by (seed, epoch, position) -- nothing else carries state.

Outputs under ``--out`` (default ``engines/train/<model>``): last.npz, best.npz (best validation
landmark NME), history.json, val_curve.csv, val_curve.png, train.log lines on stdout.

``--benchmark N`` times N steps on random tensors (fp32 vs ``--precision``/``--jit``);
``--export`` writes fp32 and fp16 ONNX of best.npz plus a manifest with sha256;
``--validate-onnx FILE`` scores any PRN-I/O ONNX model (e.g. mb05uv) on the same validation split.
"""

from __future__ import annotations

import argparse
import json
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from realtime_prn.crop import RES, region_from_landmarks  # noqa: E402
from realtime_prn.io.atomic import atomic_open  # noqa: E402
from realtime_prn.training.augment import NO_AUGMENT, AugmentConfig, augment_sample  # noqa: E402

CKPT_VERSION = 1


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error:`` line."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message}\n")


# --------------------------------------------------------------------------------------------
# Loss weights


def loss_weights(weight_mask: np.ndarray, face_mask: np.ndarray,
                 covered: np.ndarray | None = None) -> np.ndarray:
    """PRN's 16:4:3:0 weights from ``uv_weight_mask`` levels (see the module docstring)."""
    level = np.rint(np.asarray(weight_mask, np.float64) * 255.0)
    w = np.where(level >= 200, 16.0, np.where(level >= 64, 4.0, 3.0))
    w = np.where(face_mask, w, 0.0)
    if covered is not None:
        w = np.where(covered, w, 0.0)
    return w.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Data


def split_by_group(groups: np.ndarray, val_fraction: float, seed: int, val_max: int) -> np.ndarray:
    """Boolean val mask: whole groups, in a seeded random order, until ~val_fraction of the images."""
    uniq = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(uniq))
    target = min(val_max, int(round(val_fraction * len(groups))))
    counts = {g: c for g, c in zip(*np.unique(groups, return_counts=True))}
    val_groups, n = set(), 0
    for k in order:
        g = uniq[k]
        if n >= target:
            break
        if n + counts[g] > target * 1.2 and n > 0:
            continue  # skip a big video group that would overshoot; a smaller one follows
        val_groups.add(g)
        n += counts[g]
    return np.array([g in val_groups for g in groups])


@dataclass
class FaceData:
    """Samples for a subset of labelled images; every sample is a pure function of (seed, epoch, pos)."""

    params: np.ndarray
    roi: np.ndarray
    landmarks: np.ndarray
    load_image: Callable[[int], np.ndarray]  # subset row -> BGR uint8
    decoder: object
    cfg: AugmentConfig
    seed: int
    yaw_triangles: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.params)

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self))

    def sample(self, row: int, rng: np.random.Generator, cfg: AugmentConfig | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        base = region_from_landmarks(self.landmarks[row])
        crop, pos, _ = augment_sample(self.load_image(row), self.params[row], self.roi[row], base, rng,
                                      cfg or self.cfg, self.decoder, self.yaw_triangles)
        return crop, pos

    def train_sample(self, epoch: int, pos: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        return self.sample(row, np.random.default_rng([self.seed, epoch, pos]))

    def eval_sample(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        return self.sample(row, np.random.default_rng(0), NO_AUGMENT)


def batches(data: FaceData, batch: int, epoch: int, pos: int, workers: int, prefetch: int = 3
            ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """(epoch, pos after the batch, x, y) from (epoch, pos) on; a thread pool builds samples ahead.

    cv2 and numpy release the GIL, so threads overlap sample building with the TF step.
    The last incomplete batch of an epoch is dropped (the next epoch's order differs anyway).
    """
    import cv2

    cv2.setNumThreads(1)
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def producer() -> None:
        e, p = epoch, pos
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            while not stop.is_set():
                order = data.order(e)
                if p + batch > len(order):
                    e, p = e + 1, 0
                    continue
                futs = [pool.submit(data.train_sample, e, p + k, int(order[p + k])) for k in range(batch)]
                p += batch
                item = (e, p, futs)
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue

    th = threading.Thread(target=producer, daemon=True)
    th.start()
    try:
        while True:
            e, p, futs = q.get()
            pairs = [f.result() for f in futs]
            yield e, p, np.stack([a for a, _ in pairs]), np.stack([b for _, b in pairs])
    finally:
        stop.set()


# --------------------------------------------------------------------------------------------
# Metrics


def landmark_nme(pred: np.ndarray, gt: np.ndarray, kpt_ind: np.ndarray) -> np.ndarray:
    """Per-image 2D NME (%) of the 68 map landmarks, normalised by sqrt(w*h) of the label's 68-pt box."""
    p = pred[:, kpt_ind[1], kpt_ind[0], :2]
    g = gt[:, kpt_ind[1], kpt_ind[0], :2]
    size = np.sqrt(np.ptp(g[..., 0], axis=1) * np.ptp(g[..., 1], axis=1))
    return 100.0 * np.linalg.norm(p - g, axis=-1).mean(axis=1) / size


def dense_nme(pred: np.ndarray, gt: np.ndarray, face_ind: np.ndarray, kpt_ind: np.ndarray) -> np.ndarray:
    """Per-image mean 3D error over face_ind pixels (%), same normaliser as :func:`landmark_nme`."""
    g68 = gt[:, kpt_ind[1], kpt_ind[0], :2]
    size = np.sqrt(np.ptp(g68[..., 0], axis=1) * np.ptp(g68[..., 1], axis=1))
    p = pred.reshape(len(pred), -1, 3)[:, face_ind]
    g = gt.reshape(len(gt), -1, 3)[:, face_ind]
    return 100.0 * np.linalg.norm(p - g, axis=-1).mean(axis=1) / size


def weighted_loss_np(pred: np.ndarray, gt: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-image weighted squared error (px^2), the numpy twin of the training loss."""
    return (w * ((pred - gt) ** 2).sum(-1)).sum(axis=(1, 2)) / w.sum()


# --------------------------------------------------------------------------------------------
# Checkpoints


def atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez via a temporary file: a crash never leaves half a checkpoint."""
    with atomic_open(path, "wb") as fh:
        np.savez(fh, **arrays)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


@dataclass
class TrainState:
    """Everything besides tensors that a resume needs."""

    step: int = 0
    epoch: int = 0
    pos: int = 0  # samples of ``epoch`` already consumed
    seed: int = 0
    best_nme: float = float("inf")
    best_step: int = -1
    history: list[dict] = field(default_factory=list)  # validation records
    train_log: list[dict] = field(default_factory=list)  # periodic train-loss records
    config: dict = field(default_factory=dict)


class Trainer:
    """Model + optimiser + data position; ``run`` trains, ``save``/``load`` checkpoint the lot."""

    def __init__(self, model: object, weights: np.ndarray, train: FaceData, val: FaceData | None,
                 kpt_ind: np.ndarray, face_ind: np.ndarray, *, batch: int = 16, lr: float = 1e-4,
                 halve_every_steps: int = 0, workers: int = 2, jit: bool = False,
                 state: TrainState | None = None, log: Callable[[str], None] = print,
                 bn_batches: int = 0, loss_fn: Callable | None = None,
                 predict_model: object | None = None) -> None:
        import keras
        import tensorflow as tf

        self.tf = tf
        self.model = model
        self.train_data, self.val_data = train, val
        self.kpt_ind, self.face_ind = kpt_ind, face_ind
        self.batch, self.base_lr, self.halve_every = batch, lr, halve_every_steps
        self.workers = workers
        self.bn_batches = bn_batches
        self.state = state or TrainState()
        self.log = log
        self.w_np = weights.astype(np.float32)
        self.opt = keras.optimizers.Adam(learning_rate=lr)
        self.opt.build(model.trainable_variables)
        w = tf.constant(self.w_np[None])
        wsum = float(self.w_np.sum())

        def posmap_loss(pred: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            return tf.reduce_sum(w * tf.reduce_sum(tf.square(pred - y), axis=-1), axis=(1, 2)) / wsum

        per_image_loss = loss_fn or posmap_loss

        def step_fn(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                pred = tf.cast(model(x, training=True), tf.float32)
                loss = tf.reduce_mean(per_image_loss(pred, y))
            grads = tape.gradient(loss, model.trainable_variables)
            self.opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        self._step = tf.function(step_fn, jit_compile=jit, reduce_retracing=True)
        full = predict_model or model  # uvreg trains its backbone, validates the PRN-I/O model
        self._predict = tf.function(lambda x: full(x, training=False), reduce_retracing=True)
        self.stop_requested = False

    # -- state ----------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Adam lr halved every ``halve_every`` steps (0 = constant)."""
        return self.base_lr * (0.5 ** (step // self.halve_every) if self.halve_every else 1.0)

    def save(self, path: Path) -> None:
        arrays = {f"w{i:04d}": np.asarray(v) for i, v in enumerate(self.model.weights)}
        arrays.update({f"o{i:04d}": np.asarray(v) for i, v in enumerate(self.opt.variables)})
        state = dict(self.state.__dict__, version=CKPT_VERSION)
        arrays["state"] = np.array(json.dumps(state))
        atomic_savez(path, arrays)

    def load(self, path: Path, optimizer: bool = True) -> None:
        with np.load(path, allow_pickle=False) as z:
            w_keys = sorted(k for k in z.files if k.startswith("w"))
            o_keys = sorted(k for k in z.files if k.startswith("o"))
            if len(w_keys) != len(self.model.weights):
                raise ValueError(f"{path} holds {len(w_keys)} weights, "
                                 f"the model has {len(self.model.weights)}")
            for v, k in zip(self.model.weights, w_keys):
                v.assign(z[k])
            if optimizer:
                if len(o_keys) != len(self.opt.variables):
                    raise ValueError(f"{path}: optimiser state does not match ({len(o_keys)} variables)")
                for v, k in zip(self.opt.variables, o_keys):
                    v.assign(z[k])
                st = json.loads(str(z["state"]))
                st.pop("version", None)
                self.state = TrainState(**st)

    # -- validation -----------------------------------------------------------------------------
    def predict(self, x: np.ndarray, batch: int = 16) -> np.ndarray:
        return np.concatenate([np.asarray(self._predict(x[s : s + batch]), np.float32)
                               for s in range(0, len(x), batch)])

    def validate(self, val_cache: list | None = None) -> dict:
        """Weighted loss, 68-point NME and dense NME (%) on the fixed, un-augmented validation crops."""
        assert self.val_data is not None
        losses, nmes, dnmes = [], [], []
        rows = range(len(self.val_data))
        for s in range(0, len(self.val_data), 16):
            pairs = [self.val_data.eval_sample(r) for r in list(rows)[s : s + 16]]
            x = np.stack([a for a, _ in pairs])
            y = np.stack([b for _, b in pairs])
            p = self.predict(x)
            losses.append(weighted_loss_np(p, y, self.w_np))
            nmes.append(landmark_nme(p, y, self.kpt_ind))
            dnmes.append(dense_nme(p, y, self.face_ind, self.kpt_ind))
        nme = np.concatenate(nmes)
        rec = {"val_loss": float(np.concatenate(losses).mean()), "val_nme68": float(nme.mean()),
               "val_dense_nme": float(np.concatenate(dnmes).mean())}
        turned = getattr(self.val_data, "synthetic", None)
        if turned is not None and turned.any() and not turned.all():
            # Why: the real validation faces are 96 % near-frontal, so alone they pick checkpoints
            # that are good frontally and poor in profile; the score weighs both halves equally.
            rec.update(val_nme68_real=float(nme[~turned].mean()), val_nme68_turned=float(nme[turned].mean()))
            rec["val_score"] = 0.5 * (rec["val_nme68_real"] + rec["val_nme68_turned"])
        else:
            rec["val_score"] = rec["val_nme68"]
        return rec

    # -- loop -----------------------------------------------------------------------------------
    def run(self, max_steps: int, out: Path | None = None, ckpt_every: int = 100, val_every: int = 0,
            log_every: int = 10, deadline: float | None = None) -> TrainState:
        """Train until ``max_steps`` (absolute), the wall-clock ``deadline`` or a stop request."""
        st = self.state
        it = batches(self.train_data, self.batch, st.epoch, st.pos, self.workers)
        t_last, n_last, wait = time.perf_counter(), 0, 0.0
        losses: list[float] = []
        while st.step < max_steps and not self.stop_requested:
            if deadline is not None and time.time() >= deadline:
                self.log(f"deadline reached at step {st.step}")
                break
            t0 = time.perf_counter()
            epoch, pos, x, y = next(it)
            wait += time.perf_counter() - t0
            self.opt.learning_rate.assign(self.lr_at(st.step))
            loss = float(self._step(x, y))
            st.step += 1
            st.epoch, st.pos = epoch, pos
            losses.append(loss)
            n_last += len(x)
            if log_every and st.step % log_every == 0:
                dt = time.perf_counter() - t_last
                rec = {"step": st.step, "epoch": st.epoch, "loss": float(np.mean(losses)),
                       "img_s": n_last / dt, "data_wait": wait / dt, "lr": self.lr_at(st.step - 1),
                       "time": time.time()}
                st.train_log.append(rec)
                self.log(f"step {st.step} ep {st.epoch} pos {st.pos} loss {rec['loss']:.2f} px^2 "
                         f"{rec['img_s']:.1f} img/s (data wait {100 * rec['data_wait']:.0f} %) "
                         f"lr {rec['lr']:.2e}")
                t_last, n_last, wait, losses = time.perf_counter(), 0, 0.0, []
            if out is not None and val_every and self.val_data is not None and st.step % val_every == 0:
                self._validate_and_record(out)
                t_last, n_last, wait = time.perf_counter(), 0, 0.0
            if out is not None and ckpt_every and st.step % ckpt_every == 0:
                self.save(out / "last.npz")
        if out is not None:
            self.save(out / "last.npz")
        return st

    def recalibrate_bn(self, n_batches: int) -> None:
        """Replace every BatchNorm's moving statistics by their exact average over ``n_batches``
        augmented training batches (forward passes only).

        Why: with Adam at a high lr the weights move fast and Keras' EMA statistics (momentum 0.99)
        lag far behind. Measured at step 400 of the student run: validation NME68 31.4 % with the
        EMA statistics, 10.6 % with per-batch statistics, 9.7 % after this recalibration. The
        batches come from their own seeded stream, so the training data order is untouched.
        """
        import keras

        if n_batches <= 0:
            return
        bns = [la for la in self.model.layers if isinstance(la, keras.layers.BatchNormalization)]
        saved = [la.momentum for la in bns]
        rng = np.random.default_rng([self.state.seed, 1_000_003, self.state.step])
        fake_epoch = 1_000_000 + self.state.step
        try:
            for i in range(n_batches):
                for la in bns:
                    la.momentum = 1.0 - 1.0 / (i + 1)  # cumulative mean of the batch statistics
                rows = rng.integers(0, len(self.train_data), self.batch)
                x = np.stack([self.train_data.train_sample(fake_epoch, i * self.batch + k, int(r))[0]
                              for k, r in enumerate(rows)])
                self.model(x, training=True)
        finally:
            for la, mom in zip(bns, saved):
                la.momentum = mom

    def _validate_and_record(self, out: Path) -> None:
        t0 = time.perf_counter()
        self.recalibrate_bn(self.bn_batches)
        rec = {"step": self.state.step, "epoch": self.state.epoch, **self.validate(), "time": time.time(),
               "bn_recalibrated": self.bn_batches > 0}
        self.state.history.append(rec)
        split = (f" (real {rec['val_nme68_real']:.3f}, turned {rec['val_nme68_turned']:.3f}, "
                 f"score {rec['val_score']:.3f})" if "val_nme68_turned" in rec else "")
        self.log(f"val step {rec['step']}: loss {rec['val_loss']:.2f} px^2, NME68 {rec['val_nme68']:.3f} %"
                 f"{split}, dense {rec['val_dense_nme']:.3f} % ({time.perf_counter() - t0:.0f} s)")
        if rec["val_score"] < self.state.best_nme:
            self.state.best_nme, self.state.best_step = rec["val_score"], rec["step"]
            self.save(out / "best.npz")
        write_curves(out, self.state)


def write_curves(out: Path, st: TrainState) -> None:
    """history.json, val_curve.csv and val_curve.png (validation + smoothed train loss)."""
    atomic_write_text(out / "history.json", json.dumps({"val": st.history, "train": st.train_log,
                                                         "best_step": st.best_step, "best_nme68": st.best_nme,
                                                         "config": st.config}, indent=1))
    lines = ["step,epoch,val_loss,val_nme68,val_dense_nme"]
    lines += [f"{r['step']},{r['epoch']},{r['val_loss']:.4f},{r['val_nme68']:.4f},{r['val_dense_nme']:.4f}"
              for r in st.history]
    atomic_write_text(out / "val_curve.csv", "\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    if st.train_log:
        a1.plot([r["step"] for r in st.train_log], [r["loss"] for r in st.train_log], label="train",
                alpha=0.6)
    if st.history:
        a1.plot([r["step"] for r in st.history], [r["val_loss"] for r in st.history], "o-", label="val")
        steps = [r["step"] for r in st.history]
        a2.plot(steps, [r["val_nme68"] for r in st.history], "o-", label="68-pt NME")
        a2.plot(steps, [r["val_dense_nme"] for r in st.history], "s-", label="dense NME")
    a1.set_yscale("log")
    a1.set_xlabel("step")
    a1.set_ylabel("weighted loss (px^2)")
    a1.legend()
    a2.set_xlabel("step")
    a2.set_ylabel("NME vs teacher (%)")
    a2.legend()
    fig.tight_layout()
    fig.savefig(out / "val_curve.png", dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Wiring


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


def make_uvreg_datasets(labels: object, seed: int, val_fraction: float, val_max: int, cfg: AugmentConfig,
                        data_root: str | None = None, synth: int = 0, val_synth: int = 0,
                        synth_deg: tuple[float, float] = (30.0, 80.0)) -> tuple[object, object, dict]:
    """Train / val UVRegData (cached face images, see ``training/uvreg_data.py``), split by group;
    ``synth`` / ``val_synth`` large-pose faces, turned by ``synth_deg`` degrees, synthesised from the
    training / validation faces join their set (validation ones only from held-out groups)."""
    import cv2

    from realtime_prn.training.labels import PosmapDecoder
    from realtime_prn.training.uvreg_data import UVRegData, build_cache, synthesise_large_poses

    tr, va, info, loader = split_corpus(labels, seed, val_fraction, val_max, data_root)
    info.update(n_synth=synth, n_val_synth=val_synth, synth_deg=list(synth_deg))
    dec = PosmapDecoder()
    cv2.setNumThreads(2)

    def subset(rows: np.ndarray, c: AugmentConfig, n_turned: int, s: int) -> object:
        cache, q = build_cache(labels.landmarks[rows], loader(rows), labels.params[rows], labels.roi[rows],
                               dec)
        turned = np.zeros(len(q), bool)
        if n_turned:
            c2, q2 = synthesise_large_poses(cache, q, dec, n_turned, s, min_deg=synth_deg[0],
                                            max_deg=synth_deg[1])
            cache, q = np.concatenate([cache, c2]), np.concatenate([q, q2])
            turned = np.concatenate([turned, np.ones(n_turned, bool)])
        return UVRegData(cache, q, dec, c, seed, turned)

    return subset(tr, cfg, synth, seed), subset(va, NO_AUGMENT, val_synth, seed + 1), info


def set_threads(n: int | None) -> None:
    import tensorflow as tf

    if n:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def benchmark(args: argparse.Namespace) -> int:
    """img/s of the training step on random tensors for --model/--precision/--jit (no data loading)."""
    import keras

    from realtime_prn.assets import load_assets
    from realtime_prn.training.student import build_model, count_macs

    if args.precision != "fp32":
        keras.mixed_precision.set_global_policy(args.precision)
    keras.utils.set_random_seed(0)
    model = build_model(args.model, args.width)
    a = load_assets()
    w = loss_weights(a.weight_mask, a.face_mask)
    data = FaceData(np.zeros((1, 62)), np.zeros((1, 4)), np.zeros((1, 68, 2)), lambda i: None, None,
                    NO_AUGMENT, 0)
    tr = Trainer(model, w, data, None, a.kpt_ind, a.face_ind, batch=args.batch, jit=args.jit)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, RES, RES, 3), dtype=np.float32)
    y = (rng.random((args.batch, RES, RES, 3), dtype=np.float32) * 200).astype(np.float32)
    tr._step(x, y)  # trace / compile
    t0 = time.perf_counter()
    for _ in range(args.benchmark):
        float(tr._step(x, y))
    dt = time.perf_counter() - t0
    print(json.dumps({"model": args.model, "precision": args.precision, "jit": args.jit, "batch": args.batch,
                      "params": int(model.count_params()), "gmacs": count_macs(model) / 1e9,
                      "train_img_s": args.batch * args.benchmark / dt}))
    return 0


def export(args: argparse.Namespace, out: Path) -> int:
    """<checkpoint>.npz -> fp32 + fp16 ONNX (I/O stays float32) and a manifest with their sha256."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from realtime_prn.network.export import keras_to_onnx
    from realtime_prn.paths import sha256_file
    from realtime_prn.training.student import build_model

    ckpt = out / f"{args.checkpoint}.npz"
    if not ckpt.exists():
        raise FileNotFoundError(f"no {args.checkpoint} checkpoint at {ckpt} (train with validation first)")
    if args.model == "uvreg":
        return export_uvreg(args, ckpt)
    model = build_model(args.model, args.width)
    with np.load(ckpt) as z:
        keys = sorted(k for k in z.files if k.startswith("w"))
        for v, k in zip(model.weights, keys):
            v.assign(z[k])
        state = json.loads(str(z["state"]))
    fp32 = keras_to_onnx(model, out / f"{args.model}-{args.checkpoint}-fp32.onnx")
    m16 = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    fp16 = out / f"{args.model}-{args.checkpoint}-fp16.onnx"
    onnx.save(m16, str(fp16))

    manifest_path = Path(args.manifest) if args.manifest else out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest[fp16.name] = {"sha256": sha256_file(fp16), "bytes": fp16.stat().st_size, "fp32": fp32.name,
                           "fp32_sha256": sha256_file(fp32), "model": args.model, "width": args.width,
                           "step": state["step"], "best_val_nme68": state["best_nme"],
                           "note": "trained by tools/train.py on teacher labels; "
                                   "not shipped unless it beats mb05uv"}
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {fp16} ({fp16.stat().st_size / 1e6:.2f} MB) and {fp32}; manifest {manifest_path}")
    return 0


def export_uvreg(args: argparse.Namespace, ckpt: Path) -> int:
    """best.npz -> the release file (fp16 backbone + output statistics) and its manifest entry.

    Only the trained backbone is written: the decoder's UV basis is rebuilt from shared/ on each
    machine (``python -m realtime_prn setup``), so nothing derived from the BFM is committed.
    """
    from realtime_prn.network.uvreg import STAGES, build_backbone, save_weights
    from realtime_prn.paths import sha256_file
    from realtime_prn.weights import MODELS_DIR, UVREG_RELEASE

    with np.load(ckpt) as z:
        state = json.loads(str(z["state"]))
        cfg = state["config"]
        backbone = build_backbone(cfg["width"])
        keys = sorted(k for k in z.files if k.startswith("w"))
        for v, k in zip(backbone.weights, keys):
            v.assign(z[k])
    manifest_path = (Path(args.release).parent if args.release else MODELS_DIR) / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    previous = manifest.get(UVREG_RELEASE, {}).get("file")
    # default: replace the current release file (a new release gets a new name via --release)
    dest = Path(args.release) if args.release else MODELS_DIR / (previous or f"{UVREG_RELEASE}-v1.npz")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # the validation record of the exported step itself (last.npz may be past the last validation)
    val = next((r for r in state["history"] if r["step"] == state["step"]), {})
    meta = {"model": "uvreg", "width": cfg["width"], "stages": [list(s) for s in STAGES],
            "step": state["step"], "checkpoint": args.checkpoint,
            "val_nme68_vs_teacher": val.get("val_nme68"),
            **{k: val[k] for k in ("val_nme68_real", "val_nme68_turned", "val_score") if k in val},
            "labels": "3DDFA_V2 mb05 teacher on shared/train/faces (8,007 real faces)",
            "trained_by": "tools/train.py --model uvreg"}
    save_weights(dest, backbone, np.asarray(cfg["p_mean"]), np.asarray(cfg["p_std"]), meta)
    manifest[UVREG_RELEASE] = {"file": dest.name, "sha256": sha256_file(dest),
                               "bytes": dest.stat().st_size, **meta}
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {dest} ({dest.stat().st_size / 1e6:.2f} MB, fp16) and {manifest_path}")
    if previous and previous != dest.name:
        print(f"{dest.parent / previous} is no longer referenced by the manifest: remove it from the repo")
    return 0


def validate_onnx(args: argparse.Namespace, val: FaceData, a: object, w: np.ndarray) -> int:
    """The validation metrics of any PRN-I/O ONNX model, e.g. mb05uv, on this run's val split."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads or 2
    sess = ort.InferenceSession(args.validate_onnx, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    losses, nmes, dnmes, ms = [], [], [], []
    for r in range(len(val)):
        x, y = val.eval_sample(r)
        t0 = time.perf_counter()
        p = sess.run(None, {name: x[None]})[0]
        ms.append((time.perf_counter() - t0) * 1000)
        losses.append(weighted_loss_np(p, y[None], w)[0])
        nmes.append(landmark_nme(p, y[None], a.kpt_ind)[0])
        dnmes.append(dense_nme(p, y[None], a.face_ind, a.kpt_ind)[0])
    print(json.dumps({"onnx": args.validate_onnx, "n_val": len(val), "val_loss": float(np.mean(losses)),
                      "val_nme68": float(np.mean(nmes)), "val_dense_nme": float(np.mean(dnmes)),
                      "ms_per_face_median": float(np.median(ms[1:] if len(ms) > 1 else ms))}))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="student", choices=("student", "resfcn256", "uvreg"))
    p.add_argument("--width", type=float, default=1.0, help="student channel multiplier")
    p.add_argument("--out", default=None, help="run folder (default engines/train/<model>)")
    p.add_argument("--limit", type=int, default=None, help="label/use only the first N corpus images")
    p.add_argument("--data", default=None, help="shared data folder")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--halve-every", type=float, default=5.0,
                   help="halve the lr every this many epochs (0: never)")
    p.add_argument("--steps", type=int, default=100000, help="stop at this absolute step")
    p.add_argument("--minutes", type=float, default=None, help="stop after this many minutes of wall time")
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--val-max", type=int, default=300, help="at most this many validation images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bn-batches", type=int, default=12,
                   help="recalibrate BatchNorm statistics on this many batches before each validation")
    p.add_argument("--workers", type=int, default=2, help="sample-building threads")
    p.add_argument("--threads", type=int, default=None, help="TF intra-op threads (default: TF's choice)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "mixed_bfloat16", "mixed_float16"))
    p.add_argument("--jit", action="store_true", help="XLA-compile the training step")
    p.add_argument("--yaw-prob", type=float, default=0.0, help="probability of large-pose synthesis")
    p.add_argument("--synth", type=int, default=0,
                   help="uvreg: add this many synthesised large-pose faces to the training set")
    p.add_argument("--val-synth", type=int, default=0,
                   help="uvreg: add this many large-pose faces, synthesised from the held-out validation "
                        "faces, to validation; best.npz is then chosen on the mean of real and turned NME68")
    p.add_argument("--synth-deg", type=float, nargs=2, default=(30.0, 80.0), metavar=("MIN", "MAX"),
                   help="uvreg: out-of-plane turn range (degrees) of the synthesised faces")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.npz exactly")
    p.add_argument("--benchmark", type=int, default=0, metavar="N", help="time N steps on random data, exit")
    p.add_argument("--export", action="store_true", help="export <out>/best.npz to fp32/fp16 ONNX, exit")
    p.add_argument("--manifest", default=None, help="manifest for --export (default <out>/manifest.json)")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"),
                   help="which checkpoint --export writes (best = lowest validation NME68)")
    p.add_argument("--release", default=None, metavar="FILE",
                   help="uvreg --export: release file (default: replace the manifest's current one, "
                        "realtime_prn/models/uvreg-v*.npz)")
    p.add_argument("--validate-onnx", default=None, metavar="FILE",
                   help="score an ONNX model on the val split, exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _main(args)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 1


def _main(args: argparse.Namespace) -> int:
    from realtime_prn.paths import engines_dir

    out = Path(args.out) if args.out else engines_dir() / "train" / args.model
    out.mkdir(parents=True, exist_ok=True)
    set_threads(args.threads)
    if args.benchmark:
        return benchmark(args)
    if args.export:
        return export(args, out)

    import keras

    from realtime_prn.assets import load_assets
    from realtime_prn.training.labels import build_labels
    from realtime_prn.training.student import build_model, count_macs

    labels, lpath, secs = build_labels(args.limit, args.data)
    print(f"labels {lpath} ({len(labels)} images{f', labelled in {secs:.0f} s' if secs else ', cached'})")
    cfg = AugmentConfig(yaw_prob=args.yaw_prob)
    if args.model == "uvreg":
        train, val, info = make_uvreg_datasets(labels, args.seed, args.val_fraction, args.val_max, cfg,
                                               args.data, args.synth, args.val_synth, tuple(args.synth_deg))
    else:
        train, val, info = make_datasets(labels, args.seed, args.val_fraction, args.val_max, cfg, args.data,
                                         yaw=args.yaw_prob > 0)
    print(f"split by group (seed {args.seed}): {info}")
    a = load_assets(args.data)
    w = loss_weights(a.weight_mask, a.face_mask, train.decoder.covered)
    if args.validate_onnx:
        return validate_onnx(args, val, a, w)

    if args.precision != "fp32":
        keras.mixed_precision.set_global_policy(args.precision)
    keras.utils.set_random_seed(args.seed)
    extra: dict = {}
    if args.model == "uvreg":
        from realtime_prn.network.uvreg import build_backbone, build_uvreg_model
        from realtime_prn.training.uvreg_data import param_stats

        p_mean, p_std = param_stats(train)
        if args.resume and (out / "last.npz").exists():  # the output scale is part of the weights
            with np.load(out / "last.npz") as z:
                ck = json.loads(str(z["state"]))["config"]
            p_mean, p_std = np.asarray(ck["p_mean"], np.float32), np.asarray(ck["p_std"], np.float32)
        model = build_backbone(args.width)
        extra = {"loss_fn": uvreg_loss(train.decoder.rows, w, p_mean, p_std),
                 "predict_model": build_uvreg_model(model, p_mean, p_std, args.data)}
    else:
        model = build_model(args.model, args.width)
    steps_per_epoch = max(1, len(train) // args.batch)
    halve = int(round(args.halve_every * steps_per_epoch)) if args.halve_every else 0
    trainer = Trainer(model, w, train, val, a.kpt_ind, a.face_ind, batch=args.batch, lr=args.lr,
                      halve_every_steps=halve, workers=args.workers, jit=args.jit,
                      log=lambda s: print(s, flush=True), bn_batches=args.bn_batches, **extra)
    if args.resume:
        if not (out / "last.npz").exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {out / 'last.npz'}")
        trainer.load(out / "last.npz")
        print(f"resumed at step {trainer.state.step} (epoch {trainer.state.epoch}, pos {trainer.state.pos})")
        if trainer.state.config.get("n_val_synth", 0) != info.get("n_val_synth", 0):
            # a different validation set: its scores are not comparable with the recorded best
            print(f"validation set changed: best (step {trainer.state.best_step}) no longer compared")
            trainer.state.best_nme, trainer.state.best_step = float("inf"), -1
    else:
        trainer.state = TrainState(seed=args.seed)
    trainer.state.config = {"model": args.model, "width": args.width, "batch": args.batch, "lr": args.lr,
                            "halve_every_steps": halve, "seed": args.seed, "labels": str(lpath),
                            "params": int(model.count_params()), "gmacs": count_macs(model) / 1e9,
                            "precision": args.precision, "jit": args.jit, **info}
    if args.model == "uvreg":
        trainer.state.config.update(p_mean=p_mean.tolist(), p_std=p_std.tolist())
    print(f"{args.model}: {model.count_params():,} params, {count_macs(model) / 1e9:.3f} GMACs; "
          f"{steps_per_epoch} steps/epoch, lr halves every {halve} steps")

    def on_signal(signum: int, _frame: object) -> None:
        print(f"signal {signum}: checkpointing after this step", flush=True)
        trainer.stop_requested = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    deadline = time.time() + 60 * args.minutes if args.minutes else None
    if not trainer.state.history and not args.resume:
        trainer._validate_and_record(out)  # step-0 point of the curve
    st = trainer.run(args.steps, out, args.ckpt_every, args.val_every, args.log_every, deadline)
    if trainer.state.history and trainer.state.history[-1]["step"] != st.step and not trainer.stop_requested:
        trainer._validate_and_record(out)
        trainer.save(out / "last.npz")
    write_curves(out, trainer.state)
    print(f"stopped at step {st.step} (epoch {st.epoch}); "
          f"best val score (NME68 %) {st.best_nme:.3f} at step {st.best_step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
