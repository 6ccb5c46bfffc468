"""Arrays and text per face: .npz, .mat (like the original demo), landmarks, pose, depth PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_open
from .mesh import _atomic_text, write_png


def write_npz(path, **arrays) -> Path:
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return Path(path)


def write_mat(path, **arrays) -> Path:
    import scipy.io  # 0.4 s to import: only when a .mat is asked for

    with atomic_open(path, "wb") as f:
        scipy.io.savemat(f, arrays, do_compression=True)
    return Path(path)


def write_landmarks(path, landmarks: np.ndarray) -> Path:
    """68 lines of ``x y z`` in frame pixels (the official ``_kpt.txt``)."""
    return _atomic_text(path, lambda f: np.savetxt(f, landmarks, fmt="%.3f"))


def write_pose(path, angles: np.ndarray, rotation: np.ndarray, translation: np.ndarray,
               scale: float) -> Path:
    def write(f):
        f.write("# pitch yaw roll (degrees; R = Rx(pitch) Ry(yaw) Rz(roll), image frame "
                "x right, y down, z toward camera)\n")
        f.write("{:.4f} {:.4f} {:.4f}\n".format(*tuple(angles)))
        f.write("# rotation (3x3)\n")
        np.savetxt(f, rotation, fmt="%.6f")
        f.write("# translation (pixels) and scale\n")
        f.write("{:.4f} {:.4f} {:.4f} {:.6f}\n".format(*translation, scale))
    return _atomic_text(path, write)


def depth_to_png(depth: np.ndarray) -> np.ndarray:
    """8-bit depth for viewing: nearest surface white, background black."""
    on = depth > 0
    out = np.zeros(depth.shape, np.uint8)
    if on.any():
        lo, hi = float(depth[on].min()), float(depth[on].max())
        out[on] = np.clip(30 + 225 * (depth[on] - lo) / max(hi - lo, 1e-6), 0, 255).astype(np.uint8)
    return out


def write_depth_png(path, depth: np.ndarray) -> Path:
    return write_png(Path(path), depth_to_png(depth))
