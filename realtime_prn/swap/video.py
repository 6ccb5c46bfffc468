"""Face swap on every frame of a video, stabilised.

The rendered mask is the footprint of one fixed UV region on the target's z-buffered surface,
so it moves only with the geometry — which is why this path smooths the geometry (One Euro on
the position map) and the Poisson colour correction (per vertex, over time,
:class:`_Correction`) rather than the mask.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ..assets import RES
from ..errors import VideoError
from ..face import Face
from ..geometry.depth import render_values
from .blend import BLENDS, blend_local, blend_rendered
from .faces import default_reconstructor, face_area, largest_face, left_to_right
from .faceswap import swap_region
from .flicker import FlickerMeter, FlickerStats
from .render import Rendered, render_swap
from .texture import FaceTexture, ImageLike, SwapSource, face_texture

if TYPE_CHECKING:
    from ..api import FaceReconstructor
    from ..video.tracking import FaceTracker

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".m4v"}
LOSSLESS_SUFFIXES = {".avi", ".mkv"}  # written with FFV1, so untouched pixels stay bit-exact


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
    from ..render.overlay import draw_text
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
    from ..video.capture import open_source
    from ..video.smoothing import FaceSmoother
    from ..video.tracking import FaceTracker

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
    meter = FlickerMeter() if measure else None
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
        largest = max(faces, key=face_area)
        if chosen is not None:
            same = [f for f in faces if f.track_id == chosen]
            # Stay on the chosen face unless another is clearly the larger one.
            if same and face_area(same[0]) >= 0.7 * face_area(largest):
                return same[0]
        return largest
    order = left_to_right(faces)
    i = int(target_index)
    return order[i] if -len(order) <= i < len(order) else None
