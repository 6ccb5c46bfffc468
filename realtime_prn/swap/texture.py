"""UV textures of faces for swapping: extraction, visibility, and completion by mirroring.

A texture keeps its occluded texels marked (zero, invalid) instead of smeared with whatever
hid them; :class:`SwapSource` then decides, per target, which of them to fill from the
mirrored side. The sampling and the z-buffer test are ``geometry.texture``'s.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from ..assets import RES, UVAssets
from ..face import Face
from ..geometry.texture import scaled_uv_map, uv_visibility

ImageLike = np.ndarray | str | os.PathLike


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


def resize_uv_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A bool UV mask at size×size: bilinear on 0/255, kept where ≥ 128 (edges stay in place)."""
    return cv2.resize(mask.astype(np.uint8) * np.uint8(255), (size, size),
                      interpolation=cv2.INTER_LINEAR) >= 128


@lru_cache(maxsize=8)
def _scaled_face_mask(mask_bytes: bytes, size: int) -> np.ndarray:
    mask = np.frombuffer(mask_bytes, np.uint8).reshape(RES, RES)
    if size == RES:
        return mask > 0
    return resize_uv_mask(mask, size)


def face_mask(assets: UVAssets, size: int = RES) -> np.ndarray:
    """PRN's UV face mask at texture size ``size`` (bool)."""
    return _scaled_face_mask(assets.face_mask.astype(np.uint8).tobytes(), int(size))


def texel_cos(face: Face, size: int = RES) -> np.ndarray:
    """|n_z| / |n| per texel: 1 where the surface faces the camera, 0 edge-on.

    The normal is the cross product of the position map's UV derivatives, so it costs two
    Sobel passes over the map and no mesh normals.
    """
    pos = scaled_uv_map(face.position_map, size)
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
    check_texture_size(size)
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
    return uv_visibility(face.position_map, face_mask(face.assets, size), face.zbuffer, size,
                         tolerance)


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
            tex[ring] = push_pull(tex, ok)[ring]
        return FaceTexture(tex, self.valid.copy())


def complete_texture(tex: FaceTexture, assets: UVAssets, target: Face | None = None,
                     **options) -> FaceTexture:
    """One-off :class:`SwapSource` (see there) for one target."""
    return SwapSource(tex, assets, **options).texture_for(target)


def check_texture_size(size: int) -> None:
    if not 16 <= int(size) <= 4096:
        raise ValueError(f"texture size must be between 16 and 4096, got {size}")


def push_pull(texture: np.ndarray, valid: np.ndarray) -> np.ndarray:
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
