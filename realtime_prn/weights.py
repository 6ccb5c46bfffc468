"""Where the network's weights come from, checked before anything runs.

The setting (``--weights`` or ``REALTIME_PRN_WEIGHTS``) accepts:

* ``mb05uv`` (default): the built-in model — 3DDFA_V2's MobileNet regressor composed with a
  dense BFM basis in PRN's UV layout, built locally from the shared data into ``engines/``;
* an official PRN checkpoint prefix (``…/256_256_resfcn256_weight``, with its ``.index`` and
  ``.data-00000-of-00001``): loaded by name into resfcn256;
* an ``.onnx`` file exported by ``build_engine.py`` (ONNX Runtime / TensorRT engines only).

Anything else fails with one line saying what was expected and where to get it: random
weights are never used silently.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .paths import PROJECT_ROOT, engines_dir
from .paths import data_root as resolve_data_root

ENV_WEIGHTS = "REALTIME_PRN_WEIGHTS"
DEFAULT_WEIGHTS = "mb05uv"
OFFICIAL_URL = "https://drive.google.com/file/d/1UoE-XuW1SDLUjZmJPkIZ1MLxvQFgmTFH/view"
OFFICIAL_DATA_BYTES = 160_290_984


class WeightsError(ValueError):
    """Missing, malformed or unsuitable weights; the message is meant for the user."""


@dataclass(frozen=True)
class WeightsSpec:
    kind: str            # "mb05uv" | "checkpoint" | "onnx"
    path: Path | None = None

    def describe(self) -> str:
        return self.kind if self.path is None else f"{self.kind} {self.path}"


def resolve_weights(value: str | os.PathLike | None = None) -> WeightsSpec:
    value = str(value) if value else os.environ.get(ENV_WEIGHTS) or DEFAULT_WEIGHTS
    if value == DEFAULT_WEIGHTS:
        return WeightsSpec("mb05uv")
    path = Path(value).expanduser()
    if path.suffix == ".onnx":
        if not path.is_file():
            raise WeightsError(f"ONNX weights not found: {path} (build one with build_engine.py)")
        return WeightsSpec("onnx", path.resolve())
    prefix = Path(str(path)[: -len(".index")]) if path.suffix == ".index" else path
    if path.is_dir():
        found = sorted(path.glob("*.index"))
        if len(found) == 1:
            prefix = found[0].with_suffix("")
    index = Path(str(prefix) + ".index")
    data = Path(str(prefix) + ".data-00000-of-00001")
    if index.is_file():
        if not data.is_file():
            raise WeightsError(
                f"checkpoint {prefix} has its .index but not {data.name} "
                f"(the official file is {OFFICIAL_DATA_BYTES:,} bytes, from {OFFICIAL_URL}; "
                f"or run `python -m realtime_prn fetch --official`)")
        return WeightsSpec("checkpoint", prefix.resolve())
    raise WeightsError(
        f"weights not found: {value!r}. Expected '{DEFAULT_WEIGHTS}' (built in), an official "
        f"PRN checkpoint prefix (…/256_256_resfcn256_weight with .index and "
        f".data-00000-of-00001, from {OFFICIAL_URL}) or an .onnx file")


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def keras_model(spec: WeightsSpec, data_root=None):
    """The TF2 model for these weights (TensorFlow engine, ONNX export)."""
    if spec.kind == "mb05uv":
        from .network.mb05uv import build_mb05uv_model
        return build_mb05uv_model(data_root)
    if spec.kind == "checkpoint":
        from .network.resfcn256 import (
            CheckpointError,
            build_resfcn256,
            load_official_checkpoint,
        )
        model = build_resfcn256()
        try:
            load_official_checkpoint(model, str(spec.path))
        except CheckpointError as exc:
            raise WeightsError(str(exc)) from None
        return model
    raise WeightsError(f"the tensorflow engine needs a checkpoint or '{DEFAULT_WEIGHTS}', "
                       f"not {spec.describe()}")


def onnx_model(spec: WeightsSpec, data_root=None, log=print) -> Path:
    """An ONNX file for these weights, exported once and cached under ``engines/``."""
    if spec.kind == "onnx":
        return spec.path
    if spec.kind == "mb05uv":
        from .network.export import build_mb05uv_onnx, mb05uv_onnx_is_current
        if not mb05uv_onnx_is_current(data_root) and "tensorflow" not in sys.modules:
            # Build in a child: TensorFlow stays out of this process (it cannot share one
            # with Mesa's EGL, which the 3D view needs), and its memory goes when it exits.
            log("building the mb05uv ONNX model (once, about 30 s) ...")
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
            env["REALTIME_PRN_DATA"] = str(resolve_data_root(data_root))
            env["REALTIME_PRN_ENGINES"] = str(engines_dir())
            res = subprocess.run([sys.executable, "-m", "realtime_prn.network.export"],
                                 capture_output=True, text=True, env=env, cwd=PROJECT_ROOT)
            if res.returncode != 0:
                last = (res.stderr.strip() or res.stdout.strip() or "failed").splitlines()[-1]
                raise WeightsError(f"cannot build the mb05uv model: {last}")
        return build_mb05uv_onnx(data_root=data_root)
    from .network.export import keras_to_onnx
    data = Path(str(spec.path) + ".data-00000-of-00001")
    out = engines_dir() / f"resfcn256-{_digest(Path(str(spec.path) + '.index'), data)}.onnx"
    if not out.exists():
        from .network.resfcn256 import build_resfcn256, copy_to_deconv_as_conv
        log(f"exporting {spec.path.name} to ONNX (once; transposed convs rewritten as convs) ...")
        rewritten = build_resfcn256(deconv_as_conv=True)
        copy_to_deconv_as_conv(keras_model(spec, data_root), rewritten)
        keras_to_onnx(rewritten, out)
    return out
