"""OpenCV's Haar cascade: the fallback detector that needs nothing but OpenCV.

It has no model to build and no extra package, so it works wherever the project installs at
all. It is weaker than BlazeFace (frontal faces only, no keypoints, more false alarms on
texture) and slower on big frames, so it is never the default.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from realtime_prn.detectors import DetectorUnavailableError, check_frame
from realtime_prn.detectors.base import Detection

CASCADE = "haarcascade_frontalface_alt2.xml"


class HaarDetector:
    """Frontal faces by ``haarcascade_frontalface_alt2``; score is always 1.0.

    The cascade's level weights are not probabilities and are not comparable with the other
    detectors' scores, so they are kept in ``Detection.extra['level_weight']`` and used only to
    order the faces best first.

    Frames larger than ``max_side`` are shrunk first: cascade cost grows with pixel count,
    and faces big enough to reconstruct survive the shrink. ``min_face`` is the smallest face
    side as a fraction of the (shrunk) frame's shorter side.
    """

    name = "haar"

    def __init__(
        self,
        *,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_face: float = 0.06,
        max_side: int | None = 640,
        equalize: bool = True,
        cascade_path: str | None = None,
    ) -> None:
        path = Path(cascade_path) if cascade_path else Path(cv2.data.haarcascades) / CASCADE
        if not path.is_file():
            raise DetectorUnavailableError(
                f"OpenCV Haar cascade {path} not found (reinstall opencv-python-headless)"
            )
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise DetectorUnavailableError(f"OpenCV could not load the Haar cascade {path}")
        if scale_factor <= 1.0:
            raise ValueError("scale_factor must be > 1")
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_face = float(min_face)
        self.max_side = max_side
        self.equalize = bool(equalize)

    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Faces in a BGR uint8 frame, best first (highest cascade level weight)."""
        frame = check_frame(frame)
        h, w = frame.shape[:2]
        scale = 1.0
        if self.max_side and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        if scale != 1.0:
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        if self.equalize:
            gray = cv2.equalizeHist(gray)
        min_px = max(20, round(self.min_face * min(gray.shape[:2])))
        rects, _, weights = self._cascade.detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_px, min_px),
            outputRejectLevels=True,
        )
        if len(rects) == 0:
            return []
        weights = np.asarray(weights, np.float64).reshape(-1)
        dets = []
        for i in np.argsort(-weights, kind="stable"):
            x, y, bw, bh = (float(v) / scale for v in rects[i])
            box = np.array([x, y, x + bw, y + bh], np.float32)
            dets.append(Detection(box=box, score=1.0, extra={"level_weight": float(weights[i])}))
        return dets
