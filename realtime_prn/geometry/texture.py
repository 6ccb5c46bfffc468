"""UV texture of a face: the image sampled through its position map, with visibility.

cv2.remap does the sampling; the z-buffer marks texels whose surface point is hidden
(the far cheek at large yaw) so editing and swapping never smear the occluder into them.
"""
from __future__ import annotations

import cv2
import numpy as np

from .depth import depth_image


def _scaled_maps(pos: np.ndarray, size: int) -> np.ndarray:
    if size == pos.shape[0]:
        return pos
    return cv2.resize(pos, (size, size), interpolation=cv2.INTER_LINEAR)


def uv_texture(image: np.ndarray, pos: np.ndarray, size: int = 256,
               interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Sample ``image`` at every UV texel's frame position (size×size×C, image's dtype)."""
    maps = _scaled_maps(np.asarray(pos, np.float32), size)
    return cv2.remap(image, maps[..., 0].copy(), maps[..., 1].copy(), interpolation,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def uv_visibility(pos: np.ndarray, face_mask: np.ndarray, vertices: np.ndarray,
                  triangles: np.ndarray, image_shape: tuple[int, int], size: int = 256,
                  tolerance: float = 2.0, zbuf: np.ndarray | None = None) -> np.ndarray:
    """Texels that lie on the face mask and are the nearest surface at their pixel."""
    h, w = image_shape
    if zbuf is None:
        zbuf = depth_image(vertices, triangles, h, w)
    maps = _scaled_maps(np.asarray(pos, np.float32), size)
    mask = face_mask if size == face_mask.shape[0] else cv2.resize(
        face_mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
    x = np.round(maps[..., 0]).astype(np.int64)
    y = np.round(maps[..., 1]).astype(np.int64)
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    z = zbuf[np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)]
    return mask & inside & (z > 0) & (maps[..., 2] >= z - tolerance)
