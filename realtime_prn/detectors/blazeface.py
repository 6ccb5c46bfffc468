"""MediaPipe BlazeFace (short range) through ONNX Runtime: the default, real-time detector.

The model is MediaPipe's ``face_detection_short_range.tflite`` (Apache-2.0). It is not
committed: ``setup_detectors`` takes it once from the pinned ``mediapipe`` wheel (read as a zip,
never installed: mediapipe pins numpy<2) and converts it with tf2onnx into ``engines_dir()``.
At run time only onnxruntime and OpenCV are used and nothing is ever downloaded.

Pre- and post-processing follow MediaPipe's ``face_detection_short_range`` graph so that the
converted model sees what it was trained on: aspect-preserving letterbox to 128×128, RGB in
[-1, 1], 896 SSD anchors, sigmoid scores, weighted NMS.

The short-range model is meant for faces that fill a good part of the frame (selfie / webcam
distance). For wide shots with small faces, ``tiles=True`` adds passes over overlapping
square tiles.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from realtime_prn.detectors import (
    DetectorUnavailableError,
    ModelMissingError,
    check_frame,
)
from realtime_prn.detectors.base import Detection
from realtime_prn.paths import PROJECT_ROOT, engines_dir, sha256_file

# --- where the model comes from ---------------------------------------------------------------
MEDIAPIPE_VERSION = "0.10.21"
WHEEL_MEMBER = "mediapipe/modules/face_detection/face_detection_short_range.tflite"
# sha256 of WHEEL_MEMBER in mediapipe 0.10.21 (the model the decoding below was checked with).
TFLITE_SHA256 = "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"
TFLITE_NAME = "face_detection_short_range.tflite"
ONNX_NAME = "blazeface_short_range.onnx"
META_NAME = "blazeface_short_range.json"
OPSET = 17
# The converted graph must reproduce the tflite interpreter; regressors are in 128-px units.
MAX_PARITY_DIFF = 1e-2

# --- MediaPipe face_detection_short_range graph parameters --------------------------------------
INPUT_SIZE = 128
STRIDES = (8, 16, 16, 16)
# aspect_ratios [1.0] plus one interpolated-scale anchor per layer: two anchors per layer.
ANCHORS_PER_LAYER = 2
ANCHOR_OFFSET = 0.5
NUM_ANCHORS = 896
NUM_COORDS = 16  # box (4) + 6 keypoints × 2
NUM_KEYPOINTS = 6
COORD_SCALE = 128.0  # x_scale = y_scale = w_scale = h_scale
SCORE_CLIP = 100.0
MIN_SCORE = 0.5
MIN_SUPPRESSION = 0.3

# Keypoint order of the model (subject's right eye is on the image's left for a frontal face).
KEYPOINT_NAMES = (
    "right_eye",
    "left_eye",
    "nose_tip",
    "mouth_center",
    "right_ear_tragion",
    "left_ear_tragion",
)


# ================================================================================================
# Build step (needs network once, tensorflow and tf2onnx); never called at detection time.
# ================================================================================================
def onnx_path() -> Path:
    return engines_dir() / ONNX_NAME


def _sha256(path: Path) -> str:
    return sha256_file(path)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _fetch_tflite(dest: Path) -> None:
    """Take the tflite out of the pinned mediapipe wheel.

    The wheel is downloaded with pip (honouring the user's index settings) but never installed:
    mediapipe 0.10.21 requires numpy<2, which would break this environment. The platform is
    pinned so the download, and so the file's hash, is the same on every host.
    """
    with tempfile.TemporaryDirectory(prefix="realtime_prn_mediapipe_") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", f"mediapipe=={MEDIAPIPE_VERSION}",
            "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
            "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
            "--disable-pip-version-check", "-q", "-d", tmp,
        ]  # fmt: skip
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("mediapipe-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise DetectorUnavailableError(
                f"could not download the mediapipe=={MEDIAPIPE_VERSION} wheel to extract "
                f"{TFLITE_NAME} ({_last_line(proc.stderr)}); put that file in {dest.parent} "
                "by hand or retry with access to the package index"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(WHEEL_MEMBER)
    tmp_dest = dest.with_suffix(".tflite.part")
    tmp_dest.write_bytes(data)
    os.replace(tmp_dest, dest)


def _convert(tflite: Path, onnx_out: Path) -> dict:
    """Run tf2onnx and the parity check in a child process.

    A child keeps tensorflow (seconds to import, noisy on stderr, large in memory) out of the
    caller's process, so ``setup`` stays one clean line and detection never has it loaded.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    cmd = [sys.executable, "-m", "realtime_prn.detectors.blazeface", "--build-child",
           str(tflite), str(onnx_out)]  # fmt: skip
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise DetectorUnavailableError(
            f"converting {tflite.name} to ONNX failed: {_last_line(proc.stderr)}"
        )
    return json.loads(_last_line(proc.stdout))


def _build_child(tflite: str, onnx_out: str) -> None:
    """Body of the conversion child: tf2onnx, then compare against the tflite interpreter."""
    import warnings

    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    tf2onnx.convert.from_tflite(tflite, opset=OPSET, output_path=onnx_out)

    x = np.random.default_rng(0).uniform(-1, 1, (1, INPUT_SIZE, INPUT_SIZE, 3))
    x = x.astype(np.float32)
    sess = ort.InferenceSession(onnx_out, providers=["CPUExecutionProvider"])
    onnx_outs = dict(zip([o.name for o in sess.get_outputs()],
                         sess.run(None, {sess.get_inputs()[0].name: x})))  # fmt: skip
    max_diff: float | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter_cls = getattr(getattr(tf, "lite", None), "Interpreter", None)
        if interpreter_cls is not None:
            interp = interpreter_cls(model_path=tflite)
            interp.allocate_tensors()
            interp.set_tensor(interp.get_input_details()[0]["index"], x)
            interp.invoke()
            max_diff = 0.0
            for det in interp.get_output_details():
                ref = interp.get_tensor(det["index"])
                max_diff = max(max_diff, float(np.abs(onnx_outs[det["name"]] - ref).max()))
    print(json.dumps({
        "tf2onnx": tf2onnx.__version__,
        "tensorflow": tf.__version__,
        "max_abs_diff_vs_tflite": max_diff,
    }))  # fmt: skip


def ensure_blazeface_onnx(allow_build: bool = False) -> Path:
    """Path of the converted model, building it first only when the caller allows it.

    Detector construction passes ``allow_build=False`` so that running the detector can never
    reach the network or import tensorflow; ``setup`` passes ``True``.
    """
    target = onnx_path()
    if target.exists():
        return target
    if not allow_build:
        raise ModelMissingError(
            f"BlazeFace model not built ({target} is missing); run `python -m realtime_prn setup`"
        )
    import importlib.util

    missing = [m for m in ("tensorflow", "tf2onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise DetectorUnavailableError(
            f"building the BlazeFace model needs {' and '.join(missing)} "
            "(pip install -r requirements.txt)"
        )
    tflite = engines_dir() / TFLITE_NAME
    if not tflite.exists():
        _fetch_tflite(tflite)
    tflite_sha = _sha256(tflite)
    if tflite_sha != TFLITE_SHA256:
        # Not fatal: the parity check and the shape check still guard the conversion, but the
        # decoding constants were verified against the pinned file only.
        print(f"warning: {tflite} sha256 {tflite_sha} differs from the pinned {TFLITE_SHA256}",
              file=sys.stderr)  # fmt: skip
    tmp_onnx = target.with_suffix(".onnx.part")
    try:
        info = _convert(tflite, tmp_onnx)
        diff = info.get("max_abs_diff_vs_tflite")
        if diff is not None and diff > MAX_PARITY_DIFF:
            raise DetectorUnavailableError(
                f"converted BlazeFace differs from the tflite by {diff:.3g} (> {MAX_PARITY_DIFF})"
            )
        meta = {
            "source": f"mediapipe=={MEDIAPIPE_VERSION} wheel: {WHEEL_MEMBER}",
            "licence": "Apache-2.0",
            "tflite": TFLITE_NAME,
            "tflite_sha256": tflite_sha,
            "tflite_sha256_pinned": TFLITE_SHA256,
            "onnx_sha256": _sha256(tmp_onnx),
            "opset": OPSET,
            **info,
        }
        (engines_dir() / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp_onnx, target)
    finally:
        tmp_onnx.unlink(missing_ok=True)
    return target


def setup_detectors() -> Path:
    """Build what the default detector needs; the project's ``setup`` command calls this."""
    target = onnx_path()
    if target.exists():
        print(f"blazeface: {target} already built")
        return target
    print(f"blazeface: extracting {TFLITE_NAME} from mediapipe=={MEDIAPIPE_VERSION} and "
          "converting to ONNX ...", end=" ", flush=True)  # fmt: skip
    try:
        ensure_blazeface_onnx(allow_build=True)
    except Exception:
        print("failed", flush=True)
        raise
    meta = json.loads((engines_dir() / META_NAME).read_text())
    diff = meta.get("max_abs_diff_vs_tflite")
    parity = "unchecked" if diff is None else f"{diff:.1g}"
    print(f"done: {target} (tflite sha256 {meta['tflite_sha256'][:12]}, "
          f"max |onnx - tflite| {parity})", flush=True)  # fmt: skip
    return target


# ================================================================================================
# Detection (onnxruntime + OpenCV only).
# ================================================================================================
def ssd_anchor_centres(
    input_size: int = INPUT_SIZE,
    strides: Sequence[int] = STRIDES,
    anchors_per_layer: int = ANCHORS_PER_LAYER,
    offset: float = ANCHOR_OFFSET,
) -> np.ndarray:
    """Anchor centres (N×2, normalised) in the model's output order.

    MediaPipe's SsdAnchorsCalculator merges consecutive layers with the same stride into one
    feature map, so stride 8 gives 16×16×2 and the three stride-16 layers give 8×8×6: 896.
    With ``fixed_anchor_size`` every anchor is 1×1, so only centres matter.
    """
    centres = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        per_cell = anchors_per_layer * (j - i)
        size = int(np.ceil(input_size / strides[i]))
        ys, xs = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
        grid = np.stack([(xs + offset) / size, (ys + offset) / size], axis=-1).reshape(-1, 2)
        centres.append(np.repeat(grid, per_cell, axis=0))
        i = j
    return np.concatenate(centres).astype(np.float32)


def decode(
    raw_boxes: np.ndarray,
    raw_scores: np.ndarray,
    anchors: np.ndarray,
    min_score: float = MIN_SCORE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (x0, y0, x1, y1), keypoints and scores above ``min_score``, in [0, 1] model units.

    Only anchors that pass the score threshold are decoded: usually a handful of 896.
    """
    logits = np.clip(raw_scores.reshape(-1).astype(np.float64), -SCORE_CLIP, SCORE_CLIP)
    scores = 1.0 / (1.0 + np.exp(-logits))
    keep = np.flatnonzero(scores >= min_score)
    raw = raw_boxes.reshape(-1, NUM_COORDS)[keep] / COORD_SCALE
    centre = anchors[keep]
    cx = raw[:, 0] + centre[:, 0]
    cy = raw[:, 1] + centre[:, 1]
    half_w = raw[:, 2] / 2
    half_h = raw[:, 3] / 2
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
    kps = raw[:, 4:].reshape(-1, NUM_KEYPOINTS, 2) + centre[:, None, :]
    return boxes, kps, scores[keep]


def _iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def weighted_nms(
    boxes: np.ndarray,
    kps: np.ndarray,
    scores: np.ndarray,
    min_suppression: float = MIN_SUPPRESSION,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's WEIGHTED non-max suppression with IoU overlap.

    BlazeFace fires on several neighbouring anchors per face; averaging them (weighted by
    score) instead of keeping only the best is what steadies the box between video frames.
    The merged detection keeps the best member's score.
    """
    order = np.argsort(-scores, kind="stable")
    out_boxes, out_kps, out_scores = [], [], []
    while order.size:
        top = order[0]
        overlap = _iou_one_to_many(boxes[top], boxes[order])
        members = order[overlap > min_suppression]
        members = members if members.size else order[:1]
        weights = scores[members][:, None]
        total = weights.sum()
        out_boxes.append((boxes[members] * weights).sum(0) / total)
        out_kps.append((kps[members] * weights[:, :, None]).sum(0) / total)
        out_scores.append(scores[top])
        order = order[overlap <= min_suppression]
        order = order[order != top]
    if not out_scores:
        empty = np.zeros((0,), np.float32)
        return empty.reshape(0, 4), empty.reshape(0, NUM_KEYPOINTS, 2), empty
    return np.array(out_boxes), np.array(out_kps), np.array(out_scores)


def tile_grid(height: int, width: int, tile: int, overlap: float) -> list[tuple[int, int, int]]:
    """Square tiles (x0, y0, side) covering the frame with at least ``overlap`` between them.

    Overlap is what lets a face cut by one tile's edge be whole in its neighbour.
    """
    def starts(length: int) -> list[int]:
        if length <= tile:
            return [0]
        step = tile * (1.0 - overlap)
        n = int(np.ceil((length - tile) / step)) + 1
        return [round(k * (length - tile) / (n - 1)) for k in range(n)]

    side = min(tile, height, width)
    return [(x, y, side) for y in starts(height) for x in starts(width)]


class BlazeFaceDetector:
    """BlazeFace short-range on ONNX Runtime (CPU), with 6 keypoints per face.

    ``threads`` is ONNX Runtime's intra-op thread count. ``spinning`` lets its worker threads
    busy-wait for work: it is off by default because on a 2-core machine the spinning threads
    take the CPU from the capture / reconstruction stages running beside them (measured at
    2 threads and 30 fps: 17-31 ms of CPU per frame spinning, against about 5.5 ms without).
    With ``threads=1`` there are no worker threads and the setting makes no difference.

    ``tiles=True`` adds passes over overlapping square tiles (side ``tile_fraction`` of the
    longer frame side, at most the shorter side) to find faces too small for one 128×128 view
    of the whole frame; a 640×480 frame then costs 7 passes instead of 1. Tile detections
    need ``tile_min_score``, above ``min_score``, because every extra pass is another chance
    for a face-like patch to pass the threshold.
    """

    name = "blazeface"

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        min_score: float = MIN_SCORE,
        min_suppression: float = MIN_SUPPRESSION,
        threads: int = 1,
        spinning: bool = False,
        tiles: bool = False,
        tile_fraction: float = 0.5,
        tile_overlap: float = 0.3,
        tile_min_score: float = 0.75,
        max_faces: int | None = None,
    ) -> None:
        import onnxruntime as ort

        from realtime_prn.engines.onnxruntime import session_options

        if model_path is None:
            path = ensure_blazeface_onnx(allow_build=False)
        else:
            path = Path(model_path).expanduser()
            if not path.is_file():
                raise ModelMissingError(f"BlazeFace model {path} not found")
        if not 0.0 < tile_fraction <= 1.0 or not 0.0 <= tile_overlap < 1.0:
            raise ValueError("tile_fraction must be in (0, 1] and tile_overlap in [0, 1)")
        self.min_score = float(min_score)
        self.min_suppression = float(min_suppression)
        self.tiles = bool(tiles)
        self.tile_fraction = float(tile_fraction)
        self.tile_overlap = float(tile_overlap)
        self.tile_min_score = float(tile_min_score)
        self.max_faces = max_faces

        opts = session_options(threads, spinning)
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        # onnxruntime's errors are private pybind classes deriving from Exception only.
        except Exception as exc:  # noqa: BLE001
            raise DetectorUnavailableError(
                f"cannot load BlazeFace model {path}: {_last_line(str(exc))}; "
                "rebuild it with `python -m realtime_prn setup`"
            ) from None
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        shapes = sorted(tuple(o.shape[1:]) for o in outputs)
        if (len(inputs) != 1 or list(inputs[0].shape[1:]) != [INPUT_SIZE, INPUT_SIZE, 3]
                or shapes != [(NUM_ANCHORS, 1), (NUM_ANCHORS, NUM_COORDS)]):  # fmt: skip
            raise DetectorUnavailableError(
                f"{path} is not the BlazeFace short-range model (input "
                f"{inputs[0].shape if inputs else None}, outputs {shapes}); "
                "rebuild it with `python -m realtime_prn setup`"
            )
        self._input_name = inputs[0].name
        by_width = {o.shape[-1]: o.name for o in outputs}
        self._output_names = [by_width[NUM_COORDS], by_width[1]]
        self._anchors = ssd_anchor_centres()

    # -- one 128×128 view -----------------------------------------------------------------------
    def _run_view(
        self, frame: np.ndarray, x0: int, y0: int, w: int, h: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates from one letterboxed view of a frame region, in frame pixels, pre-NMS."""
        region = frame[y0 : y0 + h, x0 : x0 + w]
        scale = INPUT_SIZE / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(region, (nw, nh), interpolation=interp)
        pad_x, pad_y = (INPUT_SIZE - nw) // 2, (INPUT_SIZE - nh) // 2
        canvas = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.uint8)  # black pad, as MediaPipe
        canvas[pad_y : pad_y + nh, pad_x : pad_x + nw] = resized
        rgb = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
        tensor = (rgb.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0))[None]
        raw_boxes, raw_scores = self._session.run(self._output_names, {self._input_name: tensor})
        boxes, kps, scores = decode(raw_boxes[0], raw_scores[0], self._anchors, self.min_score)
        # model units -> letterbox pixels -> region pixels -> frame pixels
        sx, sy = nw / w, nh / h
        offset = np.array([pad_x, pad_y], np.float32)
        origin = np.array([x0, y0], np.float32)
        boxes = boxes.reshape(-1, 2, 2) * INPUT_SIZE
        boxes = ((boxes - offset) / [sx, sy] + origin).reshape(-1, 4)
        kps = (kps * INPUT_SIZE - offset) / [sx, sy] + origin
        return boxes, kps, scores

    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Faces in a BGR uint8 frame, best first; boxes are not clipped to the frame.

        Unclipped boxes keep the face's true scale and centre when it is partly out of view,
        which the crop stage needs.
        """
        frame = check_frame(frame)
        h, w = frame.shape[:2]
        parts = [self._run_view(frame, 0, 0, w, h)]
        if self.tiles:
            # Square tiles, a fraction of the longer side; tiling a frame already at or below
            # the model's resolution would only upsample, so it is skipped.
            side = min(h, w, round(max(h, w) * self.tile_fraction))
            if side > INPUT_SIZE and side < max(h, w):
                for tx, ty, ts in tile_grid(h, w, side, self.tile_overlap):
                    boxes, kps, scores = self._run_view(frame, tx, ty, ts, ts)
                    keep = _inside_tile(boxes, tx, ty, ts, h, w)
                    keep &= scores >= self.tile_min_score
                    parts.append((boxes[keep], kps[keep], scores[keep]))
        boxes = np.concatenate([p[0] for p in parts])
        kps = np.concatenate([p[1] for p in parts])
        scores = np.concatenate([p[2] for p in parts])
        boxes, kps, scores = weighted_nms(boxes, kps, scores, self.min_suppression)
        dets = [
            Detection(box=b.astype(np.float32), score=float(s), keypoints=k.astype(np.float32))
            for b, k, s in zip(boxes, kps, scores)
        ]
        return dets[: self.max_faces] if self.max_faces else dets


def _inside_tile(boxes: np.ndarray, tx: int, ty: int, side: int, h: int, w: int) -> np.ndarray:
    """Drop tile detections cut by an inner tile edge: the overlapping tile sees them whole.

    Edges that are also frame edges do not count, so faces at the border of the frame survive.
    """
    margin = 0.02 * side
    ok = np.ones(len(boxes), bool)
    if tx > 0:
        ok &= boxes[:, 0] > tx + margin
    if ty > 0:
        ok &= boxes[:, 1] > ty + margin
    if tx + side < w:
        ok &= boxes[:, 2] < tx + side - margin
    if ty + side < h:
        ok &= boxes[:, 3] < ty + side - margin
    return ok


if __name__ == "__main__":  # the conversion child started by _convert()
    if len(sys.argv) == 4 and sys.argv[1] == "--build-child":
        _build_child(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m realtime_prn.detectors.blazeface --build-child TFLITE ONNX")
