"""The detector seam: ``detect(frame) -> list[Detection]``; tracking wraps a detector."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class Detection:
    """A face box in frame pixels (x0, y0, x1, y1), a score, optional keypoints and track id.

    ``keypoints`` is K×2 in frame pixels when the detector gives them (BlazeFace: 6, SCRFD: 5).
    ``landmarks`` is 68×2 when the caller knows them (the official ``image_info`` with 68
    points, or a tracker re-cropping from the previous frame): crop then uses PRN's landmark rule.
    """

    box: np.ndarray
    score: float = 1.0
    keypoints: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    track_id: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])


class Detector(Protocol):
    name: str

    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Faces in a BGR uint8 H×W×3 frame, best first."""
        ...
