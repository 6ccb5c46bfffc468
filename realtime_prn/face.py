"""``Face``: one reconstructed face, everything derived from its position map on demand.

The position map (256×256×3, frame pixels, z scaled like x and y, z toward the camera) is
the only thing the engine produced; landmarks, vertices, pose, depth and texture are cheap
views of it computed when first asked for and cached, so a caller who only wants
landmarks never pays for a z-buffer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .assets import UVAssets
from .crop import CropRegion
from .detectors.base import Detection
from .geometry import depth as _depth
from .geometry import texture as _texture
from .geometry.pose import Pose, estimate_pose


@dataclass(eq=False)
class Face:
    position_map: np.ndarray        # 256×256×3 float32, frame pixels
    image: np.ndarray = field(repr=False)  # the BGR uint8 frame it came from (not copied)
    assets: UVAssets = field(repr=False)
    region: CropRegion | None = None
    transform: np.ndarray | None = field(default=None, repr=False)  # 3×3 frame → crop
    detection: Detection | None = None

    @property
    def box(self) -> np.ndarray | None:
        return None if self.detection is None else self.detection.box

    @property
    def track_id(self) -> int | None:
        return None if self.detection is None else self.detection.track_id

    @cached_property
    def landmarks(self) -> np.ndarray:
        """68×3 (x, y, z) frame pixels, in the iBUG 68-point order."""
        return self.position_map.reshape(-1, 3)[self.assets.kpt_flat].copy()

    @cached_property
    def vertices(self) -> np.ndarray:
        """43,867×3 dense vertices in frame pixels (PRN's ``get_vertices``)."""
        return self.position_map.reshape(-1, 3)[self.assets.face_ind]

    @property
    def triangles(self) -> np.ndarray:
        """T×3 int32 into :attr:`vertices` — a grid triangulation, see ``assets``."""
        return self.assets.triangles

    @cached_property
    def colors(self) -> np.ndarray:
        """Per-vertex RGB in [0, 1] sampled at the rounded vertex pixel (PRN's ``get_colors``)."""
        h, w = self.image.shape[:2]
        v = self.vertices
        x = np.clip(np.rint(v[:, 0]), 0, w - 1).astype(np.intp)
        y = np.clip(np.rint(v[:, 1]), 0, h - 1).astype(np.intp)
        flat = self.image.reshape(-1, 3).take(y * w + x, axis=0)  # one gather, not 2-D fancy indexing
        return flat[:, ::-1] * np.float32(1 / 255)

    @cached_property
    def pose(self) -> Pose:
        return estimate_pose(self.vertices, self.assets.canonical_vertices)

    @property
    def camera_matrix(self) -> np.ndarray:
        """3×4 affine camera ``[sR | t]`` from canonical space to the frame."""
        return self.pose.camera

    @cached_property
    def zbuffer(self) -> np.ndarray:
        """H×W float32 z of this face where it covers the frame, −inf elsewhere."""
        h, w = self.image.shape[:2]
        _, zbuf = _depth.render_values(self.vertices, self.triangles,
                                       np.zeros((len(self.vertices), 1), np.float32), h, w)
        return zbuf

    def depth_image(self) -> np.ndarray:
        """H×W float32 depth (z in pixels, larger is nearer), 0 off the face."""
        return np.where(np.isfinite(self.zbuffer), self.zbuffer, 0).astype(np.float32)

    def texture(self, size: int = 256) -> np.ndarray:
        """UV texture (size×size×3, BGR uint8 like the input frame)."""
        return _texture.uv_texture(self.image, self.position_map, size)

    def texture_visibility(self, size: int = 256) -> np.ndarray:
        """size×size bool: texels on the face and not hidden by the face itself."""
        return _texture.uv_visibility(self.position_map, self.assets.face_mask, self.zbuffer, size)
