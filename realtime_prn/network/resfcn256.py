"""resfcn256, PRN's encoder–decoder, in TF2 Keras with the official TF1 variable names.

Exactly the official ``predictor.py``: a 4×4 conv, 10 residual blocks (1×1 → 4×4 → 1×1,
projection shortcut when the shape changes, batch norm + ReLU after the sum), 17 transposed
convolutions, the last with a sigmoid; batch norm (eps 1e-3, scale and centre) after every
conv except each block's last 1×1 and its shortcut; no conv biases; TF 'SAME' padding.
The model multiplies the sigmoid by 256 × 1.1 so that every engine returns crop pixels.

Keras 3 forbids '/' in layer names, so layers are named with '__' in its place and
:func:`official_variable_map` translates; the checkpoint loads by name, never by order.
"""
from __future__ import annotations

import numpy as np

NAME = "resfcn256"
SIZE = 16
MAX_POS = 256 * 1.1
BN_EPS = 1e-3

# (scope, num_outputs, stride) for the encoder's residual blocks, in graph order.
RES_BLOCKS = [(f"resBlock{'' if i == 0 else f'_{i}'}", SIZE * 2 ** (1 + i // 2), 2 if i % 2 == 0 else 1)
              for i in range(10)]
# (num_outputs, stride) for the 17 transposed convolutions.
DECODER = [(512, 1), (256, 2), (256, 1), (256, 1), (128, 2), (128, 1), (128, 1), (64, 2), (64, 1),
           (64, 1), (32, 2), (32, 1), (16, 2), (16, 1), (3, 1), (3, 1), (3, 1)]


def _k(scope: str) -> str:
    return scope.replace("/", "__")


def build_resfcn256(input_size: int = 256, deconv_as_conv: bool = False):
    """The Keras model: N×256×256×3 RGB in [0, 1] → N×256×256×3 position map in crop pixels.

    ``deconv_as_conv`` builds the same function with every transposed convolution rewritten
    as plain convolutions (see :func:`_deconv_as_conv`); fill it with
    :func:`copy_to_deconv_as_conv`. ONNX Runtime has no fast int8 ConvTranspose, so this is
    the form that quantizes well on the CPU.
    """
    import tensorflow as tf
    from tensorflow import keras
    L = keras.layers

    def conv(x, scope, filters, k, stride, bn=True, act=True):
        x = L.Conv2D(filters, k, stride, padding="same", use_bias=False, name=_k(scope))(x)
        if bn:
            x = L.BatchNormalization(epsilon=BN_EPS, name=_k(scope + "/BatchNorm"))(x)
        if act:
            x = L.ReLU()(x)
        return x

    def deconv(x, scope, filters, stride, activation):
        if deconv_as_conv:
            x = _deconv_as_conv(L, x, scope, filters, stride)
        else:
            x = L.Conv2DTranspose(filters, 4, stride, padding="same", use_bias=False,
                                  name=_k(scope))(x)
        x = L.BatchNormalization(epsilon=BN_EPS, name=_k(scope + "/BatchNorm"))(x)
        return L.Activation(activation)(x)

    inp = keras.Input((input_size, input_size, 3), name="image")
    x = conv(inp, f"{NAME}/Conv", SIZE, 4, 1)
    for scope, n, stride in RES_BLOCKS:
        s = f"{NAME}/{scope}"
        shortcut = x
        if stride != 1 or x.shape[-1] != n:
            shortcut = conv(x, s + "/shortcut", n, 1, stride, bn=False, act=False)
        y = conv(x, s + "/Conv", n // 2, 1, 1)
        y = conv(y, s + "/Conv_1", n // 2, 4, stride)
        y = conv(y, s + "/Conv_2", n, 1, 1, bn=False, act=False)
        y = L.Add()([y, shortcut])
        y = L.BatchNormalization(epsilon=BN_EPS, name=_k(s + "/BatchNorm"))(y)
        x = L.ReLU()(y)
    for i, (n, stride) in enumerate(DECODER):
        scope = f"{NAME}/Conv2d_transpose{'' if i == 0 else f'_{i}'}"
        x = deconv(x, scope, n, stride, "sigmoid" if i == len(DECODER) - 1 else "relu")
    out = L.Rescaling(np.float32(MAX_POS), name="to_crop_pixels")(x)
    return tf.keras.Model(inp, out, name=NAME)


# Output phase r of a stride-2, 4-tap 'SAME' transposed conv (pad 1) reads input offsets
# (−1, 0) with taps (3, 1) when r = 0, and offsets (0, +1) with taps (2, 0) when r = 1.
_PHASE_TAPS = {0: (3, 1), 1: (2, 0)}
_PHASE_PAD = {0: (1, 0), 1: (0, 1)}


def _deconv_as_conv(L, x, scope, filters, stride):
    """A 4×4 'SAME' transposed conv as convolutions, exactly.

    Stride 1: a conv with the spatially flipped kernel and padding (2, 1) instead of (1, 2).
    Stride 2: per output phase (ry, rx) a 2×2 conv at that phase's own input offset, then
    depth-to-space interleaves the four phases — the same FLOPs, no inserted zeros.
    """
    import tensorflow as tf
    if stride == 1:
        y = L.ZeroPadding2D(((2, 1), (2, 1)))(x)
        return L.Conv2D(filters, 4, 1, padding="valid", use_bias=False, name=_k(scope))(y)
    phases = []
    for ry in (0, 1):
        for rx in (0, 1):
            y = L.ZeroPadding2D((_PHASE_PAD[ry], _PHASE_PAD[rx]))(x)
            phases.append(L.Conv2D(filters, 2, 1, padding="valid", use_bias=False,
                                   name=_k(scope) + f"__p{ry}{rx}")(y))
    y = L.Concatenate(axis=-1)(phases)
    return L.Lambda(lambda t: tf.nn.depth_to_space(t, 2), name=_k(scope) + "__d2s")(y)


def copy_to_deconv_as_conv(src, dst) -> None:
    """Fill a ``deconv_as_conv`` model from a standard one (same weights, same function)."""
    by_name = {layer.name: layer for layer in src.layers}
    for layer in dst.layers:
        name = layer.name
        if name in by_name and type(by_name[name]).__name__ == "Conv2DTranspose":
            w = by_name[name].get_weights()[0]           # [4, 4, out, in]
            layer.set_weights([w[::-1, ::-1].transpose(0, 1, 3, 2)])
        elif "__p" in name and name.rsplit("__p", 1)[0] in by_name:
            w = by_name[name.rsplit("__p", 1)[0]].get_weights()[0]
            ry, rx = int(name[-2]), int(name[-1])
            taps = w[np.ix_(_PHASE_TAPS[ry], _PHASE_TAPS[rx])]  # [2, 2, out, in]
            layer.set_weights([taps.transpose(0, 1, 3, 2)])
        elif name in by_name and layer.weights:
            layer.set_weights(by_name[name].get_weights())


def official_variable_map(model) -> dict[str, object]:
    """Official TF1 variable name → the Keras variable that holds it (one-to-one)."""
    out = {}
    for layer in model.layers:
        scope = layer.name.replace("__", "/")
        if not scope.startswith(NAME + "/"):
            continue
        cls = type(layer).__name__
        if cls in ("Conv2D", "Conv2DTranspose"):
            out[scope + "/weights"] = layer.kernel
        elif cls == "BatchNormalization":
            out[scope + "/gamma"] = layer.gamma
            out[scope + "/beta"] = layer.beta
            out[scope + "/moving_mean"] = layer.moving_mean
            out[scope + "/moving_variance"] = layer.moving_variance
    return out


def expected_variables() -> dict[str, tuple[int, ...]]:
    """Name → shape the official checkpoint must hold, without building a TF graph."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(scope, n):
        for v in ("gamma", "beta", "moving_mean", "moving_variance"):
            shapes[f"{scope}/BatchNorm/{v}"] = (n,)

    shapes[f"{NAME}/Conv/weights"] = (4, 4, 3, SIZE)
    bn(f"{NAME}/Conv", SIZE)
    c = SIZE
    for scope, n, stride in RES_BLOCKS:
        s = f"{NAME}/{scope}"
        if stride != 1 or c != n:
            shapes[s + "/shortcut/weights"] = (1, 1, c, n)
        shapes[s + "/Conv/weights"] = (1, 1, c, n // 2)
        bn(s + "/Conv", n // 2)
        shapes[s + "/Conv_1/weights"] = (4, 4, n // 2, n // 2)
        bn(s + "/Conv_1", n // 2)
        shapes[s + "/Conv_2/weights"] = (1, 1, n // 2, n)
        bn(s, n)
        c = n
    for i, (n, _) in enumerate(DECODER):
        scope = f"{NAME}/Conv2d_transpose{'' if i == 0 else f'_{i}'}"
        shapes[scope + "/weights"] = (4, 4, n, c)
        bn(scope, n)
        c = n
    return shapes


class CheckpointError(ValueError):
    """The checkpoint is not the official resfcn256 (missing, truncated or mis-shaped)."""


def load_official_checkpoint(model, prefix: str) -> int:
    """Assign every official variable by name; returns the number of values loaded.

    Fails before touching the model when any name is missing or any shape differs, so a
    wrong file can never leave a half-loaded network behind.
    """
    import tensorflow as tf
    try:
        reader = tf.train.load_checkpoint(str(prefix))
    except Exception as exc:  # TF raises several types for missing/truncated files
        raise CheckpointError(f"cannot read checkpoint {prefix}: {str(exc).splitlines()[0]}") from None
    have = reader.get_variable_to_shape_map()
    targets = official_variable_map(model)
    problems = []
    for name, var in targets.items():
        if name not in have:
            problems.append(f"missing {name}")
        elif tuple(have[name]) != tuple(var.shape):
            problems.append(f"{name} has shape {tuple(have[name])}, expected {tuple(var.shape)}")
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(f"{prefix} is not a resfcn256 checkpoint: {'; '.join(problems[:3])}{more}")
    total = 0
    values = {}
    try:
        for name in targets:
            values[name] = reader.get_tensor(name)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {prefix} is unreadable (truncated .data?): "
                              f"{str(exc).splitlines()[0]}") from None
    for name, var in targets.items():
        var.assign(values[name])
        total += values[name].size
    return total
