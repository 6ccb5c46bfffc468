"""Tracking as a detector wrapper: detect every N frames, crop from last frame's landmarks between.

The detector is the expensive and jittery part of a per-frame pipeline, and PRN already
returns 68 landmarks for every face: as 3DDFA_V2 does, the crop for frame *t* comes from the
landmarks found in frame *t − 1* (PRN's own landmark crop rule), and the detector runs only
every ``detect_every`` frames — or at once when a track is lost or unconfirmed — to pick up
new faces and to confirm the tracked ones.

:class:`FaceTracker` keeps the detector seam: ``detect(frame) -> list[Detection]`` (each
with a stable ``track_id``; tracked ones also carry ``landmarks`` for the crop). After the
engine has run, :meth:`FaceTracker.update` hands it the new landmarks. A track is lost when
its face leaves the frame, when its landmarks degenerate (non-finite, tiny, or jumping in
size), or when the detector fails to confirm it ``max_misses`` times in a row.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..detectors.base import Detection, Detector


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def landmark_box(landmarks: np.ndarray) -> np.ndarray:
    pts = np.asarray(landmarks)[:, :2]
    return np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()], np.float64)


@dataclass
class Track:
    id: int
    box: np.ndarray                     # current estimate, frame pixels
    landmarks: np.ndarray | None = None  # 68×2 from the last reconstruction
    score: float = 1.0
    age: int = 0                        # frames since the track started
    misses: int = 0                     # consecutive detection rounds that did not confirm it
    size: float = 0.0                   # landmark box size at the last update


class FaceTracker:
    """Wraps any :class:`Detector`; see the module docstring.

    ``detect_every``: frames between detector runs (1 = every frame, i.e. no tracking).
    ``match_iou``: a detection continues a track when their boxes overlap at least this much.
    ``max_misses``: detection rounds a track may go unconfirmed before it is dropped (the
    detector misses real faces at large yaw, which PRN still tracks well).
    ``min_visible``: fraction of the landmark box that must be inside the frame.
    ``max_faces``: keep the N largest tracks (0 = all).
    """

    name = "tracker"

    def __init__(self, detector: Detector, detect_every: int = 10, match_iou: float = 0.3,
                 max_misses: int = 2, min_visible: float = 0.6, min_size: float = 24.0,
                 max_size_jump: float = 1.6, max_faces: int = 0):
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        self.detector = detector
        self.detect_every = detect_every
        self.match_iou = match_iou
        self.max_misses = max_misses
        self.min_visible = min_visible
        self.min_size = min_size
        self.max_size_jump = max_size_jump
        self.max_faces = max_faces
        self.tracks: list[Track] = []
        self._next_id = 0
        self._since_detect = 0
        self._force_detect = True
        self.detected_last = False      # whether the last detect() ran the detector
        self.confirmed: dict[int, np.ndarray] = {}  # track id → detector box, this frame
        self.lost_total = 0
        self.detector_runs = 0

    def reset(self) -> None:
        self.tracks.clear()
        self._force_detect = True

    def _new_track(self, det: Detection) -> Track:
        t = Track(id=self._next_id, box=np.asarray(det.box, np.float64)[:4].copy(),
                  score=float(det.score))
        self._next_id += 1
        return t

    def _should_detect(self) -> bool:
        return (self._force_detect or not self.tracks or self.detect_every == 1
                or self._since_detect >= self.detect_every)

    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Faces for this frame with stable ``track_id``; tracked faces carry ``landmarks``
        (from the previous frame) so the crop follows them without the detector."""
        self.detected_last = self._should_detect()
        self.confirmed = {}
        if self.detected_last:
            self._associate(self.detector.detect(frame))
            self._since_detect = 1
            self._force_detect = any(t.misses for t in self.tracks)
            self.detector_runs += 1
        else:
            self._since_detect += 1
        if self.max_faces and len(self.tracks) > self.max_faces:
            self.tracks.sort(key=lambda t: -(t.box[2] - t.box[0]) * (t.box[3] - t.box[1]))
            del self.tracks[self.max_faces:]
        out = []
        for t in self.tracks:
            # A face the detector just confirmed reports the detector's box; its crop still
            # comes from its landmarks, which are steadier than a fresh detector box.
            confirmed = t.id in self.confirmed
            box = self.confirmed[t.id] if confirmed else t.box
            out.append(Detection(box=box.copy(), score=t.score,
                                 landmarks=None if t.landmarks is None else t.landmarks.copy(),
                                 track_id=t.id, extra={"confirmed": confirmed}))
        return out

    def _associate(self, dets: list[Detection]) -> None:
        """Greedy IoU matching, best pairs first; unmatched detections start new tracks."""
        pairs = sorted(((iou(t.box, np.asarray(d.box)), i, j)
                        for i, t in enumerate(self.tracks) for j, d in enumerate(dets)), reverse=True)
        used_t: set[int] = set()
        used_d: set[int] = set()
        for score, i, j in pairs:
            if score < self.match_iou:
                break
            if i in used_t or j in used_d:
                continue
            used_t.add(i)
            used_d.add(j)
            t = self.tracks[i]
            t.misses = 0
            t.score = float(dets[j].score)
            self.confirmed[t.id] = np.asarray(dets[j].box, np.float64)[:4].copy()
            if t.landmarks is None:
                # Not reconstructed yet: take the fresher detector box.
                t.box = np.asarray(dets[j].box, np.float64)[:4].copy()
        kept = []
        for i, t in enumerate(self.tracks):
            if i not in used_t:
                t.misses += 1
                if t.misses > self.max_misses:
                    self.lost_total += 1
                    continue
            kept.append(t)
        for j, d in enumerate(dets):
            if j in used_d:
                continue
            # A detection overlapping a kept track a little (below match_iou) is the same face
            # seen differently, not a new one.
            if any(iou(t.box, np.asarray(d.box)) > self.match_iou / 2 for t in kept):
                continue
            t = self._new_track(d)
            self.confirmed[t.id] = t.box.copy()
            kept.append(t)
        self.tracks = kept

    def update(self, faces: list, frame_shape: tuple[int, ...]) -> None:
        """Feed back what the engine found (Faces, in the order :meth:`detect` returned them).

        Each face's landmarks become its track's crop for the next frame; a face that left the
        frame or whose landmarks degenerated ends its track and forces a detection next frame.
        """
        h, w = frame_shape[:2]
        by_id = {t.id: t for t in self.tracks}
        alive = []
        seen = set()
        for face in faces:
            t = by_id.get(face.track_id)
            if t is None:
                continue
            seen.add(t.id)
            lm = np.asarray(face.landmarks)[:, :2]
            reason = self._degenerate(lm, t, w, h)
            if reason:
                self.lost_total += 1
                self._force_detect = True
                face.detection.extra["lost"] = reason
                continue
            box = landmark_box(lm)
            t.landmarks = lm.astype(np.float64)
            t.box = box
            t.size = float((box[2] - box[0] + box[3] - box[1]) / 2)
            t.age += 1
            alive.append(t)
        # Tracks not in ``faces`` (not reconstructed this frame) survive unchanged.
        alive += [t for t in self.tracks if t.id not in seen]
        # Two tracks that converged onto one face: keep the older one.
        alive.sort(key=lambda t: t.id)
        merged: list[Track] = []
        for t in alive:
            if any(iou(t.box, m.box) > 0.6 for m in merged):
                continue
            merged.append(t)
        self.tracks = merged

    def _degenerate(self, lm: np.ndarray, t: Track, w: int, h: int) -> str | None:
        if not np.all(np.isfinite(lm)):
            return "non-finite landmarks"
        box = landmark_box(lm)
        bw, bh = box[2] - box[0], box[3] - box[1]
        size = (bw + bh) / 2
        if size < self.min_size:
            return "landmarks collapsed"
        if t.size and not (1 / self.max_size_jump <= size / t.size <= self.max_size_jump):
            return "landmark size jumped"
        vis_w = max(0.0, min(box[2], w) - max(box[0], 0.0))
        vis_h = max(0.0, min(box[3], h) - max(box[1], 0.0))
        if vis_w * vis_h < self.min_visible * max(bw * bh, 1e-6):
            return "face left the frame"
        return None
