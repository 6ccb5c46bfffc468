"""3DDFA's BFM basis (mean + 40 shape + 10 expression) resampled onto PRN's 256x256 UV grid.

Why: the official PRN weights are unavailable, so the project's offline default network decodes
3DDFA_V2's 62 parameters into a PRN-style position map. That needs the BFM mean and basis at every
position-map pixel, laid out exactly like PRN's UV space (``uv_kpt_ind``, ``face_ind``). The dense
3DDFA basis (``bfm_noneck_v3.pkl``, ``w_shp_sim.npy``) is not obtainable, so this module rebuilds a
dense one from the staged pieces, following ``shared/train/TEACHER.md`` section 2:

* mean: PRN's ``canonical_vertices`` mapped back to BFM units on the ``face_ind`` pixels (they are
  PRN's own mean face, ``1.2e-3 * diag(1, -1, 1) @ bfm + offset``), and elsewhere the BFM mean
  (``u_shp + u_exp``) interpolated linearly in UV from the 53215 vertices;
* shape (40): Model_PAF's ``w_filter`` anchors placed at the UV of their nearest BFM vertex,
  Delaunay-linear in UV, inverse-distance (4 nearest anchors) outside the anchors' hull;
* expression (10): a thin-plate spline over the 68 keypoint UV positions with ``w_exp_base``
  values, pinned to zero on the top (forehead) and bottom (neck) rows. This part is an
  assumption: no dense expression basis exists on disk (Model_PAF's ``w_exp_filter`` is a copy of
  the shape basis), so it is exact at the 68 points and a smooth guess in between.

Everything is in BFM units with the xyz interleaving of the 3DDFA vectors resolved: ``mean[v, u]``
is a point and ``basis[v, u, :, k]`` its displacement per unit of parameter k (0..39 shape,
40..49 expression). The result is cached in ``engines_dir()/uv_basis.npz`` keyed by the sha256 of
the input files and of :data:`BUILD_VERSION`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from realtime_prn.paths import data_file, engines_dir

#: Bump when the construction changes, so that cached bases are rebuilt.
BUILD_VERSION = "uv_basis/1"
RES = 256
N_SHP = 40
N_EXP = 10
#: PRN mean face = CANON_SCALE * bfm + offset (TEACHER.md; the offset is refitted at build time).
CANON_SCALE = np.array([1.2e-3, -1.2e-3, 1.2e-3])
#: Model_PAF anchors farther than this from every BFM vertex are off the mesh (BFM units).
ANCHOR_MAX_DIST = 1500.0
#: A UV pixel is "covered" when a BFM vertex lies within this many pixels (plus all of face_ind).
COVER_RADIUS_PX = 1.5
#: Zero-displacement TPS control points: rows above / below these y limits, every 8th covered column.
EXP_ZERO_TOP_Y = 12
EXP_ZERO_BOTTOM_Y = 247

_INPUTS: dict[str, tuple[str, ...]] = {
    "uv": ("train", "tddfa_v2", "BFM_UV.mat"),
    "u_shp": ("train", "bfm_3ddfa", "u_shp.npy"),
    "u_exp": ("train", "bfm_3ddfa", "u_exp.npy"),
    "paf": ("train", "bfm_3ddfa", "Model_PAF.pkl"),
    "kpt_sim": ("train", "bfm_3ddfa", "keypoints_sim.npy"),
    "w_shp_base": ("train", "tddfa_v2_sparse68", "w_shp_base.npy"),
    "w_exp_base": ("train", "tddfa_v2_sparse68", "w_exp_base.npy"),
    "canonical": ("prn", "canonical_vertices.npy"),
    "face_ind": ("prn", "face_ind.txt"),
    "uv_kpt_ind": ("prn", "uv_kpt_ind.txt"),
}


@dataclass
class UVBasis:
    """Dense BFM basis on PRN's UV grid (BFM units, y up as in the BFM frame)."""

    mean: np.ndarray  # (256, 256, 3) float32
    basis: np.ndarray  # (256, 256, 3, 50) float32: 40 shape then 10 expression components
    covered: np.ndarray  # (256, 256) bool: pixels the BFM mesh reaches; others stay 0 in maps
    info: dict = field(default_factory=dict)  # build diagnostics (fits, counts); not cached


@dataclass
class Sparse68:
    """3DDFA_V2's sparse 68-point model: the reference the dense basis must agree with."""

    u_base: np.ndarray  # (68, 3) float32 mean landmarks, BFM units
    w_shp: np.ndarray  # (68, 3, 40) float32
    w_exp: np.ndarray  # (68, 3, 10) float32
    vertex: np.ndarray  # (68,) int: BFM vertex index of each landmark


def _path(key: str, root: str | os.PathLike | None) -> Path:
    return data_file(*_INPUTS[key], override=root)


def _deinterleave(vec: np.ndarray) -> np.ndarray:
    """3DDFA vectors are xyz interleaved per vertex: (3V, ...) -> (V, 3, ...)."""
    return vec.reshape(-1, 3, *vec.shape[1:])


def source_hash(data_root: str | os.PathLike | None = None) -> str:
    """sha256 over the build version and every input file, so the cache follows the data."""
    h = hashlib.sha256(BUILD_VERSION.encode())
    for key in sorted(_INPUTS):
        h.update(key.encode())
        h.update(_path(key, data_root).read_bytes())
    return h.hexdigest()


def uv_kpt_ind(data_root: str | os.PathLike | None = None) -> np.ndarray:
    """PRN's 68 landmark pixels as (2, 68) int: row 0 = column (x), row 1 = row (y)."""
    return np.loadtxt(_path("uv_kpt_ind", data_root)).astype(np.int64)


def face_ind(data_root: str | os.PathLike | None = None) -> np.ndarray:
    """PRN's 43867 face pixels as indices into the flattened 256x256 map."""
    return np.loadtxt(_path("face_ind", data_root)).astype(np.int64)


def load_sparse68(data_root: str | os.PathLike | None = None) -> Sparse68:
    """The teacher's own 68-point bases (tappas copies of 3DDFA_V2's w_shp_base / w_exp_base)."""
    kpt = np.load(_path("kpt_sim", data_root))
    u = (np.load(_path("u_shp", data_root)) + np.load(_path("u_exp", data_root)))[:, 0]
    return Sparse68(
        u_base=_deinterleave(u[kpt]).astype(np.float32),
        w_shp=_deinterleave(np.load(_path("w_shp_base", data_root))).astype(np.float32),
        w_exp=_deinterleave(np.load(_path("w_exp_base", data_root))).astype(np.float32),
        vertex=kpt[0::3] // 3,
    )


def _idw(src_xy: np.ndarray, src_val: np.ndarray, dst_xy: np.ndarray, k: int = 4) -> np.ndarray:
    """Inverse-distance weighting over the k nearest sources (the fallback outside hulls)."""
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(src_xy).query(dst_xy, k=k)
    w = 1.0 / np.maximum(dist, 1e-6) ** 2
    w /= w.sum(axis=1, keepdims=True)
    return np.einsum("nk,nk...->n...", w, src_val[idx])


def _linear_uv(
    tri: object, src_val: np.ndarray, src_xy: np.ndarray, dst_xy: np.ndarray
) -> tuple[np.ndarray, int]:
    """Barycentric interpolation on a Delaunay triangulation, IDW-4 where it is undefined."""
    from scipy.interpolate import LinearNDInterpolator

    flat = src_val.reshape(len(src_val), -1)
    out = LinearNDInterpolator(tri, flat)(dst_xy)
    bad = np.isnan(out).any(axis=1)
    if bad.any():
        out[bad] = _idw(src_xy, flat, dst_xy[bad])
    return out.reshape(len(dst_xy), *src_val.shape[1:]), int(bad.sum())


def build_uv_basis(data_root: str | os.PathLike | None = None) -> UVBasis:
    """Build the basis from the staged files (about 1-2 s); see the module docstring for the recipe."""
    import scipy.io
    from scipy.interpolate import RBFInterpolator
    from scipy.spatial import Delaunay, cKDTree

    info: dict = {}
    uv = scipy.io.loadmat(_path("uv", data_root))["UV"].astype(np.float64)
    vert_px = np.stack([(RES - 1) * uv[:, 0], (RES - 1) * (1.0 - uv[:, 1])], axis=1)  # (V, 2) x, y
    u_mean = _deinterleave(
        (np.load(_path("u_shp", data_root)) + np.load(_path("u_exp", data_root)))[:, 0]
    ).astype(np.float64)  # (V, 3)

    fi = face_ind(data_root)
    yy, xx = np.mgrid[0:RES, 0:RES]
    grid = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float64)  # flat index = y*RES + x

    # Covered pixels: within COVER_RADIUS_PX of a vertex in UV, plus every face_ind pixel.
    near, _ = cKDTree(vert_px).query(grid, k=1)
    covered = near < COVER_RADIUS_PX
    covered[fi] = True
    cov_idx = np.flatnonzero(covered)
    cov_xy = grid[cov_idx]
    info["covered"] = int(covered.sum())

    # Mean: BFM mean linear in UV, then PRN's canonical vertices (mapped back) on face_ind.
    vtri = Delaunay(vert_px)
    mean_cov, n_fb = _linear_uv(vtri, u_mean, vert_px, cov_xy)
    info["mean_idw_fallback_px"] = n_fb
    mean = np.zeros((RES * RES, 3))
    mean[cov_idx] = mean_cov
    canon = np.load(_path("canonical", data_root)).astype(np.float64)
    offset = np.mean(canon - CANON_SCALE * mean[fi], axis=0)
    resid = np.linalg.norm(canon - (CANON_SCALE * mean[fi] + offset), axis=1)
    info["canonical_offset"] = offset.tolist()
    info["canonical_resid_px"] = {
        "median": float(np.median(resid)),
        "p95": float(np.percentile(resid, 95)),
        "max": float(resid.max()),
    }
    mean[fi] = (canon - offset) / CANON_SCALE

    # Shape: Model_PAF anchors at the UV of their nearest BFM vertex.
    with open(_path("paf", data_root), "rb") as fh:
        paf = pickle.load(fh)
    anchors = _deinterleave(paf["mu_filter"][:, 0]).astype(np.float64)  # (4096, 3)
    w_anchor = _deinterleave(paf["w_filter"]).astype(np.float64)  # (4096, 3, 40)
    dist, vid = cKDTree(u_mean).query(anchors, k=1)
    on = dist < ANCHOR_MAX_DIST
    info["anchors_on_mesh"] = int(on.sum())
    # Several anchors can share a vertex: average them so the triangulation has unique sites.
    uniq, inv = np.unique(vid[on], return_inverse=True)
    w_site = np.zeros((len(uniq), 3, N_SHP))
    np.add.at(w_site, inv, w_anchor[on])
    w_site /= np.bincount(inv)[:, None, None]
    site_xy = vert_px[uniq]
    shp_cov, n_fb = _linear_uv(Delaunay(site_xy), w_site, site_xy, cov_xy)
    info["shape_idw_fallback_px"] = n_fb

    # Expression: thin-plate spline through the 68 keypoint vertices' UV, zero on top/bottom rows.
    sp = load_sparse68(data_root)
    kpt_xy = vert_px[sp.vertex]
    top_bottom = (
        ((cov_xy[:, 1] < EXP_ZERO_TOP_Y) | (cov_xy[:, 1] > EXP_ZERO_BOTTOM_Y))
        & (cov_xy[:, 0] % 8 == 0)
        & (cov_xy[:, 1] % 4 == 0)
    )
    zero_xy = cov_xy[top_bottom]
    info["exp_zero_controls"] = len(zero_xy)
    ctrl_xy = np.concatenate([kpt_xy, zero_xy])
    ctrl_val = np.concatenate([sp.w_exp.reshape(68, -1), np.zeros((len(zero_xy), 3 * N_EXP))]).astype(
        np.float64
    )
    rbf = RBFInterpolator(ctrl_xy, ctrl_val, kernel="thin_plate_spline", degree=1, smoothing=0.0)
    exp_cov = rbf(cov_xy).reshape(-1, 3, N_EXP)
    info["exp_fit_max_err"] = float(np.abs(rbf(kpt_xy) - sp.w_exp.reshape(68, -1)).max())

    basis = np.zeros((RES * RES, 3, N_SHP + N_EXP))
    basis[cov_idx, :, :N_SHP] = shp_cov
    basis[cov_idx, :, N_SHP:] = exp_cov
    return UVBasis(
        mean=mean.reshape(RES, RES, 3).astype(np.float32),
        basis=basis.reshape(RES, RES, 3, N_SHP + N_EXP).astype(np.float32),
        covered=covered.reshape(RES, RES),
        info=info,
    )


def _cache_path() -> Path:
    return engines_dir() / "uv_basis.npz"


def load_uv_basis(data_root: str | os.PathLike | None = None, *, rebuild: bool = False) -> UVBasis:
    """The cached basis when its source hash matches the current inputs, else build and cache it."""
    key = source_hash(data_root)
    path = _cache_path()
    if path.exists() and not rebuild:
        try:
            with np.load(path) as z:
                if str(z["source_sha256"]) == key:
                    return UVBasis(mean=z["mean"], basis=z["basis"], covered=z["covered"].astype(bool))
        except (OSError, KeyError, ValueError):
            pass  # unreadable or stale format: rebuild below
    ub = build_uv_basis(data_root)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".uv_basis.", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, mean=ub.mean, basis=ub.basis, covered=ub.covered, source_sha256=np.array(key))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return ub


def sparse_vertices(sp: Sparse68, alpha: np.ndarray) -> np.ndarray:
    """68 BFM-frame landmarks for alpha (..., 50) -> (..., 68, 3), the teacher's own reconstruction."""
    return (
        sp.u_base
        + np.einsum("vcj,...j->...vc", sp.w_shp, alpha[..., :N_SHP])
        + np.einsum("vcj,...j->...vc", sp.w_exp, alpha[..., N_SHP:])
    )


def dense_vertices(ub: UVBasis, alpha: np.ndarray) -> np.ndarray:
    """BFM-frame points on the UV grid for alpha (..., 50) -> (..., 256, 256, 3)."""
    return ub.mean + np.einsum("yxcj,...j->...yxc", ub.basis, alpha)
