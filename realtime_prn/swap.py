"""Texture editing and face swapping in PRN's UV space, on photos and videos.

Why UV space: every PRN face shares one 256×256 parameterisation, so a region (the eyes, the
mouth, the whole face) is one fixed mask for every face and every frame, and moving one face's
appearance onto another is a copy between textures followed by a render in the target's pose
(PRNet's ``demo_texture.py``). The stages:

    face ─► UV texture + visibility (occluded texels marked, never smeared; the seen side
            mirrored into the hidden one for swaps)
    target face ─► per-pixel UV (numba z-buffer with the per-vertex UV as the interpolated
            value) ─► cv2.remap of the texture, alpha = validity of the sampled texels
    ─► blend (cv2.seamlessClone like PRNet, or feathered alpha) ─► composite: only pixels of the
       rendered mask change; every other pixel keeps the input's bytes.

The rendered mask is the footprint of a UV-space region on the target's z-buffered surface, so
it lies inside the target's face mask by construction, and in a video it moves only with the
geometry — which is why the video path smooths the geometry (One Euro on the position map)
and the Poisson colour correction (per vertex, over time) rather than the mask.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .assets import RES, UVAssets
from .errors import NoFaceError, VideoError
from .face import Face
from .geometry.depth import render_values
from .geometry.texture import visible_texels
from .paths import data_file

if TYPE_CHECKING:
    from .api import FaceReconstructor
    from .video.tracking import FaceTracker

ImageLike = np.ndarray | str | os.PathLike

MODES = ("eyes", "mouth", "face", "mask")
BLENDS = ("poisson", "alpha")
BACKENDS = ("numba", "vispy")
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".m4v"}
LOSSLESS_SUFFIXES = {".avi", ".mkv"}  # written with FFV1, so untouched pixels stay bit-exact


# --- textures --------------------------------------------------------------------------------
@dataclass
class FaceTexture:
    """A UV texture and which texels hold real samples of the face.

    ``texture``: S×S×3 uint8 BGR; texels that are not valid are 0 (marked, not filled with
    whatever occluded them). ``visibility``: S×S bool. ``cos``: per texel, how squarely the
    photo saw the surface (|n_z| / |n|, 1 = facing the camera), when it came from a photo.
    """

    texture: np.ndarray
    visibility: np.ndarray
    cos: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(self.texture.shape[0])


@dataclass
class TextureEdit(FaceTexture):
    """An edited target texture; ``region`` is the texels that now come from the source."""

    region: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))


@lru_cache(maxsize=8)
def _scaled_face_mask(mask_bytes: bytes, size: int) -> np.ndarray:
    mask = np.frombuffer(mask_bytes, np.uint8).reshape(RES, RES)
    if size == RES:
        return mask > 0
    return cv2.resize(mask * np.uint8(255), (size, size), interpolation=cv2.INTER_LINEAR) >= 128


def face_mask(assets: UVAssets, size: int = RES) -> np.ndarray:
    """PRN's UV face mask at texture size ``size`` (bool)."""
    return _scaled_face_mask(assets.face_mask.astype(np.uint8).tobytes(), int(size))


def _scaled_pos(face: Face, size: int) -> np.ndarray:
    pos = np.asarray(face.position_map, np.float32)
    if size != pos.shape[0]:
        pos = cv2.resize(pos, (size, size), interpolation=cv2.INTER_LINEAR)
    return pos


def texel_cos(face: Face, size: int = RES) -> np.ndarray:
    """|n_z| / |n| per texel: 1 where the surface faces the camera, 0 edge-on.

    The normal is the cross product of the position map's UV derivatives, so it costs two
    Sobel passes over the map and no mesh normals.
    """
    pos = _scaled_pos(face, size)
    du = cv2.Sobel(pos, cv2.CV_32F, 1, 0, ksize=3)
    dv = cv2.Sobel(pos, cv2.CV_32F, 0, 1, ksize=3)
    nx = du[..., 1] * dv[..., 2] - du[..., 2] * dv[..., 1]
    ny = du[..., 2] * dv[..., 0] - du[..., 0] * dv[..., 2]
    nz = du[..., 0] * dv[..., 1] - du[..., 1] * dv[..., 0]
    return np.abs(nz) / np.maximum(np.sqrt(nx * nx + ny * ny + nz * nz), 1e-6)


def face_texture(face: Face, size: int = RES) -> FaceTexture:
    """The face's UV texture with occluded and off-frame texels zeroed and marked invalid.

    Why zero them: ``cv2.remap`` samples whatever covers the texel's pixel, so at large yaw the
    far cheek would be painted with the nose; marking them lets swaps mirror or skip them.
    """
    _check_size(size)
    tex = face.texture(size).copy()
    cos = texel_cos(face, size)
    vis = texel_visibility(face, size) & (cos >= 0.05)  # edge-on texels are background
    tex[~vis] = 0
    return FaceTexture(tex, vis, cos)


def texel_visibility(face: Face, size: int = RES, tolerance: float = 2.0) -> np.ndarray:
    """Texels on the face mask that are the nearest surface at one of their 4 nearest pixels.

    Why not ``Face.texture_visibility`` (z at the *rounded* pixel): on a surface seen at a
    grazing angle z changes by many units per pixel, so half a pixel of rounding hides texels
    that are plainly in view, and a swap then mirrors the other cheek onto them. Testing
    the 4 pixels around the texel's exact position removes that; a texel truly behind an
    occluder fails at all four (except in a one-pixel band that :class:`SwapSource` trims).
    """
    return _visibility_against(_scaled_pos(face, size), face.zbuffer, (0, 0),
                               face_mask(face.assets, size), tolerance)


def _visibility_against(pos: np.ndarray, zbuf: np.ndarray, offset: tuple[int, int],
                        fmask: np.ndarray, tolerance: float = 2.0) -> np.ndarray:
    """:func:`texel_visibility` against any z-buffer (−inf = empty) placed at ``offset``,
    so the render's own depth crop serves and no second raster is needed."""
    return visible_texels(pos, zbuf, fmask, offset, tolerance)


class SwapSource:
    """A source texture made fit to put on other faces; prepared once, completed per target.

    Three things go wrong when a photo's texture is pasted on another face, and each has a
    fix here:

    * texels the photo did not see: filled from their left-right mirror (PRN's UV map is
      symmetric), so a face photographed at an angle still covers a frontal target;
    * texels the photo saw edge-on (the far cheek) are stretched and carry background: where
      the *target* shows a texel much more squarely than the photo did and the mirror texel
      was seen well, the mirror is used — a soft weight on the ratio of the two views'
      cosines, so a video target turning its head fades between the two instead of
      flickering;
    * where mirrored texels meet the photo's own, the two sides' lighting differs and the
      seen texels next to the occlusion straddle the occluder: ``erode`` texels (at 256,
      scaled) are trimmed there and ``feather`` texels fade from one to the other.

    All three act only where the *target* sees what the photo did not, so a face swapped onto
    itself keeps every texel it had. Texels unseen on both sides stay invalid and the target
    keeps its own pixels there.
    """

    def __init__(self, tex: FaceTexture, assets: UVAssets, erode: int = 2, mirror: bool = True,
                 feather: int = 6):
        self.size = tex.size
        self.assets = assets
        self.fm = face_mask(assets, self.size)
        self.vis = tex.visibility & self.fm
        self.raw = tex.texture.copy()
        self.raw[~self.vis] = 0
        self.cos = (np.ones((self.size, self.size), np.float32) if tex.cos is None
                    else tex.cos.astype(np.float32))
        self.mirror = mirror
        self.k = int(round(erode * self.size / RES))
        self.feather = feather * self.size / RES
        self.mir = np.ascontiguousarray(self.raw[:, ::-1])
        self.mir_ok = (self.vis[:, ::-1] & self.fm) if mirror else np.zeros_like(self.vis)
        self.mir_cos = np.ascontiguousarray(self.cos[:, ::-1])
        self.valid = self.vis | self.mir_ok

    def texture_for(self, target: Face | None = None,
                    target_visibility: np.ndarray | None = None) -> FaceTexture:
        """The completed texture for one target; ``None`` = a frontal target that sees every
        texel. ``target_visibility``: the target's texel visibility when the caller has it."""
        if target is None:
            cos_t = np.ones_like(self.cos)
            seen_t = self.fm
        else:
            cos_t = texel_cos(target, self.size)
            seen_t = (texel_visibility(target, self.size) if target_visibility is None
                      else target_visibility) & (cos_t >= 0.05)  # edge-on: barely shown
            cos_t = np.maximum(cos_t, 0.05)
        tex = self.raw.copy()
        if not self.mirror:
            return FaceTexture(tex, self.vis.copy())
        # Texels the target shows but the photo did not: where mirrored content appears.
        shown_hidden = seen_t & self.fm & ~self.vis
        vis = self.vis
        if self.k > 0 and shown_hidden.any():
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * self.k + 1,) * 2)
            vis = vis & ~(cv2.dilate(shown_hidden.astype(np.uint8), kernel) > 0)
        q_raw = self.cos / cos_t
        q_mir = self.mir_cos / cos_t
        # Keep the photo's own texel when it saw it at least half as squarely as the target
        # shows it, or nearly as squarely as the mirror texel did; else take the mirror.
        w = np.clip(np.maximum((q_raw - 0.25) / 0.25,
                               (q_raw / np.maximum(q_mir, 1e-3) - 0.5) / 0.25), 0.0, 1.0)
        if self.feather > 0 and shown_hidden.any():
            dist = cv2.distanceTransform((~shown_hidden).astype(np.uint8), cv2.DIST_L2, 3)
            w = np.minimum(w, np.clip(dist / self.feather, 0.0, 1.0))
        both = vis & self.mir_ok & (w < 1)
        wb = w[both][:, None]
        tex[both] = (wb * self.raw[both] + (1 - wb) * self.mir[both] + 0.5).astype(np.uint8)
        only_mir = ~vis & self.mir_ok
        tex[only_mir] = self.mir[only_mir]
        # Trimmed texels without a mirror: filled smoothly from their neighbours so the face
        # stays continuous instead of showing a seam of the target's own skin.
        ring = self.vis & ~vis & ~self.mir_ok
        ok = vis | self.mir_ok
        if ring.any():
            tex[ring] = _push_pull(tex, ok)[ring]
        return FaceTexture(tex, self.valid.copy())


def complete_texture(tex: FaceTexture, assets: UVAssets, target: Face | None = None,
                     **options) -> FaceTexture:
    """One-off :class:`SwapSource` (see there) for one target."""
    return SwapSource(tex, assets, **options).texture_for(target)


def as_face_texture(texture: np.ndarray | str | os.PathLike, size: int,
                    assets: UVAssets) -> FaceTexture:
    """A user's UV texture (array or image file) at ``size``.

    A square texture of another size is resized (UV space is resolution-free, so nothing is
    lost but detail); a non-square image is refused, since it cannot be a UV map. An alpha
    channel says which texels are valid; without one every face texel is.
    """
    arr = _read_uv_image(texture, "texture", cv2.IMREAD_UNCHANGED)
    if arr.dtype == np.uint16:
        arr = (arr / 257.0 + 0.5).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ValueError(f"a UV texture must be 8- or 16-bit, got {arr.dtype}")
    if arr.ndim == 2:
        arr = cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR)
    alpha = arr[..., 3] if arr.shape[2] == 4 else None
    bgr = np.ascontiguousarray(arr[..., :3])
    if bgr.shape[0] != size:
        bgr = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA
                         if bgr.shape[0] > size else cv2.INTER_LINEAR)
        if alpha is not None:
            alpha = cv2.resize(alpha, (size, size), interpolation=cv2.INTER_LINEAR)
    vis = face_mask(assets, size).copy()
    if alpha is not None:
        vis &= alpha >= 128
    bgr = bgr.copy()
    bgr[~vis] = 0
    return FaceTexture(bgr, vis)


def as_uv_mask(mask: np.ndarray | str | os.PathLike, size: int) -> np.ndarray:
    """A user's UV region mask (array or image file; non-zero = in) at ``size``.

    Square masks of another size are resized (nearest, so it stays binary); non-square ones
    are refused with the shape, as for textures.
    """
    arr = _read_uv_image(mask, "mask", cv2.IMREAD_GRAYSCALE)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    m = (np.asarray(arr) > 0).astype(np.uint8)
    if m.shape[0] != size:
        m = cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST)
    return m > 0


def _read_uv_image(src: ImageLike, what: str, flags: int) -> np.ndarray:
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_file():
            raise FileNotFoundError(f"{what} not found: {path}")
        data = np.fromfile(str(path), np.uint8)
        arr = cv2.imdecode(data, flags) if data.size else None
        if arr is None:
            raise ValueError(f"cannot decode {what} image (corrupt or not an image): {path}")
        name = str(path)
    else:
        arr = np.asarray(src)
        name = f"the {what} array"
    if arr.ndim not in (2, 3) or arr.shape[0] != arr.shape[1] or arr.shape[0] < 8:
        raise ValueError(f"{name} is {arr.shape[1] if arr.ndim > 1 else '?'}×{arr.shape[0]}: a UV "
                         f"{what} must be square (it is resized to the texture size when "
                         f"its side differs, but a non-square image cannot be a UV map)")
    return arr


def _check_size(size: int) -> None:
    if not 16 <= int(size) <= 4096:
        raise ValueError(f"texture size must be between 16 and 4096, got {size}")


# --- UV regions ------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _eye_mask(data_root: str | None) -> np.ndarray:
    """PRNet's eye region: where its eyes-open texture differs from the mean-face texture."""
    eyes = cv2.imread(str(data_file("prn", "uv_face_eyes.png", override=data_root)),
                      cv2.IMREAD_UNCHANGED)
    mean = cv2.imread(str(data_file("prn", "uv_face.png", override=data_root)), cv2.IMREAD_COLOR)
    if eyes is None or mean is None:
        raise ValueError("cannot read PRN's uv_face_eyes.png / uv_face.png")
    diff = np.abs(eyes[..., :3].astype(np.int16) - mean.astype(np.int16)).max(axis=2) > 0
    diff.setflags(write=False)
    return diff


def uv_region(mode: str, assets: UVAssets, size: int = RES, mask: ImageLike | None = None,
              data_root: str | os.PathLike | None = None) -> np.ndarray:
    """The UV texels a mode edits (S×S bool), always inside the UV face mask.

    eyes: PRNet's eye openings (``uv_face_eyes.png`` vs ``uv_face.png``), grown by one texel
    so the lid line is included. mouth: the outer-lip landmark polygon (48–59) grown by two
    texels. face: the whole UV face mask. mask: the caller's ``mask`` (required). For the other
    modes a given ``mask`` further restricts the region.
    """
    if mode not in MODES:
        raise ValueError(f"unknown edit mode {mode!r}; choose from {', '.join(MODES)}")
    fm256 = assets.face_mask
    if mode == "eyes":
        base = cv2.dilate(_eye_mask(None if data_root is None else str(data_root)).astype(np.uint8),
                          np.ones((3, 3), np.uint8)) > 0
    elif mode == "mouth":
        pts = np.stack([assets.kpt_ind[0, 48:60], assets.kpt_ind[1, 48:60]], 1).astype(np.int32)
        base = np.zeros((RES, RES), np.uint8)
        cv2.fillPoly(base, [pts], 1)
        base = cv2.dilate(base, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))) > 0
    elif mode == "face":
        base = fm256
    else:
        if mask is None:
            raise ValueError("mode 'mask' needs a UV mask (--mask mask.png)")
        base = None
    if base is not None:
        base = base & fm256
        if size != RES:
            base = cv2.resize(base.astype(np.uint8) * np.uint8(255), (size, size),
                              interpolation=cv2.INTER_LINEAR) >= 128
    region = face_mask(assets, size).copy()
    if base is not None:
        region &= base
    if mask is not None:
        region &= as_uv_mask(mask, size)
    return region


def edit_texture(target_face: Face, mode: str, source_texture: ImageLike | None = None,
                 source_image: ImageLike | None = None, mask: ImageLike | None = None, *,
                 source_face: Face | None = None, size: int = RES,
                 reconstructor: FaceReconstructor | None = None,
                 data_root: str | os.PathLike | None = None) -> TextureEdit:
    """Replace one UV region of the target's texture with the source's.

    The source is one of: ``source_texture`` (a UV texture array or file, see
    :func:`as_face_texture`), ``source_image`` (a photo, array or path: its largest face is
    reconstructed with ``reconstructor``) or ``source_face``. Texels the source photo did not
    see are mirrored in from the other side where that was seen (:class:`SwapSource`), else
    not copied — the target keeps its own there — so an occluder is never pasted onto the
    target. A user texture's alpha channel, if any, says which of its texels count.
    """
    given = [s is not None for s in (source_texture, source_image, source_face)]
    if sum(given) != 1:
        raise ValueError("give exactly one of source_texture, source_image, source_face")
    _check_size(size)
    assets = target_face.assets
    target = face_texture(target_face, size)
    if source_image is not None:
        source_face = largest_face(source_image, reconstructor, what="source photo")
    if source_face is not None:
        src = complete_texture(face_texture(source_face, size), assets, target_face)
    else:
        src = as_face_texture(source_texture, size, assets)
    region = uv_region(mode, assets, size, mask, data_root) & src.visibility
    tex = target.texture.copy()
    tex[region] = src.texture[region]
    return TextureEdit(tex, target.visibility | region, region=region)


# --- rendering -------------------------------------------------------------------------------
_UV_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def vertex_uv(assets: UVAssets) -> np.ndarray:
    """Per-vertex UV in [0, 1] at texel centres, (u right, v down) like the texture's rows.

    Texel centres, because ``Face.texture(size)`` resizes the position map with cv2's
    half-pixel convention: texel j of an S-texel map sits at (j + 0.5) / S for every S.
    """
    hit = _UV_CACHE.get(id(assets))
    if hit is not None and hit[0] is assets.face_ind:
        return hit[1]
    rows, cols = np.divmod(assets.face_ind, RES)
    uv = np.stack([(cols + 0.5) / RES, (rows + 0.5) / RES], 1).astype(np.float32)
    _UV_CACHE[id(assets)] = (assets.face_ind, uv)
    return uv


def _push_pull(texture: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill invalid texels with a smooth extension of the valid ones (a push-pull pyramid).

    Only so bilinear sampling at a valid texel's edge does not mix in black: the fill itself
    is never shown, since the alpha (validity) channel masks those pixels out.
    """
    if valid.all() or not valid.any():
        return texture
    w = valid.astype(np.float32)
    c = texture.astype(np.float32) * w[..., None]
    levels = []
    while min(c.shape[:2]) > 4:
        size = (max(c.shape[1] // 2, 1), max(c.shape[0] // 2, 1))
        c = cv2.resize(c, size, interpolation=cv2.INTER_AREA)
        w = cv2.resize(w, size, interpolation=cv2.INTER_AREA)
        levels.append((c, w))
    est = None
    for c, w in reversed(levels):
        cur = c / np.maximum(w, 1e-6)[..., None]
        hole = w <= 1e-6
        if est is None:
            cur[hole] = c.sum((0, 1)) / max(float(w.sum()), 1e-6)
        else:
            up = cv2.resize(est, (c.shape[1], c.shape[0]), interpolation=cv2.INTER_LINEAR)
            cur[hole] = up[hole]
        est = cur
    up = cv2.resize(est, (texture.shape[1], texture.shape[0]), interpolation=cv2.INTER_LINEAR)
    out = texture.copy()
    out[~valid] = np.clip(up[~valid] + 0.5, 0, 255).astype(np.uint8)
    return out


def texture_rgba(texture: np.ndarray, visibility: np.ndarray | None = None) -> np.ndarray:
    """BGRA texture for rendering: colours filled past their edge, alpha = validity."""
    if texture.ndim != 3 or texture.shape[2] != 3 or texture.shape[0] != texture.shape[1]:
        raise ValueError(f"expected a square S×S×3 texture, got {texture.shape}")
    vis = np.ones(texture.shape[:2], bool) if visibility is None else np.asarray(visibility, bool)
    if vis.shape != texture.shape[:2]:
        raise ValueError(f"visibility {vis.shape} does not match the texture {texture.shape[:2]}")
    filled = _push_pull(np.ascontiguousarray(texture, np.uint8), vis)
    return np.dstack([filled, vis.astype(np.uint8) * np.uint8(255)])


@dataclass
class Rendered:
    """A render restricted to the face's bounding box (what blending needs), at ``offset``."""

    image: np.ndarray    # h×w×3 uint8, 0 outside mask
    mask: np.ndarray     # h×w bool
    offset: tuple[int, int]  # (x0, y0) of the box in the frame
    frame_shape: tuple[int, int]
    uv: np.ndarray | None = None  # h×w×2 per-pixel UV (numba path), for reuse

    def full(self) -> tuple[np.ndarray, np.ndarray]:
        """Frame-sized (image, mask)."""
        h, w = self.frame_shape
        img = np.zeros((h, w, 3), np.uint8)
        mask = np.zeros((h, w), bool)
        x0, y0 = self.offset
        bh, bw = self.mask.shape
        img[y0:y0 + bh, x0:x0 + bw] = self.image
        mask[y0:y0 + bh, x0:x0 + bw] = self.mask
        return img, mask


def _face_box(vertices: np.ndarray, h: int, w: int) -> tuple[int, int, int, int] | None:
    v = vertices[:, :2]
    x0 = max(int(np.floor(np.nanmin(v[:, 0]))), 0)
    y0 = max(int(np.floor(np.nanmin(v[:, 1]))), 0)
    x1 = min(int(np.ceil(np.nanmax(v[:, 0]))) + 1, w)
    y1 = min(int(np.ceil(np.nanmax(v[:, 1]))) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def rasterise_uv(vertices: np.ndarray, triangles: np.ndarray, uv: np.ndarray,
                 frame_shape: tuple[int, ...]):
    """Per-pixel UV of the visible surface inside the face's box: (uv h×w×2, depth h×w with
    −inf where empty, offset), or None when the face is off the frame."""
    h, w = frame_shape[:2]
    box = _face_box(vertices, h, w)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    v = np.asarray(vertices, np.float32) - np.array([x0, y0, 0], np.float32)
    vals, depth = render_values(v, triangles, uv, y1 - y0, x1 - x0)
    return vals, depth, (x0, y0)


def _sample(rgba: np.ndarray, uv: np.ndarray, drawn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = rgba.shape[0]
    mx = uv[..., 0] * s - 0.5
    my = uv[..., 1] * s - 0.5
    out = cv2.remap(rgba, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask = drawn & (out[..., 3] >= 128)
    img = np.ascontiguousarray(out[..., :3])
    img[~mask] = 0
    return img, mask


def _empty(shape: tuple[int, int]) -> Rendered:
    return Rendered(np.zeros((0, 0, 3), np.uint8), np.zeros((0, 0), bool), (0, 0), shape)


def render_local(face: Face, texture: np.ndarray, visibility: np.ndarray | None = None,
                 backend: str = "numba", renderer: GLTextureRenderer | None = None) -> Rendered:
    """:func:`render_texture` without the frame-sized copies (what blending wants)."""
    rgba = texture_rgba(texture, visibility)
    shape = face.image.shape[:2]
    if backend == "numba":
        r = rasterise_uv(face.vertices, face.triangles, vertex_uv(face.assets), shape)
        if r is None:
            return _empty(shape)
        uv, depth, off = r
        img, mask = _sample(rgba, uv, np.isfinite(depth))
        return Rendered(img, mask, off, shape, uv)
    if backend == "vispy":
        renderer = renderer or _default_gl_renderer()
        return renderer.render(face.vertices, face.triangles, vertex_uv(face.assets), rgba, shape)
    raise ValueError(f"unknown render backend {backend!r}; choose from {', '.join(BACKENDS)}")


def render_swap(target: Face, source: SwapSource | FaceTexture, region: np.ndarray,
                backend: str = "numba", renderer: GLTextureRenderer | None = None) -> Rendered:
    """Render a swap source on the target: the texture is completed for this target using the
    render's own depth (which texels the target shows), so it costs one raster, not two."""
    if isinstance(source, FaceTexture):
        return render_local(target, source.texture, region & source.visibility, backend, renderer)
    shape = target.image.shape[:2]
    if backend != "numba":
        tex = source.texture_for(target)
        return render_local(target, tex.texture, region & tex.visibility, backend, renderer)
    r = rasterise_uv(target.vertices, target.triangles, vertex_uv(target.assets), shape)
    if r is None:
        return _empty(shape)
    uv, depth, off = r
    seen = _visibility_against(_scaled_pos(target, source.size), depth, off, source.fm)
    tex = source.texture_for(target, seen)
    img, mask = _sample(texture_rgba(tex.texture, region & tex.visibility), uv, np.isfinite(depth))
    return Rendered(img, mask, off, shape, uv)


def render_texture(face: Face, texture: np.ndarray, visibility: np.ndarray | None = None,
                   backend: str = "numba") -> tuple[np.ndarray, np.ndarray]:
    """Render a UV texture on the face's geometry in its pose, z-buffered.

    Returns the frame-sized BGR image (0 off the mask) and the bool mask of pixels that show a
    valid texel (``visibility``, default all) of the face's visible surface.
    """
    return render_local(face, texture, visibility, backend).full()


_VS = """
attribute vec3 a_position;
attribute vec2 a_uv;
uniform vec2 u_size;
uniform vec2 u_zrange;
varying vec2 v_uv;
void main() {
    v_uv = a_uv;
    float x = (a_position.x + 0.5) / u_size.x * 2.0 - 1.0;
    float y = 1.0 - (a_position.y + 0.5) / u_size.y * 2.0;
    // z toward the camera: the largest z must win the (GL_LESS) depth test.
    float z = 1.0 - 2.0 * (a_position.z - u_zrange.x) / (u_zrange.y - u_zrange.x);
    gl_Position = vec4(x, y, 0.98 * z, 1.0);
}
"""

_FS = """
uniform sampler2D u_tex;
varying vec2 v_uv;
void main() { gl_FragColor = texture2D(u_tex, v_uv); }
"""


class GLTextureRenderer:
    """The same render in OpenGL (vispy offscreen; Mesa llvmpipe over EGL on a CPU machine).

    Kept as a measured alternative to the numba path, and as the seam for a GPU machine: on
    this project's CPU machines llvmpipe is the slower of the two (``tools/swap_benchmark.py``
    prints both). Pixel centres, texel centres and the z test follow the numba path, so the
    two agree to within a level (checked in ``tests/test_swap.py``).
    """

    def __init__(self):
        from .render.view3d import View3DUnavailable, use_backend
        use_backend(display=False)
        try:
            from vispy import app, gloo
            self.gloo = gloo
            self.canvas = app.Canvas(size=(32, 32), show=False, keys=None)
            self.canvas.set_current()
            self.program = gloo.Program(_VS, _FS)
        except Exception as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise View3DUnavailable(f"cannot create an OpenGL context: {msg}") from None
        self._fbo = None
        self._fbo_size: tuple[int, int] | None = None
        self._tris_key: int | None = None
        self._index = None
        self._uv_key: int | None = None

    def render(self, vertices: np.ndarray, triangles: np.ndarray, uv: np.ndarray,
               rgba: np.ndarray, frame_shape: tuple[int, ...]) -> Rendered:
        g = self.gloo
        h, w = frame_shape[:2]
        box = _face_box(vertices, h, w)
        if box is None:
            return _empty((h, w))
        x0, y0, x1, y1 = box
        bw, bh = x1 - x0, y1 - y0
        self.canvas.set_current()
        if self._fbo_size != (bw, bh):
            self._fbo = g.FrameBuffer(color=g.RenderBuffer((bh, bw, 4)),
                                      depth=g.RenderBuffer((bh, bw)))
            self._fbo_size = (bw, bh)
        if self._tris_key != id(triangles):
            self._index = g.IndexBuffer(np.ascontiguousarray(triangles, np.uint32))
            self._tris_key = id(triangles)
        p = self.program
        v = np.asarray(vertices, np.float32) - np.array([x0, y0, 0], np.float32)
        p["a_position"] = np.ascontiguousarray(v)
        if self._uv_key != id(uv):
            p["a_uv"] = np.ascontiguousarray(uv, np.float32)
            self._uv_key = id(uv)
        p["u_size"] = (float(bw), float(bh))
        z = v[:, 2]
        lo, hi = float(z.min()), float(z.max())
        p["u_zrange"] = (lo - 1.0, hi + 1.0)
        p["u_tex"] = g.Texture2D(rgba, interpolation="linear", wrapping="clamp_to_edge")
        with self._fbo:
            g.set_viewport(0, 0, bw, bh)
            g.set_state(depth_test=True, blend=False, cull_face=False)
            g.set_clear_color((0.0, 0.0, 0.0, 0.0))
            g.clear(color=True, depth=True)
            p.draw("triangles", self._index)
            out = self._fbo.read(alpha=True)
        mask = out[..., 3] >= 128
        img = np.ascontiguousarray(out[..., :3])
        img[~mask] = 0
        return Rendered(img, mask, (x0, y0), (h, w))

    def close(self) -> None:
        try:
            self.canvas.close()
        except Exception:  # closing a context that failed half-way must not hide the cause
            pass


_GL: GLTextureRenderer | None = None


def _default_gl_renderer() -> GLTextureRenderer:
    global _GL
    if _GL is None:
        _GL = GLTextureRenderer()
    return _GL


# --- blending --------------------------------------------------------------------------------
def _color_match(src: np.ndarray, dst: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Match the mean and spread of ``src`` to ``dst`` in Lab over the mask (alpha blend only:
    Poisson blending corrects colour itself)."""
    s = cv2.cvtColor(src, cv2.COLOR_BGR2LAB).astype(np.float32)
    d = cv2.cvtColor(dst, cv2.COLOR_BGR2LAB).astype(np.float32)
    sm, ss = s[mask].mean(0), s[mask].std(0) + 1e-3
    dm, ds = d[mask].mean(0), d[mask].std(0) + 1e-3
    gain = np.clip(ds / ss, 0.5, 2.0)
    out = np.clip((s - sm) * gain + dm, 0, 255).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_LAB2BGR)


def _feather(mask: np.ndarray) -> np.ndarray:
    """Alpha rising from 0 at the mask's edge over ~6 % of its size (0 outside the mask)."""
    ys, xs = np.nonzero(mask)
    extent = min(np.ptp(xs) + 1, np.ptp(ys) + 1)
    width = max(2.0, 0.06 * extent)
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    return np.clip(dist / width, 0.0, 1.0)


def blend_local(dst: np.ndarray, src: np.ndarray, mask: np.ndarray, method: str = "poisson",
                color_match: bool = False) -> np.ndarray:
    """The blended crop: ``dst``'s pixels outside ``mask`` untouched, bit for bit.

    Poisson: ``cv2.seamlessClone`` like PRNet (mask from the render, centre from the mask's
    bounding box — OpenCV places the source box at ``centre − size // 2``, so this centre is
    an exact identity placement). Its solver changes pixels of the box outside the mask by a
    level or so, hence the final composite through the mask.
    """
    if method not in BLENDS:
        raise ValueError(f"unknown blend {method!r}; choose from {', '.join(BLENDS)}")
    out = dst.copy()
    n = int(mask.sum())
    if n == 0:
        return out
    if method == "alpha" or n < 16:
        if color_match and n >= 16:
            src = _color_match(src, dst, mask)
        a = _feather(mask)[..., None] if n >= 16 else mask[..., None].astype(np.float32)
        mixed = (dst.astype(np.float32) * (1 - a) + src.astype(np.float32) * a + 0.5).astype(np.uint8)
        out[mask] = mixed[mask]
        return out
    pad = 2  # seamlessClone clears the mask's outermost pixel ring and needs its box inside dst
    m8 = cv2.copyMakeBorder(mask.astype(np.uint8) * np.uint8(255), pad, pad, pad, pad,
                            cv2.BORDER_CONSTANT, value=0)
    s = cv2.copyMakeBorder(src, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    d = cv2.copyMakeBorder(dst, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    x, y, w, h = cv2.boundingRect(m8)
    cloned = cv2.seamlessClone(s, d, m8, (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)
    cloned = cloned[pad:-pad, pad:-pad]
    out[mask] = cloned[mask]
    return out


def blend_rendered(image: np.ndarray, rendered: Rendered, method: str = "poisson",
                   color_match: bool = False, margin: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Blend a :class:`Rendered` into a copy of ``image``; returns (output, frame-sized mask).

    Works on the mask's box plus ``margin`` so a 4K frame costs what the face costs.
    """
    out = image.copy()
    full_mask = np.zeros(image.shape[:2], bool)
    if not rendered.mask.any():
        return out, full_mask
    ys, xs = np.nonzero(rendered.mask)
    ox, oy = rendered.offset
    h, w = image.shape[:2]
    x0, x1 = max(xs.min() + ox - margin, 0), min(xs.max() + ox + margin + 1, w)
    y0, y1 = max(ys.min() + oy - margin, 0), min(ys.max() + oy + margin + 1, h)
    lx0, ly0 = x0 - ox, y0 - oy
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    src = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
    # The render box may be smaller than box+margin at its sides: paste what overlaps.
    sx0, sy0 = max(lx0, 0), max(ly0, 0)
    sx1 = min(lx0 + (x1 - x0), rendered.mask.shape[1])
    sy1 = min(ly0 + (y1 - y0), rendered.mask.shape[0])
    mask[sy0 - ly0:sy1 - ly0, sx0 - lx0:sx1 - lx0] = rendered.mask[sy0:sy1, sx0:sx1]
    src[sy0 - ly0:sy1 - ly0, sx0 - lx0:sx1 - lx0] = rendered.image[sy0:sy1, sx0:sx1]
    out[y0:y1, x0:x1] = blend_local(image[y0:y1, x0:x1], src, mask, method, color_match)
    full_mask[y0:y1, x0:x1] = mask
    return out, full_mask


def blend_into(image: np.ndarray, rendered: np.ndarray, mask: np.ndarray,
               method: str = "poisson", color_match: bool = False) -> np.ndarray:
    """Frame-sized form of :func:`blend_rendered` for callers holding full-size arrays."""
    h, w = image.shape[:2]
    r = Rendered(np.ascontiguousarray(rendered), np.asarray(mask, bool), (0, 0), (h, w))
    return blend_rendered(image, r, method, color_match)[0]


# --- photos ----------------------------------------------------------------------------------
@dataclass
class SwapResult:
    """The output image and the pixels that may differ from the input (all others are equal)."""

    image: np.ndarray
    mask: np.ndarray


def edit_image(target_face: Face, edit: TextureEdit, blend: str = "poisson",
               image: np.ndarray | None = None, backend: str = "numba") -> SwapResult:
    """Render an edited texture's region on the target and blend it in.

    Only the region's footprint is rendered (not the whole re-textured face), so an eye edit
    touches the eyes' pixels and nothing else.
    """
    rendered = render_local(target_face, edit.texture, edit.region, backend)
    out, mask = blend_rendered(target_face.image if image is None else image, rendered, blend)
    return SwapResult(out, mask)


def swap_faces(source_face: Face, target_face: Face, blend: str = "poisson", *,
               image: np.ndarray | None = None, size: int = RES,
               source: SwapSource | FaceTexture | None = None, erode: int = 2,
               backend: str = "numba") -> SwapResult:
    """Face A's texture on face B's geometry in B's pose, blended into B's image.

    ``image``: blend into this instead of ``target_face.image`` (to swap several faces of one
    photo in turn). ``source``: a prepared :class:`SwapSource` (reused across targets) or a
    finished texture; by default made from ``source_face``. ``erode``: UV texels trimmed off
    the region's outline, where the source's samples straddle the silhouette.
    """
    if source is None:
        source = SwapSource(face_texture(source_face, size), source_face.assets)
    region = swap_region(target_face.assets, source, erode)
    rendered = render_swap(target_face, source, region, backend)
    out, mask = blend_rendered(target_face.image if image is None else image, rendered, blend,
                               color_match=blend == "alpha")
    return SwapResult(out, mask)


def swap_region(assets: UVAssets, tex: SwapSource | FaceTexture, erode: int = 2) -> np.ndarray:
    """The fixed UV region a swap covers: the face mask less ``erode`` texels (the outline's
    samples straddle the silhouette), where the source has a value. Fixed per source, so in a
    video the rendered mask moves only with the target's geometry."""
    valid = tex.valid if isinstance(tex, SwapSource) else tex.visibility
    region = face_mask(assets, tex.size)
    k = int(round(erode * tex.size / RES))
    if k > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
        region = cv2.erode(region.astype(np.uint8), kernel) > 0
    return region & valid


def largest_face(image: ImageLike, reconstructor: FaceReconstructor | None = None,
                 what: str = "image") -> Face:
    """The largest face of a photo (array or path); ``NoFaceError`` naming ``what`` if none."""
    recon = reconstructor or default_reconstructor()
    faces = recon.reconstruct(image)
    if not faces:
        name = f" ({image})" if isinstance(image, (str, os.PathLike)) else ""
        raise NoFaceError(f"no face found in the {what}{name}")
    return max(faces, key=_face_area)


def _face_area(face: Face) -> float:
    lm = face.landmarks[:, :2]
    return float(np.ptp(lm[:, 0]) * np.ptp(lm[:, 1]))


def select_faces(faces: list[Face], index: int | str | None) -> list[Face]:
    """``None``/"largest": the largest; "all": every face; an int: the index-th from the left."""
    if not faces:
        return []
    if index is None or index == "largest":
        return [max(faces, key=_face_area)]
    if index == "all":
        return list(faces)
    order = sorted(faces, key=lambda f: float(f.landmarks[:, 0].mean()))
    i = int(index)
    if not -len(order) <= i < len(order):
        raise ValueError(f"target index {i} but only {len(order)} face(s) found")
    return [order[i]]


_RECON = None


def default_reconstructor() -> FaceReconstructor:
    """One CPU reconstructor per process, built on first use (engine start-up is slow)."""
    global _RECON
    if _RECON is None:
        from .api import FaceReconstructor, Options
        _RECON = FaceReconstructor(Options())
    return _RECON


# --- video -----------------------------------------------------------------------------------
@dataclass
class FlickerStats:
    """How steady the swapped face is from frame to frame (means over consecutive pairs).

    ``surface_change``: mean |Δ colour| (levels) of the output sampled at the rendered
    vertices, i.e. on the face surface itself, so head motion cancels: the source texture is
    fixed, so ideally only real lighting changes remain — everything else is flicker (tint
    changes of the Poisson solve, sampling jitter). ``surface_change_in``: the same for the
    input frame at the same vertices (the real face's own change, for scale).
    ``accel_ratio``: mean second difference |x_t − 2x_{t−1} + x_{t−2}| of the output over the
    input's, on the union of the masks (steady motion cancels; > 1 = flicker added).
    ``mask_iou``: median IoU of consecutive masks; ``mask_jitter``: mean |mask_t xor
    mask_{t−1}| / |mask_t|, the fraction of the mask that toggles.
    """

    surface_change: float = float("nan")
    surface_change_in: float = float("nan")
    accel_ratio: float = float("nan")
    mask_iou: float = float("nan")
    mask_jitter: float = float("nan")
    pairs: int = 0

    def line(self) -> str:
        return (f"surface change {self.surface_change:.2f} levels/frame "
                f"(input {self.surface_change_in:.2f}), "
                f"second-difference ratio {self.accel_ratio:.2f}, mask IoU {self.mask_iou:.3f}, "
                f"mask jitter {self.mask_jitter:.3f}")


@dataclass
class SwapVideoSummary:
    frames: int = 0
    swapped: int = 0
    no_face: int = 0
    no_face_frames: list[int] = field(default_factory=list)
    out_path: str = ""
    fps: float = 0.0
    stabilise: bool = True
    stage_ms: dict[str, float] = field(default_factory=dict)
    flicker: FlickerStats | None = None

    def line(self) -> str:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in self.stage_ms.items())
        fl = ""
        if self.flicker is not None and self.flicker.pairs:
            fl = f"; flicker: {self.flicker.line()}"
        return (f"{self.frames} frame(s): {self.swapped} swapped, {self.no_face} without a target "
                f"face (passed through); median ms per frame: {stages}{fl}")


class _FlickerMeter:
    """Accumulates :class:`FlickerStats` while a video is swapped (costs a few ms a frame)."""

    def __init__(self):
        self.hist: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = []
        self.prev_surface: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.surface: list[float] = []
        self.surface_in: list[float] = []
        self.a_out: list[float] = []
        self.a_in: list[float] = []
        self.iou: list[float] = []
        self.jitter: list[float] = []

    def add(self, inp: np.ndarray, out: np.ndarray, mask: np.ndarray | None,
            vertices: np.ndarray | None = None) -> None:
        self.hist = (self.hist + [None if mask is None else (inp, out, mask)])[-3:]
        surface = None
        if mask is not None and vertices is not None:
            h, w = mask.shape
            x = np.clip(np.rint(vertices[:, 0]).astype(np.intp), 0, w - 1)
            y = np.clip(np.rint(vertices[:, 1]).astype(np.intp), 0, h - 1)
            surface = (mask[y, x], out[y, x].astype(np.float32), inp[y, x].astype(np.float32))
            if self.prev_surface is not None:
                ok = surface[0] & self.prev_surface[0]
                if ok.any():
                    self.surface.append(float(np.abs(surface[1][ok] - self.prev_surface[1][ok]).mean()))
                    self.surface_in.append(float(np.abs(surface[2][ok] - self.prev_surface[2][ok]).mean()))
        self.prev_surface = surface
        if mask is None or len(self.hist) < 2 or self.hist[-2] is None:
            return
        i1, o1, m1 = self.hist[-2]
        union = mask | m1
        if not union.any():
            return
        self.iou.append(float((mask & m1).sum() / union.sum()))
        self.jitter.append(float((mask ^ m1).sum() / max(mask.sum(), 1)))
        if len(self.hist) == 3 and self.hist[0] is not None:
            i0, o0, m0 = self.hist[0]
            u3 = union | m0
            self.a_out.append(float(np.abs(out[u3].astype(np.float32) - 2 * o1[u3] + o0[u3]).mean()))
            self.a_in.append(float(np.abs(inp[u3].astype(np.float32) - 2 * i1[u3] + i0[u3]).mean()))

    def stats(self) -> FlickerStats:
        nan = float("nan")
        mean = lambda v: float(np.mean(v)) if v else nan
        acc = mean(self.a_out) / max(mean(self.a_in), 1e-6) if self.a_out else nan
        return FlickerStats(surface_change=mean(self.surface), surface_change_in=mean(self.surface_in),
                            accel_ratio=acc,
                            mask_iou=float(np.median(self.iou)) if self.iou else nan,
                            mask_jitter=mean(self.jitter), pairs=len(self.iou))


class _Correction:
    """The Poisson colour correction (cloned − rendered) per vertex, smoothed over time.

    Why: seamlessClone solves a fresh membrane from each frame's mask boundary, so the whole
    face's tint follows every change of the boundary pixels (hair, the background, codec
    noise) and flickers. The membrane is smooth, so solving it at half resolution and
    sampling it at the vertices loses nothing; an exponential average per vertex (a fixed
    point of the face, not of the frame) keeps it steady while the face moves, and rendering
    it back through the z-buffer puts it on the face again. Half resolution also makes the
    solve ~4× cheaper than the photo path's full-resolution one.
    """

    def __init__(self, alpha: float = 0.25, scale: float = 0.5):
        self.alpha = alpha
        self.scale = scale
        self.state: np.ndarray | None = None
        self.key: int | None = None

    def reset(self) -> None:
        self.state = None
        self.key = None

    def apply(self, frame: np.ndarray, rendered: Rendered, vertices: np.ndarray,
              triangles: np.ndarray, key: int) -> np.ndarray:
        """The output frame: ``frame`` with the corrected render inside the render's mask."""
        ox, oy = rendered.offset
        bh, bw = rendered.mask.shape
        m = rendered.mask
        dst = frame[oy:oy + bh, ox:ox + bw]
        # Outside the mask the source takes the frame's pixels, so downsampling mixes no black in.
        src = np.where(m[..., None], rendered.image, dst)
        sw, sh = max(int(round(bw * self.scale)), 8), max(int(round(bh * self.scale)), 8)
        fx, fy = sw / bw, sh / bh
        dst_s = cv2.resize(dst, (sw, sh), interpolation=cv2.INTER_AREA)
        src_s = cv2.resize(src, (sw, sh), interpolation=cv2.INTER_AREA)
        m_s = cv2.resize(m.astype(np.float32), (sw, sh), interpolation=cv2.INTER_AREA) > 0.5
        cloned = blend_local(dst_s, src_s, m_s, "poisson")
        memb = (cloned.astype(np.float32) - src_s.astype(np.float32)) * m_s[..., None]
        # Spread the membrane a little past the mask so vertices on its edge can sample it.
        wgt = cv2.GaussianBlur(m_s.astype(np.float32), (0, 0), 1.0)
        memb = cv2.GaussianBlur(memb, (0, 0), 1.0) / np.maximum(wgt, 1e-3)[..., None]
        v = np.asarray(vertices, np.float32) - np.array([ox, oy, 0], np.float32)
        v *= np.array([fx, fy, 1.0], np.float32)
        xs = np.clip(np.rint(v[:, 0]).astype(np.intp), 0, sw - 1)
        ys = np.clip(np.rint(v[:, 1]).astype(np.intp), 0, sh - 1)
        ok = wgt[ys, xs] > 0.05
        sample = memb[ys, xs]
        if self.state is None or self.key != key:
            self.state = np.where(ok[:, None], sample, sample[ok].mean(0) if ok.any() else 0)
            self.state = self.state.astype(np.float32)
            self.key = key
        else:
            self.state[ok] += self.alpha * (sample[ok] - self.state[ok])
        vals = np.concatenate([self.state, np.ones((len(self.state), 1), np.float32)], 1)
        corr, _ = render_values(v, triangles, vals, sh, sw)
        corr = cv2.GaussianBlur(corr, (0, 0), 1.0)
        corr = cv2.resize(corr, (bw, bh), interpolation=cv2.INTER_LINEAR)
        corr = corr[..., :3] / np.maximum(corr[..., 3:], 1e-3)
        out = frame.copy()
        val = np.clip(rendered.image.astype(np.float32) + corr + 0.5, 0, 255).astype(np.uint8)
        out[oy:oy + bh, ox:ox + bw][m] = val[m]
        return out


def _writer_for(path: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"output video must end in one of {', '.join(sorted(VIDEO_SUFFIXES))}: {path}")
    fourcc = "FFV1" if suffix in LOSSLESS_SUFFIXES else "mp4v"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    if not writer.isOpened():
        raise VideoError(f"cannot write video {path} (codec {fourcc} unavailable)")
    return writer


def _annotate(img: np.ndarray, text: str) -> None:
    from .render.overlay import draw_text
    draw_text(img, [text])


def swap_video(source: ImageLike | Face | FaceTexture | SwapSource, target_video: str | os.PathLike,
               out_path: str | os.PathLike, *,
               target_index: int | str | None = None, blend: str = "poisson",
               stabilise: bool = True, size: int = RES,
               reconstructor: FaceReconstructor | None = None,
               max_frames: int | None = None, progress: bool = True, annotate: bool = False,
               measure: bool = True, detect_every: int = 1, backend: str = "numba",
               correction_alpha: float = 0.25, smooth_geometry: bool | None = None,
               smooth_tint: bool | None = None,
               on_frame: Callable[[int, np.ndarray, np.ndarray, np.ndarray | None], None]
               | None = None) -> SwapVideoSummary:
    """The source face on the target face of every frame of a video.

    ``source``: a photo (path or array; its largest face), a :class:`Face`, a prepared
    :class:`SwapSource` or a finished :class:`FaceTexture`. ``target_index``: None = the
    largest face (kept while its track lives, so two similar faces do not swap roles), an
    int = that face from the left.
    ``stabilise``: One Euro smoothing of the target's position map, and the Poisson
    correction smoothed per vertex over time (see :class:`_Correction`); off = every frame on
    its own, as PRNet's photo demo does. Frames without a target face are written unchanged
    and counted; ``detect_every`` = 1 (default) checks every frame with the detector (~10 ms
    at 512²), so a cut or a blank frame is never given a face (see :func:`_confirmed`).
    ``.avi`` / ``.mkv`` are written losslessly (FFV1), ``.mp4`` with mp4v.
    ``on_frame(index, input, output, mask | None)`` sees every frame (tests, previews).
    ``smooth_geometry`` / ``smooth_tint`` switch the two halves of ``stabilise`` separately
    (for measuring what each one buys).
    """
    from .video.capture import open_source
    from .video.smoothing import FaceSmoother
    from .video.tracking import FaceTracker

    if blend not in BLENDS:
        raise ValueError(f"unknown blend {blend!r}; choose from {', '.join(BLENDS)}")
    recon = reconstructor or default_reconstructor()
    smooth_geometry = stabilise if smooth_geometry is None else smooth_geometry
    smooth_tint = stabilise if smooth_tint is None else smooth_tint
    target_video = Path(target_video)
    out_path = Path(out_path)
    if isinstance(source, (FaceTexture, SwapSource)):
        prepared = source
        assets = recon.assets
    else:
        src_face = source if isinstance(source, Face) else largest_face(source, recon, "source photo")
        assets = src_face.assets
        prepared = SwapSource(face_texture(src_face, size), assets)
    # One UV region for the whole video: the rendered mask then moves only with the geometry.
    region = swap_region(assets, prepared)
    src_source = open_source(target_video)
    if getattr(src_source, "live", False):
        raise VideoError(f"{target_video} is not a video file")
    tracker = FaceTracker(recon.detector, detect_every=detect_every)
    smoother = FaceSmoother()
    correction = _Correction(correction_alpha)
    meter = _FlickerMeter() if measure else None
    summary = SwapVideoSummary(out_path=str(out_path), fps=src_source.fps, stabilise=stabilise)
    times: dict[str, list[float]] = {k: [] for k in ("reconstruct", "render", "blend", "total")}
    writer = None
    chosen: int | None = None
    total = src_source.frame_count
    if max_frames:
        total = min(total, max_frames) if total else max_frames
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total or None, desc=f"swap {target_video.name}", unit="frame")
    try:
        index = 0
        while max_frames is None or index < max_frames:
            frame = src_source.read()
            if frame is None:
                break
            t0 = time.perf_counter()
            if writer is None:
                out_path.parent.mkdir(parents=True, exist_ok=True)
                writer = _writer_for(out_path, src_source.fps, (frame.shape[1], frame.shape[0]))
            dets = tracker.detect(frame)
            faces = recon.reconstruct_detections(frame, dets)
            tracker.update(faces, frame.shape)
            faces = [f for f in faces if _confirmed(tracker, f)]
            face = _pick_target(faces, target_index, chosen)
            t1 = time.perf_counter()
            out, mask = frame, None
            if face is not None:
                if face.track_id != chosen:
                    correction.reset()
                chosen = face.track_id
                if smooth_geometry:
                    face = smoother([face], index / max(src_source.fps, 1e-3))[0]
                rendered = render_swap(face, prepared, region, backend)
                t2 = time.perf_counter()
                if smooth_tint and blend == "poisson" and rendered.mask.any():
                    out = correction.apply(frame, rendered, face.vertices, face.triangles,
                                           -1 if chosen is None else int(chosen))
                    mask = rendered.full()[1]
                else:
                    out, mask = blend_rendered(frame, rendered, blend,
                                               color_match=blend == "alpha")
                t3 = time.perf_counter()
                times["render"].append(t2 - t1)
                times["blend"].append(t3 - t2)
                summary.swapped += 1
            else:
                summary.no_face += 1
                summary.no_face_frames.append(index)
                correction.reset()
                chosen = None
            times["reconstruct"].append(t1 - t0)
            if meter is not None:
                meter.add(frame, out, mask, None if face is None else face.vertices)
            if on_frame is not None:
                on_frame(index, frame, out, mask)
            if annotate:
                out = out.copy() if out is frame else out
                _annotate(out, f"frame {index}: {'swapped' if mask is not None else 'no face'}")
            writer.write(out)
            times["total"].append(time.perf_counter() - t0)
            summary.frames += 1
            index += 1
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.release()
        src_source.release()
    if summary.frames == 0:
        raise VideoError(f"no decodable frame in {target_video}")
    summary.stage_ms = {k: statistics.median(v) * 1000 for k, v in times.items() if v}
    if meter is not None:
        summary.flicker = meter.stats()
    return summary


def _confirmed(tracker: FaceTracker, face: Face) -> bool:
    """Whether to trust a tracked face in this frame.

    PRN returns a face-shaped map for any crop, so a track that outlives its face (a cut, a
    blank frame, the person leaving) would paint a face onto whatever is there. Where the
    detector ran this frame, a track it did not confirm is therefore not swapped; between
    detector runs (``detect_every`` > 1) tracking is trusted.
    """
    det = face.detection
    if det is None:
        return True
    if "lost" in det.extra:
        return False
    if not tracker.detected_last:
        return True
    track = next((t for t in tracker.tracks if t.id == face.track_id), None)
    return track is not None and track.misses == 0


def _pick_target(faces: list[Face], target_index: int | str | None, chosen: int | None) -> Face | None:
    if not faces:
        return None
    if target_index is None or target_index == "largest":
        largest = max(faces, key=_face_area)
        if chosen is not None:
            same = [f for f in faces if f.track_id == chosen]
            # Stay on the chosen face unless another is clearly the larger one.
            if same and _face_area(same[0]) >= 0.7 * _face_area(largest):
                return same[0]
        return largest
    order = sorted(faces, key=lambda f: float(f.landmarks[:, 0].mean()))
    i = int(target_index)
    return order[i] if -len(order) <= i < len(order) else None
