"""The pipeline's last stage: per frame, the JSONL record, per-frame files, the 2D overlay, the
3D view, the depth panel, the annotated video and the live window.

Why its own module: it is the one stage that owns OpenGL and the GUI, so it runs in the calling
thread while :mod:`realtime_prn.video.pipeline` overlaps capture and inference around it.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import VideoError
from ..outputs import OutputKinds, write_face
from ..render.overlay import draw_face, draw_text
from .records import JsonlWriter

if TYPE_CHECKING:
    from .pipeline import FrameResult, PipelineConfig

def parse_per_frame(spec: str | None) -> OutputKinds | None:
    """``"obj,npz"`` → OutputKinds; unknown names are a one-line ValueError."""
    if not spec:
        return None
    from ..outputs import KINDS
    names = [s.strip().lower().replace("-", "_") for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in KINDS]
    if bad:
        raise ValueError(f"unknown per-frame output(s) {', '.join(bad)}; choose from {', '.join(KINDS)}")
    return OutputKinds(**{n: True for n in names})


class Outputs:
    """The last stage: JSONL records, per-frame files, the 2D/3D render, the video, the window.

    Runs in the thread that created it (the GL context lives there).
    """

    def __init__(self, cfg: PipelineConfig, stem: str, fps: float, live: bool, log: Callable):
        self.cfg = cfg
        self.log = log
        self.live = live
        self.fps = fps / max(cfg.every, 1)
        self.out = Path(cfg.output) if cfg.output is not None else None
        self.stem = stem
        self.flags = {"landmarks": cfg.landmarks, "axes": cfg.axes, "boxes": cfg.boxes,
                      "mesh": cfg.mesh, "view3d": cfg.view3d, "smooth": cfg.smooth,
                      "view3d_mode": cfg.view3d_mode, "paused": False, "quit": False}
        self.records: JsonlWriter | None = None
        self.writer = None
        self.video_path: Path | None = None
        self.window = None
        self.renderer = None
        self.per_frame_files = 0
        self._readout: list[str] = []
        # Window and GL first: they are what can fail (one line, View3DUnavailable), and a
        # failure must not leave an empty records file behind.
        if cfg.display:
            from ..render.view3d import LiveWindow
            self.window = LiveWindow(title=f"realtime-prn: {stem}", flags=self.flags)
        if cfg.view3d:
            from ..render.view3d import MeshRenderer
            try:
                self.renderer = MeshRenderer((640, 480), view_angle=cfg.view3d_angle,
                                             canvas=None if self.window is None else self.window.canvas)
            except BaseException:
                if self.window is not None:
                    self.window.close()
                raise
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            if cfg.records:
                self.records = JsonlWriter(self.out / f"{stem}.jsonl")

    @property
    def wants_image(self) -> bool:
        return self.window is not None or (self.out is not None and self.cfg.annotated_video)

    def set_readout(self, lines: list[str]) -> None:
        self._readout = lines

    def write(self, res: FrameResult) -> dict[str, float]:
        t: dict[str, float] = {}
        frame = res.frame
        t0 = time.perf_counter()
        if self.records is not None:
            extra = {"detected": res.detected,
                     "confirmed": [f.track_id for f in res.faces
                                   if f.detection is not None and f.detection.extra.get("confirmed")]}
            if self.live:
                extra["latency_ms"] = round((time.perf_counter() - frame.captured_at) * 1000, 1)
            self.records.write(frame.index, frame.timestamp, res.faces, **extra)
        if self.cfg.per_frame is not None and self.out is not None and self.cfg.per_frame.any():
            for face in res.faces:
                fid = face.track_id if face.track_id is not None else 0
                written = write_face(face, self.out / f"{self.stem}_{frame.index:06d}_{fid}",
                                     self.cfg.per_frame)
                self.per_frame_files += len(written)
        t["records"] = time.perf_counter() - t0
        if not self.wants_image:
            return t
        if self.renderer is None and self.window is not None and self.flags["view3d"]:
            # 'v' in the window turns the 3D view on even when it was not asked for at start
            from ..render.view3d import MeshRenderer
            self.renderer = MeshRenderer((640, 480), view_angle=self.cfg.view3d_angle,
                                         canvas=self.window.canvas)
        # 3D first, so that in "over" mode the 2D annotations stay on top of the mesh.
        img = frame.image.copy()  # faces sample colours from the raw frame: draw on a copy
        view = None
        mode = self.flags.get("view3d_mode", "beside")
        if self.renderer is not None:
            t0 = time.perf_counter()
            if self.flags["view3d"]:
                from ..render.view3d import compose
                view = self.renderer.render(res.faces, frame.image.shape)
                if mode == "over":
                    img = compose(img, view, "over")
            elif mode == "beside":
                view = np.zeros_like(img)  # keep the layout while the 3D view is toggled off
            t["view3d"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for face in res.faces:
            draw_face(img, face, landmarks=self.flags["landmarks"], axes=self.flags["axes"],
                      box=self.flags["boxes"], mesh_points=self.flags["mesh"])
        if self.cfg.readout:
            draw_text(img, self._readout)
        panels = [img] if view is None or mode == "over" else [img, view]
        t["render"] = time.perf_counter() - t0
        if res.depth is not None:
            panels.append(_depth_panel(res.depth))
        composed = panels[0] if len(panels) == 1 else np.hstack(panels)
        t0 = time.perf_counter()
        if self.out is not None and self.cfg.annotated_video:
            if self.writer is None:
                self._open_writer(composed.shape)
            self.writer.write(_fit(composed, self._video_shape))
        t["encode"] = time.perf_counter() - t0
        if self.window is not None:
            t0 = time.perf_counter()
            self.window.show(composed)
            self.window.process_events()
            t["display"] = time.perf_counter() - t0
        return t

    def _open_writer(self, shape) -> None:
        import cv2
        h, w = shape[:2]
        self._video_shape = (h, w)
        self.video_path = self.out / f"{self.stem}_annotated.mp4"
        part = self.video_path.with_suffix(".part.mp4")
        self.writer = cv2.VideoWriter(str(part), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
        if not self.writer.isOpened():
            raise VideoError(f"cannot write video {part} (no mp4v encoder?)")

    def pump(self) -> None:
        """Keep the window responsive while nothing new is shown (paused, waiting)."""
        if self.window is not None:
            self.window.process_events()

    def close(self) -> list[str]:
        files = []
        if self.records is not None:
            self.records.close()
            files.append(str(self.records.path))
        if self.writer is not None:
            self.writer.release()
            self.video_path.with_suffix(".part.mp4").replace(self.video_path)
            files.append(str(self.video_path))
        if self.renderer is not None:
            self.renderer.close()
        if self.window is not None:
            self.window.close()
        return files


def _fit(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A video keeps the size of its first frame; a layout toggled in the window (3D view
    over/beside) is padded or scaled to it rather than silently dropped by the encoder."""
    h, w = shape
    if img.shape[:2] == (h, w):
        return img
    import cv2
    ih, iw = img.shape[:2]
    k = min(h / ih, w / iw, 1.0)
    if k < 1.0:
        img = cv2.resize(img, (max(1, int(iw * k)), max(1, int(ih * k))), interpolation=cv2.INTER_AREA)
    out = np.zeros((h, w, 3), np.uint8)
    out[:img.shape[0], :img.shape[1]] = img
    return out


def _depth_panel(depth: np.ndarray) -> np.ndarray:
    """z-buffer → a colour image (near = warm), black where there is no face."""
    import cv2
    on = depth != 0
    out = np.zeros((*depth.shape, 3), np.uint8)
    if on.any():
        z = depth[on]
        lo, hi = float(z.min()), float(z.max())
        norm = np.zeros(depth.shape, np.uint8)
        norm[on] = np.clip((depth[on] - lo) / max(hi - lo, 1e-6) * 230 + 25, 0, 255).astype(np.uint8)
        out = cv2.applyColorMap(norm, cv2.COLORMAP_INFERNO)
        out[~on] = 0
    return out
