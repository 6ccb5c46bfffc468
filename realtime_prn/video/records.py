"""Per-frame records (JSONL): one line per input frame, so records line up with frames."""
from __future__ import annotations

import json

import numpy as np


def face_record(face, face_id: int | None = None) -> dict:
    p = face.pose
    rec = {
        "id": face.track_id if face_id is None else face_id,
        "box": None if face.box is None else [round(float(v), 2) for v in face.box[:4]],
        "score": None if face.detection is None else round(float(face.detection.score), 4),
        "landmarks": np.round(face.landmarks.astype(np.float64), 2).tolist(),
        "pose": {"pitch": round(p.pitch, 3), "yaw": round(p.yaw, 3), "roll": round(p.roll, 3)},
        "translation": [round(float(v), 3) for v in p.translation],
        "scale": round(float(p.scale), 6),
    }
    return rec


class JsonlWriter:
    """Line-buffered so that an interrupted run keeps every frame written so far."""

    def __init__(self, path):
        self.path = path
        self.f = open(path, "w", buffering=1)

    def write(self, frame_index: int, timestamp: float, faces: list, **extra) -> None:
        rec = {"frame": frame_index, "time": round(timestamp, 4),
               "faces": [face_record(f) for f in faces], **extra}
        self.f.write(json.dumps(rec) + "\n")

    def close(self) -> None:
        self.f.close()
