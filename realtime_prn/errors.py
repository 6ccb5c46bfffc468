"""The errors a user can cause, so CLIs print one line for them and a traceback for bugs."""
from __future__ import annotations

from .image import ImageError
from .paths import DataNotFoundError
from .weights import WeightsError


class VideoError(RuntimeError):
    """A video or camera that cannot be opened or read."""


class NoFaceError(RuntimeError):
    """No face anywhere in the input."""


def user_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [ImageError, DataNotFoundError, WeightsError, VideoError,
                                       NoFaceError, FileNotFoundError, ValueError]
    try:
        from .detectors import DetectorUnavailableError
        errs.append(DetectorUnavailableError)
    except ImportError:
        pass
    try:
        from .engines.tensorrt import TensorRTUnavailable
        errs.append(TensorRTUnavailable)
    except ImportError:
        pass
    return tuple(errs)
