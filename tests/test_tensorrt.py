"""TensorRT engine: runs only where TensorRT and an NVIDIA GPU exist; skips cleanly elsewhere."""
import numpy as np
import pytest

trt = pytest.importorskip("tensorrt", reason="TensorRT not installed (needs an NVIDIA GPU machine)")

pytestmark = pytest.mark.gpu


def _gpu_or_skip():
    from realtime_prn.engines.tensorrt import TensorRTUnavailable, _Cuda
    try:
        return _Cuda().gpu_name()
    except (TensorRTUnavailable, RuntimeError, Exception) as exc:  # no driver / no device
        pytest.skip(f"no usable NVIDIA GPU: {exc}")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_matches_onnxruntime(precision, eval_dir):
    gpu = _gpu_or_skip()
    import cv2

    from realtime_prn.assets import load_assets
    from realtime_prn.crop import crop_faces, region_from_box
    from realtime_prn.detectors import create_detector
    from realtime_prn.engines import create_engine
    img = cv2.imread(str(eval_dir / "images" / "insightface_t1.jpg"))
    dets = create_detector("blazeface").detect(img)
    batch, _ = crop_faces(img, [region_from_box(d.box) for d in dets])
    ref = create_engine("onnxruntime").infer(batch)
    got = create_engine("tensorrt", precision=precision, max_batch=8).infer(batch)
    err = np.abs(ref - got)[:, load_assets().face_mask]
    print(f"{gpu} TensorRT {precision} vs ONNX Runtime fp32: max {err.max():.4f} mean {err.mean():.5f} px")
    assert err.mean() < (0.01 if precision == "fp32" else 0.5)


def test_plan_cache_is_reused():
    _gpu_or_skip()
    from realtime_prn.engines.tensorrt import build_plan
    from realtime_prn.network.export import build_mb05uv_onnx
    onnx = build_mb05uv_onnx()
    a = build_plan(onnx, "fp16", 4)
    mtime = a.stat().st_mtime
    assert build_plan(onnx, "fp16", 4) == a and a.stat().st_mtime == mtime
