"""Face swap on photos: face A's texture on face B's geometry in B's pose, blended into B's
image, over a fixed UV region (so in a video the mask moves only with the geometry)."""
from __future__ import annotations

import cv2
import numpy as np

from ..assets import RES, UVAssets
from ..face import Face
from .blend import SwapResult, blend_rendered
from .render import render_swap
from .texture import FaceTexture, SwapSource, face_mask, face_texture


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
