"""A light PRN student with resfcn256's exact I/O, small enough to train on two CPU cores.

Why: resfcn256 trains at about 5 img/s on this machine, so a network a few times cheaper is the
only one that gets meaningful training here, and it must be a drop-in for every engine: input
N x 256 x 256 x 3 RGB in [0, 1], output N x 256 x 256 x 3 position map in crop pixels
(sigmoid x 256 x 1.1, like resfcn256).

Shape: a MobileNetV2-style encoder (inverted residuals, ReLU6, BatchNorm) from 256 down to 8x8,
then a light U-Net decoder: bilinear x2 upsampling, concatenation with the encoder feature of the
same size, and a depthwise-separable 3x3 block, five times back to 256. Skip connections are a
departure from PRN's plain encoder-decoder; they make dense regression converge much faster, which
is what a short CPU budget needs. Every op (Conv, depthwise Conv, Resize, Concat, Add, Sigmoid)
exports to ONNX opset 17 and runs on ONNX Runtime / TensorRT.
"""

from __future__ import annotations

import numpy as np

NAME = "prn_student"
MAX_POS = 256 * 1.1

#: Encoder stages: (expansion, out channels, repeats, first stride), MobileNetV2 style.
ENCODER = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 3, 2), (4, 128, 3, 2))
#: Decoder widths at 16, 32, 64, 128, 256.
DECODER = (96, 64, 32, 24, 16)
#: The plain student: encoder stages (channels, extra 3x3 convs) at 128, 64, 32, 16, 8.
PLAIN_ENCODER = ((16, 0), (32, 1), (64, 1), (128, 1), (192, 1))
#: Its decoder: (channels, 3x3 convs after the x2 transposed conv) at 16, 32, 64, 128, 256.
PLAIN_DECODER = ((128, 1), (64, 1), (32, 1), (16, 0), (8, 0))


def build_student(width: float = 1.0, input_size: int = 256, arch: str = "plain") -> object:
    """The Keras student: N x 256 x 256 x 3 RGB [0,1] -> N x 256 x 256 x 3 crop-pixel position map.

    ``arch="plain"`` (the default, what is trained): dense 3x3 convolutions only. ``"mobilenet"``:
    the MobileNetV2-style variant, fewer MACs but TF's CPU depthwise-conv gradients make it train at
    1.3 img/s on this machine (measured), so it is kept for inference experiments only.
    ``width`` scales every channel count (tests use a narrow one to stay fast).
    """
    if arch == "mobilenet":
        return _build_mobilenet(width, input_size)
    if arch != "plain":
        raise ValueError(f"unknown student arch {arch!r}")
    import keras
    from keras import layers as L

    def ch(c: int) -> int:
        return max(4, int(round(c * width / 4)) * 4)

    def cbr(x: object, c: int, k: int, s: int, name: str) -> object:
        x = L.Conv2D(c, k, s, padding="same", use_bias=False, name=name)(x)
        x = L.BatchNormalization(name=f"{name}_bn")(x)
        return L.ReLU(name=f"{name}_relu")(x)

    def up(x: object, c: int, name: str) -> object:
        x = L.Conv2DTranspose(c, 4, 2, padding="same", use_bias=False, name=name)(x)
        x = L.BatchNormalization(name=f"{name}_bn")(x)
        return L.ReLU(name=f"{name}_relu")(x)

    inp = keras.Input((input_size, input_size, 3), name="image")
    x = L.Rescaling(2.0, offset=-1.0, name="to_pm1")(inp)
    skips = []
    for i, (c, n) in enumerate(PLAIN_ENCODER):  # each stage halves the resolution: 128 .. 8
        x = cbr(x, ch(c), 3, 2, f"enc{i}_down")
        for r in range(n):
            x = cbr(x, ch(c), 3, 1, f"enc{i}_conv{r}")
        skips.append(x)
    skips.pop()  # the 8x8 output is x itself
    for i, (c, n) in enumerate(PLAIN_DECODER):  # 16 .. 256
        x = up(x, ch(c), f"dec{i}_up")
        if i < len(skips):
            x = L.Add(name=f"dec{i}_skip")([x, skips[-1 - i]])
        for r in range(n):
            x = cbr(x, ch(c), 3, 1, f"dec{i}_conv{r}")
    x = L.Conv2D(3, 3, padding="same", name="head")(x)
    x = L.Activation("sigmoid", name="head_sigmoid")(x)
    out = L.Rescaling(np.float32(MAX_POS), name="to_crop_pixels")(x)
    return keras.Model(inp, out, name=NAME)


def _build_mobilenet(width: float = 1.0, input_size: int = 256) -> object:
    """MobileNetV2-style encoder + depthwise U-Net decoder (see :func:`build_student`)."""
    import keras
    from keras import layers as L

    def ch(c: int) -> int:
        return max(8, int(round(c * width / 4)) * 4)

    def cbr(x: object, c: int, k: int, s: int, name: str, act: bool = True) -> object:
        x = L.Conv2D(c, k, s, padding="same", use_bias=False, name=name)(x)
        x = L.BatchNormalization(name=f"{name}_bn")(x)
        return L.ReLU(6.0, name=f"{name}_relu")(x) if act else x

    def dw(x: object, s: int, name: str) -> object:
        x = L.DepthwiseConv2D(3, s, padding="same", use_bias=False, name=name)(x)
        x = L.BatchNormalization(name=f"{name}_bn")(x)
        return L.ReLU(6.0, name=f"{name}_relu")(x)

    def inverted_residual(x: object, t: int, c: int, s: int, name: str) -> object:
        cin = x.shape[-1]
        y = cbr(x, cin * t, 1, 1, f"{name}_expand") if t != 1 else x
        y = dw(y, s, f"{name}_dw")
        y = cbr(y, c, 1, 1, f"{name}_project", act=False)
        return L.Add(name=f"{name}_add")([x, y]) if s == 1 and cin == c else y

    inp = keras.Input((input_size, input_size, 3), name="image")
    x = L.Rescaling(2.0, offset=-1.0, name="to_pm1")(inp)
    x = cbr(x, ch(16), 3, 2, "stem")  # 128
    skips = []
    for si, (t, c, n, s) in enumerate(ENCODER):
        for r in range(n):
            if r == 0 and s == 2:
                skips.append(x)  # the feature at the resolution before this downsampling
            x = inverted_residual(x, t, ch(c), s if r == 0 else 1, f"enc{si}_{r}")
    x = cbr(x, ch(256), 1, 1, "neck")  # 8x8
    # skips: 128 (stem/16), 64 (24), 32 (32), 16 (64); decode 8->16->32->64->128->256
    for di, c in enumerate(DECODER):
        x = L.UpSampling2D(2, interpolation="bilinear", name=f"dec{di}_up")(x)
        if di < len(skips):
            x = L.Concatenate(name=f"dec{di}_cat")([x, skips[-1 - di]])
        x = dw(x, 1, f"dec{di}_dw")
        x = cbr(x, ch(c), 1, 1, f"dec{di}_pw")
    x = L.Conv2D(3, 3, padding="same", name="head")(x)
    x = L.Activation("sigmoid", name="head_sigmoid")(x)
    out = L.Rescaling(np.float32(MAX_POS), name="to_crop_pixels")(x)
    return keras.Model(inp, out, name=NAME)


def count_macs(model: object) -> int:
    """Multiply-accumulates of one forward pass (convolutions and dense layers; BN/ReLU/resize excluded).

    Why by hand: TF's profiler is not available for Keras 3 functional models without a graph
    round trip, and convolutions are >95 % of the work here.
    """
    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in ("Conv2D", "DepthwiseConv2D", "Conv2DTranspose", "Dense"):
            continue
        out_shape = layer.output.shape
        if kind == "Dense":
            total += int(np.prod(layer.kernel.shape))
            continue
        kh, kw = layer.kernel_size
        cin = layer.input.shape[-1]
        if kind == "DepthwiseConv2D":
            total += out_shape[1] * out_shape[2] * kh * kw * cin
        elif kind == "Conv2DTranspose":
            total += layer.input.shape[1] * layer.input.shape[2] * kh * kw * cin * out_shape[-1]
        else:
            total += out_shape[1] * out_shape[2] * kh * kw * cin * out_shape[-1]
    return int(total)


def build_model(name: str, width: float = 1.0) -> object:
    """``resfcn256`` or ``student``: the two networks ``tools/train.py`` can train."""
    if name == "student":
        return build_student(width)
    if name == "resfcn256":
        from realtime_prn.network.resfcn256 import build_resfcn256

        return build_resfcn256()
    raise ValueError(f"unknown model {name!r} (expected resfcn256 or student)")
