"""The capture stage: frames from a webcam, a video file, a stream URL or an image folder,
decoded in their own thread so decoding overlaps the engine.

Two policies, because the two kinds of source want opposite things:

* **live** (webcam index, ``rtsp://`` / ``http://`` … URL): the camera must never wait for us,
  and a frame that is late is worthless. The queue holds ``live_queue`` frames (default 1) and
  a new frame pushes out the oldest one: latency stays at one frame, and ``dropped`` counts
  what was skipped.
* **files and folders**: every frame, in order, none dropped (frame count in = frame count
  out). The queue is bounded so decoding runs only a few frames ahead, and the reader blocks
  when it is full.

Whatever ends the stream — its last frame, a read error, an unplugged camera, a truncated
file, an exception in the source — the consumer gets one :class:`EndOfStream` carrying a
one-line reason; only a source that cannot be opened at all raises (``VideoError``), before
the thread starts, so the CLI can print it as a single ``error:`` line.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from ..errors import VideoError
from ..image import IMAGE_SUFFIXES, ImageError, list_images, read_image

URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


@dataclass
class Frame:
    """One decoded frame: BGR uint8 H×W×3 (OpenCV's order), its index in the source and a
    timestamp in seconds (media time for files, wall time since the start for live sources)."""

    index: int
    timestamp: float
    image: np.ndarray
    decode_s: float = 0.0
    captured_at: float = 0.0  # time.perf_counter() when decoded, for end-to-end latency


@dataclass
class EndOfStream:
    """The stream is over. ``error`` is True when it ended because something failed
    (unreadable, unplugged, truncated) rather than at its natural end or on request."""

    reason: str
    error: bool = False
    frames: int = 0


class Source(Protocol):
    """What the capture thread reads from. ``read()`` returns a frame or ``None`` at the end;
    it may raise, which ends the stream with the exception as the reason."""

    name: str
    live: bool
    fps: float
    stem: str  # a file-name stem for outputs: "camera0", "stream", the video's stem
    frame_count: int  # 0 when unknown (live)

    def read(self) -> np.ndarray | None: ...

    def release(self) -> None: ...


def is_live_spec(spec: str | int | os.PathLike) -> bool:
    """A camera index or a stream URL is live; a path (file or folder) is not."""
    if isinstance(spec, int):
        return True
    s = str(spec)
    return s.isdigit() or s.lower().startswith(URL_SCHEMES)


def _quiet_open(target: str | int) -> cv2.VideoCapture:
    """Open without OpenCV's multi-line backend warnings: a failure is reported in one line."""
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    old = log.getLogLevel() if log is not None else None
    if log is not None:
        log.setLogLevel(log.LOG_LEVEL_ERROR)
    try:
        return cv2.VideoCapture(target)
    finally:
        if log is not None:
            log.setLogLevel(old)


class OpenCVSource:
    """A webcam index, a video file or a stream URL through ``cv2.VideoCapture``.

    For a file, a read failure before the declared frame count is reported as truncation:
    a short file must not look like a clean end.
    """

    def __init__(self, spec: str | int | os.PathLike, live: bool | None = None,
                 width: int | None = None, height: int | None = None,
                 retries: int = 5):
        self.live = is_live_spec(spec) if live is None else live
        if isinstance(spec, int) or str(spec).isdigit():
            target: str | int = int(spec)
            self.name = f"camera {target}"
            self.stem = f"camera{target}"
        elif str(spec).lower().startswith(URL_SCHEMES):
            target = str(spec)
            self.name = target
            self.stem = "stream"
        else:
            path = Path(spec)
            if not path.is_file():
                raise VideoError(f"video not found: {path}")
            target = str(path)
            self.name = path.name
            self.stem = path.stem
        self.cap = _quiet_open(target)
        if not self.cap.isOpened():
            if isinstance(target, int):
                what, why = "camera", "not connected or busy"
            else:
                what = "stream" if self.live else "video"
                why = "unreachable, corrupt or unsupported codec"
            raise VideoError(f"cannot open {what} {spec!s} ({why})")
        if width:
            self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        if self.live:
            # Ask the backend not to buffer behind our back (ignored where unsupported).
            self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else 30.0
        self.frame_count = 0 if self.live else max(int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)
        self.retries = retries
        self._read = 0

    def read(self) -> np.ndarray | None:
        ok, frame = self.cap.read()
        if not ok and self.live:
            # A camera may hiccup once; a run of failures means it is gone.
            for _ in range(self.retries):
                time.sleep(0.02)
                ok, frame = self.cap.read()
                if ok:
                    break
            if not ok:
                raise VideoError(f"{self.name} stopped delivering frames (unplugged or stream lost)")
        if not ok:
            if self.frame_count and self._read < self.frame_count - 1:
                raise VideoError(f"{self.name}: read failed at frame {self._read} of "
                                 f"{self.frame_count} declared (truncated or corrupt file)")
            return None
        self._read += 1
        return frame

    def release(self) -> None:
        self.cap.release()


class FolderSource:
    """Every image of a folder in name order, as frames. An unreadable image ends the stream
    with its name as the reason (rather than silently shifting every later frame index)."""

    live = False

    def __init__(self, folder: str | os.PathLike, fps: float = 25.0):
        folder = Path(folder)
        if not folder.is_dir():
            raise VideoError(f"image folder not found: {folder}")
        self.paths = list_images(folder)
        if not self.paths:
            raise VideoError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
        self.name = folder.name or str(folder)
        self.stem = self.name
        self.fps = fps
        self.frame_count = len(self.paths)
        self._i = 0

    def read(self) -> np.ndarray | None:
        if self._i >= len(self.paths):
            return None
        path = self.paths[self._i]
        self._i += 1
        try:
            return read_image(path)
        except ImageError as exc:
            raise VideoError(str(exc)) from None

    def release(self) -> None:
        pass


def open_source(spec: str | int | os.PathLike, width: int | None = None,
                height: int | None = None) -> Source:
    """The right :class:`Source` for what the user typed: ``0`` (camera), a URL, a folder or
    a video file. Raises ``VideoError`` (one line) when it cannot be opened."""
    if is_live_spec(spec):
        return OpenCVSource(spec, live=True, width=width, height=height)
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path)
    if not path.exists():
        raise VideoError(f"source not found: {spec} (give a camera index, a video file, "
                         f"an image folder or an rtsp/http URL)")
    return OpenCVSource(path, live=False)


class Capture:
    """Reads ``source`` in a daemon thread; iterate it (or call :meth:`get`) for frames.

    ``max_frames`` stops after that many frames (a clean end). ``stop()`` is safe from any
    thread and always joins the reader, so no thread outlives the pipeline.
    """

    def __init__(self, source: Source, max_frames: int | None = None, live_queue: int = 1,
                 file_queue: int = 8, live: bool | None = None):
        self.source = source
        self.live = source.live if live is None else live
        self.max_frames = max_frames or None
        self.queue: queue.Queue = queue.Queue(maxsize=live_queue if self.live else file_queue)
        self.dropped = 0
        self.decoded = 0
        self.end: EndOfStream | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"capture:{source.name}", daemon=True)
        self._t0 = 0.0

    @property
    def fps(self) -> float:
        return self.source.fps

    @property
    def frame_count(self) -> int:
        n = self.source.frame_count
        return min(n, self.max_frames) if n and self.max_frames else (n or (self.max_frames or 0))

    def start(self) -> Capture:
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    # -- reader thread --------------------------------------------------------------------------
    def _run(self) -> None:
        end: EndOfStream
        index = 0
        try:
            while not self._stop.is_set():
                if self.max_frames and index >= self.max_frames:
                    end = EndOfStream(f"stopped after {index} frames (max frames)", frames=index)
                    break
                t0 = time.perf_counter()
                image = self.source.read()
                t1 = time.perf_counter()
                if image is None:
                    end = EndOfStream(f"end of {self.source.name} after {index} frames", frames=index)
                    break
                ts = t1 - self._t0 if self.live else index / self.source.fps
                self._put(Frame(index, ts, image, t1 - t0, t1))
                index += 1
                self.decoded = index
            else:
                end = EndOfStream(f"stopped after {index} frames", frames=index)
        except BaseException as exc:  # any failure of the source ends the stream, with its reason
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            end = EndOfStream(f"{self.source.name} failed after {index} frames: {msg}", error=True,
                              frames=index)
        finally:
            try:
                self.source.release()
            except Exception:  # releasing a broken device must not hide why it broke
                pass
        self.end = end
        self._put(end, final=True)

    def _put(self, item: Frame | EndOfStream, final: bool = False) -> None:
        if self.live:
            # Never block the camera: make room by dropping the oldest (stale) frame.
            while True:
                try:
                    self.queue.put_nowait(item)
                    return
                except queue.Full:
                    try:
                        old = self.queue.get_nowait()
                        if isinstance(old, Frame):
                            with self._lock:
                                self.dropped += 1
                    except queue.Empty:
                        pass
        # Files: block until there is room, but wake up to notice stop().
        while True:
            try:
                self.queue.put(item, timeout=0.05)
                return
            except queue.Full:
                if self._stop.is_set() and not final:
                    return
                if self._stop.is_set() and final:
                    # Nobody is reading any more; drop a frame so the end marker fits.
                    try:
                        self.queue.get_nowait()
                    except queue.Empty:
                        pass

    # -- consumer side --------------------------------------------------------------------------
    def get(self, timeout: float | None = None) -> Frame | EndOfStream:
        """The next frame, or the :class:`EndOfStream`; waits up to ``timeout`` seconds and
        reports a stall as an end of stream (with ``error=True``) rather than hanging."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return EndOfStream(f"{self.source.name}: no frame for {timeout:.0f} s (source stalled)",
                               error=True, frames=self.decoded)

    def poll(self, timeout: float) -> Frame | EndOfStream | None:
        """Like :meth:`get` but ``None`` when nothing came within ``timeout`` (for callers
        that wait in slices so they can notice a stop request)."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def __iter__(self) -> Iterator[Frame]:
        """Frames until the end; afterwards :attr:`end` says why it ended."""
        while True:
            item = self.get()
            if isinstance(item, EndOfStream):
                self.end = item
                return
            yield item

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the reader to finish and wait for it (it releases the source itself)."""
        self._stop.set()
        # Unblock a file reader waiting on a full queue.
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
