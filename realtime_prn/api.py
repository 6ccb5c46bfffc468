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
    RES,
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
    ``realtime_prn.weights`` (default ``uvreg``, the trained release). ``detector``: blazeface |
    haar | scrfd | dlib. ``max_faces``: keep the N largest (0 = all). ``flip``: also run each
    crop's mirror image and average the two position maps (``engines.flip``): lower landmark
    error for twice the engine work, so off by default (the real-time path). ``refine``: after
    a detector's box crop, crop again from the 68 landmarks just found (PRN's landmark rule, the
    crop the ground-truth protocol and the tracker use) and run the engine again, this many times;
    faces that came with 68 landmarks (the caller's, a tracker's) are already cropped that way.
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
    refine: int = 1
    data_root: str | os.PathLike | None = None


class FaceReconstructor:
    def __init__(self, options: Options | None = None, engine=None, detector=None, **overrides):
        self.options = options or Options()
        for key, value in overrides.items():
            if not hasattr(self.options, key):
                raise TypeError(f"unknown option {key!r}")
            setattr(self.options, key, value)
        o = self.options
        if not isinstance(o.refine, int) or o.refine < 0:
            raise ValueError(f"refine must be a whole number of passes, 0 or more (got {o.refine!r})")
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
        restore each map into its own frame (box crops then refined, ``Options.refine``).
        ``frames`` are BGR uint8; ``dets[i]`` are frame i's faces."""
        self.timings.update(crop=0.0, engine=0.0, restore=0.0)
        regions = [[self.region(d) for d in ds] for ds in dets]
        flat = [r for rs in regions for r in rs]
        if not flat:
            return [[] for _ in frames]
        owner = [f for f, rs in enumerate(regions) for _ in rs]
        pos, mats = self._crop_infer(frames, owner, flat)
        # box crops only (``region``): a face given with landmarks is cropped by the landmark rule already
        boxed = [k for k, d in enumerate(d for ds in dets for d in ds) if d.landmarks is None]
        for _ in range(self.options.refine if boxed else 0):
            self._refine(frames, owner, boxed, pos, mats, flat)
        out: list[list[Face]] = []
        k = 0
        for frame, ds in zip(frames, dets):
            faces = []
            for det in ds:
                faces.append(Face(position_map=pos[k], image=frame, assets=self.assets,
                                  region=flat[k], transform=mats[k], detection=det))
                k += 1
            out.append(faces)
        return out

    def _crop_infer(self, frames: list[np.ndarray], owner: list[int],
                    regions: list[CropRegion]) -> tuple[np.ndarray, np.ndarray]:
        """Restored position maps and crop matrices of ``regions`` (region k lies in frame owner[k]),
        all through the engine as one batch; stage times added to ``timings``."""
        t0 = time.perf_counter()
        batch = np.empty((len(regions), RES, RES, 3), np.float32)
        mats = np.empty((len(regions), 3, 3), np.float64)
        for f in sorted(set(owner)):
            ks = [k for k, o in enumerate(owner) if o == f]
            batch[ks], mats[ks] = crop_faces(frames[f], [regions[k] for k in ks])
        t1 = time.perf_counter()
        pos = self.engine.infer(batch)
        t2 = time.perf_counter()
        pos = restore_position_maps(pos, mats)
        t3 = time.perf_counter()
        for key, dt in (("crop", t1 - t0), ("engine", t2 - t1), ("restore", t3 - t2)):
            self.timings[key] = self.timings.get(key, 0.0) + dt
        return pos, mats

    def _refine(self, frames: list[np.ndarray], owner: list[int], which: list[int], pos: np.ndarray,
                mats: np.ndarray, regions: list[CropRegion]) -> None:
        """One refinement pass over faces ``which``: landmark-rule crops from their current maps,
        written over their entries of ``pos``, ``mats`` and ``regions`` in place.

        Why: a detector box is a loose, jittery frame (BlazeFace's box rule misses PRN's training
        crop by up to a tenth of the face at large yaw); the landmarks of a first pass put the
        second crop where the network was trained to see a face. A face whose landmarks are not
        finite keeps its first pass."""
        kpt = self.assets.kpt_flat
        lms = {k: pos[k].reshape(-1, 3)[kpt, :2] for k in which}
        redo = [k for k in which if np.isfinite(lms[k]).all()]
        if not redo:
            return
        new = [region_from_landmarks(lms[k], self.options.landmark_scale) for k in redo]
        pos[redo], mats[redo] = self._crop_infer(frames, [owner[k] for k in redo], new)
        for k, r in zip(redo, new):
            regions[k] = r

    def reconstruct_batch(self, images) -> list[list[Face]]:
        """Several images, every face of every image in one engine batch."""
        frames = [read_image(im) if isinstance(im, (str, os.PathLike)) else to_bgr(im) for im in images]
        return self.reconstruct_frames(frames, [self.detect(f) for f in frames])
