"""int8 ONNX models by ONNX Runtime static quantization, calibrated on real face crops.

Calibration crops come from the real photos and videos in ``eval/images`` and
``eval/videos`` (detected with BlazeFace, cropped exactly as at run time); AFLW2000-3D is
never used, since it is the test set. Only convolutions are quantized (QDQ, per-channel
int8 weights, uint8 activations): the dense decoder's large matmul and the sigmoid /
rescale tail stay fp32, because their errors would land directly on vertex positions.
The result is cached beside the fp32 model, keyed by that model's sha256.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..paths import data_root, sha256_file

CALIBRATION_VERSION = 1


_sha256 = sha256_file


def calibration_crops(n: int = 64, root=None, seed: int = 0) -> np.ndarray:
    """Up to ``n`` real 256² face crops (N×256×256×3 float32 RGB [0, 1])."""
    import cv2

    from ..crop import crop_faces, region_from_box
    from ..detectors import create_detector
    from ..image import list_images, read_image

    base = data_root(root) / "eval"
    det = create_detector("blazeface")
    crops: list[np.ndarray] = []
    frames: list[np.ndarray] = []
    if (base / "images").is_dir():
        frames += [read_image(p) for p in list_images(base / "images")]
    videos = sorted((base / "videos").glob("*.mp4")) if (base / "videos").is_dir() else []
    per_video = max(1, (n - len(frames)) // max(1, len(videos)))
    for v in videos:
        cap = cv2.VideoCapture(str(v))
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        for idx in np.linspace(0, max(total - 1, 0), per_video).astype(int):
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(idx))
            ok, frame = cap.read()
            if ok:
                frames.append(frame)
        cap.release()
    for frame in frames:
        dets = det.detect(frame)
        if dets:
            batch, _ = crop_faces(frame, [region_from_box(d.box) for d in dets])
            crops.extend(batch)
    if not crops:
        raise RuntimeError(f"no face crops for int8 calibration under {base}")
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(crops))[:n]
    return np.stack([crops[i] for i in idx])


class _Reader:
    def __init__(self, crops: np.ndarray, input_name: str):
        self.items = iter([{input_name: c[None]} for c in crops])

    def get_next(self):
        return next(self.items, None)


def quantize(fp32_path: Path, out_path: Path, crops: np.ndarray) -> Path:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(fp32_path))
    input_name = model.graph.input[0].name
    tmp = out_path.with_name(out_path.stem + ".part.onnx")
    quantize_static(str(fp32_path), str(tmp), _Reader(crops, input_name),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv"], calibrate_method=CalibrationMethod.MinMax)
    os.replace(tmp, out_path)
    return out_path


def int8_model(fp32_path: str | os.PathLike, log=print, force: bool = False,
               n_calibration: int = 64) -> Path:
    fp32_path = Path(fp32_path)
    out = fp32_path.with_name(fp32_path.stem.replace("_fp32", "") + "_int8.onnx")
    meta = out.with_suffix(".json")
    source = _sha256(fp32_path)
    if out.exists() and meta.exists() and not force:
        info = json.loads(meta.read_text())
        if info.get("source_sha256") == source and info.get("version") == CALIBRATION_VERSION:
            return out
    log(f"quantizing {fp32_path.name} to int8 (calibration on {n_calibration} real face crops) ...")
    crops = calibration_crops(n_calibration)
    quantize(fp32_path, out, crops)
    meta.write_text(json.dumps({"source": fp32_path.name, "source_sha256": source,
                                "version": CALIBRATION_VERSION, "calibration_crops": len(crops),
                                "sha256": _sha256(out)}, indent=1))
    return out
