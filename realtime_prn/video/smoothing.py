"""Optional temporal smoothing (One Euro filter) per track, and the jitter measure that judges it.

Why smooth the *position map* rather than each output separately: landmarks, the 43,867
vertices, the colours and the pose are all derived from it, so filtering it once keeps them
mutually consistent (the pose is re-fitted to the smoothed vertices, the drawn landmarks sit
on the drawn mesh). The filter is Casiez et al.'s One Euro: a low-pass whose cutoff rises with
speed, so a still face is held steady and a moving face is followed without visible lag.

The speed that steers the cutoff is one number per face — the mean landmark speed in face
sizes per second — rather than one per element: per-vertex derivatives are mostly noise, the
motion worth following is the head's, and normalising by face size makes the parameters mean
the same for a face filling the frame and a small face across the room.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np


def _alpha(cutoff: float | np.ndarray, dt: float) -> float | np.ndarray:
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """One Euro filter over arrays of any shape (element-wise state, shared or per-element speed).

    ``min_cutoff`` (Hz): smoothing of a still signal (lower = steadier, more lag).
    ``beta``: how fast the cutoff rises with speed (higher = less lag when moving).
    ``d_cutoff`` (Hz): low-pass on the derivative used as speed.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0):
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None
        self.t: float | None = None

    def reset(self) -> None:
        self.x = self.dx = self.t = None

    def __call__(self, x: np.ndarray, t: float, speed: float | None = None,
                 scale: float = 1.0) -> np.ndarray:
        """Filtered ``x`` at time ``t`` (seconds). ``speed``: use this instead of the
        element-wise derivative magnitude; ``scale`` divides the derivative (e.g. face size)."""
        x = np.asarray(x, np.float32)
        if self.x is None or self.t is None or t <= self.t:
            self.x = x.copy()
            self.dx = np.zeros_like(x)
            self.t = t
            return self.x.copy()
        dt = t - self.t
        self.t = t
        dx = (x - self.x) / np.float32(dt)
        self.dx += np.float32(_alpha(self.d_cutoff, dt)) * (dx - self.dx)
        s = np.abs(self.dx) / scale if speed is None else speed
        a = _alpha(self.min_cutoff + self.beta * s, dt)
        self.x += np.asarray(a, np.float32) * (x - self.x)
        return self.x.copy()


class _FaceState:
    def __init__(self, min_cutoff: float, beta: float, d_cutoff: float):
        self.pos = OneEuroFilter(min_cutoff, beta, d_cutoff)
        self.lm_prev: np.ndarray | None = None
        self.speed = 0.0
        self.t: float | None = None


class FaceSmoother:
    """One Euro on each track's position map (hence its landmarks, vertices and pose).

    Call with the faces of a frame and the frame's timestamp; returns new ``Face`` objects
    (the raw ones are left untouched). Faces without a ``track_id`` pass through, as there is
    nothing to smooth them against. A track unseen for ``max_gap`` seconds starts afresh.

    Defaults (min_cutoff 1.0 Hz, beta 6 per face-size/s) were chosen by a sweep over the
    first 300 frames of four eval/videos clips: on the stillest 30 frames they cut the
    landmark jitter by ~60% (d6, d9, d13; ~30% on the talking sadtalker clip, whose "still"
    stretch is mostly real lip motion), for a mean offset from the raw landmarks of ~0.5–1%
    of the face size (p95 ~1–2%, the lag while the head moves). Stronger settings cut more
    jitter but lag visibly; see tools/pipeline_benchmark.py for the measurement.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 6.0, d_cutoff: float = 1.0,
                 max_gap: float = 0.5):
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self.max_gap = max_gap
        self.states: dict[int, _FaceState] = {}

    def reset(self) -> None:
        self.states.clear()

    def __call__(self, faces: list, t: float) -> list:
        out = []
        live = set()
        for face in faces:
            tid = face.track_id
            if tid is None:
                out.append(face)
                continue
            live.add(tid)
            st = self.states.get(tid)
            if st is None or st.t is None or not (0 < t - st.t <= self.max_gap):
                st = self.states[tid] = _FaceState(self.min_cutoff, self.beta, self.d_cutoff)
            lm = face.landmarks[:, :2]
            size = float(np.ptp(lm[:, 0]) + np.ptp(lm[:, 1])) / 2 or 1.0
            if st.lm_prev is not None and st.t is not None:
                dt = t - st.t
                raw = float(np.linalg.norm(lm - st.lm_prev, axis=1).mean()) / size / dt
                st.speed += _alpha(self.d_cutoff, dt) * (raw - st.speed)
            pos = st.pos(face.position_map, t, speed=st.speed)
            st.t = t
            new = dataclasses.replace(face, position_map=pos)
            st.lm_prev = new.landmarks[:, :2].copy()
            out.append(new)
        for tid in [k for k in self.states if k not in live]:
            del self.states[tid]
        return out


# --- the jitter measure -------------------------------------------------------------------------
def face_size(landmarks: np.ndarray) -> np.ndarray:
    """Mean of the landmark box's width and height, per frame (T×68×2 → T)."""
    lm = np.asarray(landmarks)[..., :2]
    return (np.ptp(lm[..., 0], axis=-1) + np.ptp(lm[..., 1], axis=-1)) / 2


def landmark_jitter(landmarks: np.ndarray) -> float:
    """Mean frame-to-frame landmark displacement / face size over a T×68×2 sequence.

    On a still stretch this is jitter; over motion it also counts the motion itself, which is
    why it is measured on the stretch chosen by :func:`still_segment`.
    """
    lm = np.asarray(landmarks, np.float64)[..., :2]
    if len(lm) < 2:
        return float("nan")
    step = np.linalg.norm(np.diff(lm, axis=0), axis=-1).mean(-1)
    return float((step / face_size(lm[1:])).mean())


def still_segment(landmarks: np.ndarray, length: int = 30, window: int = 9) -> tuple[int, int]:
    """(start, stop) of the ``length``-frame stretch with the least *real* head motion.

    Real motion is estimated from a moving average of the landmarks over ``window`` frames,
    which keeps the slow movement of the head and removes the frame-to-frame noise we want to
    measure, so the choice does not favour the stretch that happens to be least noisy.
    """
    lm = np.asarray(landmarks, np.float64)[..., :2]
    n = len(lm)
    if n <= length + window:
        return 0, n
    k = np.ones(window) / window
    flat = lm.reshape(n, -1)
    smooth = np.stack([np.convolve(flat[:, c], k, mode="same") for c in range(flat.shape[1])], 1)
    smooth = smooth.reshape(lm.shape)
    motion = np.linalg.norm(np.diff(smooth, axis=0), axis=-1).mean(-1) / face_size(lm[1:])
    half = window // 2
    if half:
        motion[:half] = motion[-half:] = np.inf  # edges of the moving average are biased
    csum = np.concatenate([[0.0], np.cumsum(np.where(np.isfinite(motion), motion, 1e9))])
    scores = csum[length:] - csum[:-length]
    start = int(np.argmin(scores))
    return start, start + length + 1
