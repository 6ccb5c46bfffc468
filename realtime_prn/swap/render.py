"""Textured rendering: a UV texture drawn on a face's geometry in its pose, z-buffered.

numba (default): per-pixel UV from the z-buffer rasteriser (the per-vertex UV as the
interpolated value), then ``cv2.remap`` of the texture, alpha = validity of the sampled
texels. vispy: the same render in OpenGL, kept as a measured alternative. Renders are kept to
the face's bounding box (:class:`Rendered`), which is all blending needs.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..assets import RES, UVAssets
from ..face import Face
from ..geometry.depth import render_values
from ..geometry.texture import scaled_uv_map, visible_texels
from .texture import FaceTexture, SwapSource, push_pull

BACKENDS = ("numba", "vispy")

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


def texture_rgba(texture: np.ndarray, visibility: np.ndarray | None = None) -> np.ndarray:
    """BGRA texture for rendering: colours filled past their edge, alpha = validity."""
    if texture.ndim != 3 or texture.shape[2] != 3 or texture.shape[0] != texture.shape[1]:
        raise ValueError(f"expected a square S×S×3 texture, got {texture.shape}")
    vis = np.ones(texture.shape[:2], bool) if visibility is None else np.asarray(visibility, bool)
    if vis.shape != texture.shape[:2]:
        raise ValueError(f"visibility {vis.shape} does not match the texture {texture.shape[:2]}")
    filled = push_pull(np.ascontiguousarray(texture, np.uint8), vis)
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
    # Which texels the target shows, against the render's own depth crop: no second raster.
    seen = visible_texels(scaled_uv_map(target.position_map, source.size), depth, source.fm, off)
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
        from ..render.view3d import View3DUnavailable, use_backend
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

