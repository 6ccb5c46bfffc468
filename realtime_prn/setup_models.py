"""`python -m realtime_prn setup`: build, once and offline, what the default path needs.

The BlazeFace ONNX (from the MediaPipe wheel on PyPI), the built-in mb05uv model (from the
shared data), the trained uvreg model (its committed backbone + the UV basis built from the shared
data) and the numba kernels' cache. Everything lands in ``engines/`` (git-ignored),
so a fresh clone runs its first command without anything committed but code.
"""
from __future__ import annotations

import time

import numpy as np


def warm_numba() -> None:
    """Compile the numba kernels once so the first video frame is not 0.5 s late."""
    from .geometry.depth import depth_image
    from .geometry.pose import similarity_fit
    pts = np.random.default_rng(0).normal(size=(50, 3))
    similarity_fit(pts, pts)
    depth_image(np.array([[0, 0, 1], [5, 0, 1], [0, 5, 1]], np.float32), np.array([[0, 1, 2]]), 8, 8)


def setup(data_root=None) -> int:
    from .detectors.blazeface import setup_detectors
    from .network.export import build_mb05uv_onnx, build_uvreg_onnx
    from .weights import release_file

    t0 = time.perf_counter()
    setup_detectors()
    print(f"model:    {build_mb05uv_onnx(data_root=data_root)}")
    print(f"model:    {build_uvreg_onnx(release_file(), data_root=data_root)}")
    warm_numba()
    print(f"numba kernels compiled; setup took {time.perf_counter() - t0:.0f} s")
    return 0
