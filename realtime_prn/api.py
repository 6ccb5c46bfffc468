"""``FaceReconstructor``: image in, a list of :class:`Face` out — the stages wired in order.

detect (or take the caller's boxes / landmarks) → crop → engine (one batch for all faces)
→ restore to frame pixels → :class:`Face`, whose geometry is derived lazily.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from .assets import load_assets
from .crop import (
    CropRegion,
    crop_faces,
    region_from_box,
    region_from_landmarks,
    restore_position_maps,
)
from .detectors.base import Detection
from .face import Face
from .image import read_image, to_bgr


@dataclass
class Options:
    """Everything that chooses how faces are found and reconstructed.

    ``engine``: onnxruntime (CPU default) | tensorflow | tensorrt. ``weights``: see
    ``realtime_prn.weights`` (default the built-in ``mb05uv``). ``detector``: blazeface |
    haar | scrfd | dlib. ``max_faces``: keep the N largest (0 = all). ``flip``: also run each
    crop's mirror image and average the two position maps (``engines.flip``): lower landmark
    error for twice the engine work, so off by default (the real-time path).
    """

    engine: str = "onnxruntime"
    weights: str | None = None
    precision: str = "fp32"
    detector: str = "blazeface"
    detector_options: dict = field(default_factory=dict)
    max_faces: int = 0
    threads: int | None = None
    max_batch: int = 16
    spinning: bool = False
    box_scale: float = 1.58
    landmark_scale: float = 1.6
    flip: bool = False
    data_root: str | os.PathLike | None = None


class FaceReconstructor:
    def __init__(self, options: Options | None = None, engine=None, detector=None, **overrides):
        self.options = options or Options()
        for key, value in overrides.items():
            if not hasattr(self.options, key):
                raise TypeError(f"unknown option {key!r}")
            setattr(self.options, key, value)
        o = self.options
        self.assets = load_assets(o.data_root)
        if engine is None:
            from .engines import create_engine
            engine = create_engine(o.engine, o.weights, precision=o.precision, threads=o.threads,
                                   max_batch=o.max_batch, spinning=o.spinning, data_root=o.data_root)
        if o.flip:
            from .engines.flip import FlipAveragedEngine
            engine = FlipAveragedEngine(engine, self.assets.face_mask)
        self.engine = engine
        self._detector = detector
        self.timings: dict[str, float] = {}

    @property
    def detector(self):
        if self._detector is None:
            from .detectors import create_detector
            self._detector = create_detector(self.options.detector, **self.options.detector_options)
        return self._detector

    def detect(self, image: np.ndarray) -> list[Detection]:
        found = self.detector.detect(image)
        if self.options.max_faces:
            found = sorted(found, key=lambda d: -d.width * d.height)[: self.options.max_faces]
        return found

    def region(self, det: Detection) -> CropRegion:
        if det.landmarks is not None:
            return region_from_landmarks(det.landmarks, self.options.landmark_scale)
        return region_from_box(det.box, self.options.box_scale)

    def reconstruct(self, image, boxes=None, landmarks=None, color: str = "bgr") -> list[Face]:
        """Faces in one image (a path or an array; ``color`` says how to read an array).

        ``boxes`` (N×4 x0 y0 x1 y1) or ``landmarks`` (N×68×2, or one 68×2) skip the detector,
        like the official ``image_info``.
        """
        frame = read_image(image) if isinstance(image, (str, os.PathLike)) else to_bgr(image, color)
        t0 = time.perf_counter()
        if landmarks is not None:
            lms = np.asarray(landmarks, np.float64)
            lms = lms[None] if lms.ndim == 2 else lms
            dets = [Detection(box=np.r_[p[:, :2].min(0), p[:, :2].max(0)], landmarks=p[:, :2])
                    for p in lms]
        elif boxes is not None:
            dets = [Detection(box=np.asarray(b, np.float64)[:4]) for b in np.atleast_2d(boxes)]
        else:
            dets = self.detect(frame)
        self.timings["detect"] = time.perf_counter() - t0
        return self.reconstruct_detections(frame, dets)

    def reconstruct_detections(self, frame: np.ndarray, dets: list[Detection]) -> list[Face]:
        """The stages after detection, for callers (the video pipeline) that track faces."""
        return self.reconstruct_frames([frame], [dets])[0]

    def reconstruct_frames(self, frames: list[np.ndarray],
                           dets: list[list[Detection]]) -> list[list[Face]]:
        """Crop every detection of every frame, run them through the engine as one batch,
        restore each map into its own frame. ``frames`` are BGR uint8; ``dets[i]`` are
        frame i's faces."""
        t0 = time.perf_counter()
        regions = [[self.region(d) for d in ds] for ds in dets]
        crops = [crop_faces(f, rs) for f, rs in zip(frames, regions) if rs]
        if not crops:
            self.timings.update(crop=0.0, engine=0.0, restore=0.0)
            return [[] for _ in frames]
        batch = np.concatenate([c for c, _ in crops])
        mats = np.concatenate([m for _, m in crops])
        t1 = time.perf_counter()
        pos = self.engine.infer(batch)
        t2 = time.perf_counter()
        pos = restore_position_maps(pos, mats)
        t3 = time.perf_counter()
        self.timings.update(crop=t1 - t0, engine=t2 - t1, restore=t3 - t2)
        out: list[list[Face]] = []
        k = 0
        for frame, ds, rs in zip(frames, dets, regions):
            faces = []
            for det, region in zip(ds, rs):
                faces.append(Face(position_map=pos[k], image=frame, assets=self.assets,
                                  region=region, transform=mats[k], detection=det))
                k += 1
            out.append(faces)
        return out

    def reconstruct_batch(self, images) -> list[list[Face]]:
        """Several images, every face of every image in one engine batch."""
        frames = [read_image(im) if isinstance(im, (str, os.PathLike)) else to_bgr(im) for im in images]
        return self.reconstruct_frames(frames, [self.detect(f) for f in frames])
