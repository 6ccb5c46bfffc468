"""Face detectors behind one seam, created by name so callers never import a backend directly.

Backends are imported only when created: a CLI that runs Haar must not pay for (or fail on)
onnxruntime sessions, dlib or the BlazeFace model, and nothing here ever imports tensorflow,
which is needed only by the one-off BlazeFace build step.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any

import numpy as np

from realtime_prn.detectors.base import Detection, Detector

__all__ = [
    "Detection",
    "Detector",
    "DetectorUnavailableError",
    "ModelMissingError",
    "available_detectors",
    "check_frame",
    "create_detector",
]


class DetectorUnavailableError(RuntimeError):
    """A detector cannot run on this machine; the message is one line saying what to do.

    One base class lets the CLI turn every such case (missing model, missing package,
    incompatible model) into a short message instead of a traceback.
    """


class ModelMissingError(DetectorUnavailableError):
    """A detector's model file is absent; detectors never download at run time."""


def check_frame(frame: np.ndarray) -> np.ndarray:
    """Frames are BGR uint8 H×W×3 at every detector boundary; say so rather than misdetect."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(
            f"detectors take a BGR uint8 H×W×3 frame, got shape {frame.shape} dtype {frame.dtype}"
        )
    return frame


# name -> (module, class). Strings keep the imports lazy.
_REGISTRY: dict[str, tuple[str, str]] = {
    "blazeface": ("realtime_prn.detectors.blazeface", "BlazeFaceDetector"),
    "haar": ("realtime_prn.detectors.haar", "HaarDetector"),
    "scrfd": ("realtime_prn.detectors.scrfd", "ScrfdDetector"),
    "dlib": ("realtime_prn.detectors.dlib_mmod", "DlibMmodDetector"),
}

DEFAULT_DETECTOR = "blazeface"


def available_detectors() -> list[str]:
    """Names ``create_detector`` accepts, default first.

    A listed name may still fail to construct here (model not built, package not installed);
    that failure is a ``DetectorUnavailableError`` with the fix in its message.
    """
    return list(_REGISTRY)


def create_detector(name: str = DEFAULT_DETECTOR, **options: Any) -> Detector:
    """Build a detector by name so the pipeline and CLI stay backend-agnostic.

    Options are checked against the backend's constructor before it runs, so a misspelt
    option is a one-line ``ValueError`` rather than a ``TypeError`` from deep inside.
    """
    key = str(name).strip().lower()
    if key not in _REGISTRY:
        known = ", ".join(_REGISTRY)
        raise ValueError(f"unknown detector {name!r}; known detectors: {known}")
    module_name, class_name = _REGISTRY[key]
    cls = getattr(importlib.import_module(module_name), class_name)
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        accepted = [
            p.name
            for p in inspect.signature(cls).parameters.values()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        raise ValueError(
            f"bad options for detector {key!r}: {exc}; accepted options: {', '.join(accepted)}"
        ) from None
    return cls(**options)
