"""The real-time pipeline, stage by stage:

    capture ─► detect/track ─► crop ─► engine ─► geometry ─► outputs / render
    (thread)    (FaceTracker)    (FaceReconstructor.reconstruct_detections)
                                                  pose (all vertices), depth (numba, when a
                                                  depth view is on), optional smoothing
                                                             annotated mp4, JSONL, .obj/.npz,
                                                             3D view, live window

Three threads, each owning one kind of work so that they overlap on a 2-core machine:
the capture thread decodes (``capture.py``), the *inference* thread runs
detect/track → crop → engine → geometry (:meth:`Pipeline.process`), and the calling thread
runs the outputs (``frame_outputs.py``), which also own the OpenGL context and the window —
OpenGL contexts and GUI toolkits want one thread. ``overlap=False`` runs inference and
outputs in the calling thread, one frame at a time (simpler to time, no result queue).

Every way of stopping — end of stream, the source failing, Ctrl-C, 'q' in the window, an
exception — goes through one ``finally`` that stops the capture thread, joins the inference
thread, flushes the records and closes the video, then prints one line saying why it stopped.
"""
from __future__ import annotations

import os
import queue
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..detectors.base import Detection
from ..outputs import OutputKinds
from .capture import Capture, EndOfStream, Frame, Source, open_source
from .frame_outputs import Outputs
from .smoothing import FaceSmoother
from .tracking import FaceTracker, landmark_box

# "detect" is every frame's detect/track step (mostly the tracker's bookkeeping);
# "detector" only the frames where the detector itself ran, so its cost is not hidden by
# the median over tracked frames.
STAGES = ("decode", "detect", "detector", "crop", "engine", "restore", "smooth", "pose", "depth",
          "render", "view3d", "encode", "display", "records")


@dataclass
class PipelineConfig:
    """What to run and what to write. ``source``: camera index, file, URL, folder or a
    :class:`Source`. ``output``: folder for ``<stem>_annotated.mp4`` and ``<stem>.jsonl``
    (nothing written when None). ``per_frame``: per-face files for every processed frame."""

    source: str | int | os.PathLike | Source = 0
    output: str | os.PathLike | None = None
    stem: str | None = None
    detect_every: int = 10
    smooth: bool = False
    display: bool = False
    view3d: bool = False
    view3d_mode: str = "beside"        # beside | over
    view3d_angle: float = 0.0
    depth_view: bool = False
    annotated_video: bool = True       # when output is set
    records: bool = True               # when output is set
    per_frame: OutputKinds | None = None
    max_frames: int | None = None
    every: int = 1
    progress: bool = True
    overlap: bool = True
    landmarks: bool = True
    axes: bool = True
    boxes: bool = True
    mesh: bool = False
    readout: bool = True
    stall_timeout: float = 20.0
    max_faces: int = 0
    tracker_options: dict = field(default_factory=dict)
    smoother_options: dict = field(default_factory=dict)


@dataclass
class FrameResult:
    """What the inference thread hands to the outputs for one frame."""

    frame: Frame
    faces: list
    detected: bool
    timings: dict[str, float]
    depth: np.ndarray | None = None


@dataclass
class RunSummary:
    frames: int = 0
    faces: int = 0
    elapsed_s: float = 0.0
    mean_fps: float = 0.0
    median_fps: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)
    end_reason: str = ""
    error: bool = False
    interrupted: bool = False
    dropped: int = 0
    detector_runs: int = 0
    files: list[str] = field(default_factory=list)
    per_frame_files: int = 0

    def line(self) -> str:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in self.stage_ms.items())
        drop = f", {self.dropped} stale frame(s) dropped" if self.dropped else ""
        return (f"{self.frames} frame(s), {self.faces} face(s) in {self.elapsed_s:.1f} s: "
                f"{self.mean_fps:.1f} fps mean, {self.median_fps:.1f} fps median{drop}; "
                f"median ms per frame: {stages}")

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class _Stop(Exception):
    """Raised inside the loop to leave it through the common shutdown path."""


class Pipeline:
    """Wires the stages for one source; :meth:`run` processes it to the end and returns a
    :class:`RunSummary`. ``recon`` is a :class:`FaceReconstructor` (its engine and detector)."""

    def __init__(self, recon, config: PipelineConfig, log: Callable[[str], None] | None = None):
        self.recon = recon
        self.cfg = config
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.tracker = FaceTracker(recon.detector, detect_every=config.detect_every,
                                   max_faces=config.max_faces or recon.options.max_faces,
                                   **config.tracker_options)
        self.smoother = FaceSmoother(**config.smoother_options)
        self.flags: dict = {"smooth": config.smooth}
        self.timings: dict[str, list[float]] = {k: [] for k in STAGES}
        self._stop = threading.Event()
        self._interrupted = False

    # -- the stages before the outputs, for one frame ---------------------------------------------
    def process(self, frame: Frame) -> FrameResult:
        """detect/track → crop → engine → restore → (smooth) → geometry, for one frame."""
        t: dict[str, float] = {"decode": frame.decode_s}
        t0 = time.perf_counter()
        dets: list[Detection] = self.tracker.detect(frame.image)
        t["detect"] = time.perf_counter() - t0
        if self.tracker.detected_last:
            t["detector"] = t["detect"]

        faces = self.recon.reconstruct_detections(frame.image, dets)   # crop, engine, restore
        for k in ("crop", "engine", "restore"):
            t[k] = self.recon.timings.get(k, 0.0)

        self.tracker.update(faces, frame.image.shape)  # raw landmarks → next frame's crop
        faces = [f for f in faces if f.detection is None or "lost" not in f.detection.extra]

        if self.flags.get("smooth"):
            t0 = time.perf_counter()
            faces = self.smoother(faces, frame.timestamp)
            t["smooth"] = time.perf_counter() - t0
        for face in faces:
            if face.detection is not None and not face.detection.extra.get("confirmed"):
                # Unless the detector just saw it, a face's box is its own landmark box.
                face.detection.box = landmark_box(face.landmarks)

        t0 = time.perf_counter()
        for face in faces:
            face.pose  # noqa: B018 — all 43,867 vertices, computed here so it is timed here
        t["pose"] = time.perf_counter() - t0

        depth = None
        if self.cfg.depth_view:
            t0 = time.perf_counter()
            from ..geometry.depth import depth_image
            h, w = frame.image.shape[:2]
            zbuf = np.full((h, w), -np.inf, np.float32)
            for face in faces:
                depth = depth_image(face.vertices, face.triangles, h, w, depth=zbuf)
            if depth is None:
                depth = np.zeros((h, w), np.float32)
            t["depth"] = time.perf_counter() - t0
        return FrameResult(frame, faces, self.tracker.detected_last, t, depth)

    # -- the run -----------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        cfg = self.cfg
        self._stop.clear()
        self._interrupted = False
        self.timings = {k: [] for k in STAGES}
        self.tracker.reset()
        self.smoother.reset()
        source = cfg.source if hasattr(cfg.source, "read") else open_source(cfg.source)
        stem = cfg.stem or _stem_of(cfg.source, source)
        # Files stop after max_frames read; live sources after max_frames *processed*
        # (a live source drops frames, so counting reads would end a run almost at once).
        capture = Capture(source, max_frames=None if source.live else cfg.max_frames)
        try:
            outputs = Outputs(cfg, stem, source.fps, capture.live, self.log)
        except BaseException:
            source.release()
            raise
        self.flags = outputs.flags
        summary = RunSummary()
        results: queue.Queue = queue.Queue(maxsize=2)
        worker_error: list[BaseException] = []
        worker = None
        bar = None
        out_times: list[float] = []
        end: EndOfStream | None = None
        t_start = time.perf_counter()
        old_sigint = self._install_sigint()
        try:
            self._warm_up()
            capture.start()
            total = capture.frame_count if not capture.live else None
            if cfg.progress:
                from tqdm import tqdm
                bar = tqdm(total=(total // max(cfg.every, 1)) if total else None, desc=stem,
                           unit="frame", file=sys.stderr, dynamic_ncols=True)
            if cfg.overlap:
                worker = threading.Thread(target=self._infer_loop,
                                          args=(capture, results, worker_error),
                                          name="inference", daemon=True)
                worker.start()
                next_result = lambda: self._next_from(results, outputs)  # noqa: E731
            else:
                next_result = lambda: self._next_inline(capture)  # noqa: E731
            while True:
                item = next_result()
                if isinstance(item, EndOfStream):
                    end = item
                    break
                t_out = outputs.write(item)
                item.timings.update(t_out)
                self._account(item, summary)
                out_times.append(time.perf_counter())
                outputs.set_readout(self._readout(out_times, item, capture))
                if bar is not None:
                    bar.update(1)
                    if len(out_times) % 10 == 0:
                        bar.set_postfix_str(f"{_fps(out_times):.1f} fps", refresh=False)
                if outputs.flags.get("quit"):
                    raise _Stop("quit from the window")
                if capture.live and cfg.max_frames and summary.frames >= cfg.max_frames:
                    raise _Stop(f"stopped after {summary.frames} frames (max frames)")
                while outputs.flags.get("paused") and not outputs.flags.get("quit"):
                    self._check_interrupt()
                    outputs.pump()
                    time.sleep(0.02)
                self._check_interrupt()
        except _Stop as stop:
            summary.end_reason = str(stop)
        except KeyboardInterrupt:
            summary.interrupted = True
            summary.end_reason = "interrupted (Ctrl-C)"
        finally:
            if old_sigint is not None:
                signal.signal(signal.SIGINT, old_sigint)
            self._stop.set()
            capture.stop()
            if worker is not None:
                _drain(results)
                worker.join(10)
                _drain(results)
            if bar is not None:
                bar.close()
            summary.files = outputs.close()
            summary.per_frame_files = outputs.per_frame_files
        if worker_error:
            raise worker_error[0]
        if end is not None:
            summary.end_reason = end.reason
            summary.error = end.error
        self._finish(summary, out_times, t_start, capture)
        msg = summary.end_reason
        if summary.error:
            kept = (f"the {summary.frames} frame(s) before it were written" if summary.frames
                    else "no frame was processed")
            msg = f"stopped: {msg}; {kept}"
        elif summary.interrupted:
            msg = f"interrupted after {summary.frames} frame(s); records flushed"
        self.log(msg)
        return summary

    def _warm_up(self) -> None:
        """First calls are slow (numba loads its kernels, ONNX Runtime allocates): pay them
        before the camera starts, not on the first live frame (measured ~0.9 s for pose)."""
        from ..geometry.pose import estimate_pose
        canon = self.recon.assets.canonical_vertices
        estimate_pose(canon, canon)
        self.recon.engine.infer(np.zeros((1, 256, 256, 3), np.float32))
        self.tracker.detector.detect(np.zeros((64, 64, 3), np.uint8))

    def _install_sigint(self):
        """Ctrl-C sets a flag that the loop checks between frames, so a frame is always
        written whole (record, video frame, files) or not at all; a second Ctrl-C raises at
        once. Only the main thread may install handlers; elsewhere Ctrl-C is left as it is."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def on_sigint(signum, frame):
            if self._interrupted:
                raise KeyboardInterrupt
            self._interrupted = True

        return signal.signal(signal.SIGINT, on_sigint)

    def _check_interrupt(self) -> None:
        if self._interrupted:
            raise KeyboardInterrupt

    def _infer_loop(self, capture: Capture, results: queue.Queue, errors: list) -> None:
        """The inference thread: frames in order → FrameResults; ends with an EndOfStream."""
        try:
            while not self._stop.is_set():
                item = self._next_inline(capture)
                if not self._put(results, item):
                    return
                if isinstance(item, EndOfStream):
                    return
        except BaseException as exc:  # a bug or engine failure: hand it to the caller
            errors.append(exc)
            self._put(results, EndOfStream(f"inference failed: {exc}", error=True))

    def _next_inline(self, capture: Capture) -> FrameResult | EndOfStream:
        while True:
            item = self._next_frame(capture)
            if isinstance(item, EndOfStream):
                return item
            if item.index % max(self.cfg.every, 1):
                continue
            return self.process(item)

    def _next_frame(self, capture: Capture) -> Frame | EndOfStream:
        """Wait for the next frame in short slices, so a stop or Ctrl-C is noticed at once and
        a source that stalls for ``stall_timeout`` seconds ends the run instead of hanging."""
        waited = 0.0
        while True:
            if self._stop.is_set():
                return EndOfStream("stopped")
            if threading.current_thread() is threading.main_thread():
                self._check_interrupt()
            item = capture.poll(0.1)
            if item is not None:
                return item
            waited += 0.1
            if waited >= self.cfg.stall_timeout:
                return EndOfStream(f"{capture.source.name}: no frame for "
                                   f"{self.cfg.stall_timeout:.0f} s (source stalled)", error=True)

    def _put(self, results: queue.Queue, item) -> bool:
        while not self._stop.is_set():
            try:
                results.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _next_from(self, results: queue.Queue, outputs: Outputs):
        while True:
            self._check_interrupt()
            try:
                return results.get(timeout=0.02)
            except queue.Empty:
                outputs.pump()
                if outputs.flags.get("quit"):
                    raise _Stop("quit from the window") from None

    def _account(self, res: FrameResult, summary: RunSummary) -> None:
        summary.frames += 1
        summary.faces += len(res.faces)
        for k, v in res.timings.items():
            if k in self.timings:
                self.timings[k].append(v)

    def _readout(self, out_times: list[float], res: FrameResult, capture: Capture) -> list[str]:
        """Two short lines (they must fit a 480-px frame): rate and faces, then stage ms."""
        t = res.timings
        ms = lambda k: t.get(k, 0.0) * 1000  # noqa: E731
        first = f"{_fps(out_times):.1f} fps  faces {len(res.faces)}"
        if capture.live:
            first += (f"  latency {(time.perf_counter() - res.frame.captured_at) * 1000:.0f} ms"
                      f"  dropped {capture.dropped}")
        if self.flags.get("smooth"):
            first += "  smooth"
        second = (f"ms: det {ms('detect'):.0f} crop {ms('crop'):.0f} eng {ms('engine'):.0f} "
                  f"pose {ms('pose'):.0f} draw {ms('render') + ms('view3d'):.0f} "
                  f"enc {ms('encode'):.0f}")
        return [first, second]

    def _finish(self, summary: RunSummary, out_times: list[float], t_start: float,
                capture: Capture) -> None:
        summary.elapsed_s = time.perf_counter() - t_start
        if len(out_times) >= 2:
            span = out_times[-1] - out_times[0]
            summary.mean_fps = (len(out_times) - 1) / span if span > 0 else 0.0
            summary.median_fps = 1.0 / max(statistics.median(np.diff(out_times)), 1e-9)
        summary.stage_ms = {k: statistics.median(v) * 1000 for k, v in self.timings.items() if v}
        summary.dropped = capture.dropped
        summary.detector_runs = self.tracker.detector_runs


def _fps(out_times: list[float], window: int = 30) -> float:
    if len(out_times) < 2:
        return 0.0
    recent = out_times[-window:]
    span = recent[-1] - recent[0]
    return (len(recent) - 1) / span if span > 0 else 0.0


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


def _stem_of(spec, source: Source) -> str:
    stem = getattr(source, "stem", None)
    if stem:
        return str(stem)
    return str(getattr(source, "name", "source")).replace(" ", "_").replace("/", "_")


def run_pipeline(recon, log: Callable[[str], None] | None = None, **config) -> RunSummary:
    """One call: ``run_pipeline(recon, source='video.mp4', output='out', smooth=True)``."""
    return Pipeline(recon, PipelineConfig(**config), log=log).run()
