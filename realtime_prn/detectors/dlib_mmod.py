"""dlib's CNN (MMOD) face detector: the detector PRNet's original demo used.

Kept so results can be compared with the upstream pipeline. dlib is an optional, heavy
dependency (it compiles from source on many platforms), so it is imported only here and only
when this detector is created; it is slow on CPU and not meant for the live path.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from realtime_prn.detectors import (
    DetectorUnavailableError,
    ModelMissingError,
    check_frame,
)
from realtime_prn.detectors.base import Detection
from realtime_prn.paths import DataNotFoundError, data_file

MODEL_NAME = "mmod_human_face_detector.dat"


class DlibMmodDetector:
    """dlib ``cnn_face_detection_model_v1`` with ``mmod_human_face_detector.dat``.

    ``upsample`` is dlib's pyramid upsampling count (0 keeps it fast; PRNet's demo used 1 to
    catch smaller faces). Scores are the MMOD confidences, which are not probabilities.
    Boxes are dlib's left/top/right/bottom unchanged, as PRNet's crop rule was tuned on them.
    """

    name = "dlib"

    def __init__(
        self, model_path: str | os.PathLike | None = None, *, upsample: int = 0
    ) -> None:
        try:
            import dlib
        except ImportError:
            raise DetectorUnavailableError(
                "the 'dlib' detector needs the dlib package: pip install dlib"
            ) from None
        if model_path is None:
            try:
                path = data_file("prn", MODEL_NAME)
            except DataNotFoundError as exc:
                raise ModelMissingError(str(exc)) from None
        else:
            path = Path(model_path).expanduser()
            if not path.is_file():
                raise ModelMissingError(f"dlib MMOD model {path} not found")
        self._net = dlib.cnn_face_detection_model_v1(str(path))
        self.upsample = int(upsample)

    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Faces in a BGR uint8 frame, best first (dlib wants RGB)."""
        rgb = cv2.cvtColor(check_frame(frame), cv2.COLOR_BGR2RGB)
        found = self._net(rgb, self.upsample)
        dets = [
            Detection(
                box=np.array(
                    [d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()], np.float32
                ),
                score=float(d.confidence),
            )
            for d in found
        ]
        dets.sort(key=lambda d: -d.score)
        return dets
