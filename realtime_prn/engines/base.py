"""The engine seam: a batch of crops in, a batch of position maps out, nothing else.

Engines never crop, detect or restore, so a new backend is one file. Input is
N×256×256×3 float32 RGB in [0, 1]; output is N×256×256×3 float32 in crop pixels
(x, y in the 256 crop, z scaled like x and y), i.e. the network output × 256 × 1.1 for
resfcn256, or whatever the model produces already in those units.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

RESOLUTION = 256


class Engine(Protocol):
    name: str
    max_batch: int

    def infer(self, batch: np.ndarray) -> np.ndarray:
        ...


def check_batch(batch: np.ndarray) -> np.ndarray:
    batch = np.asarray(batch)
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[1:] != (RESOLUTION, RESOLUTION, 3):
        raise ValueError(f"engine input must be N×{RESOLUTION}×{RESOLUTION}×3, got {batch.shape}")
    return np.ascontiguousarray(batch, dtype=np.float32)
