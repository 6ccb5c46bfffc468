"""2D annotations drawn into a BGR frame: box, 68 landmarks, pose axes, a text readout."""
from __future__ import annotations

import cv2
import numpy as np

# iBUG 68 contour groups, so landmarks can be drawn as lines people recognise.
_GROUPS = [(0, 17, False), (17, 22, False), (22, 27, False), (27, 31, False), (31, 36, False),
           (36, 42, True), (42, 48, True), (48, 60, True), (60, 68, True)]


def draw_box(img: np.ndarray, box, color=(0, 255, 0), label: str | None = None) -> None:
    x0, y0, x1, y1 = (int(round(v)) for v in box[:4])
    cv2.rectangle(img, (x0, y0), (x1, y1), color, 2, cv2.LINE_AA)
    if label:
        cv2.putText(img, label, (x0, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1,
                    cv2.LINE_AA)


def draw_landmarks(img: np.ndarray, landmarks: np.ndarray, color=(0, 255, 255)) -> None:
    pts = np.round(landmarks[:, :2]).astype(np.int32)
    for a, b, closed in _GROUPS:
        cv2.polylines(img, [pts[a:b]], closed, color, 1, cv2.LINE_AA)
    for p in pts:
        cv2.circle(img, (int(p[0]), int(p[1])), 2, (0, 0, 255), -1, cv2.LINE_AA)


def draw_pose_axes(img: np.ndarray, rotation: np.ndarray, origin, length: float) -> None:
    """x red, y green, z blue (z toward the camera), drawn from ``origin`` in frame pixels."""
    o = np.asarray(origin[:2], np.float64)
    for axis, color in ((0, (0, 0, 255)), (1, (0, 255, 0)), (2, (255, 0, 0))):
        d = rotation[:, axis] * length
        end = o + d[:2]
        cv2.arrowedLine(img, tuple(int(v) for v in np.round(o)), tuple(int(v) for v in np.round(end)),
                        color, 2, cv2.LINE_AA, tipLength=0.15)


def draw_face(img: np.ndarray, face, landmarks: bool = True, axes: bool = True,
              box: bool = True, mesh_points: bool = False) -> None:
    if mesh_points:
        v = np.round(face.vertices[::7, :2]).astype(np.int32)
        h, w = img.shape[:2]
        ok = (v[:, 0] >= 0) & (v[:, 0] < w) & (v[:, 1] >= 0) & (v[:, 1] < h)
        img[v[ok, 1], v[ok, 0]] = (200, 200, 200)
    if box and face.box is not None:
        label = None if face.track_id is None else f"id {face.track_id}"
        draw_box(img, face.box, label=label)
    if landmarks:
        draw_landmarks(img, face.landmarks)
    if axes:
        lm = face.landmarks
        size = float(np.ptp(lm[:, 0]) + np.ptp(lm[:, 1])) / 4
        draw_pose_axes(img, face.pose.rotation, lm[30], size)


def draw_text(img: np.ndarray, lines: list[str], origin=(8, 20)) -> None:
    x, y = origin
    for line in lines:
        cv2.putText(img, line, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, line, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        y += 18
