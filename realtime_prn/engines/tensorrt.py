"""TensorRT engine for NVIDIA GPUs: ONNX → serialized plan (fp32/fp16/int8), cached on disk.

A plan is only valid for the GPU model and TensorRT version that built it, so the cache
key holds both, plus the ONNX file's hash, the precision and the batch profile; any change
builds a new plan instead of loading a wrong one. int8 expects a QDQ ONNX (explicit
quantization from ``build_engine.py --int8``), so no calibrator runs on the GPU.
Device memory goes through cuda-python's runtime API (``pip install cuda-python``), or
torch when that is what the machine has.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..paths import engines_dir, sha256_file
from .base import check_batch

PRECISIONS = ("fp32", "fp16", "int8")


class TensorRTUnavailable(RuntimeError):
    pass


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailable(
            "the tensorrt engine needs NVIDIA TensorRT: pip install tensorrt cuda-python "
            "(from NVIDIA's index) on a machine with an NVIDIA GPU") from None
    return trt


def _sha256(path: Path) -> str:
    return sha256_file(path)


class _Cuda:
    """The handful of CUDA runtime calls the engine needs, from cuda-python or else torch.

    Buffers are float32 device arrays of a fixed byte size; ``alloc`` returns
    (device pointer, owner) so the torch path keeps its tensor alive.
    """

    def __init__(self):
        self.rt = None
        self.torch = None
        try:
            from cuda.bindings import runtime as rt  # cuda-python >= 12.6
        except ImportError:
            try:
                from cuda import cudart as rt
            except ImportError:
                rt = None
        if rt is not None:
            self.rt = rt
            return
        try:
            import torch
        except ImportError:
            raise TensorRTUnavailable("the tensorrt engine needs cuda-python "
                                      "(pip install cuda-python) or torch with CUDA") from None
        if not torch.cuda.is_available():
            raise TensorRTUnavailable("torch sees no CUDA device")
        self.torch = torch
        self._owners: dict[int, object] = {}

    def _check(self, result):
        err = result[0] if isinstance(result, tuple) else result
        if int(err) != 0:
            raise RuntimeError(f"CUDA call failed: {err}")
        return result[1] if isinstance(result, tuple) and len(result) > 1 else None

    def gpu_name(self) -> str:
        if self.rt is not None:
            props = self._check(self.rt.cudaGetDeviceProperties(0))
            name = props.name
            return (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).strip("\x00")
        return self.torch.cuda.get_device_name(0)

    def alloc(self, nbytes: int):
        if self.rt is not None:
            ptr = self._check(self.rt.cudaMalloc(nbytes))
            return int(ptr), ptr
        t = self.torch.empty(nbytes // 4, dtype=self.torch.float32, device="cuda")
        self._owners[t.data_ptr()] = t
        return t.data_ptr(), t

    def stream(self):
        if self.rt is not None:
            return self._check(self.rt.cudaStreamCreate())
        return self.torch.cuda.current_stream().cuda_stream

    def h2d(self, dst: int, src: np.ndarray, stream) -> None:
        if self.rt is not None:
            self._check(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes,
                                                self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))
        else:
            self._owners[dst][: src.size].copy_(self.torch.from_numpy(src.reshape(-1)))

    def d2h(self, dst: np.ndarray, src: int, stream) -> None:
        if self.rt is not None:
            self._check(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes,
                                                self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))
        else:
            self.torch.cuda.synchronize()
            dst.reshape(-1)[:] = self._owners[src][: dst.size].cpu().numpy()

    def sync(self, stream) -> None:
        if self.rt is not None:
            self._check(self.rt.cudaStreamSynchronize(stream))
        else:
            self.torch.cuda.synchronize()


def plan_path(onnx_path: Path, precision: str, max_batch: int, gpu: str, trt_version: str) -> Path:
    key = {"onnx": _sha256(onnx_path)[:16], "precision": precision, "batch": [1, max_batch],
           "gpu": gpu, "tensorrt": trt_version}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return engines_dir() / "tensorrt" / f"{onnx_path.stem}-{precision}-b{max_batch}-{digest}.plan"


def build_plan(onnx_path: str | os.PathLike, precision: str = "fp16", max_batch: int = 16,
               opt_batch: int | None = None, workspace_gb: float = 4.0,
               log=print) -> Path:
    """Build (or find in the cache) a plan for this GPU; returns its path."""
    trt = _import_trt()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    onnx_path = Path(onnx_path)
    cuda = _Cuda()
    out = plan_path(onnx_path, precision, max_batch, cuda.gpu_name(), trt.__version__)
    if out.exists():
        return out
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    inp = network.get_input(0)
    shape = (256, 256, 3)
    profile.set_shape(inp.name, (1, *shape), (opt_batch or max_batch, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    log(f"building TensorRT {precision} plan for {onnx_path.name} (batch 1..{max_batch}) ...")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build a plan for {onnx_path}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, out)
    return out


class TensorRTEngine:
    name = "tensorrt"

    def __init__(self, onnx_path: str | os.PathLike, precision: str = "fp16", max_batch: int = 16):
        trt = _import_trt()
        self.cuda = _Cuda()
        self.plan = build_plan(onnx_path, precision, max_batch)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.plan.read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names
                               if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names
                                if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.max_batch = max_batch
        self.precision = precision
        nbytes = max_batch * 256 * 256 * 3 * 4
        self._in_ptr, self._in_keep = self.cuda.alloc(nbytes)
        self._out_ptr, self._out_keep = self.cuda.alloc(nbytes)
        self.stream = self.cuda.stream()
        self.context.set_tensor_address(self.input_name, int(self._in_ptr))
        self.context.set_tensor_address(self.output_name, int(self._out_ptr))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = check_batch(batch)
        out = np.empty_like(batch)
        for i in range(0, len(batch), self.max_batch):
            chunk = np.ascontiguousarray(batch[i:i + self.max_batch])
            self.context.set_input_shape(self.input_name, chunk.shape)
            self.cuda.h2d(self._in_ptr, chunk, self.stream)
            if not self.context.execute_async_v3(int(self.stream)):
                raise RuntimeError("TensorRT execution failed")
            res = np.empty_like(chunk)
            self.cuda.d2h(res, self._out_ptr, self.stream)
            self.cuda.sync(self.stream)
            out[i:i + len(chunk)] = res
        return out
