"""The errors a user can cause, so CLIs print one line for them and a traceback for bugs."""
from __future__ import annotations

import argparse

from .image import ImageError
from .paths import DataNotFoundError
from .weights import WeightsError


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose usage mistakes are one ``error:`` line on stderr and exit 2 (no usage dump),
    like every other user error of the CLIs and tools."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message}\n")


class VideoError(RuntimeError):
    """A video or camera that cannot be opened or read."""


class NoFaceError(RuntimeError):
    """No face anywhere in the input."""


def run_cli(fn, interrupted: str = "interrupted; files written so far are kept",
            extra: tuple[type[BaseException], ...] = ()) -> int:
    """Run a CLI body: user mistakes become one ``error:`` line and exit 2 (1 when no face
    was found), Ctrl-C exits 130 with ``interrupted``; anything else is a bug and raises."""
    import sys

    try:
        return fn() or 0
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    except (*user_errors(), *extra) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, NoFaceError) else 2


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
