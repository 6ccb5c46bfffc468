"""Face detectors on real photos (shared eval images) plus the decoding pieces in isolation.

Face counts come from ``eval/images/README.md`` except ``3ddfa_v2_emma.jpg``: the README says 1,
but the image is a collage of three photos of the same person, and all three faces are real.
BlazeFace short range is built for faces that fill a good part of the frame; the group photos
whose faces are small (``insightface_t1.jpg``, ``face_recognition_obama_and_biden.jpg``) are
tested in tiled mode, which is what it exists for.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from realtime_prn.detectors import (
    DetectorUnavailableError,
    ModelMissingError,
    available_detectors,
    create_detector,
)
from realtime_prn.detectors.blazeface import (
    NUM_ANCHORS,
    ensure_blazeface_onnx,
    ssd_anchor_centres,
    tile_grid,
    weighted_nms,
)
from realtime_prn.paths import PROJECT_ROOT, data_root

IMAGES = data_root() / "eval" / "images"

# Photos whose faces are large enough for one 128×128 view of the whole frame.
FULL_FRAME_COUNTS = {
    "prnet_0.jpg": 1,
    "prnet_1.jpg": 1,
    "prnet_2.jpg": 1,
    "prnet_3.jpg": 1,
    "prnet_4.jpg": 1,
    "prnet_5.jpg": 1,
    "prnet_trump.jpg": 1,
    "3ddfa_v2_JianzhuGuo.jpg": 1,
    "3ddfa_v2_trump_hillary.jpg": 2,
    "face_recognition_two_people.jpg": 2,
    "3ddfa_v2_emma.jpg": 3,
}
# Group photos with small faces: tiled mode. (min, max) because the obama_and_biden photo
# also shows a partly hidden child at the edge that a detector may or may not count.
TILED_COUNTS = {
    "insightface_t1.jpg": (6, 6),
    "face_recognition_obama_and_biden.jpg": (2, 3),
}
# Upright, roughly frontal faces: what the Haar fallback is for.
FRONTAL_COUNTS = {
    "prnet_0.jpg": 1,
    "prnet_trump.jpg": 1,
    "3ddfa_v2_JianzhuGuo.jpg": 1,
    "3ddfa_v2_trump_hillary.jpg": 2,
    "face_recognition_two_people.jpg": 2,
    "face_recognition_obama_and_biden.jpg": 2,
}


def load(name: str) -> np.ndarray:
    path = IMAGES / name
    if not path.exists():
        pytest.skip(f"eval image {path} not found (set REALTIME_PRN_DATA to the shared folder)")
    image = cv2.imread(str(path))
    assert image is not None, f"OpenCV could not decode {path}"
    return image


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def blazeface_or_skip(**options):
    try:
        return create_detector("blazeface", **options)
    except ModelMissingError as exc:
        pytest.skip(f"BlazeFace ONNX not built ({exc})")


@pytest.fixture(scope="module")
def blaze():
    return blazeface_or_skip()


@pytest.fixture(scope="module")
def blaze_tiled():
    return blazeface_or_skip(tiles=True)


@pytest.fixture(scope="module")
def haar():
    return create_detector("haar")


# --- registry -----------------------------------------------------------------------------------
def test_registry_names_default_first():
    assert available_detectors() == ["blazeface", "haar", "scrfd", "dlib"]


def test_unknown_detector_lists_known_names():
    with pytest.raises(ValueError, match="unknown detector 'mtcnn'") as info:
        create_detector("mtcnn")
    for name in available_detectors():
        assert name in str(info.value)


def test_misspelt_option_is_value_error():
    with pytest.raises(ValueError, match="min_neighbours"):
        create_detector("haar", min_neighbours=3)


def test_frame_must_be_bgr_uint8(haar):
    with pytest.raises(ValueError, match="BGR uint8"):
        haar.detect(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="BGR uint8"):
        haar.detect(np.zeros((64, 64, 3), np.float32))


# --- BlazeFace: model handling ------------------------------------------------------------------
def test_missing_model_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("REALTIME_PRN_ENGINES", str(tmp_path))
    with pytest.raises(ModelMissingError) as info:
        create_detector("blazeface")
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "python -m realtime_prn setup" in message and "\n" not in message
    assert not any(tmp_path.iterdir()), "construction must never build or download"


def test_detection_never_imports_tensorflow():
    try:
        ensure_blazeface_onnx(allow_build=False)
    except ModelMissingError as exc:
        pytest.skip(f"BlazeFace ONNX not built ({exc})")
    code = (
        "import sys, numpy as np\n"
        "from realtime_prn.detectors import create_detector\n"
        "create_detector('blazeface', tiles=True).detect(np.zeros((480, 640, 3), np.uint8))\n"
        "print(sorted(m for m in ('tensorflow', 'tf2onnx', 'mediapipe') if m in sys.modules))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env
    )
    assert out.stdout.strip() == "[]"


# --- BlazeFace: decoding pieces -----------------------------------------------------------------
def test_anchor_layout_matches_mediapipe_short_range():
    anchors = ssd_anchor_centres()
    assert anchors.shape == (NUM_ANCHORS, 2)
    # 16×16 cells × 2 anchors at stride 8, then 8×8 cells × 6 anchors at stride 16
    np.testing.assert_allclose(anchors[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[1], anchors[0])
    np.testing.assert_allclose(anchors[2], [1.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[512], [0.5 / 8, 0.5 / 8])
    np.testing.assert_allclose(anchors[512:518], np.tile(anchors[512], (6, 1)))
    np.testing.assert_allclose(anchors[-1], [7.5 / 8, 7.5 / 8])


def test_weighted_nms_averages_overlaps_and_keeps_the_best_score():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], float)
    kps = np.repeat(boxes[:, None, :2], 6, axis=1)
    scores = np.array([0.6, 0.9, 0.7])
    out_boxes, out_kps, out_scores = weighted_nms(boxes, kps, scores, 0.3)
    np.testing.assert_allclose(out_scores, [0.9, 0.7])
    expected = (boxes[0] * 0.6 + boxes[1] * 0.9) / 1.5
    np.testing.assert_allclose(out_boxes[0], expected)
    np.testing.assert_allclose(out_kps[0, 0], expected[:2])
    np.testing.assert_allclose(out_boxes[1], boxes[2])


def test_tile_grid_covers_the_frame_with_overlap():
    h, w, side = 886, 1280, 443
    tiles = tile_grid(h, w, side, 0.3)
    covered = np.zeros((h, w), bool)
    for x, y, s in tiles:
        assert s == side and 0 <= x and x + s <= w and 0 <= y and y + s <= h
        covered[y : y + s, x : x + s] = True
    assert covered.all()
    xs = sorted({x for x, _, _ in tiles})
    assert all(side - (b - a) >= 0.3 * side for a, b in zip(xs, xs[1:]))


# --- BlazeFace on real photos -------------------------------------------------------------------
@pytest.mark.parametrize("name,count", sorted(FULL_FRAME_COUNTS.items()))
def test_blazeface_counts_faces(blaze, name, count):
    dets = blaze.detect(load(name))
    assert len(dets) == count, [(d.box.round().tolist(), round(d.score, 2)) for d in dets]
    assert all(0.5 <= d.score <= 1.0 for d in dets)
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)


@pytest.mark.parametrize("name,count", sorted(FULL_FRAME_COUNTS.items()))
def test_tiles_add_no_false_faces(blaze_tiled, name, count):
    assert len(blaze_tiled.detect(load(name))) == count


@pytest.mark.parametrize("name,bounds", sorted(TILED_COUNTS.items()))
def test_tiles_find_small_faces(blaze, blaze_tiled, name, bounds):
    image = load(name)
    tiled = blaze_tiled.detect(image)
    assert bounds[0] <= len(tiled) <= bounds[1]
    # the reason tiles exist: one view of the whole frame misses some of these faces
    assert len(blaze.detect(image)) < bounds[0]


@pytest.mark.parametrize("name", sorted(FULL_FRAME_COUNTS) + sorted(TILED_COUNTS))
def test_boxes_and_keypoints_are_plausible(blaze_tiled, name):
    image = load(name)
    h, w = image.shape[:2]
    for det in blaze_tiled.detect(image):
        x0, y0, x1, y1 = det.box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, det.box
        assert 0.9 < det.height / det.width < 1.1  # BlazeFace boxes are square
        kps = det.keypoints
        assert kps.shape == (6, 2)
        # eyes, nose tip, mouth centre inside the box; ear tragions may sit on its edge
        assert np.all((kps[:4] >= det.box[:2]) & (kps[:4] <= det.box[2:]))
        margin = 0.1 * det.width
        assert np.all((kps[4:] >= det.box[:2] - margin) & (kps[4:] <= det.box[2:] + margin))
        # every face in these photos is upright: both eyes above the mouth, nose between
        right_eye, left_eye, nose, mouth = kps[:4]
        assert mouth[1] > max(right_eye[1], left_eye[1])
        assert min(right_eye[1], left_eye[1]) < nose[1] < mouth[1] + 0.05 * det.height
        # the subject's right eye is on the image's left
        assert right_eye[0] < left_eye[0]


def test_mirrored_frame_gives_mirrored_faces(blaze):
    """Checks the letterbox is undone exactly: flip the frame, the faces flip with it.

    Frontal faces only: BlazeFace's keypoints on three-quarter views are coarse and not
    mirror-symmetric, which says nothing about the mapping back to the frame.
    """
    image = load("face_recognition_two_people.jpg")
    w = image.shape[1]
    plain = blaze.detect(image)
    flipped = blaze.detect(np.ascontiguousarray(image[:, ::-1]))
    assert len(plain) == len(flipped) == 2
    for det in plain:
        mirrored = np.array([w - det.box[2], det.box[1], w - det.box[0], det.box[3]])
        best = max(flipped, key=lambda d: iou(d.box, mirrored))
        assert iou(best.box, mirrored) > 0.8
        # the mirrored subject's right eye is the original's left eye, and vice versa
        mirrored_eyes = w - det.keypoints[[1, 0], 0]
        np.testing.assert_allclose(best.keypoints[:2, 0], mirrored_eyes, atol=0.1 * det.width)


def test_threads_and_spinning_do_not_change_results(blaze):
    image = load("face_recognition_two_people.jpg")
    other = blazeface_or_skip(threads=2, spinning=True)
    a, b = blaze.detect(image), other.detect(image)
    assert len(a) == len(b) == 2
    for da, db in zip(a, b):
        np.testing.assert_allclose(da.box, db.box, atol=0.5)


def no_face_frames() -> dict[str, np.ndarray]:
    frames = {
        "flat grey": np.full((480, 640, 3), 128, np.uint8),
        "uniform noise": np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8),
    }
    path = IMAGES / "face_recognition_two_people.jpg"
    if path.exists():  # the suits and shirts below both faces
        frames["photo crop without faces"] = np.ascontiguousarray(cv2.imread(str(path))[330:])
    return frames


@pytest.mark.parametrize("label", list(no_face_frames()))
def test_no_face_gives_empty_list(blaze, blaze_tiled, haar, label):
    frame = no_face_frames()[label]
    assert blaze.detect(frame) == []
    assert blaze_tiled.detect(frame) == []
    assert haar.detect(frame) == []


# --- Haar fallback ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,count", sorted(FRONTAL_COUNTS.items()))
def test_haar_finds_frontal_faces(haar, blaze_tiled, name, count):
    image = load(name)
    dets = haar.detect(image)
    assert len(dets) == count
    h, w = image.shape[:2]
    for det in dets:
        assert 0 <= det.box[0] < det.box[2] <= w and 0 <= det.box[1] < det.box[3] <= h
        assert det.score == 1.0 and det.keypoints is None
    # the same faces BlazeFace finds
    for ref in blaze_tiled.detect(image):
        assert max(iou(ref.box, d.box) for d in dets) > 0.4


# --- SCRFD --------------------------------------------------------------------------------------
def synthetic_scrfd(path: Path, batched: bool, with_kps: bool = True) -> None:
    """An ONNX file with SCRFD's 9 (or 6) outputs holding known values, to test decoding.

    Stride 16, cell (row 10, col 20), second anchor: score 0.9, distances (2, 3, 4, 5) strides
    and keypoint k at (+k, -k) strides; the first anchor of that cell repeats the box at 0.8
    (NMS must drop it).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, outputs, groups = [], [], {"score": [], "bbox": [], "kps": []}
    for stride in (8, 16, 32):
        n = (640 // stride) ** 2 * 2
        score = np.full((n, 1), 0.01, np.float32)
        bbox = np.ones((n, 4), np.float32)
        kps = np.zeros((n, 10), np.float32)
        if stride == 16:
            i = (10 * 40 + 20) * 2 + 1
            score[i], score[i - 1] = 0.9, 0.8
            bbox[i] = bbox[i - 1] = [2, 3, 4, 5]
            kps[i] = np.array([[k, -k] for k in range(5)], np.float32).reshape(-1)
        groups["score"].append((f"score_{stride}", score))
        groups["bbox"].append((f"bbox_{stride}", bbox))
        groups["kps"].append((f"kps_{stride}", kps))
    kinds = ("score", "bbox", "kps") if with_kps else ("score", "bbox")
    for kind in kinds:
        for name, value in groups[kind]:
            value = value[None] if batched else value
            nodes.append(helper.make_node(
                "Constant", [], [name], value=numpy_helper.from_array(value, name + "_v")))  # fmt: skip
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, value.shape))
    graph = helper.make_graph(
        nodes, "scrfd_stub",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 640, 640])],
        outputs,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.mark.parametrize("batched", [False, True])
def test_scrfd_decoding_on_a_synthetic_model(tmp_path, batched):
    path = tmp_path / "stub.onnx"
    synthetic_scrfd(path, batched)
    det = create_detector("scrfd", model_path=str(path))
    # 1280×640 frame -> resized to 640×320 in the 640² input: network pixels = frame / 2
    dets = det.detect(np.zeros((640, 1280, 3), np.uint8))
    assert len(dets) == 1
    centre = np.array([20 * 16, 10 * 16])
    expected_box = np.array([centre[0] - 32, centre[1] - 48, centre[0] + 64, centre[1] + 80]) * 2
    np.testing.assert_allclose(dets[0].box, expected_box, atol=1e-3)
    assert dets[0].score == pytest.approx(0.9)
    expected_kps = (centre + np.array([[16 * k, -16 * k] for k in range(5)])) * 2
    np.testing.assert_allclose(dets[0].keypoints, expected_kps, atol=1e-3)
    strict = create_detector("scrfd", model_path=str(path), score_threshold=0.95)
    assert strict.detect(np.zeros((640, 1280, 3), np.uint8)) == []


def test_scrfd_without_keypoints(tmp_path):
    path = tmp_path / "stub6.onnx"
    synthetic_scrfd(path, batched=False, with_kps=False)
    dets = create_detector("scrfd", model_path=str(path)).detect(np.zeros((640, 640, 3), np.uint8))
    assert len(dets) == 1 and dets[0].keypoints is None


def test_scrfd_errors_are_clear(tmp_path):
    with pytest.raises(ModelMissingError, match="model_path"):
        create_detector("scrfd")
    with pytest.raises(ModelMissingError, match="not found"):
        create_detector("scrfd", model_path=str(tmp_path / "nope.onnx"))
    # BlazeFace-shaped file: 2 outputs, not an SCRFD layout
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Identity", ["x"], ["b"])],
        "two_outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 640, 640]) for n in "ab"],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "two.onnx"))
    with pytest.raises(DetectorUnavailableError, match="2 outputs"):
        create_detector("scrfd", model_path=str(tmp_path / "two.onnx"))
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    with pytest.raises(DetectorUnavailableError, match="cannot load SCRFD model"):
        create_detector("scrfd", model_path=str(tmp_path / "garbage.onnx"))


def test_scrfd_real_model():
    model = os.environ.get("REALTIME_PRN_SCRFD_ONNX")
    if not model or not Path(model).is_file():
        pytest.skip("set REALTIME_PRN_SCRFD_ONNX to an SCRFD .onnx (e.g. det_10g.onnx) to run")
    det = create_detector("scrfd", model_path=model)
    for name, count in FULL_FRAME_COUNTS.items():
        dets = det.detect(load(name))
        assert len(dets) == count, name
        if det.has_keypoints:
            for d in dets:
                assert d.keypoints.shape == (5, 2)
                assert np.all((d.keypoints >= d.box[:2]) & (d.keypoints <= d.box[2:]))
    assert len(det.detect(load("insightface_t1.jpg"))) == 6


# --- dlib ---------------------------------------------------------------------------------------
def test_dlib_is_optional_with_a_clear_error():
    try:
        import dlib  # noqa: F401
    except ImportError:
        with pytest.raises(DetectorUnavailableError, match="pip install dlib"):
            create_detector("dlib")
        return
    try:
        det = create_detector("dlib")
    except ModelMissingError as exc:
        pytest.skip(str(exc))
    assert len(det.detect(load("prnet_0.jpg"))) == 1
