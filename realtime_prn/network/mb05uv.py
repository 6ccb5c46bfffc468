"""``mb05uv``: 3DDFA_V2's mb05 regressor + a dense UV decoder, with exactly PRN's input and output.

What it is: a port of 3DDFA_V2's ``mb05_120x120`` weights (cleardusk/3DDFA_V2, MIT repo; the
weights were trained on 300W-LP, non-commercial data) composed with a fixed dense BFM basis laid
out in PRN's UV space (:mod:`realtime_prn.network.uv_basis`). It is **not** the official PRN
network or weights (those are unavailable) and it was **not** trained by this project.

Why it exists: it gives the project an offline default model that is a drop-in PRN: it takes a
256x256 PRN crop and returns a 256x256x3 position map, so every downstream stage (landmarks, pose,
mesh, rendering, engines) runs unchanged.

Graph (all inside one Keras model, tf2onnx-friendly at opset 17):

1. input N x 256 x 256 x 3 float32 RGB in [0, 1] (PRN's crop);
2. bilinear resize to 120x120 with half-pixel centres (what ``cv2.resize`` INTER_LINEAR does when
   shrinking; no antialiasing), x255, (x - 127.5) / 128; RGB -> BGR is folded into conv1's
   weights (the teacher was trained on BGR);
3. the mb05 backbone -> 62 params, de-normalised (out * std + mean);
4. dense BFM points = mean + basis @ [alpha_shp; alpha_exp] on every UV pixel;
5. the 3x4 camera, then 3DDFA_V2's ``similar_transform`` in the 120 frame (x -= 1, z -= 1,
   y = 120 - y), scaled by 256/120 into the 256-crop frame (x, y and z alike);
6. z -= min z over the covered pixels; uncovered pixels are 0.

The output is PRN's convention: N x 256 x 256 x 3 position map in 256-crop pixels, z toward the
camera, so ``api.py``-style code maps it back with the inverse crop transform.
"""

from __future__ import annotations

import os

import numpy as np

from realtime_prn.network.mb05 import (
    INPUT_SIZE,
    build_mb05_model,
    load_param_stats,
    mb05_backbone,
)
from realtime_prn.network.mb05 import load_state_dict as _load_sd
from realtime_prn.network.uv_basis import RES, UVBasis, load_uv_basis

NAME = "mb05uv"
CROP = RES  # 256: PRN's input and output resolution
SCALE_120_TO_CROP = CROP / INPUT_SIZE


def similar_transform_crop(pts120: np.ndarray) -> np.ndarray:
    """3DDFA_V2's similar_transform for a roi of [0, 0, 256, 256], without the min-z shift.

    ``pts120`` is (..., 3) in the network's 120 frame; the result is in 256-crop pixels.
    """
    k = SCALE_120_TO_CROP
    out = np.empty_like(pts120)
    out[..., 0] = (pts120[..., 0] - 1.0) * k
    out[..., 1] = (INPUT_SIZE - pts120[..., 1]) * k
    out[..., 2] = (pts120[..., 2] - 1.0) * k
    return out


def camera(params: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply the de-normalised 3x4 camera (row-major first 12 params) to BFM points (N, ..., 3)."""
    p = np.asarray(params, np.float64).reshape(-1, 62)
    r = p[:, :12].reshape(-1, 3, 4)
    shape = pts.shape
    flat = pts.reshape(len(p), -1, 3)
    return (np.einsum("nij,npj->npi", r[:, :, :3], flat) + r[:, None, :, 3]).reshape(shape)


def params_to_posmap_np(params: np.ndarray, ub: UVBasis) -> np.ndarray:
    """Numpy reference of the decoder: de-normalised params (N, 62) -> (N, 256, 256, 3) maps.

    Kept beside the graph so tests can check the TF/ONNX decoder against plain arithmetic.
    """
    p = np.asarray(params, np.float64).reshape(-1, 62)
    verts = ub.mean.astype(np.float64) + np.einsum("yxcj,nj->nyxc", ub.basis.astype(np.float64), p[:, 12:])
    pos = similar_transform_crop(camera(p, verts))
    zmin = np.where(ub.covered, pos[..., 2], np.inf).min(axis=(1, 2))
    pos[..., 2] -= zmin[:, None, None]
    pos *= ub.covered[None, :, :, None]
    return pos.astype(np.float32)


def sparse_landmarks_crop(
    params: np.ndarray, u_base: np.ndarray, w_shp: np.ndarray, w_exp: np.ndarray
) -> np.ndarray:
    """The teacher's own 68 landmarks for de-normalised params, in 256-crop pixels (no z shift)."""
    p = np.asarray(params, np.float64).reshape(-1, 62)
    v = u_base + np.einsum("kcj,nj->nkc", w_shp, p[:, 12:52]) + np.einsum("kcj,nj->nkc", w_exp, p[:, 52:])
    return similar_transform_crop(camera(p, v))


def landmarks_from_posmap(pos: np.ndarray, kpt_ind: np.ndarray) -> np.ndarray:
    """PRN's landmark read-out: ``pos[ind[1], ind[0]]`` -> (..., 68, 3)."""
    return pos[..., kpt_ind[1], kpt_ind[0], :]


def _keras_layers() -> tuple[type, type]:
    """Custom layers, defined lazily so that importing this module does not import TensorFlow."""
    import keras
    import tensorflow as tf

    class PRNCropToTeacherInput(keras.layers.Layer):
        """RGB [0,1] 256 crop -> 3DDFA_V2's normalised 120 input (still RGB: conv1 is permuted)."""

        def call(self, x: tf.Tensor) -> tf.Tensor:
            x = tf.image.resize(x, (INPUT_SIZE, INPUT_SIZE), method="bilinear", antialias=False)
            return x * (255.0 / 128.0) - (127.5 / 128.0)

        def compute_output_shape(self, input_shape: tuple) -> tuple:
            return (input_shape[0], INPUT_SIZE, INPUT_SIZE, 3)

    class UVDecoder(keras.layers.Layer):
        """Normalised 62 params -> PRN position map (see the module docstring, steps 3-6).

        Layout for speed: the camera and similar_transform are folded into the coefficients, so the
        whole map is one matmul ``(N, 3, 154) @ (154, 65536)`` against a constant whose rows are,
        per axis d, [mean_d, basis_d (50)] and finally the covered mask (which carries the
        offset, so uncovered pixels come out exactly 0). The result is channel-major, so the
        per-pixel ops (the masked z min and the z shift) run over contiguous memory; one transpose
        makes it NHWC. On 2 CPU cores this is ~1.5-2x faster in ONNX Runtime than the
        straightforward interleaved (N, 65536, 3) formulation, whose broadcasts over a last axis
        of 3 are slow.
        """

        def __init__(self, ub: UVBasis, p_mean: np.ndarray, p_std: np.ndarray,
                     frame: str = "teacher120", **kw: object) -> None:
            super().__init__(**kw)
            n = RES * RES
            nb = ub.basis.shape[-1] + 1  # mean + components
            mean = ub.mean.reshape(n, 3)
            basis = ub.basis.reshape(n, 3, -1)
            rows = np.zeros((3 * nb + 1, n), np.float32)
            for d in range(3):
                rows[d * nb] = mean[:, d]
                rows[d * nb + 1 : (d + 1) * nb] = basis[:, d, :].T
            rows[-1] = ub.covered.reshape(n)
            self._nb = nb
            self._rows = tf.constant(rows)  # (154, n)
            self._cov = tf.constant(ub.covered.reshape(1, 1, n).astype(np.float32))
            self._zmask = tf.constant(((1.0 - ub.covered.reshape(1, 1, n)) * 1e9).astype(np.float32))
            self._p_mean = tf.constant(p_mean.reshape(1, 62), tf.float32)
            self._p_std = tf.constant(p_std.reshape(1, 62), tf.float32)
            k = SCALE_120_TO_CROP
            if frame == "teacher120":
                # similar_transform in the 120 frame, scaled to 256: x' = k(x-1), y' = k(120-y), z' = k(z-1)
                sign, shift = [k, -k, k], [-k, INPUT_SIZE * k, -k]
            elif frame == "crop":  # the 3x4 camera already maps BFM points to 256-crop pixels
                sign, shift = [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]
            else:
                raise ValueError(f"unknown camera frame {frame!r}")
            self._sign = tf.constant(np.reshape(sign, (1, 3, 1)), tf.float32)
            self._shift = tf.constant(np.reshape(shift, (1, 3, 1)), tf.float32)

        def call(self, params_norm: tf.Tensor) -> tf.Tensor:
            p = params_norm * self._p_std + self._p_mean
            cam = tf.reshape(p[:, :12], (-1, 3, 4))
            a = cam[:, :, :3] * self._sign  # (N, 3, 3)
            b = cam[:, :, 3:] * self._sign + self._shift  # (N, 3, 1)
            alpha = tf.concat([tf.ones_like(p[:, :1]), p[:, 12:]], axis=1)  # (N, 51): [1, shp, exp]
            coef = tf.reshape(a[:, :, :, None] * alpha[:, None, None, :], (-1, 3, 3 * self._nb))
            pos = tf.matmul(tf.concat([coef, b], axis=2), self._rows)  # (N, 3, n)
            z = pos[:, 2:]
            zmin = tf.reduce_min(z + self._zmask, axis=2, keepdims=True)  # (N, 1, 1)
            pos = tf.concat([pos[:, :2], z - zmin * self._cov], axis=1)  # uncovered z stays 0
            return tf.reshape(tf.transpose(pos, (0, 2, 1)), (-1, RES, RES, 3))

        def compute_output_shape(self, input_shape: tuple) -> tuple:
            return (input_shape[0], RES, RES, 3)

    return PRNCropToTeacherInput, UVDecoder


def build_mb05uv_model(data_root: str | os.PathLike | None = None) -> object:
    """The PRN-compatible Keras model: N x 256 x 256 x 3 RGB [0,1] -> N x 256 x 256 x 3 position map."""
    import keras

    pre_cls, dec_cls = _keras_layers()
    ub = load_uv_basis(data_root)
    p_mean, p_std = load_param_stats(data_root)
    inp = keras.Input((CROP, CROP, 3), name="image", dtype="float32")
    x = pre_cls(name="to_teacher_input")(inp)
    params = mb05_backbone(x, _load_sd(data_root), rgb_input=True)
    pos = dec_cls(ub, p_mean, p_std, name="posmap")(params)
    return keras.Model(inp, pos, name=NAME)


__all__ = [
    "NAME",
    "build_mb05_model",
    "build_mb05uv_model",
    "camera",
    "landmarks_from_posmap",
    "params_to_posmap_np",
    "similar_transform_crop",
    "sparse_landmarks_crop",
]
