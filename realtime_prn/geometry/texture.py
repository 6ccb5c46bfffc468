"""UV texture of a face: the image sampled through its position map, with visibility.

cv2.remap does the sampling; the z-buffer marks texels whose surface point is hidden
(the far cheek at large yaw) so editing and swapping never smear the occluder into them.
"""
from __future__ import annotations

import cv2
import numpy as np


def scaled_uv_map(pos: np.ndarray, size: int) -> np.ndarray:
    """A UV-space map (the position map) at size×size, float32 (bilinear; as is at its size)."""
    pos = np.asarray(pos, np.float32)
    if size == pos.shape[0]:
        return pos
    return cv2.resize(pos, (size, size), interpolation=cv2.INTER_LINEAR)


def uv_texture(image: np.ndarray, pos: np.ndarray, size: int = 256,
               interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Sample ``image`` at every UV texel's frame position (size×size×C, image's dtype)."""
    maps = scaled_uv_map(pos, size)
    return cv2.remap(image, maps[..., 0].copy(), maps[..., 1].copy(), interpolation,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def visible_texels(pos: np.ndarray, zbuf: np.ndarray, fmask: np.ndarray,
                   offset: tuple[int, int] = (0, 0), tolerance: float = 2.0) -> np.ndarray:
    """Texels on ``fmask`` that are the nearest surface at one of their 4 nearest pixels.

    Not the rounded pixel alone: on a surface seen at a grazing angle z changes by many
    units per pixel, so half a pixel of rounding would hide texels plainly in view. ``zbuf``
    is −inf (or 0) where empty and may be a crop placed at ``offset`` in frame pixels.
    """
    h, w = zbuf.shape
    x0 = np.floor(pos[..., 0]).astype(np.int64) - offset[0]
    y0 = np.floor(pos[..., 1]).astype(np.int64) - offset[1]
    inside = (x0 >= 0) & (x0 < w - 1) & (y0 >= 0) & (y0 < h - 1)
    xc, yc = np.clip(x0, 0, max(w - 2, 0)), np.clip(y0, 0, max(h - 2, 0))
    near = np.full(pos.shape[:2], np.inf, np.float32)
    for dy in (0, 1):
        for dx in (0, 1):
            z = zbuf[np.minimum(yc + dy, h - 1), np.minimum(xc + dx, w - 1)]
            near = np.minimum(near, np.where(np.isfinite(z) & (z != 0), z, np.inf))
    return fmask & inside & np.isfinite(near) & (pos[..., 2] >= near - tolerance)


def uv_visibility(pos: np.ndarray, face_mask: np.ndarray, zbuf: np.ndarray, size: int = 256,
                  tolerance: float = 2.0) -> np.ndarray:
    """size×size texels that lie on the face mask and are not hidden by the face itself."""
    maps = scaled_uv_map(pos, size)
    mask = face_mask if size == face_mask.shape[0] else cv2.resize(
        face_mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
    return visible_texels(maps, zbuf, mask, tolerance=tolerance)
