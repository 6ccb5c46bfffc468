"""Head pose from all 43,867 vertices: a similarity fit to PRN's canonical mean face.

Uses every vertex (as PRN's ``estimate_pose`` does) rather than 68 landmarks because the
dense fit is far less sensitive to one landmark sliding along a contour at large yaw.
The moments are gathered by a numba kernel in one pass (no 43k×3 temporaries); the 3×3
SVD (Umeyama) is numpy. Euler angles use R = Rx(pitch)·Ry(yaw)·Rz(roll) decomposed in
closed form with an explicit gimbal branch, so yaw stays right through ±90° (the official
``matrix2angle`` picks the wrong branch there: PRNet issue #169).

Frame: image pixels, x right, y down, z toward the camera (PRN's position-map frame; the
canonical face is in the same frame, so a frontal, upright face gives R = I).
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np


@dataclass(frozen=True)
class Pose:
    """``vertices ≈ scale · R @ canonical + t``; ``camera`` is the 3×4 ``[sR | t]``."""

    rotation: np.ndarray      # 3×3, proper rotation
    translation: np.ndarray   # (3,)
    scale: float
    angles: np.ndarray        # (pitch, yaw, roll) in degrees

    @property
    def camera(self) -> np.ndarray:
        return np.hstack([self.scale * self.rotation, self.translation[:, None]])

    @property
    def pitch(self) -> float:
        return float(self.angles[0])

    @property
    def yaw(self) -> float:
        return float(self.angles[1])

    @property
    def roll(self) -> float:
        return float(self.angles[2])


@numba.njit(cache=True, fastmath=False)
def _moments(src: np.ndarray, dst: np.ndarray):
    """Means, source variance and the 3×3 cross-covariance of two N×3 point sets."""
    n = src.shape[0]
    ms = np.zeros(3)
    md = np.zeros(3)
    for i in range(n):
        for k in range(3):
            ms[k] += src[i, k]
            md[k] += dst[i, k]
    ms /= n
    md /= n
    cov = np.zeros((3, 3))
    var = 0.0
    for i in range(n):
        s0 = src[i, 0] - ms[0]
        s1 = src[i, 1] - ms[1]
        s2 = src[i, 2] - ms[2]
        d0 = dst[i, 0] - md[0]
        d1 = dst[i, 1] - md[1]
        d2 = dst[i, 2] - md[2]
        var += s0 * s0 + s1 * s1 + s2 * s2
        cov[0, 0] += d0 * s0
        cov[0, 1] += d0 * s1
        cov[0, 2] += d0 * s2
        cov[1, 0] += d1 * s0
        cov[1, 1] += d1 * s1
        cov[1, 2] += d1 * s2
        cov[2, 0] += d2 * s0
        cov[2, 1] += d2 * s1
        cov[2, 2] += d2 * s2
    return ms, md, cov / n, var / n


def similarity_fit(src: np.ndarray, dst: np.ndarray):
    """Umeyama: the s, R, t minimising ‖dst − (s R src + t)‖², R a proper rotation."""
    ms, md, cov, var = _moments(np.ascontiguousarray(src, np.float64),
                                np.ascontiguousarray(dst, np.float64))
    u, d, vt = np.linalg.svd(cov)
    sign = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2] = -1.0
    rot = (u * sign) @ vt
    scale = float((d * sign).sum() / var) if var > 0 else 1.0
    t = md - scale * rot @ ms
    return scale, rot, t


def euler_from_matrix(rot: np.ndarray) -> np.ndarray:
    """(pitch, yaw, roll) in degrees for R = Rx(pitch)·Ry(yaw)·Rz(roll)."""
    sy = float(np.clip(rot[0, 2], -1.0, 1.0))
    yaw = np.arcsin(sy)
    if abs(sy) < 1 - 1e-9:
        pitch = np.arctan2(-rot[1, 2], rot[2, 2])
        roll = np.arctan2(-rot[0, 1], rot[0, 0])
    else:  # gimbal: only pitch + roll is defined; put it all in pitch
        pitch = np.arctan2(rot[1, 0], rot[1, 1])
        roll = 0.0
    return np.degrees([pitch, yaw, roll])


def matrix_from_euler(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """Inverse of :func:`euler_from_matrix` (degrees), for tests and for drawing axes."""
    x, y, z = np.radians([pitch, yaw, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return rx @ ry @ rz


def estimate_pose(vertices: np.ndarray, canonical: np.ndarray) -> Pose:
    scale, rot, t = similarity_fit(canonical, vertices)
    return Pose(rotation=rot, translation=t, scale=scale, angles=euler_from_matrix(rot))
