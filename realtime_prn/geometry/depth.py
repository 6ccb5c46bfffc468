"""Z-buffer rasterisation of the face mesh in numba: depth image and visibility.

A per-triangle scan over its bounding box with barycentric interpolation; the nearest
surface (largest z, since z points toward the camera) wins. This is the one hot loop
no library here provides for arbitrary meshes on the CPU without an OpenGL context.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def _rasterise(vertices, triangles, values, depth, out, height, width):
    for t in range(triangles.shape[0]):
        i0 = triangles[t, 0]
        i1 = triangles[t, 1]
        i2 = triangles[t, 2]
        x0 = vertices[i0, 0]
        y0 = vertices[i0, 1]
        x1 = vertices[i1, 0]
        y1 = vertices[i1, 1]
        x2 = vertices[i2, 0]
        y2 = vertices[i2, 1]
        xmin = max(int(np.ceil(min(x0, min(x1, x2)))), 0)
        xmax = min(int(np.floor(max(x0, max(x1, x2)))), width - 1)
        ymin = max(int(np.ceil(min(y0, min(y1, y2)))), 0)
        ymax = min(int(np.floor(max(y0, max(y1, y2)))), height - 1)
        if xmax < xmin or ymax < ymin:
            continue
        den = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
        if abs(den) < 1e-12:
            continue
        inv = 1.0 / den
        for y in range(ymin, ymax + 1):
            for x in range(xmin, xmax + 1):
                w0 = ((y1 - y2) * (x - x2) + (x2 - x1) * (y - y2)) * inv
                w1 = ((y2 - y0) * (x - x2) + (x0 - x2) * (y - y2)) * inv
                w2 = 1.0 - w0 - w1
                if w0 < -1e-6 or w1 < -1e-6 or w2 < -1e-6:
                    continue
                z = w0 * vertices[i0, 2] + w1 * vertices[i1, 2] + w2 * vertices[i2, 2]
                if z > depth[y, x]:
                    depth[y, x] = z
                    for c in range(values.shape[1]):
                        out[y, x, c] = (w0 * values[i0, c] + w1 * values[i1, c]
                                        + w2 * values[i2, c])


def render_values(vertices: np.ndarray, triangles: np.ndarray, values: np.ndarray,
                  height: int, width: int, depth: np.ndarray | None = None):
    """Interpolate per-vertex ``values`` (N×C) over the visible surface.

    Returns (image H×W×C float32, depth H×W float32 with −inf where nothing is drawn).
    Pass ``depth`` to composite several faces into one buffer.
    """
    v = np.ascontiguousarray(vertices, np.float32)
    vals = np.ascontiguousarray(values, np.float32)
    if vals.ndim == 1:
        vals = vals[:, None]
    if depth is None:
        depth = np.full((height, width), -np.inf, np.float32)
    out = np.zeros((height, width, vals.shape[1]), np.float32)
    _rasterise(v, np.ascontiguousarray(triangles, np.int32), vals, depth, out, height, width)
    return out, depth


def depth_image(vertices: np.ndarray, triangles: np.ndarray, height: int, width: int,
                depth: np.ndarray | None = None) -> np.ndarray:
    """The z-buffer itself: z in frame pixels where the face is, 0 elsewhere."""
    _, zbuf = render_values(vertices, triangles, np.zeros((len(vertices), 1), np.float32),
                            height, width, depth)
    return np.where(np.isfinite(zbuf), zbuf, 0).astype(np.float32)


def visible_vertices(vertices: np.ndarray, zbuf: np.ndarray, tolerance: float = 1.5) -> np.ndarray:
    """A vertex is visible when it is within ``tolerance`` px of the z-buffer at its pixel."""
    h, w = zbuf.shape
    x = np.clip(np.round(vertices[:, 0]).astype(np.int64), 0, w - 1)
    y = np.clip(np.round(vertices[:, 1]).astype(np.int64), 0, h - 1)
    inside = ((vertices[:, 0] >= 0) & (vertices[:, 0] <= w - 1)
              & (vertices[:, 1] >= 0) & (vertices[:, 1] <= h - 1))
    z = zbuf[y, x]
    return inside & np.isfinite(z) & (vertices[:, 2] >= z - tolerance)
