#!/usr/bin/env python
"""Build engines: weights → ONNX (tf2onnx) → optional int8 (ONNX Runtime, real-face
calibration) → optional TensorRT plan (fp32/fp16/int8), all cached under engines/.

    python build_engine.py                                   # built-in mb05uv → ONNX
    python build_engine.py --weights ckpt/256_256_resfcn256_weight --int8
    python build_engine.py --weights ckpt/256_256_resfcn256_weight --tensorrt --precision fp16
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None,
                   help="'uvreg' (default: the trained release), 'mb05uv', a uvreg .npz, an official PRN "
                        "checkpoint prefix or an .onnx file")
    p.add_argument("--int8", action="store_true", help="also an int8 QDQ ONNX (calibrated on real faces)")
    p.add_argument("--tensorrt", action="store_true", help="also a TensorRT plan (needs an NVIDIA GPU)")
    p.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "int8"],
                   help="TensorRT precision (default fp16)")
    p.add_argument("--max-batch", type=int, default=16, help="TensorRT batch profile 1..N")
    p.add_argument("--force", action="store_true", help="rebuild the int8 model even if cached")
    args = p.parse_args(argv)

    from realtime_prn.errors import user_errors
    from realtime_prn.weights import onnx_model, resolve_weights
    try:
        spec = resolve_weights(args.weights)
        onnx_path = onnx_model(spec)
        print(f"onnx:     {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB)")
        int8_path = None
        if args.int8 or (args.tensorrt and args.precision == "int8"):
            from realtime_prn.network.quantize import int8_model
            int8_path = int8_model(onnx_path, force=args.force)
            print(f"int8:     {int8_path} ({int8_path.stat().st_size / 1e6:.1f} MB)")
        if args.tensorrt:
            from realtime_prn.engines.tensorrt import build_plan
            src = int8_path if args.precision == "int8" else onnx_path
            plan = build_plan(src, precision=args.precision, max_batch=args.max_batch)
            print(f"tensorrt: {plan} ({plan.stat().st_size / 1e6:.1f} MB)")
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
