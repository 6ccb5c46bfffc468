"""Flicker metering of a swapped video: how steady the face is from frame to frame."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FlickerStats:
    """How steady the swapped face is from frame to frame (means over consecutive pairs).

    ``surface_change``: mean |Δ colour| (levels) of the output sampled at the rendered
    vertices, i.e. on the face surface itself, so head motion cancels: the source texture is
    fixed, so ideally only real lighting changes remain — everything else is flicker (tint
    changes of the Poisson solve, sampling jitter). ``surface_change_in``: the same for the
    input frame at the same vertices (the real face's own change, for scale).
    ``accel_ratio``: mean second difference |x_t − 2x_{t−1} + x_{t−2}| of the output over the
    input's, on the union of the masks (steady motion cancels; > 1 = flicker added).
    ``mask_iou``: median IoU of consecutive masks; ``mask_jitter``: mean |mask_t xor
    mask_{t−1}| / |mask_t|, the fraction of the mask that toggles.
    """

    surface_change: float = float("nan")
    surface_change_in: float = float("nan")
    accel_ratio: float = float("nan")
    mask_iou: float = float("nan")
    mask_jitter: float = float("nan")
    pairs: int = 0

    def line(self) -> str:
        return (f"surface change {self.surface_change:.2f} levels/frame "
                f"(input {self.surface_change_in:.2f}), "
                f"second-difference ratio {self.accel_ratio:.2f}, mask IoU {self.mask_iou:.3f}, "
                f"mask jitter {self.mask_jitter:.3f}")


class FlickerMeter:
    """Accumulates :class:`FlickerStats` while a video is swapped (costs a few ms a frame)."""

    def __init__(self):
        self.hist: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = []
        self.prev_surface: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.surface: list[float] = []
        self.surface_in: list[float] = []
        self.a_out: list[float] = []
        self.a_in: list[float] = []
        self.iou: list[float] = []
        self.jitter: list[float] = []

    def add(self, inp: np.ndarray, out: np.ndarray, mask: np.ndarray | None,
            vertices: np.ndarray | None = None) -> None:
        self.hist = (self.hist + [None if mask is None else (inp, out, mask)])[-3:]
        surface = None
        if mask is not None and vertices is not None:
            h, w = mask.shape
            x = np.clip(np.rint(vertices[:, 0]).astype(np.intp), 0, w - 1)
            y = np.clip(np.rint(vertices[:, 1]).astype(np.intp), 0, h - 1)
            surface = (mask[y, x], out[y, x].astype(np.float32), inp[y, x].astype(np.float32))
            if self.prev_surface is not None:
                ok = surface[0] & self.prev_surface[0]
                if ok.any():
                    self.surface.append(float(np.abs(surface[1][ok] - self.prev_surface[1][ok]).mean()))
                    self.surface_in.append(float(np.abs(surface[2][ok] - self.prev_surface[2][ok]).mean()))
        self.prev_surface = surface
        if mask is None or len(self.hist) < 2 or self.hist[-2] is None:
            return
        i1, o1, m1 = self.hist[-2]
        union = mask | m1
        if not union.any():
            return
        self.iou.append(float((mask & m1).sum() / union.sum()))
        self.jitter.append(float((mask ^ m1).sum() / max(mask.sum(), 1)))
        if len(self.hist) == 3 and self.hist[0] is not None:
            i0, o0, m0 = self.hist[0]
            u3 = union | m0
            self.a_out.append(float(np.abs(out[u3].astype(np.float32) - 2 * o1[u3] + o0[u3]).mean()))
            self.a_in.append(float(np.abs(inp[u3].astype(np.float32) - 2 * i1[u3] + i0[u3]).mean()))

    def stats(self) -> FlickerStats:
        nan = float("nan")
        mean = lambda v: float(np.mean(v)) if v else nan
        acc = mean(self.a_out) / max(mean(self.a_in), 1e-6) if self.a_out else nan
        return FlickerStats(surface_change=mean(self.surface), surface_change_in=mean(self.surface_in),
                            accel_ratio=acc,
                            mask_iou=float(np.median(self.iou)) if self.iou else nan,
                            mask_jitter=mean(self.jitter), pairs=len(self.iou))
