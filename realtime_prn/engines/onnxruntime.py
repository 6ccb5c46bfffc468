"""ONNX Runtime engine: the CPU default, CUDA when onnxruntime-gpu is installed.

Thread spinning is off by default: on a 2-core machine a spinning intra-op pool starves
video decoding and the detector (measured: see tools/benchmark.py); ``spinning=True``
restores ONNX Runtime's default for a machine where the engine is alone.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import check_batch


def session_options(threads: int, spinning: bool = False):
    """Session options every ONNX Runtime session in the project uses (engine, detectors):
    a fixed intra-op pool, one inter-op thread, and spinning off unless asked for."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    spin = "1" if spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return opts


class OnnxRuntimeEngine:
    name = "onnxruntime"

    def __init__(self, model_path: str | os.PathLike, threads: int | None = None,
                 spinning: bool = False, max_batch: int = 16, providers: list[str] | None = None):
        import onnxruntime as ort

        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        opts = session_options(threads or (os.cpu_count() or 1), spinning)
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as exc:
            raise ValueError(f"{path} is not a usable ONNX model: {str(exc).splitlines()[0]}") from None
        inp = self.session.get_inputs()[0]
        out = self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        if list(inp.shape[1:]) != [256, 256, 3]:
            raise ValueError(f"{path} takes {inp.shape}, expected N×256×256×3 (a PRN-style model)")
        fixed = inp.shape[0]
        self.fixed_batch = fixed if isinstance(fixed, int) else None
        self.max_batch = self.fixed_batch or max_batch
        self.model_path = path
        self.providers = self.session.get_providers()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = check_batch(batch)
        outs = []
        for i in range(0, len(batch), self.max_batch):
            chunk = batch[i:i + self.max_batch]
            n = len(chunk)
            if self.fixed_batch and n != self.fixed_batch:
                chunk = np.concatenate([chunk, np.zeros((self.fixed_batch - n, *chunk.shape[1:]),
                                                        np.float32)])
            outs.append(self.session.run([self.output_name], {self.input_name: chunk})[0][:n])
        return np.concatenate(outs) if len(outs) > 1 else outs[0]
