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

The pieces, one job each:

    texture   UV texture + visibility of a face, SwapSource (completion by mirroring)
    render    textured rendering (numba z-buffer + remap, or vispy/OpenGL)
    blend     Poisson / feathered-alpha compositing that keeps outside pixels identical
    edit      texture editing: UV regions, user textures and masks, edit_texture / edit_image
    faces     which face: largest_face, select_faces, default_reconstructor
    faceswap  swap_faces and its fixed UV region
    flicker   frame-to-frame steadiness of a swapped video
    video     swap_video with stabilisation (geometry smoothing, per-vertex Poisson tint)

Everything public is re-exported here, so ``from realtime_prn import swap as S`` serves.
"""
from __future__ import annotations

from .blend import BLENDS, SwapResult, blend_into, blend_local, blend_rendered
from .edit import MODES, TextureEdit, as_face_texture, as_uv_mask, edit_image, edit_texture, uv_region
from .faces import default_reconstructor, largest_face, select_faces
from .faceswap import swap_faces, swap_region
from .flicker import FlickerStats
from .render import (
    BACKENDS,
    GLTextureRenderer,
    Rendered,
    rasterise_uv,
    render_local,
    render_swap,
    render_texture,
    texture_rgba,
    vertex_uv,
)
from .texture import (
    FaceTexture,
    ImageLike,
    SwapSource,
    complete_texture,
    face_mask,
    face_texture,
    texel_cos,
    texel_visibility,
)
from .video import LOSSLESS_SUFFIXES, VIDEO_SUFFIXES, SwapVideoSummary, _Correction, swap_video

__all__ = [
    "BACKENDS", "BLENDS", "LOSSLESS_SUFFIXES", "MODES", "VIDEO_SUFFIXES",
    "FaceTexture", "FlickerStats", "GLTextureRenderer", "ImageLike", "Rendered", "SwapResult",
    "SwapSource", "SwapVideoSummary", "TextureEdit", "_Correction",
    "as_face_texture", "as_uv_mask", "blend_into", "blend_local", "blend_rendered",
    "complete_texture", "default_reconstructor", "edit_image", "edit_texture", "face_mask",
    "face_texture", "largest_face", "rasterise_uv", "render_local", "render_swap",
    "render_texture", "select_faces", "swap_faces", "swap_region", "swap_video", "texel_cos",
    "texel_visibility", "texture_rgba", "uv_region", "vertex_uv",
]
