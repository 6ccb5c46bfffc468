"""Which face to use: the largest of a photo, or one picked by index, and the default
reconstructor that finds them."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from ..errors import NoFaceError
from ..face import Face
from .texture import ImageLike

if TYPE_CHECKING:
    from ..api import FaceReconstructor


def largest_face(image: ImageLike, reconstructor: FaceReconstructor | None = None,
                 what: str = "image") -> Face:
    """The largest face of a photo (array or path); ``NoFaceError`` naming ``what`` if none."""
    recon = reconstructor or default_reconstructor()
    faces = recon.reconstruct(image)
    if not faces:
        name = f" ({image})" if isinstance(image, (str, os.PathLike)) else ""
        raise NoFaceError(f"no face found in the {what}{name}")
    return max(faces, key=face_area)


def face_area(face: Face) -> float:
    """The area of the face's landmark box (what "largest" compares)."""
    lm = face.landmarks[:, :2]
    return float(np.ptp(lm[:, 0]) * np.ptp(lm[:, 1]))


def left_to_right(faces: list[Face]) -> list[Face]:
    """The faces ordered by where they stand in the image, leftmost first (what an index means)."""
    return sorted(faces, key=lambda f: float(f.landmarks[:, 0].mean()))


def select_faces(faces: list[Face], index: int | str | None) -> list[Face]:
    """``None``/"largest": the largest; "all": every face; an int: the index-th from the left."""
    if not faces:
        return []
    if index is None or index == "largest":
        return [max(faces, key=face_area)]
    if index == "all":
        return list(faces)
    order = left_to_right(faces)
    i = int(index)
    if not -len(order) <= i < len(order):
        raise ValueError(f"target index {i} but only {len(order)} face(s) found")
    return [order[i]]


_RECON = None


def default_reconstructor() -> FaceReconstructor:
    """One CPU reconstructor per process, built on first use (engine start-up is slow)."""
    global _RECON
    if _RECON is None:
        from ..api import FaceReconstructor, Options
        _RECON = FaceReconstructor(Options())
    return _RECON
