"""Engines by name. Each maps a crop batch to position maps; see ``base``."""
from __future__ import annotations

from ..weights import WeightsSpec, keras_model, onnx_model, resolve_weights
from .base import RESOLUTION, Engine, check_batch

ENGINES = ("onnxruntime", "tensorflow", "tensorrt")

__all__ = ["ENGINES", "RESOLUTION", "Engine", "check_batch", "create_engine"]


def create_engine(name: str = "onnxruntime", weights: str | WeightsSpec | None = None,
                  precision: str = "fp32", threads: int | None = None, max_batch: int = 16,
                  spinning: bool = False, data_root=None, log=print) -> Engine:
    """Build the named engine for the given weights (see ``weights`` for what is accepted)."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
    spec = weights if isinstance(weights, WeightsSpec) else resolve_weights(weights)
    if name == "tensorflow":
        if precision != "fp32":
            raise ValueError("the tensorflow engine runs fp32 only")
        from .tensorflow import TensorFlowEngine
        return TensorFlowEngine(keras_model(spec, data_root), max_batch=max_batch)
    path = onnx_model(spec, data_root, log=log)
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeEngine
        if precision == "int8":
            from ..network.quantize import int8_model
            path = int8_model(path, log=log)
        elif precision != "fp32":
            raise ValueError("the onnxruntime engine runs fp32 or int8")
        return OnnxRuntimeEngine(path, threads=threads, spinning=spinning, max_batch=max_batch)
    from .tensorrt import TensorRTEngine
    if precision == "int8":
        from ..network.quantize import int8_model
        path = int8_model(path, log=log)
    return TensorRTEngine(path, precision=precision, max_batch=max_batch)
