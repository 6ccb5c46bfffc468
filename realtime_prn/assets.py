"""PRN's UV data: which position-map pixels are face vertices, where the 68 landmarks sit,
the canonical mean face used for pose, and a triangulation.

PRN's own ``triangles.txt`` is not available (PRNet issues #183/#193/#209 never say how it was
made), so the triangles here are a grid triangulation over the UV face mask: every 2×2 block
of mask pixels gives up to two triangles (one when only three of its pixels are face). Indices
refer to the 43,867 ``face_ind`` vertices, as the official file's do. This is a project
decision, not the official mesh.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from .paths import data_file

RES = 256


@dataclass(frozen=True)
class UVAssets:
    face_ind: np.ndarray          # (43867,) int64 indices into the flattened 256×256 map
    kpt_ind: np.ndarray           # (2, 68) int: row 0 x (column), row 1 y (row)
    canonical_vertices: np.ndarray  # (43867, 3) float64 mean face, PRN's pose reference
    face_mask: np.ndarray         # (256, 256) bool
    triangles: np.ndarray         # (T, 3) int32 into face_ind vertices
    weight_mask: np.ndarray       # (256, 256) float32 training weights in [0, 1]

    @property
    def kpt_flat(self) -> np.ndarray:
        """Flattened map index of each landmark, so landmarks are a single gather."""
        return (self.kpt_ind[1] * RES + self.kpt_ind[0]).astype(np.int64)

    @property
    def n_vertices(self) -> int:
        return int(self.face_ind.size)


def grid_triangles(mask: np.ndarray) -> np.ndarray:
    """Triangulate mask pixels on the pixel grid; indices into ``flatnonzero(mask)``.

    Each 2×2 block with all four pixels in the mask gives two triangles split along the
    same diagonal everywhere; blocks with exactly three give the one triangle they hold.
    Winding is counter-clockwise in image coordinates seen from the camera (x right, y down,
    so the face normal points toward the viewer once y is flipped for a mesh file).
    """
    h, w = mask.shape
    index = -np.ones((h, w), np.int64)
    flat = np.flatnonzero(mask.reshape(-1))
    index.reshape(-1)[flat] = np.arange(flat.size)
    a = index[:-1, :-1]   # top-left
    b = index[:-1, 1:]    # top-right
    c = index[1:, :-1]    # bottom-left
    d = index[1:, 1:]     # bottom-right
    tris = []
    full = (a >= 0) & (b >= 0) & (c >= 0) & (d >= 0)
    tris.append(np.stack([a[full], c[full], b[full]], 1))
    tris.append(np.stack([b[full], c[full], d[full]], 1))
    # Blocks with exactly three pixels: one triangle from the three present corners.
    present = (a >= 0).astype(int) + (b >= 0) + (c >= 0) + (d >= 0)
    three = present == 3
    for miss, (p, q, r) in (
        (a < 0, (c, d, b)), (b < 0, (a, c, d)), (c < 0, (a, d, b)), (d < 0, (a, c, b)),
    ):
        sel = three & miss
        tris.append(np.stack([p[sel], q[sel], r[sel]], 1))
    return np.concatenate(tris).astype(np.int32)


def _read_gray(path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ValueError(f"cannot read {path}")
    return img


@lru_cache(maxsize=4)
def load_assets(data_root: str | os.PathLike | None = None) -> UVAssets:
    """Load once per data root; everything downstream shares these read-only arrays."""
    face_ind = np.loadtxt(data_file("prn", "face_ind.txt", override=data_root)).astype(np.int64)
    kpt_ind = np.loadtxt(data_file("prn", "uv_kpt_ind.txt", override=data_root)).astype(np.int64)
    canonical = np.load(data_file("prn", "canonical_vertices.npy", override=data_root))
    mask = _read_gray(data_file("prn", "uv_face_mask.png", override=data_root)) > 0
    weight = _read_gray(data_file("prn", "uv_weight_mask.png", override=data_root))
    if not np.array_equal(np.flatnonzero(mask.reshape(-1)), face_ind):
        raise ValueError("uv_face_mask.png and face_ind.txt disagree: the uv-data is not PRN's")
    for arr in (face_ind, kpt_ind, canonical):
        arr.setflags(write=False)
    return UVAssets(
        face_ind=face_ind,
        kpt_ind=kpt_ind,
        canonical_vertices=canonical,
        face_mask=mask,
        triangles=grid_triangles(mask),
        weight_mask=(weight.astype(np.float32) / 255.0),
    )
