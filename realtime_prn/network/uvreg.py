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
that average) -> [-1, 1] -> backbone -> 62 -> ``UVDecoder(frame="crop")`` (mb05uv's decoder) ->
N x 256 x 256 x 3 position map, z shifted to min 0 over covered pixels, uncovered pixels 0.

Backbone: plain 3x3 convolutions with BatchNorm/ReLU and residual blocks (TF's CPU gradients of
depthwise convolutions are slow, measured in ``training/student.py``), global average pooling and
a linear head.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

NAME = "uvreg"
INPUT = 128
N_PARAMS = 62
#: (channels, residual blocks) per stage; each stage starts with a stride-2 3x3 conv: 64 .. 4.
STAGES = ((24, 0), (48, 1), (96, 1), (192, 1), (320, 1))


def build_backbone(width: float = 1.0, stages: tuple = STAGES) -> object:
    """Keras model: N x 128 x 128 x 3 in [-1, 1] -> N x 62 normalised parameters."""
    import keras
    from keras import layers as L

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


def _layers() -> type:
    import keras
    import tensorflow as tf

    class CropTo128(keras.layers.Layer):
        """256 RGB [0,1] -> 128 in [-1, 1] by 2x2 averaging (what cv2 INTER_AREA does at exactly 1/2)."""

        def call(self, x: tf.Tensor) -> tf.Tensor:
            x = tf.nn.avg_pool2d(x, 2, 2, "VALID")
            return x * 2.0 - 1.0

        def compute_output_shape(self, input_shape: tuple) -> tuple:
            return (input_shape[0], INPUT, INPUT, 3)

    return CropTo128


def build_uvreg_model(backbone: object, p_mean: np.ndarray, p_std: np.ndarray,
                      data_root: str | os.PathLike | None = None) -> object:
    """The PRN-I/O model around ``backbone``: N x 256 x 256 x 3 RGB [0,1] -> position map."""
    import keras

    from realtime_prn.network.mb05uv import _keras_layers
    from realtime_prn.network.uv_basis import load_uv_basis

    crop_to_128 = _layers()
    _, decoder = _keras_layers()
    inp = keras.Input((256, 256, 3), name="image", dtype="float32")
    params = backbone(crop_to_128(name="to_128")(inp))
    pos = decoder(load_uv_basis(data_root), p_mean, p_std, frame="crop", name="posmap")(params)
    return keras.Model(inp, pos, name=NAME)


# --------------------------------------------------------------------------------------------
# The shipped weights file: backbone weights (fp16) + normalisation + provenance, nothing from shared/


def save_weights(path: str | os.PathLike, backbone: object, p_mean: np.ndarray, p_std: np.ndarray,
                 meta: dict) -> None:
    """Write the release file: every backbone weight as float16, the stats as float32, meta as JSON."""
    from realtime_prn.io.atomic import atomic_open

    arrays = {f"w{i:04d}": np.asarray(v).astype(np.float16) for i, v in enumerate(backbone.weights)}
    arrays["p_mean"] = np.asarray(p_mean, np.float32)
    arrays["p_std"] = np.asarray(p_std, np.float32)
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic_open(Path(path), "wb") as fh:
        np.savez_compressed(fh, **arrays)


def load_weights(path: str | os.PathLike) -> tuple[object, np.ndarray, np.ndarray, dict]:
    """(backbone with the file's weights, p_mean, p_std, meta); raises ValueError on a wrong file."""
    with np.load(path, allow_pickle=False) as z:
        if "meta" not in z.files or "p_mean" not in z.files:
            raise ValueError(f"{path} is not a uvreg weights file")
        meta = json.loads(str(z["meta"]))
        backbone = build_backbone(float(meta.get("width", 1.0)),
                                  tuple(tuple(s) for s in meta.get("stages", STAGES)))
        keys = sorted(k for k in z.files if k.startswith("w"))
        if len(keys) != len(backbone.weights):
            raise ValueError(f"{path} holds {len(keys)} weights, "
                             f"the uvreg backbone has {len(backbone.weights)}")
        for v, k in zip(backbone.weights, keys):
            if tuple(v.shape) != z[k].shape:
                raise ValueError(f"{path}: weight {k} has shape {z[k].shape}, expected {tuple(v.shape)}")
            v.assign(z[k].astype(np.float32))
        return backbone, z["p_mean"].astype(np.float32), z["p_std"].astype(np.float32), meta
