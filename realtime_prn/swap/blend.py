"""Blending a render into the image: only pixels of the rendered mask ever change.

Poisson (``cv2.seamlessClone``, like PRNet) or a feathered alpha with colour matching; both
end with a composite through the mask, so every other pixel keeps the input's bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .render import Rendered

BLENDS = ("poisson", "alpha")


@dataclass
class SwapResult:
    """The output image and the pixels that may differ from the input (all others are equal)."""

    image: np.ndarray
    mask: np.ndarray


def _color_match(src: np.ndarray, dst: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Match the mean and spread of ``src`` to ``dst`` in Lab over the mask (alpha blend only:
    Poisson blending corrects colour itself)."""
    s = cv2.cvtColor(src, cv2.COLOR_BGR2LAB).astype(np.float32)
    d = cv2.cvtColor(dst, cv2.COLOR_BGR2LAB).astype(np.float32)
    sm, ss = s[mask].mean(0), s[mask].std(0) + 1e-3
    dm, ds = d[mask].mean(0), d[mask].std(0) + 1e-3
    gain = np.clip(ds / ss, 0.5, 2.0)
    out = np.clip((s - sm) * gain + dm, 0, 255).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_LAB2BGR)


def _feather(mask: np.ndarray) -> np.ndarray:
    """Alpha rising from 0 at the mask's edge over ~6 % of its size (0 outside the mask)."""
    ys, xs = np.nonzero(mask)
    extent = min(np.ptp(xs) + 1, np.ptp(ys) + 1)
    width = max(2.0, 0.06 * extent)
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    return np.clip(dist / width, 0.0, 1.0)


def blend_local(dst: np.ndarray, src: np.ndarray, mask: np.ndarray, method: str = "poisson",
                color_match: bool = False) -> np.ndarray:
    """The blended crop: ``dst``'s pixels outside ``mask`` untouched, bit for bit.

    Poisson: ``cv2.seamlessClone`` like PRNet (mask from the render, centre from the mask's
    bounding box — OpenCV places the source box at ``centre − size // 2``, so this centre is
    an exact identity placement). Its solver changes pixels of the box outside the mask by a
    level or so, hence the final composite through the mask.
    """
    if method not in BLENDS:
        raise ValueError(f"unknown blend {method!r}; choose from {', '.join(BLENDS)}")
    out = dst.copy()
    n = int(mask.sum())
    if n == 0:
        return out
    if method == "alpha" or n < 16:
        if color_match and n >= 16:
            src = _color_match(src, dst, mask)
        a = _feather(mask)[..., None] if n >= 16 else mask[..., None].astype(np.float32)
        mixed = (dst.astype(np.float32) * (1 - a) + src.astype(np.float32) * a + 0.5).astype(np.uint8)
        out[mask] = mixed[mask]
        return out
    pad = 2  # seamlessClone clears the mask's outermost pixel ring and needs its box inside dst
    m8 = cv2.copyMakeBorder(mask.astype(np.uint8) * np.uint8(255), pad, pad, pad, pad,
                            cv2.BORDER_CONSTANT, value=0)
    s = cv2.copyMakeBorder(src, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    d = cv2.copyMakeBorder(dst, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    x, y, w, h = cv2.boundingRect(m8)
    cloned = cv2.seamlessClone(s, d, m8, (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)
    cloned = cloned[pad:-pad, pad:-pad]
    out[mask] = cloned[mask]
    return out


def blend_rendered(image: np.ndarray, rendered: Rendered, method: str = "poisson",
                   color_match: bool = False, margin: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Blend a :class:`Rendered` into a copy of ``image``; returns (output, frame-sized mask).

    Works on the mask's box plus ``margin`` so a 4K frame costs what the face costs.
    """
    out = image.copy()
    full_mask = np.zeros(image.shape[:2], bool)
    if not rendered.mask.any():
        return out, full_mask
    ys, xs = np.nonzero(rendered.mask)
    ox, oy = rendered.offset
    h, w = image.shape[:2]
    x0, x1 = max(xs.min() + ox - margin, 0), min(xs.max() + ox + margin + 1, w)
    y0, y1 = max(ys.min() + oy - margin, 0), min(ys.max() + oy + margin + 1, h)
    lx0, ly0 = x0 - ox, y0 - oy
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    src = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
    # The render box may be smaller than box+margin at its sides: paste what overlaps.
    sx0, sy0 = max(lx0, 0), max(ly0, 0)
    sx1 = min(lx0 + (x1 - x0), rendered.mask.shape[1])
    sy1 = min(ly0 + (y1 - y0), rendered.mask.shape[0])
    mask[sy0 - ly0:sy1 - ly0, sx0 - lx0:sx1 - lx0] = rendered.mask[sy0:sy1, sx0:sx1]
    src[sy0 - ly0:sy1 - ly0, sx0 - lx0:sx1 - lx0] = rendered.image[sy0:sy1, sx0:sx1]
    out[y0:y1, x0:x1] = blend_local(image[y0:y1, x0:x1], src, mask, method, color_match)
    full_mask[y0:y1, x0:x1] = mask
    return out, full_mask


def blend_into(image: np.ndarray, rendered: np.ndarray, mask: np.ndarray,
               method: str = "poisson", color_match: bool = False) -> np.ndarray:
    """Frame-sized form of :func:`blend_rendered` for callers holding full-size arrays."""
    h, w = image.shape[:2]
    r = Rendered(np.ascontiguousarray(rendered), np.asarray(mask, bool), (0, 0), (h, w))
    return blend_rendered(image, r, method, color_match)[0]
