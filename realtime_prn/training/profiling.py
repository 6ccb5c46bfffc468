"""Face profiling in the spirit of 300W-LP (Zhu et al., CVPR 2016): turn the WHOLE image, not a pasted face.

Why: the first large-pose bank (:func:`augment.synthesise_yaw` with ``erase``) pasted a re-rendered
face over a blurred halo of the original one. On such faces the network learnt to be nearly as good
as on real frontal ones, yet it stayed at ~10 % NME on AFLW2000-3D's real profiles -- the pasted
face has no head around it: no cheek-to-hair edge, no ear, no silhouette against the background.
300W-LP instead gives every pixel of the image a depth and rotates the image as one mesh, so the
head, hair and neck move along with the face and the turned face keeps a real outline.

Here, per pixel of the image:

* on the face (the z-buffer of the label's position map), the exact 3D point, turned by ``R`` about
  the face centre -- so image and label agree exactly where the face is visible;
* elsewhere, the displacement (dx, dy) and the new depth are a *harmonic* (Laplace) interpolation
  between the face and the image border, where the displacement is 0 and the depth is behind the
  head. The head around the face therefore follows it, smoothly less with distance, and the far
  border stays put. This is our choice; 300W-LP fits anchors with a depth to the head and the
  background, which needs annotations we do not have.

The image is then rendered as one pixel-grid mesh with a z-buffer (the numba rasteriser), so the
far side of the face slides behind the nose and cheek, and the near side's hair and ear stretch
into view. Known artefacts, as in 300W-LP: what the source never showed (the far ear, background
behind the head) is a stretch of its neighbours.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

#: Step (pixels) of the coarse grid on which the harmonic field is solved.
FIELD_STEP = 4


@lru_cache(maxsize=4)
def pixel_grid_triangles(h: int, w: int) -> np.ndarray:
    """(2 (h-1)(w-1), 3) int32 triangles over the row-major pixel grid of an h x w image."""
    i = np.arange(h * w, dtype=np.int32).reshape(h, w)
    a, b, c, d = i[:-1, :-1].ravel(), i[:-1, 1:].ravel(), i[1:, :-1].ravel(), i[1:, 1:].ravel()
    return np.ascontiguousarray(np.concatenate([np.stack([a, b, c], 1), np.stack([b, d, c], 1)]))


def harmonic_fill(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """(h, w, C) field equal to ``values`` where ``known`` and harmonic (discrete Laplace) elsewhere.

    A sparse direct solve: the coarse grid has a few thousand unknowns, so one LU serves all channels.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import splu

    h, w = known.shape
    vals = values.reshape(h * w, -1).astype(np.float64)
    unk = np.flatnonzero(~known.reshape(-1))
    out = vals.copy()
    if len(unk) == 0:
        return out.reshape(values.shape)
    pos = np.full(h * w, -1, np.int64)
    pos[unk] = np.arange(len(unk))
    y, x = np.divmod(unk, w)
    rows, cols, data = [np.arange(len(unk))], [np.arange(len(unk))], [np.zeros(len(unk))]
    rhs = np.zeros((len(unk), vals.shape[1]))
    deg = np.zeros(len(unk))
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        ny, nx = y + dy, x + dx
        ok = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        deg += ok
        nb = ny[ok] * w + nx[ok]
        me = np.flatnonzero(ok)
        free = pos[nb] >= 0
        rows.append(me[free])
        cols.append(pos[nb[free]])
        data.append(-np.ones(free.sum()))
        np.add.at(rhs, me[~free], vals[nb[~free]])
    data[0] = deg
    a = coo_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(len(unk), len(unk))).tocsc()
    out[unk] = splu(a).solve(rhs)
    return out.reshape(values.shape)


def turn_whole_image(image: np.ndarray, posmap: np.ndarray, covered: np.ndarray, triangles: np.ndarray,
                     rotation: np.ndarray, step: int = FIELD_STEP) -> tuple[np.ndarray, np.ndarray]:
    """The image re-rendered with its face turned by ``rotation`` (3x3) about the face centre.

    ``posmap`` is the face's position map in ``image``'s pixel frame (x right, y down, z toward the
    camera), ``triangles`` index ``np.flatnonzero(covered)``. Returns (image, turned position map);
    the map is ``R (p - c) + c`` over the covered pixels with z shifted to min 0 again, the same
    turn :func:`augment.turned_camera` applies to a camera. Any dtype / channel count of ``image``
    is kept.
    """
    from realtime_prn.geometry.depth import render_values
    from realtime_prn.training.augment import turn_posmap

    h, w = image.shape[:2]
    _, pts, centre, out_pos = turn_posmap(posmap, covered, rotation)
    # which pixels show the face, at what depth (the visible surface only)
    _, zbuf = render_values(pts.astype(np.float32), triangles, np.zeros((len(pts), 1), np.float32), h, w)
    face = np.isfinite(zbuf)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    p = np.stack([xx, yy, np.where(face, zbuf, 0.0)], axis=-1)
    turned = (p - centre) @ rotation.T + centre
    # field = (dx, dy, new z): exact on the face; on the coarse grid, harmonic between it and the border
    field = np.concatenate([turned[..., :2] - p[..., :2], turned[..., 2:]], axis=-1)
    z_far = turned[face, 2].min() - 0.5 * np.ptp(pts[:, 0]) if face.any() else 0.0
    gh, gw = -(-h // step) + 1, -(-w // step) + 1
    known = np.zeros((gh, gw), bool)
    vals = np.zeros((gh, gw, 3))
    vals[..., 2] = z_far
    known[[0, -1], :] = True
    known[:, [0, -1]] = True
    # a coarse node is on the face when the pixel under it is (nodes at multiples of step)
    gy, gx = np.mgrid[0:gh, 0:gw] * step
    inside = (gy < h) & (gx < w)
    node_face = np.zeros_like(known)
    node_face[inside] = face[gy[inside], gx[inside]]
    node_face &= ~known
    vals[node_face] = field[gy[node_face], gx[node_face]]
    known |= node_face
    coarse = harmonic_fill(vals, known).astype(np.float32)
    # node (i, j) sits at pixel (i*step, j*step): a corner-aligned bilinear upsampling
    mx = (np.arange(w, dtype=np.float32) / step)[None].repeat(h, 0)
    my = (np.arange(h, dtype=np.float32) / step)[:, None].repeat(w, 1)
    dense = cv2.remap(coarse, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    dense = np.where(face[..., None], field, dense)
    verts = np.stack([xx + dense[..., 0], yy + dense[..., 1], dense[..., 2]], axis=-1).reshape(-1, 3)
    src = image.reshape(h * w, -1).astype(np.float32)
    img, depth = render_values(verts.astype(np.float32), pixel_grid_triangles(h, w), src, h, w)
    drawn = np.isfinite(depth)
    out = np.where(drawn[..., None], img, src.reshape(h, w, -1))
    if np.issubdtype(image.dtype, np.integer):
        out = np.clip(out + 0.5, np.iinfo(image.dtype).min, np.iinfo(image.dtype).max)
    return out.astype(image.dtype).reshape(image.shape), out_pos
