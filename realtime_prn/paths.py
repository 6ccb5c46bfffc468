"""Where the project finds data it must never commit: the shared data tree and built engines.

The shared tree (PRN uv-data, evaluation sets, training pieces) comes from elsewhere, so it is
located through a setting rather than copied: ``REALTIME_PRN_DATA`` (or an explicit argument)
with ``../shared`` beside the project root as the fallback.
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# A source checkout keeps engines/ and ../shared beside the project; an installed package
# (site-packages) keeps them under the user's cache instead.
IN_CHECKOUT = (PROJECT_ROOT / "pyproject.toml").exists()
USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "realtime-prn"
ENV_DATA = "REALTIME_PRN_DATA"
ENV_ENGINES = "REALTIME_PRN_ENGINES"


class DataNotFoundError(FileNotFoundError):
    """A required data file is missing; the message says which and how to get it."""


def data_root(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override).expanduser().resolve()
    env = os.environ.get(ENV_DATA)
    if env:
        return Path(env).expanduser().resolve()
    if IN_CHECKOUT:
        return (PROJECT_ROOT.parent / "shared").resolve()
    return USER_CACHE / "shared"


def data_file(*parts: str, override: str | os.PathLike | None = None) -> Path:
    """A file in the shared tree, or a one-line error naming the setting that moves it."""
    path = data_root(override).joinpath(*parts)
    if not path.exists():
        raise DataNotFoundError(
            f"missing data file {path} (set {ENV_DATA} to the shared data folder, "
            f"or run `python -m realtime_prn fetch` on a machine with internet)"
        )
    return path


def engines_dir() -> Path:
    """Built engines (ONNX, TensorRT plans, derived bases) live here, never in git."""
    env = os.environ.get(ENV_ENGINES)
    if env:
        path = Path(env).expanduser()
    else:
        path = PROJECT_ROOT / "engines" if IN_CHECKOUT else USER_CACHE / "engines"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """Streamed sha256: the key for every cache and download check in the project."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
