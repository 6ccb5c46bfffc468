"""Keras -> ONNX export, and the cached ``mb05uv_fp32.onnx`` engine source.

Why: ONNX is the hand-off format for every runtime the project uses (ONNX Runtime on CPU,
TensorRT on GPU), and engines are built, never committed. So the export is deterministic from the
data and code, written atomically (a crash never leaves a half-written model that a later run
would trust), and skipped when a json sidecar says the existing file came from the same sources.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from realtime_prn.io.atomic import atomic_open
from realtime_prn.paths import data_file, engines_dir, sha256_file

OPSET = 17
ONNX_NAME = "mb05uv_fp32.onnx"
#: Bump when the export recipe changes, so that cached files are rebuilt.
EXPORT_VERSION = "mb05uv-export/2"
_CODE = ("mb05.py", "mb05uv.py", "uv_basis.py", "export.py")


def _atomic_write(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def keras_to_onnx(
    model: object, path: str | os.PathLike, opset: int = OPSET, batch_dim: int | None = None
) -> Path:
    """Convert a Keras model with tf2onnx ``from_keras``; ``batch_dim=None`` keeps the batch axis dynamic."""
    import tensorflow as tf
    import tf2onnx

    spec = tuple(
        tf.TensorSpec((batch_dim, *tuple(t.shape)[1:]), t.dtype, name=t.name.split(":")[0])
        for t in model.inputs
    )
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    if batch_dim is None:  # tf2onnx names the free axis 'unk__N'; a stable name helps TensorRT profiles
        for value in (*proto.graph.input, *proto.graph.output):
            dim = value.type.tensor_type.shape.dim
            if len(dim) and not dim[0].dim_value:
                dim[0].dim_param = "batch"
    path = Path(path)
    _atomic_write(path, proto.SerializeToString())
    return path


def mb05uv_source_hashes(data_root: str | os.PathLike | None = None) -> dict[str, str]:
    """sha256 of everything the mb05uv ONNX depends on: weights, stats, the UV basis inputs, code."""
    from realtime_prn.network.uv_basis import source_hash

    here = Path(__file__).resolve().parent
    out = {
        "export_version": hashlib.sha256(f"{EXPORT_VERSION} opset {OPSET}".encode()).hexdigest(),
        "mb05_120x120.npz": sha256_file(
            data_file("train", "tddfa_v2", "mb05_120x120.npz", override=data_root)
        ),
        "param_mean_std_62d_120x120.pkl": sha256_file(
            data_file("train", "tddfa_v2", "param_mean_std_62d_120x120.pkl", override=data_root)
        ),
        "uv_basis": source_hash(data_root),
    }
    for name in _CODE:
        out[f"code/{name}"] = sha256_file(here / name)
    return out


def _combined(hashes: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()


def mb05uv_onnx_is_current(data_root: str | os.PathLike | None = None) -> bool:
    """True when the cached ONNX exists and was built from exactly today's inputs and code."""
    path = engines_dir() / ONNX_NAME
    side = path.with_suffix(path.suffix + ".json")
    if not (path.exists() and side.exists()):
        return False
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        return False  # unreadable sidecar: rebuild
    return (meta.get("source_sha256") == _combined(mb05uv_source_hashes(data_root))
            and meta.get("onnx_sha256") == sha256_file(path))


def build_mb05uv_onnx(force: bool = False, data_root: str | os.PathLike | None = None) -> Path:
    """``engines_dir()/mb05uv_fp32.onnx``, rebuilt only when missing, altered, or from other sources.

    The sidecar ``mb05uv_fp32.onnx.json`` records the sha256 of each input, their combination
    and the ONNX file's own sha256.
    """
    path = engines_dir() / ONNX_NAME
    side = path.with_suffix(path.suffix + ".json")
    hashes = mb05uv_source_hashes(data_root)
    source = _combined(hashes)
    if not force and mb05uv_onnx_is_current(data_root):
        return path
    import tensorflow as tf
    import tf2onnx

    from realtime_prn.network.mb05uv import NAME, build_mb05uv_model

    t0 = time.perf_counter()
    keras_to_onnx(build_mb05uv_model(data_root), path, opset=OPSET)
    meta = {
        "name": NAME,
        "what": "3DDFA_V2 mb05 weights (MIT repo; trained on 300W-LP, non-commercial data) + dense UV "
        "decoder; NOT the official PRN weights, NOT trained by this project",
        "input": "N x 256 x 256 x 3 float32 RGB in [0,1] (PRN crop)",
        "output": "N x 256 x 256 x 3 float32 position map in 256-crop pixels",
        "opset": OPSET,
        "source_sha256": source,
        "inputs": hashes,
        "onnx_sha256": sha256_file(path),
        "onnx_bytes": path.stat().st_size,
        "build_seconds": round(time.perf_counter() - t0, 2),
        "tensorflow": tf.__version__,
        "tf2onnx": tf2onnx.__version__,
    }
    _atomic_write(side, (json.dumps(meta, indent=1) + "\n").encode())
    return path


UVREG_EXPORT_VERSION = "uvreg-export/1"
_UVREG_CODE = ("uvreg.py", "mb05.py", "mb05uv.py", "uv_basis.py", "export.py")


def uvreg_onnx_path(weights_file: str | os.PathLike, data_root: str | os.PathLike | None = None) -> Path:
    """Where the ONNX for a uvreg weights file lives: named by the hash of every input it depends on."""
    from realtime_prn.network.uv_basis import source_hash

    here = Path(__file__).resolve().parent
    h = hashlib.sha256(f"{UVREG_EXPORT_VERSION} opset {OPSET}".encode())
    h.update(sha256_file(Path(weights_file)).encode())
    h.update(source_hash(data_root).encode())
    for name in _UVREG_CODE:
        h.update(sha256_file(here / name).encode())
    return engines_dir() / f"uvreg-{h.hexdigest()[:16]}.onnx"


def build_uvreg_onnx(weights_file: str | os.PathLike, data_root: str | os.PathLike | None = None,
                     path: Path | None = None) -> Path:
    """The PRN-I/O ONNX of a uvreg release file (backbone weights + the locally built UV basis).

    Why built here and not shipped: the decoder's constant is derived from the BFM files under
    ``shared/``, which are never committed; only the trained backbone (a few MB) is. ``path``:
    :func:`uvreg_onnx_path`, when the caller has it already.
    """
    path = path or uvreg_onnx_path(weights_file, data_root)
    if path.exists():
        return path
    from realtime_prn.network.uvreg import build_uvreg_model, load_weights

    backbone, p_mean, p_std, _ = load_weights(weights_file, data_root)
    keras_to_onnx(build_uvreg_model(backbone, p_mean, p_std, data_root), path, opset=OPSET)
    return path


def main(argv: list[str] | None = None) -> int:
    """CLI: build (or confirm) the cached mb05uv ONNX (or a uvreg one) and print where it is."""
    ap = argparse.ArgumentParser(description="Build engines/mb05uv_fp32.onnx from the staged teacher data.")
    ap.add_argument("--force", action="store_true", help="rebuild even when the sidecar hash matches")
    ap.add_argument("--uvreg", default=None, metavar="FILE", help="build the ONNX of this uvreg weights file")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        path = build_uvreg_onnx(args.uvreg) if args.uvreg else build_mb05uv_onnx(force=args.force)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
