"""``uvreg``: this project's own trained model -- a small CNN regressing 62 parameters that a fixed
dense UV basis turns into PRN's position map.

Why this shape and not a dense decoder: on two CPU cores a network that predicts 196,608 numbers
per face learns too slowly (the dense student reached 14.7 % NME on AFLW2000-3D after 46 minutes,
``tools/train.py --model student``). The position map of a face is, to within the basis' error,
``camera(mean + W @ alpha)``: a 3x4 camera and 50 shape/expression coefficients. Regressing those
62 numbers from a 128x128 view of the crop is ~30x cheaper per image and the output is still the
full 256x256x3 position map in crop pixels, so every engine and every downstream stage is
unchanged. The loss stays PRN's weighted position-map loss, computed on the decoded map.

Parameters, in the 256-crop frame (not the teacher's 120 frame): the first 12 are the row-major
3x4 affine taking a BFM point to crop pixels (x, y; z scaled like them), the last 50 are the BFM
shape (40) and expression (10) coefficients. They are normalised by ``p_mean``/``p_std`` measured on
augmented training labels; those travel with the weights.

Graph (PRN I/O; every op exports to ONNX opset 17):
N x 256 x 256 x 3 RGB [0,1] -> 2x2 average to 128 (a bilinear half-pixel resize by exactly 1/2 is
that average) -> [-1, 1] (``mb05crop``: mb05uv's own 120 resize and normalisation instead) ->
backbone -> 62 -> ``UVDecoder(frame="crop")`` (mb05uv's decoder) ->
N x 256 x 256 x 3 position map, z shifted to min 0 over covered pixels, uncovered pixels 0.

Backbone (``arch``): ``resnet``, this project's own -- plain 3x3 convolutions with BatchNorm/ReLU and
residual blocks, global average pooling and a linear head -- or the teacher's own MobileNetV1-0.5
(:func:`teacher_backbone`), which a fine-tune starts from the teacher's weights with its head folded
into these parameters: ``mb05crop`` reads a 120 resize of the 256 crop (mb05uv's own input, so the
teacher's start is mb05uv exactly), ``mb05`` a 120 resize of the 2x2-averaged 128 view (session 20's
release; a softer image that cost the untrained teacher 0.09 NME on AFLW2000-3D).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

NAME = "uvreg"
INPUT = 128
TEACHER_INPUT = 120  # the mb05 backbone's own input size
N_PARAMS = 62
#: (channels, residual blocks) per stage; each stage starts with a stride-2 3x3 conv: 64 .. 4.
STAGES = ((24, 0), (48, 1), (96, 1), (192, 1), (320, 1))


#: backbone architectures a release can hold (its meta's ``arch``; files without one are resnet)
ARCHES = ("resnet", "mb05", "mb05crop")
#: backbones that are the teacher's network (a release of one stores its difference from the teacher)
TEACHER_ARCHES = ("mb05", "mb05crop")


def input_size(arch: str) -> int:
    """Side of the backbone's input: the 128 view, or the teacher's 120 input for ``mb05crop``."""
    return TEACHER_INPUT if arch == "mb05crop" else INPUT


def build_backbone(width: float = 1.0, stages: tuple = STAGES, arch: str = "resnet") -> object:
    """Keras model: N x 128 x 128 x 3 view in [-1, 1] (``mb05crop``: the teacher's 120 input) -> N x 62
    normalised parameters.

    ``width`` and ``stages`` shape the resnet; the mb05 backbones have the teacher's fixed shape.
    """
    import keras
    from keras import layers as L

    if arch in TEACHER_ARCHES:
        return _mb05_backbone(None, arch)
    if arch != "resnet":
        raise ValueError(f"unknown uvreg backbone {arch!r} (one of {', '.join(ARCHES)})")

    def ch(c: int) -> int:
        return max(8, int(round(c * width / 8)) * 8)

    def cbr(x: object, c: int, s: int, name: str, relu: bool = True) -> object:
        x = L.Conv2D(c, 3, s, padding="same", use_bias=False, name=name)(x)
        x = L.BatchNormalization(name=f"{name}_bn")(x)
        return L.ReLU(name=f"{name}_relu")(x) if relu else x

    inp = keras.Input((INPUT, INPUT, 3), name="image128")
    x = inp
    for i, (c, blocks) in enumerate(stages):
        x = cbr(x, ch(c), 2, f"s{i}_down")
        for b in range(blocks):
            y = cbr(x, ch(c), 1, f"s{i}_b{b}_c0")
            y = cbr(y, ch(c), 1, f"s{i}_b{b}_c1", relu=False)
            x = L.ReLU(name=f"s{i}_b{b}_out")(L.Add(name=f"s{i}_b{b}_add")([x, y]))
    x = L.GlobalAveragePooling2D(name="pool")(x)
    # float32 even under a mixed-precision policy: the 62 parameters scale a 256-pixel map, where
    # bf16's 8-bit mantissa would be a pixel; the layer's weights are the same either way
    x = L.Dense(N_PARAMS, name="head", kernel_initializer="zeros", dtype="float32")(x)
    return keras.Model(inp, x, name=f"{NAME}_backbone")


def _mb05_backbone(sd: dict | None, arch: str) -> object:
    import keras

    from realtime_prn.network.mb05 import mb05_backbone

    if arch == "mb05crop":  # the teacher's normalised 120 input, made from the crop by build_uvreg_model
        inp = keras.Input((TEACHER_INPUT, TEACHER_INPUT, 3), name="image120")
        x = inp
    else:
        inp = keras.Input((INPUT, INPUT, 3), name="image128")
        x = _layers()[1](name="to_teacher_input")(inp)
    return keras.Model(inp, mb05_backbone(x, sd, rgb_input=True), name=f"{NAME}_mb05_backbone")


def teacher_backbone(p_mean: np.ndarray, p_std: np.ndarray,
                     data_root: str | os.PathLike | None = None, arch: str = "mb05crop") -> object:
    """The mb05 backbone holding the teacher's weights, computing the teacher's parameters in this
    model's crop frame, normalised by ``p_mean`` / ``p_std``: where a fine-tune of the teacher starts.

    Why: the fine-tunes of our own resnet (v12-v29) levelled off 0.5 NME above the teacher they
    learn from (4.44 vs 3.91 on AFLW2000-3D's bin mean), and souping them buys ~0.01. Starting from
    the teacher itself, the question becomes whether training on this corpus with its augmentation,
    turned faces and flip-averaged labels moves a network that is already at the teacher's accuracy
    (3DDFA_V2's network; our training on top). Exact apart from the input: the teacher's 3x4 camera
    maps into its 120 frame and 3DDFA_V2's ``similar_transform`` (x-1, 120-y, z-1, then x 256/120)
    is affine per camera row, so with the de-normalisation it folds into the fc layer's rows. With
    ``arch="mb05crop"`` the input is mb05uv's too, so the model is mb05uv exactly; ``"mb05"`` reads the
    2x2-averaged 128 view instead (softer: AFLW2000-3D GT-crop bin mean 4.001 against 3.908).
    """
    from realtime_prn.network.mb05 import INPUT_SIZE, load_param_stats, load_state_dict
    from realtime_prn.network.mb05uv import SCALE_120_TO_CROP as k

    sd = dict(load_state_dict(data_root))
    t_mean, t_std = (np.asarray(v, np.float64) for v in load_param_stats(data_root))
    sign = np.ones(N_PARAMS)
    sign[:4], sign[4:8], sign[8:12] = k, -k, k  # rows x, y, z of the camera, translation included
    shift = np.zeros(N_PARAMS)
    shift[3], shift[7], shift[11] = -k, INPUT_SIZE * k, -k
    kernel, sd["fc.bias"] = _renormalised(sd["fc.weight"].T, sd["fc.bias"], (t_mean, t_std), (p_mean, p_std),
                                          sign, shift)  # teacher-normalised -> ours, per output
    sd["fc.weight"] = kernel.T
    return _mb05_backbone(sd, arch)


def _renormalised(kernel: np.ndarray, bias: np.ndarray, stats: tuple, to_stats: tuple,
                  sign: np.ndarray | float = 1.0, shift: np.ndarray | float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) of a linear head (output on the kernel's last axis) whose outputs, de-normalised
    by ``stats`` = (mean, std) and mapped by ``sign`` p + ``shift``, come out normalised by ``to_stats``.

    Why one function: the teacher's head folds into our crop frame (:func:`teacher_backbone`) and a
    run's head moves into another run's output scale (:func:`restate_head`) by the same affine algebra.
    """
    mean, std = (np.asarray(v, np.float64) for v in stats)
    to_mean, to_std = (np.asarray(v, np.float64) for v in to_stats)
    k = (np.asarray(kernel, np.float64) * (sign * std / to_std)).astype(np.float32)
    b = ((sign * (np.asarray(bias, np.float64) * std + mean) + shift - to_mean) / to_std).astype(np.float32)
    return k, b


def restate_head(backbone: object, weights: list[np.ndarray], stats: tuple, to_stats: tuple
                 ) -> list[np.ndarray]:
    """``weights`` (of ``backbone``'s network, normalised by ``stats`` = (p_mean, p_std)) with the
    last Dense layer re-expressed for ``to_stats``: the de-normalised parameters stay the same.

    Why: each run measures its own output statistics on its own synthetic bank, so two runs of one
    start (the teacher) land in different output scales and their heads cannot be averaged as they
    are. Restated into one scale, averaging the heads is averaging what they mean (the 62
    parameters), whichever member's scale is chosen: p = (W x + b) s + m is affine in (W, b).
    """
    import keras

    head = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Dense)][-1]
    paths = [v.path for v in backbone.weights]
    k, b = paths.index(head.kernel.path), paths.index(head.bias.path)
    out = list(weights)
    out[k], out[b] = _renormalised(weights[k], weights[b], stats, to_stats)
    return out


def with_blocks(blocks: tuple[int, ...], stages: tuple = STAGES) -> tuple:
    """``stages`` with each stage's residual block count replaced by ``blocks``."""
    if len(blocks) != len(stages):
        raise ValueError(f"need {len(stages)} block counts (one per stage), got {len(blocks)}")
    return tuple((c, int(b)) for (c, _), b in zip(stages, blocks))


def deepen_backbone(old: object, width: float, old_stages: tuple, new_stages: tuple) -> object:
    """A deeper backbone computing exactly what ``old`` computes, to fine-tune with more capacity.

    Why: the width-0.75 student fits its training faces barely better than held-out ones (NME68 vs
    the teacher 1.98 vs 2.15 % for v7), so it is capacity-bound, and training a larger one from
    scratch costs several sessions on 2 cores. Every layer of ``old`` keeps its weights; each added
    residual block starts with its last BatchNorm's scale and shift at 0, so it adds 0 and the
    block's ReLU passes its (already non-negative) input through unchanged; training grows it.
    """
    for (c0, b0), (c1, b1) in zip(old_stages, new_stages):
        if c0 != c1 or b1 < b0 or len(old_stages) != len(new_stages):
            raise ValueError(f"cannot deepen stages {list(old_stages)} into {list(new_stages)}: "
                             "same channels, no fewer blocks per stage")
    new = build_backbone(width, new_stages)
    old_layers = {layer.name: layer for layer in old.layers}
    for layer in new.layers:
        if layer.name in old_layers:
            layer.set_weights(old_layers[layer.name].get_weights())
        elif layer.name.endswith("_c1_bn"):
            layer.gamma.assign(np.zeros(layer.gamma.shape, np.float32))
    return new


def _layers() -> tuple[type, type]:
    import keras
    import tensorflow as tf

    class CropTo128(keras.layers.Layer):
        """256 RGB [0,1] -> 128 in [-1, 1] by 2x2 averaging (what cv2 INTER_AREA does at exactly 1/2)."""

        def call(self, x: tf.Tensor) -> tf.Tensor:
            x = tf.nn.avg_pool2d(x, 2, 2, "VALID")
            return x * 2.0 - 1.0

        def compute_output_shape(self, input_shape: tuple) -> tuple:
            return (input_shape[0], INPUT, INPUT, 3)

    class ViewToTeacherInput(keras.layers.Layer):
        """128 view in [-1, 1] -> the teacher's 120 input: bilinear (half-pixel, no antialiasing, as
        mb05uv resizes), scaled to (255 v - 127.5) / 128 for v the [0, 1] pixel."""

        def call(self, x: tf.Tensor) -> tf.Tensor:
            x = tf.image.resize(x, (TEACHER_INPUT, TEACHER_INPUT), method="bilinear", antialias=False)
            return x * (127.5 / 128.0)

        def compute_output_shape(self, input_shape: tuple) -> tuple:
            return (input_shape[0], TEACHER_INPUT, TEACHER_INPUT, 3)

    return CropTo128, ViewToTeacherInput


def build_uvreg_model(backbone: object, p_mean: np.ndarray, p_std: np.ndarray,
                      data_root: str | os.PathLike | None = None) -> object:
    """The PRN-I/O model around ``backbone``: N x 256 x 256 x 3 RGB [0,1] -> position map.

    The crop becomes what the backbone reads by its input size: the 128 view (2x2 average), or for
    ``mb05crop`` (120) the teacher's input exactly as mb05uv makes it.
    """
    import keras

    from realtime_prn.network.mb05uv import _keras_layers
    from realtime_prn.network.uv_basis import load_uv_basis

    to_teacher, decoder = _keras_layers()
    inp = keras.Input((256, 256, 3), name="image", dtype="float32")
    if backbone.input_shape[1] == TEACHER_INPUT:
        view = to_teacher(name="to_teacher_input")(inp)
    else:
        view = _layers()[0](name="to_128")(inp)
    params = backbone(view)
    pos = decoder(load_uv_basis(data_root), p_mean, p_std, frame="crop", name="posmap")(params)
    return keras.Model(inp, pos, name=NAME)


# --------------------------------------------------------------------------------------------
# The shipped weights file: backbone weights (fp16) + normalisation + provenance, nothing from shared/
# (an mb05 fine-tune holds its difference from the teacher, which stays in shared/)


def save_weights(path: str | os.PathLike, backbone: object, p_mean: np.ndarray, p_std: np.ndarray,
                 meta: dict, data_root: str | os.PathLike | None = None) -> None:
    """Write the release file: every backbone weight as float16, the stats as float32, meta as JSON.

    An mb05 backbone (a fine-tune of the teacher) is written as its difference from the teacher's
    weights (:func:`teacher_backbone` at the same output statistics), with the teacher file's sha256:
    the teacher's weights come from shared/ and are never committed, and a fine-tune's difference is
    ours. :func:`load_weights` adds the teacher back (and refuses another teacher file).
    """
    from realtime_prn.io.atomic import atomic_open

    values = [np.asarray(v, np.float32) for v in backbone.weights]
    if meta.get("arch") in TEACHER_ARCHES:
        base = teacher_backbone(p_mean, p_std, data_root, meta["arch"])
        values = [v - np.asarray(b, np.float32) for v, b in zip(values, base.weights)]
        meta = {**meta, "delta_from_teacher_sha256": teacher_sha256(data_root)}
    arrays = {f"w{i:04d}": v.astype(np.float16) for i, v in enumerate(values)}
    if not all(np.isfinite(a).all() for a in arrays.values()):
        raise ValueError(f"{path}: a weight does not fit float16 (inf/nan); not written")
    arrays["p_mean"] = np.asarray(p_mean, np.float32)
    arrays["p_std"] = np.asarray(p_std, np.float32)
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic_open(Path(path), "wb") as fh:
        np.savez_compressed(fh, **arrays)


def teacher_sha256(data_root: str | os.PathLike | None = None) -> str:
    """The sha256 of the teacher's weights file: what an mb05 release's difference applies to."""
    from realtime_prn.network.mb05 import weights_path
    from realtime_prn.paths import sha256_file

    return sha256_file(weights_path(data_root))


#: What makes an npz a uvreg weights file, beside its weight arrays.
RELEASE_KEYS = ("meta", "p_mean")


def is_release_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a uvreg weights file, without reading its weights: a tool that will load
    one after minutes of data preparation checks it first."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return all(k in z.files for k in RELEASE_KEYS)
    except (OSError, ValueError, zipfile.BadZipFile):
        return False


def load_weights(path: str | os.PathLike, data_root: str | os.PathLike | None = None
                 ) -> tuple[object, np.ndarray, np.ndarray, dict]:
    """(backbone with the file's weights, p_mean, p_std, meta); raises ValueError on a wrong file."""
    with np.load(path, allow_pickle=False) as z:
        if not all(k in z.files for k in RELEASE_KEYS):
            raise ValueError(f"{path} is not a uvreg weights file")
        meta = json.loads(str(z["meta"]))
        p_mean, p_std = z["p_mean"].astype(np.float32), z["p_std"].astype(np.float32)
        delta = "delta_from_teacher_sha256" in meta
        if delta:  # the teacher at these statistics is the base the file's differences add to
            if teacher_sha256(data_root) != meta["delta_from_teacher_sha256"]:
                raise ValueError(f"{path} is a fine-tune of another teacher file than "
                                 "shared/train/tddfa_v2/mb05_120x120.npz (sha256 differs)")
            backbone = teacher_backbone(p_mean, p_std, data_root, meta.get("arch", "mb05"))
        else:
            backbone = build_backbone(float(meta.get("width", 1.0)),
                                      tuple(tuple(s) for s in meta.get("stages", STAGES)),
                                      meta.get("arch", "resnet"))
        keys = sorted(k for k in z.files if k.startswith("w"))
        if len(keys) != len(backbone.weights):
            raise ValueError(f"{path} holds {len(keys)} weights, "
                             f"the uvreg backbone has {len(backbone.weights)}")
        for v, k in zip(backbone.weights, keys):
            if tuple(v.shape) != z[k].shape:
                raise ValueError(f"{path}: weight {k} has shape {z[k].shape}, expected {tuple(v.shape)}")
            v.assign(z[k].astype(np.float32) + (np.asarray(v) if delta else 0.0))
        return backbone, p_mean, p_std, meta
