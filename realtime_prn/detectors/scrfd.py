"""SCRFD (InsightFace) from an ONNX file the user supplies: stronger on small and posed faces.

SCRFD weights are not redistributable under the project's terms, so nothing is downloaded or
bundled: the user passes ``model_path`` to a model they obtained (e.g. ``det_10g.onnx`` or
``det_500m.onnx`` from an InsightFace model pack). The post-processing mirrors InsightFace's
``SCRFD`` class so that its exported models decode exactly as upstream decodes them.
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

# outputs -> (strides, anchors per location, has keypoints); InsightFace's layouts.
_LAYOUTS: dict[int, tuple[tuple[int, ...], int, bool]] = {
    6: ((8, 16, 32), 2, False),
    9: ((8, 16, 32), 2, True),
    10: ((8, 16, 32, 64, 128), 1, False),
    15: ((8, 16, 32, 64, 128), 1, True),
}
DEFAULT_INPUT = 640


def distance2bbox(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Anchor centres plus (left, top, right, bottom) distances -> (x0, y0, x1, y1)."""
    return np.stack(
        [
            points[:, 0] - distance[:, 0],
            points[:, 1] - distance[:, 1],
            points[:, 0] + distance[:, 2],
            points[:, 1] + distance[:, 3],
        ],
        axis=-1,
    )


def distance2kps(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Anchor centres plus per-keypoint (dx, dy) offsets -> N×K×2 keypoints."""
    offsets = distance.reshape(distance.shape[0], distance.shape[1] // 2, 2)
    return offsets + points[:, None, :]


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy NMS as InsightFace does it (areas with the +1 pixel convention)."""
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        xx0 = np.maximum(x0[i], x0[order[1:]])
        yy0 = np.maximum(y0[i], y0[order[1:]])
        xx1 = np.minimum(x1[i], x1[order[1:]])
        yy1 = np.minimum(y1[i], y1[order[1:]])
        inter = np.maximum(0.0, xx1 - xx0 + 1) * np.maximum(0.0, yy1 - yy0 + 1)
        iou = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][iou <= threshold]
    return keep


class ScrfdDetector:
    """SCRFD on ONNX Runtime, 5 keypoints per face when the model has them.

    The frame is resized keeping its aspect ratio into the top-left of an ``input_size``
    square (zero pad), as InsightFace does; a model with a fixed input shape uses that shape.
    """

    name = "scrfd"

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        input_size: int | tuple[int, int] = DEFAULT_INPUT,
        threads: int = 1,
        spinning: bool = False,
        max_faces: int | None = None,
    ) -> None:
        import onnxruntime as ort

        from realtime_prn.engines.onnxruntime import session_options

        if model_path is None:
            raise ModelMissingError(
                "the SCRFD detector needs model_path=<your SCRFD .onnx> (it is never downloaded)"
            )
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise ModelMissingError(f"SCRFD model {path} not found")
        opts = session_options(threads, spinning)
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        # onnxruntime's errors are private pybind classes deriving from Exception only.
        except Exception as exc:  # noqa: BLE001
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DetectorUnavailableError(f"cannot load SCRFD model {path}: {first}") from None

        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) not in _LAYOUTS:
            raise DetectorUnavailableError(
                f"{path} does not look like an SCRFD model: {len(inputs)} input(s) and "
                f"{len(outputs)} outputs (expected 1 input and one of "
                f"{', '.join(map(str, sorted(_LAYOUTS)))} outputs)"
            )
        self._input_name = inputs[0].name
        self._output_names = [o.name for o in outputs]
        self._strides, self._num_anchors, self.has_keypoints = _LAYOUTS[len(outputs)]
        self._batched = len(outputs[0].shape) == 3

        fixed = inputs[0].shape[2:4]
        if all(isinstance(v, int) and v > 0 for v in fixed):
            self.input_size = (int(fixed[1]), int(fixed[0]))  # (width, height) from the model
        elif isinstance(input_size, int):
            self.input_size = (input_size, input_size)
        else:
            self.input_size = (int(input_size[0]), int(input_size[1]))
        if any(v % max(self._strides) for v in self.input_size):
            raise ValueError(
                f"SCRFD input size {self.input_size} must be a multiple of {max(self._strides)}"
            )
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_faces = max_faces
        self._centres: dict[tuple[int, int, int], np.ndarray] = {}

    def _anchor_centres(self, height: int, width: int, stride: int) -> np.ndarray:
        key = (height, width, stride)
        if key not in self._centres:
            ys, xs = np.mgrid[:height, :width]
            centres = (np.stack([xs, ys], axis=-1) * stride).reshape(-1, 2).astype(np.float32)
            if self._num_anchors > 1:
                centres = np.repeat(centres, self._num_anchors, axis=0)
            self._centres[key] = centres
        return self._centres[key]

    def _forward(self, blob: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Scores, boxes and keypoints above the threshold, in network-input pixels."""
        outs = self._session.run(self._output_names, {self._input_name: blob})
        fmc = len(self._strides)
        height, width = blob.shape[2], blob.shape[3]
        all_scores, all_boxes, all_kps = [], [], []
        for idx, stride in enumerate(self._strides):
            scores = outs[idx]
            boxes = outs[idx + fmc]
            kps = outs[idx + 2 * fmc] if self.has_keypoints else None
            if self._batched:
                scores, boxes = scores[0], boxes[0]
                kps = kps[0] if kps is not None else None
            scores = scores.reshape(-1)
            centres = self._anchor_centres(height // stride, width // stride, stride)
            if centres.shape[0] != scores.shape[0]:
                raise DetectorUnavailableError(
                    f"SCRFD output for stride {stride} has {scores.shape[0]} scores, expected "
                    f"{centres.shape[0]}: the model's layout is not InsightFace's"
                )
            pos = np.flatnonzero(scores >= self.score_threshold)
            all_scores.append(scores[pos])
            all_boxes.append(distance2bbox(centres[pos], boxes.reshape(-1, 4)[pos] * stride))
            if kps is not None:
                kps = kps.reshape(centres.shape[0], -1)[pos] * stride
                all_kps.append(distance2kps(centres[pos], kps))
        kps_out = np.concatenate(all_kps) if all_kps else None
        return np.concatenate(all_scores), np.concatenate(all_boxes), kps_out

    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Faces in a BGR uint8 frame, best first."""
        frame = check_frame(frame)
        h, w = frame.shape[:2]
        in_w, in_h = self.input_size
        if h / w > in_h / in_w:
            new_h, new_w = in_h, max(1, int(in_h * w / h))
        else:
            new_w, new_h = in_w, max(1, int(in_w * h / w))
        det_scale = new_h / h
        canvas = np.zeros((in_h, in_w, 3), np.uint8)
        canvas[:new_h, :new_w] = cv2.resize(frame, (new_w, new_h))
        blob = cv2.dnn.blobFromImage(
            canvas, 1.0 / 128.0, (in_w, in_h), (127.5, 127.5, 127.5), swapRB=True
        )
        scores, boxes, kps = self._forward(blob)
        if scores.size == 0:
            return []
        boxes = boxes / det_scale
        if kps is not None:
            kps = kps / det_scale
        keep = nms(boxes, scores, self.nms_threshold)
        if self.max_faces:
            keep = keep[: self.max_faces]
        return [
            Detection(
                box=boxes[i].astype(np.float32),
                score=float(scores[i]),
                keypoints=None if kps is None else kps[i].astype(np.float32),
            )
            for i in keep
        ]
