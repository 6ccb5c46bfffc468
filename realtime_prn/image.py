"""Turning whatever the user hands us into the one frame format: BGR uint8 H×W×3."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm"}


class ImageError(ValueError):
    """An image that cannot be read or understood; the message names it."""


def read_image(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}")
    data = np.fromfile(str(path), np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ImageError(f"cannot decode image (corrupt or not an image): {path}")
    return to_bgr(image)


def to_bgr(image: np.ndarray, color: str = "bgr") -> np.ndarray:
    """Grayscale, alpha, 16-bit and float images → BGR uint8; ``color='rgb'`` swaps channels.

    16-bit is scaled by 1/257 (full range to full range); float images are taken as [0, 1].
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3) or img.size == 0:
        raise ImageError(f"expected an H×W or H×W×C image, got shape {img.shape}")
    if img.dtype == np.uint16:
        img = (img / 257.0 + 0.5).astype(np.uint8)
    elif img.dtype.kind == "f":
        img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageError(f"unsupported image dtype {img.dtype}")
    if img.ndim == 2 or img.shape[2] == 1:
        return cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        code = cv2.COLOR_RGBA2BGR if color == "rgb" else cv2.COLOR_BGRA2BGR
        return cv2.cvtColor(img, code)
    if img.shape[2] != 3:
        raise ImageError(f"expected 1, 3 or 4 channels, got {img.shape[2]}")
    if color == "rgb":
        return np.ascontiguousarray(img[..., ::-1])
    return np.ascontiguousarray(img)


def list_images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
