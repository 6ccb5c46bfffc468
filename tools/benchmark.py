#!/usr/bin/env python
"""Speed figures, printed (never asserted): medians over several runs, ratios against a
reference measured in the same run, since this machine is noisy.

    python tools/benchmark.py                 # engines × batch 1/4/16 + per-face stage costs
    python tools/benchmark.py --pipeline      # end-to-end video fps vs an official-style path
    python tools/benchmark.py --swap          # texture / render / blend per frame
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402


def timeit(fn, runs: int, warmup: int = 2) -> float:
    """Median seconds of ``runs`` calls after ``warmup`` (the first calls load numba caches)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _engines_for(model: str, crops: np.ndarray, args):
    """(label, engine) pairs available here for one model."""
    from realtime_prn.engines.onnxruntime import OnnxRuntimeEngine
    from realtime_prn.engines.tensorflow import TensorFlowEngine
    from realtime_prn.network.quantize import int8_model

    out = []
    if model == "mb05uv":
        from realtime_prn.network.export import build_mb05uv_onnx
        from realtime_prn.network.mb05uv import build_mb05uv_model
        keras = build_mb05uv_model()
        onnx_paths = {"onnxruntime fp32": build_mb05uv_onnx()}
    elif model == "uvreg":  # this project's trained weights, through the same resolution as users
        from realtime_prn.weights import keras_model, onnx_model, resolve_weights
        spec = resolve_weights("uvreg")
        keras = keras_model(spec)
        onnx_paths = {"onnxruntime fp32": onnx_model(spec)}
    else:  # resfcn256 with random weights: speed only, the official weights are not here
        import tensorflow as tf

        from realtime_prn.network.export import keras_to_onnx
        from realtime_prn.network.resfcn256 import build_resfcn256, copy_to_deconv_as_conv
        from realtime_prn.paths import engines_dir
        tf.keras.utils.set_random_seed(0)
        keras = build_resfcn256()
        onnx_paths = {}
        plain = engines_dir() / "bench_resfcn256_random_deconv.onnx"
        conv = engines_dir() / "bench_resfcn256_random_fp32.onnx"
        if not plain.exists():
            keras_to_onnx(keras, plain)
        if not conv.exists():
            rewritten = build_resfcn256(deconv_as_conv=True)
            copy_to_deconv_as_conv(keras, rewritten)
            keras_to_onnx(rewritten, conv)
        onnx_paths["onnxruntime fp32 (ConvTranspose)"] = plain
        onnx_paths["onnxruntime fp32"] = conv
    out.append(("tensorflow fp32", TensorFlowEngine(keras)))
    for label, path in onnx_paths.items():
        out.append((label, OnnxRuntimeEngine(path, threads=args.threads)))
    fp32 = onnx_paths["onnxruntime fp32"]
    # test-time flip averaging (Options.flip): its max|Δ| column is the averaging's own change, not noise
    from realtime_prn.assets import load_assets
    from realtime_prn.engines.flip import FlipAveragedEngine
    out.append(("onnxruntime fp32 + flip", FlipAveragedEngine(OnnxRuntimeEngine(fp32, threads=args.threads),
                                                              load_assets().face_mask)))
    out.append(("onnxruntime int8", OnnxRuntimeEngine(int8_model(fp32), threads=args.threads)))
    if args.spinning:
        out.append(("onnxruntime fp32 spinning", OnnxRuntimeEngine(fp32, threads=args.threads,
                                                                   spinning=True)))
    try:
        from realtime_prn.engines.tensorrt import TensorRTEngine
        for prec in ("fp16", "int8"):
            src = fp32 if prec == "fp16" else int8_model(fp32)
            out.append((f"tensorrt {prec}", TensorRTEngine(src, precision=prec)))
    except Exception as exc:  # no GPU / no TensorRT here: say so and go on
        print(f"  (tensorrt skipped: {str(exc).splitlines()[0]})")
    return out


def bench_engines(args) -> None:
    from realtime_prn.assets import load_assets
    from realtime_prn.network.quantize import calibration_crops

    crops = calibration_crops(16, seed=1)
    mask = load_assets().face_mask
    for model in args.models:
        print(f"\n== {model}: median ms per face (runs={args.runs}); ratio = TF ms / engine ms ==")
        engines = _engines_for(model, crops, args)
        ref_out = engines[0][1].infer(crops[:4])
        header = f"{'engine':34s}" + "".join(f"  b{b:<3d} ms  ratio" for b in args.batches)
        print(header + "   max|Δ| vs TF on face px (mean)")
        ref_ms = {}
        for label, eng in engines:
            row = f"{label:34s}"
            for b in args.batches:
                batch = np.concatenate([crops] * (b // len(crops) + 1))[:b]
                ms = timeit(lambda e=eng, x=batch: e.infer(x), args.runs) * 1000 / b
                if label.startswith("tensorflow"):
                    ref_ms[b] = ms
                row += f"  {ms:7.2f} {ref_ms[b] / ms:6.2f}"
            diff = np.abs(eng.infer(crops[:4]) - ref_out)[:, mask]
            row += f"   {diff.max():.4f} ({diff.mean():.4f}) px"
            print(row, flush=True)


def bench_stages(args) -> None:
    """Per-face cost of everything around the engine, on a real photo."""
    import tempfile

    from realtime_prn import FaceReconstructor, Options
    from realtime_prn.crop import crop_faces, region_from_box, restore_position_maps
    from realtime_prn.image import read_image
    from realtime_prn.outputs import OutputKinds, write_face
    from realtime_prn.paths import data_root

    img = read_image(data_root() / "eval" / "images" / "3ddfa_v2_JianzhuGuo.jpg")
    rec = FaceReconstructor()
    det = rec.detect(img)
    face0 = rec.reconstruct_detections(img, det)[0]
    regions = [region_from_box(det[0].box)]
    batch, mats = crop_faces(img, regions)
    pos = rec.engine.infer(batch)

    box_only = FaceReconstructor(Options(refine=0), engine=rec.engine, detector=rec.detector)

    def fresh(r=rec):
        return r.reconstruct_detections(img, det)[0]

    def geometry(attr):
        def run():
            f = type(face0)(position_map=face0.position_map, image=img, assets=face0.assets)
            getattr(f, attr)() if callable(getattr(type(f), attr, None)) else getattr(f, attr)
        return run

    rows = [
        ("detect (blazeface)", lambda: rec.detector.detect(img)),
        ("crop", lambda: crop_faces(img, regions)),
        ("engine", lambda: rec.engine.infer(batch)),
        ("restore", lambda: restore_position_maps(pos, mats)),
        ("landmarks", geometry("landmarks")),
        ("pose (all vertices, numba)", geometry("pose")),
        ("depth image (numba z-buffer)", geometry("depth_image")),
        ("uv texture (cv2.remap)", geometry("texture")),
        ("per-vertex colours", geometry("colors")),
        (f"reconstruct total (no detect, refine {rec.options.refine})", fresh),
        ("reconstruct total (no detect, refine 0)", lambda: fresh(box_only)),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("write .obj (colours)",
                     lambda: write_face(face0, Path(tmp) / "f", OutputKinds(obj=True))))
        rows.append(("write .npz", lambda: write_face(face0, Path(tmp) / "f", OutputKinds(npz=True))))
        print(f"\n== per-face stage costs on a real photo ({img.shape[1]}x{img.shape[0]}), median ms ==")
        for name, fn in rows:
            print(f"{name:40s} {timeit(fn, args.runs) * 1000:8.2f}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mb05uv", "uvreg", "resfcn256"],
                   help="mb05uv (the teacher as it is), uvreg (our trained weights, the default) and/or "
                        "resfcn256 (random weights: speed only)")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--runs", type=int, default=7, help="timed runs per figure (median)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--spinning", action="store_true", help="also time ONNX Runtime with spinning on")
    p.add_argument("--pipeline", action="store_true", help="end-to-end video benchmark")
    p.add_argument("--swap", action="store_true", help="texture editing / face swap costs")
    p.add_argument("--video", default=None, help="video for --pipeline (default: a shared sample)")
    p.add_argument("--precision", default="int8", help="engine precision for --pipeline")
    args = p.parse_args(argv)
    if args.pipeline:
        from pipeline_benchmark import main as pipeline_main
        extra = ["--precision", args.precision] + (["--video", args.video] if args.video else [])
        return pipeline_main(extra)
    if args.swap:
        from swap_benchmark import main as swap_main
        return swap_main([])
    bench_engines(args)
    bench_stages(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
