"""Train resfcn256, the student or uvreg on teacher-labelled real faces (PRN's open training pipeline).

This file is the CLI; the loop, checkpoints and metrics are :mod:`realtime_prn.training.trainer`,
the per-model datasets and uvreg's loss :mod:`realtime_prn.training.datasets`.

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

Optimiser: Adam, lr 1e-4 halved every ``--halve-every`` epochs (the paper: every 5), batch 16;
``--warmup N`` ramps the lr up over the first N steps (for fine-tunes: a fresh Adam at full lr knocks
a release off its optimum first). ``--precision mixed_bfloat16`` trains uvreg in bf16 (Zen4 has
AVX-512 BF16; the head and the loss stay fp32) and validates an fp32 twin of the weights, as shipped.
A CPU without bf16 hardware emulates it (4.7 img/s against fp32's 70 on an AVX2-only EPYC): the tool
warns, and ``--precision fp32 --jit`` is the fast choice there.

Checkpoints: one ``.npz`` holding the model weights (BN statistics included), every optimiser
variable and a JSON state (step, epoch, position in the epoch, seed, history). Written atomically
(temp file + rename) every ``--ckpt-every`` steps and on SIGINT/SIGTERM; ``--resume`` continues
exactly, because the data order is a permutation seeded by (seed, epoch) and every sample's
augmentation RNG is seeded by (seed, epoch, position) -- nothing else carries state.

Outputs under ``--out`` (default ``engines/train/<model>``): last.npz, best.npz (best validation
landmark NME), history.json, val_curve.csv, val_curve.png, train.log lines on stdout.

``--benchmark N`` times N steps on random tensors (fp32 vs ``--precision``/``--jit``);
``--export`` writes fp32 and fp16 ONNX of best.npz plus a manifest with sha256;
``--validate-onnx WEIGHTS`` scores any PRN-I/O model (an .onnx, a uvreg release .npz, ``uvreg`` or
``mb05uv``) on the same validation split.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from realtime_prn.crop import RES  # noqa: E402
from realtime_prn.errors import OneLineArgumentParser  # noqa: E402
from realtime_prn.paths import sha256_file  # noqa: E402
from realtime_prn.training.augment import NO_AUGMENT, AugmentConfig  # noqa: E402
from realtime_prn.training.datasets import (  # noqa: E402
    UVREG_DATA_KEYS,
    make_datasets,
    make_uvreg_datasets,
    uvreg_loss,
)
from realtime_prn.training.trainer import (  # noqa: E402
    FaceData,
    Trainer,
    TrainState,
    atomic_write_text,
    dense_nme,
    landmark_nme,
    loss_weights,
    validation_score,
    weighted_loss_np,
    write_curves,
)
from realtime_prn.training.uvreg_data import SYNTH_DEG, SYNTH_METHODS  # noqa: E402

#: ``--init teacher``: fine-tune 3DDFA_V2's mb05 itself (network and weights) instead of a release
TEACHER_INIT = "teacher"
TEACHER_NAME = "3DDFA_V2 mb05_120x120"  # how records name the teacher, as init or as a soup member


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Keras' dtype policy is process-global: scope it to the models built under it, so whatever
    is built after (uvreg's fp32 twin that validates what ships, the next test's model) is float32."""
    import keras

    keras.mixed_precision.set_global_policy("float32" if precision == "fp32" else precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def native_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether the CPU does bf16 arithmetic in hardware (AVX-512 BF16 or AMX), read from
    /proc/cpuinfo's flags: without it TensorFlow emulates ``mixed_bfloat16`` and a training step
    costs ~15x fp32's, which a user only finds out from an img/s figure minutes later. None where
    it cannot tell (no /proc/cpuinfo, no flags line)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return bool({"avx512_bf16", "amx_bf16"} & set(line.partition(":")[2].split()))
    return None


def freeze_batchnorm(model: object) -> int:
    """Put every BatchNorm layer of ``model`` in inference mode, its statistics and affine fixed;
    returns how many.

    Why: the teacher's statistics were measured on its own training data; batch statistics of this
    corpus' augmented crops are not what its later layers expect (measured on 16 held-out faces:
    recalibrating them on 12 augmented batches moved its NME68 against its own labels 1.08 -> 4.35 %).
    Keras runs a non-trainable BatchNorm in inference mode even when called with ``training=True``.
    """
    import keras

    bns = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    for la in bns:
        la.trainable = False
    return len(bns)


def requested_arch(args: argparse.Namespace) -> str:
    """The uvreg backbone a new run trains: the teacher's mb05 with ``--init teacher`` (reading the
    crop, or the 128 view with ``--teacher-input view``), else resnet (a release given to ``--init``
    brings its own)."""
    if args.init != TEACHER_INIT:
        return "resnet"
    return "mb05" if args.teacher_input == "view" else "mb05crop"


def requested_stages(args: argparse.Namespace) -> tuple:
    """uvreg's stages with ``--blocks`` applied (the default network's without it)."""
    from realtime_prn.network.uvreg import STAGES, with_blocks

    return with_blocks(tuple(args.blocks), STAGES) if args.blocks else STAGES


def set_threads(n: int | None) -> None:
    import tensorflow as tf

    if n:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def run_loss_weights(args: argparse.Namespace, assets: object,
                     covered: np.ndarray | None = None) -> np.ndarray:
    """The loss weights a run's flags ask for: one place, so --benchmark times training's loss."""
    return loss_weights(assets.weight_mask, assets.face_mask, covered, args.landmark_weight,
                        args.jaw_landmark_weight, assets.kpt_ind)


def benchmark(args: argparse.Namespace) -> int:
    """img/s of the training step on random tensors for --model/--precision/--jit (no data loading).

    uvreg's step is its backbone (``--width``, ``--blocks``) on the 128 view plus the closed-form
    loss, as in training; the others' is the full 256 network on the dense loss.
    """
    import keras

    from realtime_prn.assets import load_assets
    from realtime_prn.training.student import build_model, count_macs

    keras.utils.set_random_seed(0)
    a = load_assets()
    w = run_loss_weights(args, a)
    rng = np.random.default_rng(0)
    extra: dict = {}
    if args.model == "uvreg":
        from realtime_prn.network.uvreg import N_PARAMS, build_backbone, input_size
        from realtime_prn.training.labels import PosmapDecoder

        with dtype_policy(args.precision):
            model = build_backbone(args.width, requested_stages(args), requested_arch(args))
        dec = PosmapDecoder()
        w = run_loss_weights(args, a, dec.covered)
        extra["loss_fn"] = uvreg_loss(dec.rows, w, np.zeros(N_PARAMS, np.float32),
                                      np.ones(N_PARAMS, np.float32))
        side = input_size(requested_arch(args))
        x = rng.uniform(-1, 1, (args.batch, side, side, 3)).astype(np.float32)
        y = rng.normal(0, 1, (args.batch, N_PARAMS)).astype(np.float32)
    else:
        with dtype_policy(args.precision):
            model = build_model(args.model, args.width)
        x = rng.random((args.batch, RES, RES, 3), dtype=np.float32)
        y = (rng.random((args.batch, RES, RES, 3), dtype=np.float32) * 200).astype(np.float32)
    data = FaceData(np.zeros((1, 62)), np.zeros((1, 4)), np.zeros((1, 68, 2)), lambda i: None, None,
                    NO_AUGMENT, 0)
    tr = Trainer(model, w, data, None, a.kpt_ind, a.face_ind, batch=args.batch, jit=args.jit, **extra)
    for _ in range(3):
        tr._step(x, y)  # trace / compile / warm the allocator
    times = []
    for _ in range(args.benchmark):
        t0 = time.perf_counter()
        float(tr._step(x, y))
        times.append(time.perf_counter() - t0)
    print(json.dumps({"model": args.model, "precision": args.precision, "jit": args.jit, "batch": args.batch,
                      "params": int(model.count_params()), "gmacs": count_macs(model) / 1e9,
                      "train_img_s": args.batch / float(np.median(times))}))
    return 0


def export(args: argparse.Namespace, out: Path) -> int:
    """<checkpoint>.npz -> fp32 + fp16 ONNX (I/O stays float32) and a manifest with their sha256."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from realtime_prn.network.export import keras_to_onnx
    from realtime_prn.training.student import build_model

    ckpt = out / f"{args.checkpoint}.npz"
    if not ckpt.exists() and not args.soup:
        raise FileNotFoundError(f"no {args.checkpoint} checkpoint at {ckpt} (train with validation first)")
    if not args.soup:  # the run knows what it trained: a wrong --model would fail deep in Keras otherwise
        with np.load(ckpt) as z:
            cfg = json.loads(str(z["state"])).get("config", {})
        if cfg.get("model", args.model) != args.model:
            raise ValueError(f"{ckpt} is a {cfg['model']} run: export it with --model {cfg['model']}")
        args.width = float(cfg.get("width", args.width))
    if args.model == "uvreg":
        return export_uvreg(args, [Path(m) for m in args.soup] if args.soup else ckpt)
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


def _uvreg_checkpoint(path: Path) -> tuple[dict, list[np.ndarray]]:
    """(state, model weights) of a uvreg checkpoint."""
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path} (train with validation first)")
    with np.load(path) as z:
        state = json.loads(str(z["state"]))
        return state, [z[k] for k in sorted(k for k in z.files if k.startswith("w"))]


def _release_record(state: dict, checkpoint: str) -> dict:
    """What a release says of the run its weights come from: step, validation, init, training data."""
    cfg = state["config"]
    # the validation record of the exported step itself (last.npz may be past the last validation)
    val = next((r for r in state["history"] if r["step"] == state["step"]), {})
    return {"step": state["step"], "checkpoint": checkpoint,
            "trained_precision": cfg.get("precision", "fp32"),
            "landmark_weight": cfg.get("landmark_weight", 16.0),
            "jaw_landmark_weight": cfg.get("jaw_landmark_weight"),
            "val_nme68_vs_teacher": val.get("val_nme68"),
            **{k: val[k] for k in ("val_nme68_real", "val_nme68_turned", "val_score") if k in val},
            **_init_record(cfg),
            "synth": {k: cfg[k] for k in UVREG_DATA_KEYS if k in cfg}}


def init_sha256(args: argparse.Namespace) -> str | None:
    """The sha256 of what ``--init`` names: a release file, or the teacher's weights file."""
    if not args.init:
        return None
    if args.init == TEACHER_INIT:
        from realtime_prn.network.uvreg import teacher_sha256

        return teacher_sha256(args.data)
    return sha256_file(Path(args.init))


def _init_record(cfg: dict) -> dict:
    """The release a fine-tune started from: its name and sha256.

    Why the sha256: a release is git rm'd once the next one ships, so its name alone leaves the lineage
    to the README; the hash finds the exact file in git history. Runs started before the hash was
    recorded at training start fall back to hashing the file still at that path.
    """
    init = cfg.get("init")
    if not init:
        return {}
    digest = cfg.get("init_sha256") or (sha256_file(Path(init)) if Path(init).is_file() else None)
    name = f"{TEACHER_NAME} (the teacher)" if init == TEACHER_INIT else Path(init).name
    return {"init_from": name, **({"init_sha256": digest} if digest else {})}


def _soup_member(path: Path, checkpoint: str, data_root: str | None = None
                 ) -> tuple[dict, list[np.ndarray], dict]:
    """(network config, weights, record) of one soup member: a run directory's checkpoint, or a
    release file.

    Why a release: an earlier soup stands for runs whose own checkpoints need not be kept (they live
    in engines/train, never committed); given its run count as its weight it re-enters a larger soup
    as its runs would, to within fp16 rounding.
    """
    from realtime_prn.network.uvreg import STAGES, load_weights

    if path.suffix != ".npz":  # a run directory
        state, weights = _uvreg_checkpoint(path / f"{checkpoint}.npz")
        cfg = state["config"]
        record = {"run": path.name, **_release_record(state, checkpoint)}
    else:
        if not path.is_file():
            raise FileNotFoundError(f"--soup: no release file at {path}")
        backbone, p_mean, p_std, meta = load_weights(path, data_root)  # the release format's one reader
        weights = [np.asarray(v, np.float32) for v in backbone.weights]
        cfg = {**meta, "p_mean": p_mean, "p_std": p_std}
        shared = ("model", "arch", "width", "stages", "labels", "trained_by")
        record = {"release": path.name, "sha256": sha256_file(path),
                  **{k: v for k, v in meta.items() if k not in shared}}
    net = {"arch": cfg.get("arch", "resnet"), "width": float(cfg["width"]),
           "stages": [list(x) for x in cfg.get("stages", STAGES)],
           "p_mean": np.asarray(cfg["p_mean"], np.float32), "p_std": np.asarray(cfg["p_std"], np.float32)}
    return net, weights, record


def soup_weights(members: list[Path], checkpoint: str = "best", shares: list[float] | None = None,
                 data_root: str | None = None
                 ) -> tuple[list[np.ndarray], dict, list[dict]]:
    """The (weighted) average of uvreg runs' weights: (weights, network config, each member's record).

    Why: fine-tunes of one release (v13, v14 from v12) each land beside it in weight space, and their
    mean (a "model soup", Wortsman et al. 2022) averages away part of each run's own noise at no
    inference cost: on AFLW2000-3D it beat the release where none of its runs alone did. Only runs
    of one network can be averaged; BatchNorm statistics are averaged too. A member with other output
    statistics than the first has its head restated into the first's (:func:`restate_head`), so heads
    average as the parameters they predict.
    ``shares`` weight the members (default equal), so a release that is already the mean of N runs
    can join with weight N. A member named ``teacher`` is the teacher itself at the runs' output
    scale: a teacher fine-tune souped with it is WiSE-FT (Wortsman et al. 2022), the weight-space
    interpolation between the start and the fine-tune, which on AFLW2000-3D beat the fine-tune alone.
    """
    is_teacher = [str(m) == TEACHER_INIT for m in members]
    if all(is_teacher):
        raise ValueError("--soup teacher needs a run or release of a teacher fine-tune beside it")
    runs = {i: _soup_member(m, checkpoint, data_root) for i, m in enumerate(members) if not is_teacher[i]}
    first = members[min(runs)]
    ref = runs[min(runs)][0]
    if any(is_teacher):
        from realtime_prn.network.uvreg import TEACHER_ARCHES, teacher_backbone, teacher_sha256

        if ref["arch"] not in TEACHER_ARCHES:
            raise ValueError(f"--soup teacher: {first} is a {ref['arch']} network, not a fine-tune of the "
                             "teacher (--init teacher)")
        start = [np.asarray(v, np.float32) for v in
                 teacher_backbone(ref["p_mean"], ref["p_std"], data_root, ref["arch"]).weights]
        record = {"teacher": TEACHER_NAME, "sha256": teacher_sha256(data_root)}
        runs.update({i: (ref, start, record) for i, t in enumerate(is_teacher) if t})
    nets, weights, records = zip(*(runs[i] for i in range(len(members))))
    shares = [1.0] * len(members) if shares is None else [float(x) for x in shares]
    weights, records = list(weights), list(records)
    shape = None  # the members' network, built once if a head needs restating (to find the head)
    for i, (m, net, w) in enumerate(zip(members, nets, weights)):
        for key in ("arch", "width", "stages"):
            if not np.array_equal(np.asarray(net[key]), np.asarray(ref[key])):
                raise ValueError(f"cannot average {m} with {first}: their {key} differ "
                                 "(only runs of one network can be averaged)")
        if [x.shape for x in w] != [x.shape for x in weights[0]]:
            raise ValueError(f"cannot average {m} with {first}: their weights' shapes differ")
        if not all(np.array_equal(net[k], ref[k]) for k in ("p_mean", "p_std")):
            from realtime_prn.network.uvreg import build_backbone, restate_head

            if shape is None:
                shape = build_backbone(ref["width"], tuple(tuple(x) for x in ref["stages"]), ref["arch"])
            weights[i] = restate_head(shape, w, (net["p_mean"], net["p_std"]), (ref["p_mean"], ref["p_std"]))
            records[i] = {**records[i], "head_restated": True}
    total = sum(shares)
    avg = [(sum(s * np.asarray(w[i], np.float64) for s, w in zip(shares, weights)) / total).astype(np.float32)
           for i in range(len(weights[0]))]
    records = [{**r, "weight": s} for r, s in zip(records, shares)]
    return avg, ref, records


def export_uvreg(args: argparse.Namespace, ckpt: Path | list[Path]) -> int:
    """best.npz (or, given a list of run directories and release files, their soup) -> the release
    file (fp16 backbone + output statistics) and its manifest entry.

    Only the trained backbone is written: the decoder's UV basis is rebuilt from shared/ on each
    machine (``python -m realtime_prn setup``), so nothing derived from the BFM is committed.
    """
    from realtime_prn.network.uvreg import STAGES, build_backbone, save_weights
    from realtime_prn.weights import MODELS_DIR, UVREG_RELEASE

    if isinstance(ckpt, list):  # a soup: each member's own record (a soup has no validation of its own)
        weights, net, records = soup_weights(ckpt, args.checkpoint, args.soup_weights, args.data)
        width, stages, p_mean, p_std = net["width"], net["stages"], net["p_mean"], net["p_std"]
        arch = net["arch"]
        record = {"soup": records}
    else:
        state, weights = _uvreg_checkpoint(ckpt)
        cfg = state["config"]
        width, stages, arch = cfg["width"], cfg.get("stages", STAGES), cfg.get("arch", "resnet")
        p_mean, p_std = np.asarray(cfg["p_mean"]), np.asarray(cfg["p_std"])
        record = _release_record(state, args.checkpoint)
    stages = tuple(tuple(x) for x in stages)
    backbone = build_backbone(width, stages, arch)
    for v, w in zip(backbone.weights, weights):
        v.assign(w)
    manifest_path = (Path(args.manifest) if args.manifest
                     else (Path(args.release).parent if args.release else MODELS_DIR) / "manifest.json")
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    previous = manifest.get(UVREG_RELEASE, {}).get("file")
    # default: replace the current release file (a new release gets a new name via --release)
    dest = Path(args.release) if args.release else MODELS_DIR / (previous or f"{UVREG_RELEASE}-v1.npz")
    dest.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": "uvreg", "arch": arch, "width": width, "stages": [list(x) for x in stages],
            "labels": "3DDFA_V2 mb05 teacher on shared/train/faces (8,007 real faces)",
            "trained_by": "tools/train.py --model uvreg", **record}
    save_weights(dest, backbone, p_mean, p_std, meta, args.data)
    manifest[UVREG_RELEASE] = {"file": dest.name, "sha256": sha256_file(dest),
                               "bytes": dest.stat().st_size, **meta}
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {dest} ({dest.stat().st_size / 1e6:.2f} MB, fp16) and {manifest_path}")
    if previous and previous != dest.name:
        print(f"{dest.parent / previous} is no longer referenced by the manifest: remove it from the repo")
    return 0


def validate_onnx(args: argparse.Namespace, val: FaceData, a: object, w: np.ndarray) -> int:
    """The validation metrics of any PRN-I/O model, e.g. mb05uv, on this run's val split.

    The weights are resolved and loaded exactly as the ONNX Runtime engine loads them (a uvreg release
    ``.npz`` composed into its cached ONNX), so a candidate is scored as it would ship.
    """
    from realtime_prn.engines.onnxruntime import OnnxRuntimeEngine
    from realtime_prn.weights import onnx_model, resolve_weights

    engine = OnnxRuntimeEngine(onnx_model(resolve_weights(args.validate_onnx), args.data),
                               threads=args.threads or 2, providers=["CPUExecutionProvider"])
    losses, nmes, dnmes, ms, p68, g68 = [], [], [], [], [], []
    for r in range(len(val)):
        x, y = val.eval_sample(r)
        t0 = time.perf_counter()
        p = engine.infer(x[None])
        ms.append((time.perf_counter() - t0) * 1000)
        losses.append(weighted_loss_np(p, y[None], w)[0])
        nmes.append(landmark_nme(p, y[None], a.kpt_ind)[0])
        dnmes.append(dense_nme(p, y[None], a.face_ind, a.kpt_ind)[0])
        p68.append(p[0, a.kpt_ind[1], a.kpt_ind[0], :2])
        g68.append(y[a.kpt_ind[1], a.kpt_ind[0], :2])
    rec = {"onnx": args.validate_onnx, "n_val": len(val), "val_loss": float(np.mean(losses)),
           "val_nme68": float(np.mean(nmes)), "val_dense_nme": float(np.mean(dnmes)),
           "ms_per_face_median": float(np.median(ms[1:] if len(ms) > 1 else ms))}
    rec.update(validation_score(np.asarray(nmes), getattr(val, "synthetic", None)))
    rec.update(parts_by_half(np.asarray(p68), np.asarray(g68), getattr(val, "synthetic", None)))
    print(json.dumps(rec))
    return 0


def parts_by_half(p68: np.ndarray, g68: np.ndarray, turned: np.ndarray | None) -> dict:
    """NME68 (%) by face part against the teacher, over all validation faces and each half.

    Why: AFLW2000-3D put 39 % of the release's gap to the teacher in the mouth; this shows a
    candidate's parts on held-out faces without touching the test set. Same normaliser as val_nme68,
    so the parts weighted by their point counts add up to it.
    """
    from realtime_prn.evaluation import nme_by_part

    parts = {k: 100.0 * v for k, v in nme_by_part(p68, g68).items()}
    rec = {"val_nme68_by_part": {k: float(v.mean()) for k, v in parts.items()}}
    if turned is not None and turned.any() and not turned.all():
        for half, sel in (("real", ~turned), ("turned", turned)):
            rec[f"val_nme68_by_part_{half}"] = {k: float(v[sel].mean()) for k, v in parts.items()}
    return rec


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="student", choices=("student", "resfcn256", "uvreg"))
    p.add_argument("--width", type=float, default=1.0, help="student channel multiplier")
    p.add_argument("--out", default=None, help="run folder (default engines/train/<model>)")
    p.add_argument("--limit", type=int, default=None, help="label/use only the first N corpus images")
    p.add_argument("--data", default=None, help="shared data folder")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--halve-every", type=float, default=5.0,
                   help="halve the lr every this many epochs (0: never)")
    p.add_argument("--warmup", type=int, default=0, metavar="STEPS",
                   help="ramp the lr up linearly over this many steps (default 0: full lr from step 0)")
    p.add_argument("--steps", type=int, default=100000, help="stop at this absolute step")
    p.add_argument("--minutes", type=float, default=None, help="stop after this many minutes of wall time")
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--val-max", type=int, default=300, help="at most this many validation images")
    p.add_argument("--seed", type=int, default=0, help="the split, the validation set and the weights' init")
    p.add_argument("--data-seed", type=int, default=None,
                   help="uvreg: the training set's random draws (turned faces, background donors, "
                        "augmentation); default --seed. A fine-tune given a new one trains on new turned "
                        "faces and keeps the validation set")
    p.add_argument("--bn-batches", type=int, default=12,
                   help="recalibrate BatchNorm statistics on this many batches before each validation")
    p.add_argument("--workers", type=int, default=2, help="sample-building threads")
    p.add_argument("--threads", type=int, default=None, help="TF intra-op threads (default: TF's choice)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "mixed_bfloat16", "mixed_float16"))
    p.add_argument("--jit", action="store_true", help="XLA-compile the training step")
    p.add_argument("--yaw-prob", type=float, default=0.0, help="probability of large-pose synthesis")
    p.add_argument("--flip", type=float, default=0.0, metavar="PROB",
                   help="uvreg: mirror this share of training samples (the label mirrored in parameter "
                        "space, exact to ~0.25 %% of the face size; default 0 = none, as v1-v8)")
    p.add_argument("--degrade", type=float, default=0.0, metavar="PROB",
                   help="uvreg: degrade this share of training samples as a webcam would (blur, "
                        "down-sampling, JPEG or noise, one at random; default 0 = none, as v1-v14)")
    p.add_argument("--teacher-flip", action="store_true",
                   help="uvreg: label every face (training and validation) with the mean of the teacher's "
                        "label and the mirrored-back label of its mirror image (labels the mirror images "
                        "once, ~2 min, cached)")
    p.add_argument("--synth", type=int, default=0,
                   help="uvreg: add this many synthesised large-pose faces to the training set")
    p.add_argument("--val-synth", type=int, default=0,
                   help="uvreg: add this many large-pose faces, synthesised from the held-out validation "
                        "faces, to validation; best.npz is then chosen on the mean of real and turned NME68")
    p.add_argument("--synth-deg", type=float, nargs=2, default=SYNTH_DEG, metavar=("MIN", "MAX"),
                   help="uvreg: out-of-plane turn range (degrees) of the synthesised faces")
    p.add_argument("--backgrounds", action="store_true",
                   help="uvreg: fill the black padding around tight face crops with real context from "
                        "video frames and large photos of the same split (default: black, as v1-v3)")
    p.add_argument("--synth-pitch", type=float, default=0.0, metavar="DEG",
                   help="uvreg: also tilt each synthesised face up or down by up to this many degrees "
                        "(warp only; default 0 = turned about the vertical axis only)")
    p.add_argument("--synth-source-bias", type=float, default=0.0, metavar="DEG",
                   help="uvreg: draw the faces to turn with weight 1 + (|yaw|/DEG)^2, favouring faces "
                        "already turned (less texture stretched into the profile; validation stays uniform); "
                        "default 0 = uniform, as v1-v15")
    p.add_argument("--synth-max-padding", type=float, default=None, metavar="SHARE",
                   help="uvreg: turn only faces whose plain 256 crop is at most this share padding (0-1; "
                        "tight corpus crops turned show a pasted square and a donor's head behind it); "
                        "default: any face, as v1-v23")
    p.add_argument("--no-synth-cache", action="store_true",
                   help="uvreg: synthesise the turned faces afresh instead of keeping them in engines/train/ "
                        "(a --resume with the same data args reloads them in seconds; ~3.7 GB per 12,000 "
                        "faces, the oldest removed beyond 8 GiB)")
    p.add_argument("--landmark-weight", type=float, default=16.0, metavar="W",
                   help="loss weight of the 68 landmark pixels (PRN's 16, beside eyes/nose/mouth 4 and "
                        "face 3: the 68 points then carry 0.76 %% of the loss); larger fits the landmarks, "
                        "which every NME measures, at some cost to the dense face")
    p.add_argument("--jaw-landmark-weight", type=float, default=None, metavar="W",
                   help="the 17 jaw-line points' weight, apart from --landmark-weight's (default: the same); "
                        "e.g. --landmark-weight 640 --jaw-landmark-weight 16 weighs only the 51 inner points")
    p.add_argument("--synth-method", default="warp", choices=SYNTH_METHODS,
                   help="uvreg: how faces are turned: warp = the whole image as one mesh (300W-LP style), "
                        "paste = the face alone over a blurred original (the v1/v2 bank)")
    p.add_argument("--no-recrop", dest="recrop", action="store_false",
                   help="uvreg: keep a turned face in its frontal source's crop instead of re-cropping it "
                        "on the turned landmarks as inference does (the v1/v2 bank)")
    p.add_argument("--blocks", type=int, nargs="+", default=None, metavar="N",
                   help="uvreg: residual blocks per stage (default 0 1 1 1 1); with --init, more blocks than "
                        "the release's deepen it exactly (the added blocks start as identities)")
    p.add_argument("--init", default=None, metavar="RELEASE|teacher",
                   help="uvreg: start from a release file's weights and output scale (e.g. "
                        "the committed realtime_prn/models/uvreg-v*.npz) with a fresh optimiser; "
                        "a fine-tune, not --resume. 'teacher': start from 3DDFA_V2's mb05 teacher itself "
                        "(its network and weights, the mb05 backbone; train it in fp32 without --jit, "
                        "XLA's depthwise convolutions are ~8x slower)")
    p.add_argument("--relabel", default=None, metavar="RELEASE",
                   help="uvreg: self-distillation -- label the training set's real faces with this "
                        "release's predictions averaged over 8 views (4 small jitters, each plain and "
                        "mirrored) instead of the teacher's (~4 min, kept in engines/train/); turned faces "
                        "keep their exact labels and validation keeps the teacher's, so scores compare "
                        "with earlier runs")
    p.add_argument("--teacher-input", choices=("crop", "view"), default=None,
                   help="with --init teacher: what the teacher's network reads -- 'crop' (default): a "
                        "120 resize of the 256 crop, mb05uv's own input, so training starts at mb05uv "
                        "exactly; 'view': a 120 resize of uvreg's 2x2-averaged 128 view (session 20's "
                        "t1; softer, AFLW2000-3D bin mean 4.001 vs 3.908 before training)")
    p.add_argument("--freeze-bn", action="store_true",
                   help="uvreg: keep every BatchNorm in inference mode with its statistics as they are "
                        "(--bn-batches recalibrates none of them): for fine-tuning the teacher, whose "
                        "statistics come from its own training data")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.npz exactly")
    p.add_argument("--benchmark", type=int, default=0, metavar="N", help="time N steps on random data, exit")
    p.add_argument("--export", action="store_true",
                   help="export <out>/<--checkpoint>.npz (student/resfcn256: fp32/fp16 ONNX; "
                        "uvreg: the release file + manifest), exit")
    p.add_argument("--soup", nargs="+", default=None, metavar="RUN_DIR|RELEASE|teacher",
                   help="uvreg --export: write the average of these runs' --checkpoint weights "
                        "(fine-tunes of one release, e.g. engines/train/uvreg-v12 ...-v13 ...-v14); a "
                        "release .npz (e.g. an earlier soup) joins as one member; 'teacher' joins the "
                        "teacher itself beside fine-tunes of it (WiSE-FT: --soup RUN teacher)")
    p.add_argument("--soup-weights", nargs="+", type=float, default=None, metavar="W",
                   help="with --soup: one weight per member (default equal), e.g. 5 1 for a five-run "
                        "soup release and one new run")
    p.add_argument("--manifest", default=None,
                   help="manifest for --export (default <out>/manifest.json; uvreg: beside --release)")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"),
                   help="which checkpoint --export writes (best = lowest validation score: NME68, or the "
                        "mean of its real and turned halves with --val-synth)")
    p.add_argument("--release", default=None, metavar="FILE",
                   help="uvreg --export: release file (default: replace the manifest's current one, "
                        "realtime_prn/models/uvreg-v*.npz)")
    p.add_argument("--validate-onnx", default=None, metavar="WEIGHTS",
                   help="score a PRN-I/O model on the val split, exit: an .onnx, a uvreg .npz, "
                        "uvreg or mb05uv")
    args = p.parse_args(argv)
    if args.validate_onnx:  # before minutes of labelling: a missing file fails at once
        from realtime_prn.weights import WeightsError, resolve_weights
        try:
            resolve_weights(args.validate_onnx)
        except WeightsError as exc:
            p.error(f"--validate-onnx: {exc}")
    if not 0 <= args.synth_pitch < 90:
        p.error(f"--synth-pitch must be in [0, 90) degrees, not {args.synth_pitch:g}")
    if args.synth_pitch and args.synth_method != "warp":
        p.error("--synth-pitch needs --synth-method warp (paste renders the face alone)")
    if args.synth_source_bias < 0:
        p.error(f"--synth-source-bias must be >= 0 degrees, not {args.synth_source_bias:g}")
    if args.synth_source_bias and not (args.model == "uvreg" and args.synth):
        p.error("--synth-source-bias needs --model uvreg and --synth N (it picks the faces to turn)")
    if args.synth_max_padding is not None:
        if not 0 <= args.synth_max_padding <= 1:
            p.error(f"--synth-max-padding is a share in [0, 1], not {args.synth_max_padding:g}")
        if not (args.model == "uvreg" and args.synth):
            p.error("--synth-max-padding needs --model uvreg and --synth N (it picks the faces to turn)")
    if not 0 <= args.flip <= 1:
        p.error(f"--flip is a probability in [0, 1], not {args.flip:g}")
    if args.flip and args.model != "uvreg":
        p.error("--flip needs --model uvreg (its labels are mirrored in parameter space)")
    if not 0 <= args.degrade <= 1:
        p.error(f"--degrade is a probability in [0, 1], not {args.degrade:g}")
    if args.degrade and args.model != "uvreg":
        p.error("--degrade needs --model uvreg (the dense students' samples are built elsewhere)")
    if args.teacher_flip and args.model != "uvreg":
        p.error("--teacher-flip needs --model uvreg (its labels are averaged in parameter space)")
    if args.soup and not (args.export and args.model == "uvreg"):
        p.error("--soup averages uvreg runs into a release: use it with --model uvreg --export")
    if args.soup and len(args.soup) < 2:
        p.error("--soup needs two runs or more")
    if args.soup_weights is not None:
        if not args.soup:
            p.error("--soup-weights needs --soup")
        if len(args.soup_weights) != len(args.soup):
            p.error(f"--soup-weights needs one weight per --soup member: {len(args.soup)}, "
                    f"not {len(args.soup_weights)}")
        if min(args.soup_weights) <= 0:
            p.error("--soup-weights must all be positive")
    if args.teacher_input and args.init != TEACHER_INIT:
        p.error("--teacher-input chooses what --init teacher reads; use it with --init teacher")
    if args.init == TEACHER_INIT and args.blocks:  # before minutes of labelling
        p.error("--blocks deepens our resnet; the teacher's mb05 (--init teacher) has its own fixed shape")
    if args.warmup < 0:
        p.error(f"--warmup is a number of steps, 0 or more, not {args.warmup}")
    return args


def uvreg_backbone(args: argparse.Namespace, train, out: Path) -> tuple:
    """The backbone to train, its architecture, stages and output statistics: a resumed run's own, a
    release's (``--init``, deepened to ``--blocks`` when asked), the teacher's (``--init teacher``,
    statistics from the training labels) or fresh ones from the training labels.

    Output scale, width and stages are part of the weights, so a resume takes them from its
    checkpoint, never from the command line.
    """
    from realtime_prn.network.uvreg import STAGES, build_backbone, load_weights, teacher_backbone
    from realtime_prn.training.uvreg_data import param_stats

    stages = requested_stages(args)
    if args.resume and (out / "last.npz").exists():
        with np.load(out / "last.npz") as z:
            ck = json.loads(str(z["state"]))["config"]
        args.width = float(ck.get("width", args.width))
        stages = tuple(tuple(x) for x in ck.get("stages", STAGES))
        arch = ck.get("arch", "resnet")
        args.freeze_bn = bool(ck.get("freeze_bn", False))  # the optimiser's variables depend on it
        return (build_backbone(args.width, stages, arch), arch, stages, np.asarray(ck["p_mean"], np.float32),
                np.asarray(ck["p_std"], np.float32))
    if args.init == TEACHER_INIT and not args.resume:
        p_mean, p_std = param_stats(train)
        print("initialised from the teacher (3DDFA_V2 mb05, its head folded into these output statistics); "
              "fresh optimiser")
        arch = requested_arch(args)
        return teacher_backbone(p_mean, p_std, args.data, arch), arch, STAGES, p_mean, p_std
    if not args.init or args.resume:  # fresh (a --resume without a checkpoint fails after this)
        return (build_backbone(args.width, stages), "resnet", stages, *param_stats(train))

    try:
        model, p_mean, p_std, meta = load_weights(args.init)
    except (OSError, ValueError):
        raise ValueError(f"--init: {args.init} is not a uvreg release file (expected one like "
                         "the committed realtime_prn/models/uvreg-v*.npz)") from None
    args.width = float(meta.get("width", args.width))
    released = tuple(tuple(x) for x in meta.get("stages", STAGES))
    arch = meta.get("arch", "resnet")
    if args.blocks and arch != "resnet":
        raise ValueError(f"--blocks deepens our resnet; {args.init} holds the {arch} backbone, "
                         "whose shape is fixed")
    if args.blocks and stages != released:
        from realtime_prn.network.uvreg import deepen_backbone

        model = deepen_backbone(model, args.width, released, stages)
        print(f"deepened: blocks {[b for _, b in released]} -> {[b for _, b in stages]}, "
              "added blocks start as identities")
    else:
        stages = released
    print(f"initialised from {args.init} (step {meta.get('step')}, width {args.width}); fresh optimiser")
    return model, arch, stages, p_mean, p_std


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
    if args.precision == "mixed_bfloat16" and native_bf16() is False:
        print("warning: this CPU has no bf16 hardware (avx512_bf16 / amx_bf16): mixed_bfloat16 is "
              "emulated, ~15x slower than fp32 here; --precision fp32 --jit is the fast choice",
              file=sys.stderr)
    if args.benchmark:
        return benchmark(args)
    if args.export:
        return export(args, out)
    if args.init:  # before minutes of labelling and caching
        if args.model != "uvreg":
            raise ValueError("--init takes a uvreg release file; use it with --model uvreg")
        if args.init != TEACHER_INIT and not Path(args.init).is_file():
            raise FileNotFoundError(f"--init: no release file at {args.init}")
    if args.relabel:
        if args.model != "uvreg":
            raise ValueError("--relabel takes a uvreg release file; use it with --model uvreg")
        if not Path(args.relabel).is_file():
            raise FileNotFoundError(f"--relabel: no release file at {args.relabel}")
        from realtime_prn.network.uvreg import is_release_file

        if not is_release_file(args.relabel):  # before minutes of caching and turning faces
            raise ValueError(f"--relabel: {args.relabel} is not a uvreg release file (expected one like "
                             "the committed realtime_prn/models/uvreg-*.npz)")

    import keras

    from realtime_prn.assets import load_assets
    from realtime_prn.training.labels import build_labels
    from realtime_prn.training.student import build_model, count_macs

    labels, lpath, secs = build_labels(args.limit, args.data)
    print(f"labels {lpath} ({len(labels)} images{f', labelled in {secs:.0f} s' if secs else ', cached'})")
    cfg = AugmentConfig(yaw_prob=args.yaw_prob, flip_prob=args.flip, degrade_prob=args.degrade)
    mirrored = None
    if args.teacher_flip:
        mirrored, mpath, secs = build_labels(args.limit, args.data, mirrored=True)
        print(f"mirrored labels {mpath}{f', labelled in {secs:.0f} s' if secs else ', cached'}")
    if args.model == "uvreg":
        train, val, info = make_uvreg_datasets(labels, args.seed, args.val_fraction, args.val_max, cfg,
                                               args.data, args.synth, args.val_synth, tuple(args.synth_deg),
                                               args.synth_method, args.recrop, args.synth_pitch,
                                               args.backgrounds, args.data_seed, mirrored,
                                               args.synth_source_bias, args.synth_max_padding,
                                               None if args.no_synth_cache else engines_dir() / "train",
                                               args.relabel)
    else:
        train, val, info = make_datasets(labels, args.seed, args.val_fraction, args.val_max, cfg, args.data,
                                         yaw=args.yaw_prob > 0)
    print(f"split by group (seed {args.seed}): {info}")
    a = load_assets(args.data)
    w = run_loss_weights(args, a, train.decoder.covered)
    if args.validate_onnx:
        return validate_onnx(args, val, a, w)

    keras.utils.set_random_seed(args.seed)
    extra: dict = {}
    if args.model == "uvreg":
        from realtime_prn.network.uvreg import build_backbone, build_uvreg_model, input_size

        with dtype_policy(args.precision):
            model, arch, stages, p_mean, p_std = uvreg_backbone(args, train, out)
        train.input_size = val.input_size = input_size(arch)
        if args.freeze_bn:
            freeze_batchnorm(model)
        extra = {"loss_fn": uvreg_loss(train.decoder.rows, w, p_mean, p_std)}
        shown = model
        if args.precision != "fp32":
            # validate (and so choose best.npz) with the weights as they ship: an fp32 twin
            shown = build_backbone(args.width, stages, arch)
            extra["sync_predict"] = lambda: shown.set_weights(model.get_weights())
        extra["predict_model"] = build_uvreg_model(shown, p_mean, p_std, args.data)
    else:
        with dtype_policy(args.precision):
            model = build_model(args.model, args.width)
    steps_per_epoch = max(1, len(train) // args.batch)
    halve = int(round(args.halve_every * steps_per_epoch)) if args.halve_every else 0
    trainer = Trainer(model, w, train, val, a.kpt_ind, a.face_ind, batch=args.batch, lr=args.lr,
                      halve_every_steps=halve, warmup_steps=args.warmup, workers=args.workers,
                      jit=args.jit,
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
        changed = [f"{k} {trainer.state.config[k]} -> {v}" for k, v in info.items()
                   if k in trainer.state.config and trainer.state.config[k] != v]
        for key, default in (("landmark_weight", 16.0), ("jaw_landmark_weight", None)):
            before, now = trainer.state.config.get(key, default), getattr(args, key)
            if before != now:  # a different loss from here on: allowed, not silently
                changed.append(f"{key} {before} -> {now}")
        was = trainer.state.config.get("precision", "fp32")
        if was != args.precision:  # allowed (the weights are fp32 either way), but not silently
            print(f"resumed in {args.precision}; the checkpoint trained in {was} "
                  f"(pass --precision {was} to keep it)")
        if changed:  # allowed (a deliberate change of data mid-run), but not silently
            print("resumed with other data or loss than the checkpoint's: " + "; ".join(changed))
    else:
        trainer.state = TrainState(seed=args.seed)
    # a resumed fine-tune keeps the release it started from (its export records it)
    if args.resume:
        init, init_sha = trainer.state.config.get("init"), trainer.state.config.get("init_sha256")
    else:
        init, init_sha = args.init, init_sha256(args)
    trainer.state.config = {"model": args.model, "width": args.width, "batch": args.batch, "lr": args.lr,
                            "halve_every_steps": halve, "warmup_steps": args.warmup, "seed": args.seed,
                            "landmark_weight": args.landmark_weight,
                            "jaw_landmark_weight": args.jaw_landmark_weight,
                            "labels": str(lpath),
                            "params": int(model.count_params()), "gmacs": count_macs(model) / 1e9,
                            "precision": args.precision, "jit": args.jit, "init": init,
                            "freeze_bn": args.freeze_bn,
                            **({"init_sha256": init_sha} if init_sha else {}), **info}
    if args.model == "uvreg":
        trainer.state.config.update(p_mean=p_mean.tolist(), p_std=p_std.tolist(), arch=arch,
                                    stages=[list(x) for x in stages])
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
