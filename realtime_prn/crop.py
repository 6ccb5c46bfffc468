"""Box or landmarks → similarity transform → 256² crop, and the inverse for position maps.

Follows the official PRN ``api.py``: a detector box is enlarged to ``int(1.58 · old_size)``
about a centre moved down by ``0.14 · old_size``; 68 landmarks give ``int(1.6 · old_size)``
about their box centre (``old_size`` is the mean of width and height). The warp is cv2's
(bilinear, like skimage's ``warp`` the official code used) and z is divided by the crop
scale on the way back, so depth stays in frame pixels like x and y.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

RES = 256
BOX_SCALE = 1.58
BOX_SHIFT = 0.14
LANDMARK_SCALE = 1.6


@dataclass(frozen=True)
class CropRegion:
    """A square in frame pixels: centre and side (the official ``center`` and ``size``)."""

    cx: float
    cy: float
    size: float

    def matrix(self, res: int = RES) -> np.ndarray:
        """3×3 frame → crop similarity: the square's corners go to (0, 0) … (res−1, res−1)."""
        k = (res - 1) / self.size
        x0 = self.cx - self.size / 2
        y0 = self.cy - self.size / 2
        return np.array([[k, 0, -k * x0], [0, k, -k * y0], [0, 0, 1]], np.float64)


def region_from_box(box, scale: float = BOX_SCALE, shift: float = BOX_SHIFT) -> CropRegion:
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    old = (x1 - x0 + y1 - y0) / 2
    return CropRegion((x0 + x1) / 2, (y0 + y1) / 2 + old * shift, float(int(old * scale)))


def region_from_landmarks(points, scale: float = LANDMARK_SCALE) -> CropRegion:
    pts = np.asarray(points, np.float64)
    if pts.ndim != 2 or pts.shape[0] < 3:
        pts = pts.T
    left, top = pts[:, 0].min(), pts[:, 1].min()
    right, bottom = pts[:, 0].max(), pts[:, 1].max()
    old = (right - left + bottom - top) / 2
    return CropRegion((left + right) / 2, (top + bottom) / 2, float(int(old * scale)))


def crop_faces(image_bgr: np.ndarray, regions: list[CropRegion], res: int = RES):
    """Crops as the engine wants them: N×res×res×3 float32 RGB in [0, 1], plus N 3×3 transforms.

    Warping before the colour conversion and the float cast touches res² pixels per face
    instead of the whole frame.
    """
    batch = np.empty((len(regions), res, res, 3), np.float32)
    mats = np.empty((len(regions), 3, 3), np.float64)
    for i, region in enumerate(regions):
        m = region.matrix(res)
        crop = cv2.warpAffine(image_bgr, m[:2], (res, res), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        cv2.cvtColor(crop, cv2.COLOR_BGR2RGB, dst=crop)
        np.multiply(crop, np.float32(1 / 255), out=batch[i], casting="unsafe")
        mats[i] = m
    return batch, mats


def restore_position_maps(pos_crop: np.ndarray, mats: np.ndarray) -> np.ndarray:
    """Crop-pixel position maps → frame pixels (x, y by the inverse similarity, z / scale)."""
    pos_crop = np.asarray(pos_crop, np.float32)
    single = pos_crop.ndim == 3
    if single:
        pos_crop, mats = pos_crop[None], np.asarray(mats)[None]
    out = np.empty_like(pos_crop)
    for i in range(pos_crop.shape[0]):
        inv = np.linalg.inv(mats[i])
        a = inv[:2, :2].astype(np.float32)
        t = inv[:2, 2].astype(np.float32)
        xy = pos_crop[i, ..., :2]
        out[i, ..., :2] = xy @ a.T + t
        out[i, ..., 2] = pos_crop[i, ..., 2] / np.float32(mats[i][0, 0])
    return out[0] if single else out
