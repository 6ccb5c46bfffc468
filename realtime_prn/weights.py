"""Where the network's weights come from, checked before anything runs.

The setting (``--weights`` or ``REALTIME_PRN_WEIGHTS``) accepts:

* ``uvreg`` (default since session 21): this project's own trained model (``realtime_prn/models/``,
  sha256-checked against its manifest; the teacher's network fine-tuned here, stored as its
  difference from the teacher's weights in shared/), or a path to any uvreg ``.npz`` written by
  ``tools/train.py --export``;
* ``mb05uv``: the teacher as it is — 3DDFA_V2's MobileNet regressor composed with a dense BFM
  basis in PRN's UV layout, built locally from the shared data into ``engines/``;
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

from .paths import PROJECT_ROOT, engines_dir, sha256_file
from .paths import data_root as resolve_data_root

ENV_WEIGHTS = "REALTIME_PRN_WEIGHTS"
DEFAULT_WEIGHTS = "uvreg"
OFFICIAL_URL = "https://drive.google.com/file/d/1UoE-XuW1SDLUjZmJPkIZ1MLxvQFgmTFH/view"
OFFICIAL_DATA_BYTES = 160_290_984


MODELS_DIR = Path(__file__).resolve().parent / "models"
UVREG_RELEASE = "uvreg"


class WeightsError(ValueError):
    """Missing, malformed or unsuitable weights; the message is meant for the user."""


def release_file(name: str = UVREG_RELEASE) -> Path:
    """The committed release file for ``name``, checked against ``models/manifest.json``'s sha256."""
    import json

    manifest = MODELS_DIR / "manifest.json"
    try:
        entry = json.loads(manifest.read_text())[name]
    except (OSError, ValueError, KeyError):
        raise WeightsError(f"no released '{name}' weights in {manifest}") from None
    path = MODELS_DIR / entry["file"]
    if not path.is_file():
        raise WeightsError(f"released weights missing: {path} (broken checkout? `git checkout -- {path}`)")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise WeightsError(f"{path} does not match its manifest sha256 (corrupt or replaced): "
                           f"{digest[:12]}… != {entry['sha256'][:12]}…")
    return path


@dataclass(frozen=True)
class WeightsSpec:
    kind: str            # "mb05uv" | "uvreg" | "checkpoint" | "onnx"
    path: Path | None = None

    def describe(self) -> str:
        return self.kind if self.path is None else f"{self.kind} {self.path}"


def resolve_weights(value: str | os.PathLike | None = None) -> WeightsSpec:
    value = str(value) if value else os.environ.get(ENV_WEIGHTS) or DEFAULT_WEIGHTS
    if value == "mb05uv":
        return WeightsSpec("mb05uv")
    if value == UVREG_RELEASE:
        return WeightsSpec("uvreg", release_file())
    path = Path(value).expanduser()
    if path.suffix == ".npz":
        if not path.is_file():
            raise WeightsError(f"uvreg weights not found: {path}")
        return WeightsSpec("uvreg", path.resolve())
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
        f"weights not found: {value!r}. Expected 'mb05uv' or 'uvreg' (built in), an official "
        f"PRN checkpoint prefix (…/256_256_resfcn256_weight with .index and "
        f".data-00000-of-00001, from {OFFICIAL_URL}) or an .onnx file")


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _export_in_child(args: list[str], what: str, data_root=None) -> None:
    """Run ``realtime_prn.network.export`` in a child process.

    Why: TensorFlow stays out of this process (it cannot share one with Mesa's EGL, which the 3D
    view needs), and its memory goes when the child exits.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["REALTIME_PRN_DATA"] = str(resolve_data_root(data_root))
    env["REALTIME_PRN_ENGINES"] = str(engines_dir())
    res = subprocess.run([sys.executable, "-m", "realtime_prn.network.export", *args],
                         capture_output=True, text=True, env=env, cwd=PROJECT_ROOT)
    if res.returncode != 0:
        last = (res.stderr.strip() or res.stdout.strip() or "failed").splitlines()[-1]
        raise WeightsError(f"cannot build the {what} model: {last.removeprefix('error: ')}")


def keras_model(spec: WeightsSpec, data_root=None):
    """The TF2 model for these weights (TensorFlow engine, ONNX export)."""
    if spec.kind == "mb05uv":
        from .network.mb05uv import build_mb05uv_model
        return build_mb05uv_model(data_root)
    if spec.kind == "uvreg":
        from .network.uvreg import build_uvreg_model, load_weights
        try:
            backbone, p_mean, p_std, _ = load_weights(spec.path, data_root)
        except (ValueError, OSError) as exc:
            raise WeightsError(str(exc)) from None
        return build_uvreg_model(backbone, p_mean, p_std, data_root)
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
    raise WeightsError(f"the tensorflow engine needs a checkpoint, 'mb05uv' or 'uvreg', "
                       f"not {spec.describe()}")


def onnx_model(spec: WeightsSpec, data_root=None, log=print) -> Path:
    """An ONNX file for these weights, exported once and cached under ``engines/``."""
    if spec.kind == "onnx":
        return spec.path
    if spec.kind == "mb05uv":
        from .network.export import build_mb05uv_onnx, mb05uv_onnx_is_current
        if not mb05uv_onnx_is_current(data_root) and "tensorflow" not in sys.modules:
            log("building the mb05uv ONNX model (once, about 30 s) ...")
            _export_in_child([], "mb05uv", data_root)
        return build_mb05uv_onnx(data_root=data_root)
    if spec.kind == "uvreg":
        from .network.export import build_uvreg_onnx, uvreg_onnx_path
        path = uvreg_onnx_path(spec.path, data_root)  # hashes weights, basis inputs and code: once
        if path.exists():
            return path
        if "tensorflow" not in sys.modules:
            log(f"building the uvreg ONNX model from {spec.path.name} (once, about 20 s) ...")
            _export_in_child(["--uvreg", str(spec.path)], "uvreg", data_root)
            return path
        try:
            return build_uvreg_onnx(spec.path, data_root, path)
        except (ValueError, OSError) as exc:
            raise WeightsError(str(exc)) from None
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
