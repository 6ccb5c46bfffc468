"""3DDFA_V2's MobileNetV1 (widen 0.5) regressor as a TF2 Keras functional model.

Why: the project needs a network that exports to ONNX/TensorRT without torch, and 3DDFA_V2's
``mb05_120x120`` weights (MIT repo; trained on 300W-LP, non-commercial data) are staged as a plain
``.npz`` state_dict. This is a layer-for-layer port of ``models/mobilenet_v1.py``: conv 3x3/2 then
13 depthwise-separable blocks (ReLU, BatchNorm eps 1e-5), global average pooling and fc 512 -> 62.
PyTorch's symmetric ``padding=1`` is reproduced with an explicit ``ZeroPadding2D`` + ``'valid'``
convolution, because TF's ``'same'`` pads stride-2 layers asymmetrically.

Input: N x 120 x 120 x 3 BGR, normalised as (x - 127.5) / 128 (3DDFA_V2 never swaps to RGB).
Output: N x 62 normalised params; de-normalise with :func:`load_param_stats` as out * std + mean.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from realtime_prn.paths import data_file

INPUT_SIZE = 120
N_PARAMS = 62
BN_EPS = 1e-5  # torch.nn.BatchNorm2d default
WIDEN = 0.5
#: (name, in_channels, out_channels, stride) at widen 1.0, as in 3DDFA_V2's MobileNet.
BLOCKS: tuple[tuple[str, int, int, int], ...] = (
    ("dw2_1", 32, 64, 1),
    ("dw2_2", 64, 128, 2),
    ("dw3_1", 128, 128, 1),
    ("dw3_2", 128, 256, 2),
    ("dw4_1", 256, 256, 1),
    ("dw4_2", 256, 512, 2),
    ("dw5_1", 512, 512, 1),
    ("dw5_2", 512, 512, 1),
    ("dw5_3", 512, 512, 1),
    ("dw5_4", 512, 512, 1),
    ("dw5_5", 512, 512, 1),
    ("dw5_6", 512, 1024, 2),
    ("dw6", 1024, 1024, 1),
)


def weights_path(data_root: str | os.PathLike | None = None) -> Path:
    """The teacher's weights file in shared/ (its sha256 ties a fine-tune of it to this file)."""
    return data_file("train", "tddfa_v2", "mb05_120x120.npz", override=data_root)


def load_state_dict(data_root: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """The torch state_dict as numpy, with the 'module.' prefix stripped and fc_param -> fc."""
    path = weights_path(data_root)
    out: dict[str, np.ndarray] = {}
    with np.load(path) as z:
        for key in z.files:
            name = key.removeprefix("module.")
            if name.startswith("fc_lm.") or name.endswith("num_batches_tracked"):
                continue  # the landmark head is unused; batch counters are not weights
            out[name.replace("fc_param.", "fc.", 1)] = z[key].astype(np.float32)
    return out


def load_param_stats(data_root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), each (62,) float32: the teacher's outputs are normalised by these."""
    path = data_file("train", "tddfa_v2", "param_mean_std_62d_120x120.pkl", override=data_root)
    with open(path, "rb") as fh:
        stats = pickle.load(fh)
    return np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)


def _bn_weights(sd: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    return [sd[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def mb05_backbone(
    x: object, sd: dict[str, np.ndarray] | None, name: str = "mb05", rgb_input: bool = False
) -> object:
    """Apply the MobileNetV1-0.5 layers to Keras tensor ``x`` (N,120,120,3) -> (N,62); weights set.

    ``rgb_input`` reverses conv1's input channels so the layers take normalised RGB instead of the
    BGR the weights were trained on. That is exact (a channel permutation commutes with resizing,
    normalisation and zero padding) and saves a per-pixel gather in the exported graph.
    ``sd=None`` builds the layers only, for weights assigned afterwards (a fine-tuned release).
    """
    import keras
    from keras import layers

    def pad_conv(t: object, layer: keras.layers.Layer) -> object:
        return layer(layers.ZeroPadding2D(1, name=f"{layer.name}_pad")(t))

    def bn_relu(t: object, prefix: str, lname: str) -> object:
        bn = layers.BatchNormalization(epsilon=BN_EPS, name=lname)
        t = bn(t)
        if sd is not None:
            bn.set_weights(_bn_weights(sd, prefix))
        return layers.ReLU(name=f"{lname}_relu")(t)

    conv = layers.Conv2D(int(32 * WIDEN), 3, strides=2, padding="valid", use_bias=False, name=f"{name}_conv1")
    x = pad_conv(x, conv)
    if sd is not None:
        w = sd["conv1.weight"]  # OIHW, input channels in BGR order
        conv.set_weights([(w[:, ::-1] if rgb_input else w).transpose(2, 3, 1, 0)])  # -> HWIO
    x = bn_relu(x, "bn1", f"{name}_bn1")
    for blk, cin, cout, stride in BLOCKS:
        cin, cout = int(cin * WIDEN), int(cout * WIDEN)
        dw = layers.DepthwiseConv2D(
            3, strides=stride, padding="valid", use_bias=False, name=f"{name}_{blk}_dw"
        )
        x = pad_conv(x, dw)
        if sd is not None:
            wd = sd[f"{blk}.conv_dw.weight"]  # (C, 1, 3, 3)
            assert wd.shape == (cin, 1, 3, 3), (blk, wd.shape)
            dw.set_weights([wd.transpose(2, 3, 0, 1)])  # -> (3, 3, C, 1)
        x = bn_relu(x, f"{blk}.bn_dw", f"{name}_{blk}_bn_dw")
        sep = layers.Conv2D(cout, 1, use_bias=False, name=f"{name}_{blk}_sep")
        x = sep(x)
        if sd is not None:
            sep.set_weights([sd[f"{blk}.conv_sep.weight"].transpose(2, 3, 1, 0)])  # (O, I, 1, 1) -> HWIO
        x = bn_relu(x, f"{blk}.bn_sep", f"{name}_{blk}_bn_sep")
    x = layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)
    fc = layers.Dense(N_PARAMS, name=f"{name}_fc")
    x = fc(x)
    if sd is not None:
        fc.set_weights([sd["fc.weight"].T, sd["fc.bias"]])
    return x


def build_mb05_model(data_root: str | os.PathLike | None = None) -> object:
    """Keras model: N x 120 x 120 x 3 normalised BGR -> N x 62 normalised params (the raw teacher)."""
    import keras

    sd = load_state_dict(data_root)
    inp = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="input_bgr_norm", dtype="float32")
    out = mb05_backbone(inp, sd)
    return keras.Model(inp, out, name="mb05")


def normalise_bgr(img_bgr_120: np.ndarray) -> np.ndarray:
    """uint8/float BGR 120x120 crop(s) -> the float32 input 3DDFA_V2 feeds its network."""
    return ((np.asarray(img_bgr_120, np.float32) - 127.5) / 128.0).astype(np.float32)


# --- 3DDFA_V2's crop protocol (utils/functions.py, utils/tddfa_util.py), reused by the checks
# and by teacher labelling, so the port is measured exactly the way 3DDFA_V2 runs it.


def roi_box_from_landmarks(pts: np.ndarray) -> list[float]:
    """3DDFA_V2 parse_roi_box_from_landmark: square of side sqrt(2)*max(w, h) about the box centre.

    ``pts`` is (2+, 68) with rows x, y. Returns [x0, y0, x1, y1] as floats.
    """
    x0, y0, x1, y1 = float(pts[0].min()), float(pts[1].min()), float(pts[0].max()), float(pts[1].max())
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = np.sqrt(2.0) * max(x1 - x0, y1 - y0)
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def roi_box_from_bbox(bbox: np.ndarray) -> list[float]:
    """3DDFA_V2 parse_roi_box_from_bbox (detector boxes): centre y + 0.14*size, side int(1.58*size)."""
    left, top, right, bottom = (float(v) for v in bbox[:4])
    old = (right - left + bottom - top) / 2
    cx, cy = right - (right - left) / 2, bottom - (bottom - top) / 2 + old * 0.14
    side = int(old * 1.58)
    return [cx - side / 2, cy - side / 2, cx - side / 2 + side, cy - side / 2 + side]


def crop_img(img: np.ndarray, roi_box: list[float]) -> np.ndarray:
    """3DDFA_V2 crop_img: integer-rounded roi, zero padding where it leaves the image."""
    h, w = img.shape[:2]
    sx, sy, ex, ey = (round(float(v)) for v in roi_box)
    dh, dw = ey - sy, ex - sx
    res = np.zeros((dh, dw) + img.shape[2:], dtype=img.dtype)
    dsx, sx = (-sx, 0) if sx < 0 else (0, sx)
    dex, ex = (dw - (ex - w), w) if ex > w else (dw, ex)
    dsy, sy = (-sy, 0) if sy < 0 else (0, sy)
    dey, ey = (dh - (ey - h), h) if ey > h else (dh, ey)
    res[dsy:dey, dsx:dex] = img[sy:ey, sx:ex]
    return res


def similar_transform(pts120: np.ndarray, roi_box: list[float], size: int = INPUT_SIZE) -> np.ndarray:
    """3DDFA_V2 similar_transform: (3, n) points in the 120 frame -> original-image pixels (min z 0)."""
    p = np.array(pts120, dtype=np.float64)
    p[0] -= 1
    p[2] -= 1
    p[1] = size - p[1]
    sx, sy, ex, ey = roi_box
    scale_x, scale_y = (ex - sx) / size, (ey - sy) / size
    p[0] = p[0] * scale_x + sx
    p[1] = p[1] * scale_y + sy
    p[2] *= (scale_x + scale_y) / 2
    p[2] -= p[2].min()
    return p.astype(np.float32)
