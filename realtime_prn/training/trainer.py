"""The training loop of PRN's open training pipeline: loss weights, the data order, metrics,
checkpoints that resume exactly, validation and its curves.

Why a module of its own: ``tools/train.py`` is the CLI; the loop, its state and its metrics are
what tests and other tools reuse. Everything here is network-agnostic (resfcn256, student and
uvreg train through the same :class:`Trainer`); what differs per model is in
:mod:`realtime_prn.training.datasets`.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from realtime_prn.crop import region_from_landmarks
from realtime_prn.io.atomic import atomic_open
from realtime_prn.training.augment import NO_AUGMENT, AugmentConfig, augment_sample

CKPT_VERSION = 1

# --------------------------------------------------------------------------------------------
# Loss weights


def loss_weights(weight_mask: np.ndarray, face_mask: np.ndarray,
                 covered: np.ndarray | None = None, landmark: float = 16.0,
                 jaw: float | None = None, kpt_ind: np.ndarray | None = None) -> np.ndarray:
    """PRN's 16:4:3:0 weights from ``uv_weight_mask`` levels (see the module docstring).

    ``landmark`` replaces the 16 of the 68 landmark pixels: at 16 they carry 0.76 % of the summed
    weight (68 pixels against ~44k face pixels), so the dense face, not the 68 points every NME is
    measured on, decides the fit; a larger value trades dense fit for landmark fit. ``jaw`` (with
    ``kpt_ind``) gives the 17 jaw-line points their own weight: a heavy weight on all 68 pulled the
    jaw line onto the teacher's on our faces but away from AFLW2000-3D's, while the inner points gained.
    """
    for name, v in (("landmark", landmark), ("jaw", jaw)):
        if v is not None and not v > 0:
            raise ValueError(f"{name} weight must be > 0, got {v}")
    level = np.rint(np.asarray(weight_mask, np.float64) * 255.0)
    w = np.where(level >= 200, float(landmark), np.where(level >= 64, 4.0, 3.0))
    if jaw is not None:
        if kpt_ind is None:
            raise ValueError("a jaw weight needs kpt_ind (the 68 points' UV pixels)")
        w[kpt_ind[1, :17], kpt_ind[0, :17]] = float(jaw)
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
    # the best validation *score* (val_score: NME68, or the mean of its real and turned halves when
    # validation holds turned faces); the name stays so that older checkpoints load
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
                 predict_model: object | None = None, warmup_steps: int = 0,
                 sync_predict: Callable[[], None] | None = None) -> None:
        import keras
        import tensorflow as tf

        self.tf = tf
        self.model = model
        self.train_data, self.val_data = train, val
        self.kpt_ind, self.face_ind = kpt_ind, face_ind
        self.batch, self.base_lr, self.halve_every = batch, lr, halve_every_steps
        self.warmup = warmup_steps
        self.sync_predict = sync_predict
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
        """Adam lr halved every ``halve_every`` steps (0 = constant), ramped up linearly over the
        first ``warmup`` steps.

        Why the ramp: a fine-tune starts a fresh Adam, whose first updates are ~lr per weight whatever
        the gradient. Measured on the validation score: at full lr from step 0 v9 lost 0.22 in its
        first 250 steps; v10 with a 1000-step ramp 0.03. (Both still drifted up ~0.1-0.2 later at
        lr 1e-4 and came back as the lr halved: the ramp removes the start's jump, not that.)
        """
        lr = self.base_lr * (0.5 ** (step // self.halve_every) if self.halve_every else 1.0)
        return lr * min(1.0, (step + 1) / self.warmup) if self.warmup else lr

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

    def validate(self) -> dict:
        """Weighted loss, 68-point NME and dense NME (%) on the fixed, un-augmented validation crops."""
        assert self.val_data is not None
        if self.sync_predict is not None:  # e.g. an fp32 twin of a mixed-precision model
            self.sync_predict()
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
        rec.update(validation_score(nme, getattr(self.val_data, "synthetic", None)))
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

    def recalibrate_bn(self, n_batches: int) -> bool:
        """Replace every BatchNorm's moving statistics by their exact average over ``n_batches``
        augmented training batches (forward passes only).

        Why: with Adam at a high lr the weights move fast and Keras' EMA statistics (momentum 0.99)
        lag far behind. Measured at step 400 of the student run: validation NME68 31.4 % with the
        EMA statistics, 10.6 % with per-batch statistics, 9.7 % after this recalibration. The
        batches come from their own seeded stream, so the training data order is untouched.
        Frozen BatchNorm layers (not trainable: inference mode, ``tools/train.py --freeze-bn``) keep
        their statistics; with none trainable nothing runs. Returns whether any was recalibrated.
        """
        import keras

        bns = [la for la in self.model.layers
               if isinstance(la, keras.layers.BatchNormalization) and la.trainable]
        if n_batches <= 0 or not bns:
            return False
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
        return True

    def _validate_and_record(self, out: Path) -> None:
        t0 = time.perf_counter()
        recalibrated = self.recalibrate_bn(self.bn_batches)
        rec = {"step": self.state.step, "epoch": self.state.epoch, **self.validate(), "time": time.time(),
               "bn_recalibrated": recalibrated}
        self.state.history.append(rec)
        split = (f" (real {rec['val_nme68_real']:.3f}, turned {rec['val_nme68_turned']:.3f}, "
                 f"score {rec['val_score']:.3f})" if "val_nme68_turned" in rec else "")
        self.log(f"val step {rec['step']}: loss {rec['val_loss']:.2f} px^2, NME68 {rec['val_nme68']:.3f} %"
                 f"{split}, dense {rec['val_dense_nme']:.3f} % ({time.perf_counter() - t0:.0f} s)")
        if rec["val_score"] < self.state.best_nme:
            self.state.best_nme, self.state.best_step = rec["val_score"], rec["step"]
            self.save(out / "best.npz")
        write_curves(out, self.state)


def validation_score(nme: np.ndarray, turned: np.ndarray | None) -> dict:
    """``val_score`` for per-face NME68s, plus the real and turned halves when both are present.

    Why: the real validation faces are 96 % near-frontal, so alone they pick checkpoints that are
    good frontally and poor in profile; the score weighs both halves equally.
    """
    nme = np.asarray(nme)
    if turned is not None and turned.any() and not turned.all():
        real, turn = float(nme[~turned].mean()), float(nme[turned].mean())
        return {"val_nme68_real": real, "val_nme68_turned": turn, "val_score": 0.5 * (real + turn)}
    return {"val_score": float(nme.mean())}


def write_curves(out: Path, st: TrainState) -> None:
    """history.json, val_curve.csv and val_curve.png (validation + smoothed train loss)."""
    atomic_write_text(out / "history.json", json.dumps({"val": st.history, "train": st.train_log,
                                                         "best_step": st.best_step,
                                                         "best_val_score": st.best_nme,
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
        halves = [r for r in st.history if "val_nme68_turned" in r]
        if halves:
            a2.plot([r["step"] for r in halves], [r["val_nme68_real"] for r in halves], "^-",
                    label="68-pt NME, real faces")
            a2.plot([r["step"] for r in halves], [r["val_nme68_turned"] for r in halves], "v-",
                    label="68-pt NME, turned faces")
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
