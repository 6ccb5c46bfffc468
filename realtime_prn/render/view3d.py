"""The 3D view: each face's dense mesh (vertex colours, lit) with its head-pose axes, in vispy.

One renderer serves both uses: it always draws into an offscreen framebuffer and reads the
image back, so the same pixels go into a live window (:class:`LiveWindow`, beside the
annotated 2D view) and into the headless output video (composed beside or over the 2D view).
Headless, vispy runs on EGL with ``EGL_PLATFORM=surfaceless`` — Mesa's llvmpipe on a machine
without a GPU or display (~16 ms for one 43k-vertex face at 640×480 on 2 cores).

Shading uses screen-space derivatives of the interpolated position for the normal
(``cross(dFdx(p), dFdy(p))``), so no per-frame normal computation is needed on the CPU; with
PRN's ~87k tiny triangles the facets are invisible.

Coordinates are the frame's: x right, y down, z toward the camera, in frame pixels; the
projection is orthographic and aligned with the frame, so "over" composition lines up with
the picture and ``view_angle`` turns the mesh about its own centre to show its depth.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import cv2
import numpy as np


class View3DUnavailable(RuntimeError):
    """The 3D view cannot run here (no EGL / no GUI backend); the message is one line."""


_APP: str | None = None


def _display_available() -> bool:
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def use_backend(display: bool) -> str:
    """Select vispy's app backend once per process: a GUI toolkit for a window, EGL offscreen.

    Raises :class:`View3DUnavailable` with what to install when neither works.
    """
    global _APP
    if display and not _display_available():
        raise View3DUnavailable("no display (DISPLAY is not set); run with --no-display")
    if "tensorflow" in sys.modules:
        # TensorFlow's bundled LLVM and Mesa's (llvmpipe) crash one process that loads both.
        raise View3DUnavailable("the 3D view cannot share a process with TensorFlow (its LLVM "
                                "clashes with Mesa's); use --engine onnxruntime or tensorrt")
    if _APP is not None:
        if display and _APP == "egl":
            raise View3DUnavailable("the offscreen (EGL) backend is already in use in this "
                                    "process; a window needs a fresh process")
        return _APP
    try:
        import vispy
        from vispy import app
    except ImportError as exc:
        raise View3DUnavailable(f"the 3D view needs vispy ({exc}); pip install vispy") from None
    if display:
        for name in ("glfw", "pyqt6", "pyside6", "pyqt5", "pyglet", "sdl2"):
            try:
                vispy.use(app=name)
                app.use_app(name)
                _APP = name
                return name
            except Exception:
                continue
        raise View3DUnavailable("no GUI backend for vispy (pip install glfw, or PyQt6); "
                                "or run with --no-display")
    os.environ.setdefault("EGL_PLATFORM", "surfaceless")
    try:
        vispy.use(app="egl")
        app.use_app("egl")
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise View3DUnavailable(
            f"offscreen 3D rendering needs EGL ({msg}); install libegl1 libegl-mesa0 "
            f"libgl1-mesa-dri libgl1, or leave out --view3d") from None
    _APP = "egl"
    return "egl"


_MESH_VS = """
uniform vec3 u_scale;
uniform vec3 u_offset;
uniform vec3 u_center;
uniform mat3 u_rot;
attribute vec3 a_position;
attribute vec3 a_color;
varying vec3 v_color;
varying vec3 v_pos;
void main() {
    vec3 p = u_rot * (a_position - u_center) + u_center;
    v_pos = p;
    v_color = a_color;
    gl_Position = vec4(p * u_scale + u_offset, 1.0);
}
"""

_MESH_FS = """
uniform vec3 u_light;
uniform float u_ambient;
uniform float u_use_color;
varying vec3 v_color;
varying vec3 v_pos;
void main() {
    vec3 n = normalize(cross(dFdx(v_pos), dFdy(v_pos)));
    if (n.z < 0.0) n = -n;                 /* toward the viewer (+z) */
    vec3 l = normalize(u_light);
    float diff = max(dot(n, l), 0.0);
    vec3 h = normalize(l + vec3(0.0, 0.0, 1.0));
    float spec = pow(max(dot(n, h), 0.0), 24.0) * 0.25;
    vec3 base = mix(vec3(0.78, 0.76, 0.74), v_color, u_use_color);
    gl_FragColor = vec4(base * (u_ambient + (1.0 - u_ambient) * diff) + spec, 1.0);
}
"""

_LINE_VS = """
uniform vec3 u_scale;
uniform vec3 u_offset;
attribute vec3 a_position;
attribute vec3 a_color;
varying vec3 v_color;
void main() {
    v_color = a_color;
    gl_Position = vec4(a_position * u_scale + u_offset, 1.0);
}
"""

_LINE_FS = """
varying vec3 v_color;
void main() { gl_FragColor = vec4(v_color, 1.0); }
"""


def _sample_colors(image_bgr: np.ndarray, v: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] at each vertex's rounded pixel (as ``Face.colors``, for a subset only)."""
    h, w = image_bgr.shape[:2]
    x = np.clip(np.rint(v[:, 0]).astype(np.intp), 0, w - 1)
    y = np.clip(np.rint(v[:, 1]).astype(np.intp), 0, h - 1)
    return image_bgr[y, x, ::-1].astype(np.float32) * np.float32(1 / 255)


def _rot_y(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]],
                    np.float32)


class MeshRenderer:
    """Renders faces into an image of the frame's size (BGR uint8, like every frame here).

    ``colors``: vertex colours from the frame (True) or a plain clay shade (False).
    ``view_angle``: degrees to turn each mesh about its vertical axis (0 = as seen).
    ``stride``: draw every ``stride``-th UV row and column (2 → ~11k vertices, ~22k
    triangles). llvmpipe's cost is mostly per triangle, so stride 2 is about 3× faster with no
    visible loss at video sizes; stride 1 draws the full 43,867-vertex mesh.
    ``canvas``: an existing vispy canvas whose GL context to use (the live window); by
    default a hidden one is made on the EGL backend.
    """

    def __init__(self, size: tuple[int, int], colors: bool = True, axes: bool = True,
                 view_angle: float = 0.0, background=(24, 24, 24), canvas=None, stride: int = 2):
        if canvas is None:
            use_backend(display=False)
        try:
            from vispy import app, gloo
            self.gloo = gloo
            self.canvas = canvas or app.Canvas(size=size, show=False, keys=None)
            self.canvas.set_current()
            self.mesh = gloo.Program(_MESH_VS, _MESH_FS)
            self.lines = gloo.Program(_LINE_VS, _LINE_FS)
        except View3DUnavailable:
            raise
        except Exception as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise View3DUnavailable(f"cannot create an OpenGL context for the 3D view: {msg}") from None
        self.colors = colors
        self.axes = axes
        self.view_angle = view_angle
        self.background = np.asarray(background[::-1], np.float32) / 255.0  # BGR → RGB
        self.stride = max(int(stride), 1)
        self._index = None
        self._sub: tuple[int, np.ndarray | None] | None = None  # (id(assets), vertex subset)
        self._fbo = None
        self._size: tuple[int, int] | None = None

    def _ensure_target(self, w: int, h: int) -> None:
        if self._size == (w, h):
            return
        g = self.gloo
        self._fbo = g.FrameBuffer(color=g.RenderBuffer((h, w, 4)), depth=g.RenderBuffer((h, w)))
        self._size = (w, h)

    def render(self, faces: list, frame_shape: tuple[int, ...]) -> np.ndarray:
        """The 3D view of ``faces`` as an H×W×3 BGR uint8 image (background where no face)."""
        h, w = frame_shape[:2]
        g = self.gloo
        self.canvas.set_current()
        self._ensure_target(w, h)
        scale = np.array([2.0 / w, -2.0 / h, -1.0 / (2.0 * max(w, h))], np.float32)
        with self._fbo:
            g.set_viewport(0, 0, w, h)
            g.set_state(depth_test=True, blend=False, cull_face=False)
            g.set_clear_color((*self.background, 1.0))
            g.clear(color=True, depth=True)
            if faces:
                zc = float(np.mean([f.vertices[:, 2].mean() for f in faces]))
                offset = np.array([-1.0, 1.0, zc / (2.0 * max(w, h))], np.float32)
                for face in faces:
                    self._draw_face(face, scale, offset)
                if self.axes:
                    g.set_state(depth_test=False)
                    self._draw_axes(faces, scale, offset)
            img = self._fbo.read(alpha=False)
        return np.ascontiguousarray(img[..., ::-1])

    def _subset(self, face) -> np.ndarray | None:
        """Vertex subset and its triangulation for ``stride``, built once per asset set."""
        if self._sub is not None and self._sub[0] == id(face.assets):
            return self._sub[1]
        g = self.gloo
        if self.stride == 1:
            vidx, tri = None, face.triangles
        else:
            from ..assets import grid_triangles
            mask = face.assets.face_mask[::self.stride, ::self.stride]
            tri = grid_triangles(mask)
            rr, cc = np.nonzero(mask)  # row-major, the order grid_triangles indexes
            flat = rr * self.stride * face.assets.face_mask.shape[1] + cc * self.stride
            vidx = np.searchsorted(face.assets.face_ind, flat)
        self._index = g.IndexBuffer(np.ascontiguousarray(tri, np.uint32))
        self._sub = (id(face.assets), vidx)
        return vidx

    def _draw_face(self, face, scale: np.ndarray, offset: np.ndarray) -> None:
        vidx = self._subset(face)
        v = face.vertices if vidx is None else face.vertices[vidx]
        v = np.ascontiguousarray(v, np.float32)
        p = self.mesh
        p["a_position"] = v
        if self.colors:
            p["a_color"] = _sample_colors(face.image, v)
        else:
            p["a_color"] = np.zeros_like(v)
        p["u_use_color"] = 1.0 if self.colors else 0.0
        p["u_scale"] = scale
        p["u_offset"] = offset
        p["u_center"] = v.mean(0)
        p["u_rot"] = _rot_y(self.view_angle).T  # numpy rows → GL columns
        p["u_light"] = (0.3, -0.4, 1.0)           # frame axes: from upper right, toward the viewer
        p["u_ambient"] = 0.35
        p.draw("triangles", self._index)

    def _draw_axes(self, faces: list, scale: np.ndarray, offset: np.ndarray) -> None:
        pts, cols = [], []
        rot_view = _rot_y(self.view_angle)
        for face in faces:
            lm = face.landmarks
            centre = face.vertices.mean(0).astype(np.float32)
            origin = (rot_view @ (lm[30] - centre) + centre).astype(np.float32)
            length = float(np.ptp(lm[:, 0]) + np.ptp(lm[:, 1])) / 4
            r = rot_view @ face.pose.rotation
            for axis, col in ((0, (1, 0, 0)), (1, (0, 1, 0)), (2, (0, 0.4, 1))):
                pts += [origin, origin + r[:, axis].astype(np.float32) * length]
                cols += [col, col]
        self.lines["a_position"] = np.asarray(pts, np.float32)
        self.lines["a_color"] = np.asarray(cols, np.float32)
        self.lines["u_scale"] = scale
        self.lines["u_offset"] = offset
        self.gloo.gl.glLineWidth(3.0)
        self.lines.draw("lines")

    def close(self) -> None:
        try:
            self.canvas.close()
        except Exception:
            pass


def compose(view2d: np.ndarray, view3d: np.ndarray | None, mode: str = "beside",
            background=(24, 24, 24), alpha: float = 0.75) -> np.ndarray:
    """Put the 3D view next to (``beside``) or onto (``over``) the annotated frame."""
    if view3d is None:
        return view2d
    if mode == "beside":
        return np.hstack([view2d, view3d])
    if mode == "over":
        mask = np.any(view3d != np.asarray(background[::-1], np.uint8)[None, None], axis=2)
        out = view2d.copy()
        blended = cv2.addWeighted(view2d, 1 - alpha, view3d, alpha, 0)
        out[mask] = blended[mask]
        return out
    raise ValueError(f"unknown 3D view mode {mode!r}; use 'beside' or 'over'")


def egl_available() -> str | None:
    """None when offscreen rendering works here, else the one-line reason (for tests/CLIs).

    Probed in a child process, so asking never initialises EGL in the caller (which may
    later load TensorFlow, and the two cannot share a process).
    """
    import subprocess
    code = ("from realtime_prn.render.view3d import MeshRenderer, View3DUnavailable\n"
            "try:\n    MeshRenderer((32, 32)).close()\n"
            "except View3DUnavailable as e:\n    print(e); raise SystemExit(3)\n")
    root = str(Path(__file__).resolve().parent.parent.parent)
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         timeout=120)
    if res.returncode == 0:
        return None
    lines = (res.stdout.strip() or res.stderr.strip() or "EGL probe crashed").splitlines()
    return lines[-1]


class LiveWindow:
    """A vispy window showing the composed view; keys toggle what the pipeline draws.

    q / Esc quit, space pause, l landmarks, m mesh points, a axes, b boxes, v 3D view,
    o 3D beside/over, s smoothing. The window only displays and records keys; the pipeline
    reads :attr:`flags` and calls :meth:`show` with each composed frame.
    """

    KEYS = {"l": "landmarks", "m": "mesh", "a": "axes", "b": "boxes", "v": "view3d", "s": "smooth"}

    def __init__(self, title: str = "realtime-prn", size: tuple[int, int] = (960, 540),
                 flags: dict | None = None):
        use_backend(display=True)
        from vispy import app, gloo

        self.app = app
        self.gloo = gloo
        self.flags = flags if flags is not None else {}
        self.flags.setdefault("paused", False)
        self.flags.setdefault("quit", False)
        self.canvas = app.Canvas(title=title, size=size, keys=None, show=True)
        self.canvas.events.key_press.connect(self._on_key)
        self.canvas.events.draw.connect(self._on_draw)
        self.canvas.events.close.connect(lambda ev: self.flags.update(quit=True))
        self._prog = gloo.Program(
            """attribute vec2 a_pos; attribute vec2 a_uv; varying vec2 v_uv;
               void main() { v_uv = a_uv; gl_Position = vec4(a_pos, 0.0, 1.0); }""",
            """uniform sampler2D u_tex; varying vec2 v_uv;
               void main() { gl_FragColor = texture2D(u_tex, v_uv); }""")
        self._prog["a_pos"] = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]], np.float32)
        self._prog["a_uv"] = np.array([[0, 1], [1, 1], [0, 0], [1, 0]], np.float32)
        self._tex = None

    def _on_key(self, ev) -> None:
        key = (ev.text or "").lower() if ev.text else ""
        name = getattr(ev.key, "name", "")
        if key == "q" or name == "Escape":
            self.flags["quit"] = True
            self.canvas.close()
        elif key == " " or name == "Space":
            self.flags["paused"] = not self.flags["paused"]
        elif key == "o":
            self.flags["view3d_mode"] = "over" if self.flags.get("view3d_mode") == "beside" else "beside"
        elif key in self.KEYS:
            k = self.KEYS[key]
            self.flags[k] = not self.flags.get(k, False)

    def show(self, image_bgr: np.ndarray) -> None:
        rgb = np.ascontiguousarray(image_bgr[..., ::-1])
        if self._tex is None or self._tex.shape[:2] != rgb.shape[:2]:
            h, w = rgb.shape[:2]
            self.canvas.size = (w, h)  # one window pixel per frame pixel; resizable after
            self._tex = self.gloo.Texture2D(rgb, interpolation="linear")
            self._prog["u_tex"] = self._tex
        else:
            self._tex.set_data(rgb)
        self.canvas.update()

    def _on_draw(self, ev) -> None:
        self.gloo.set_viewport(0, 0, *self.canvas.physical_size)
        self.gloo.clear("black")
        if self._tex is not None:
            self._prog.draw("triangle_strip")

    def process_events(self) -> None:
        self.app.process_events()

    def close(self) -> None:
        try:
            self.canvas.close()
        except Exception:
            pass

