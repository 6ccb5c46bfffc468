"""Texture editing: one UV region (eyes, mouth, face, a user mask) of a face replaced.

The source is another photo's face (completed for the target like a swap source), or a
user's UV texture file; only the region's footprint is rendered back and blended in.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ..assets import RES, UVAssets
from ..face import Face
from ..paths import data_file
from .blend import SwapResult, blend_rendered
from .faces import largest_face
from .render import render_local
from .texture import (
    FaceTexture,
    ImageLike,
    check_texture_size,
    complete_texture,
    face_mask,
    face_texture,
    resize_uv_mask,
)

if TYPE_CHECKING:
    from ..api import FaceReconstructor

MODES = ("eyes", "mouth", "face", "mask")


@dataclass
class TextureEdit(FaceTexture):
    """An edited target texture; ``region`` is the texels that now come from the source."""

    region: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))


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
            base = resize_uv_mask(base, size)
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
    check_texture_size(size)
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


def edit_image(target_face: Face, edit: TextureEdit, blend: str = "poisson",
               image: np.ndarray | None = None, backend: str = "numba") -> SwapResult:
    """Render an edited texture's region on the target and blend it in.

    Only the region's footprint is rendered (not the whole re-textured face), so an eye edit
    touches the eyes' pixels and nothing else.
    """
    rendered = render_local(target_face, edit.texture, edit.region, backend)
    out, mask = blend_rendered(target_face.image if image is None else image, rendered, blend)
    return SwapResult(out, mask)
