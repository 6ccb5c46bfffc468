"""The mb05 port and the PRN-compatible mb05uv model, checked against published and measured figures.

Why these bounds: ``tools/check_teacher_port.py`` on all 2000 AFLW2000-3D images reproduces
3DDFA_V2's protocol to the printed digit (NME 3.384, bin mean 3.808, as TEACHER.md measured with
torch); the first 100 sorted images give teacher 3.0116 and mb05uv (PRN 1.6 crop) 3.1129.
NME is a weak detector of convention slips (feeding RGB to the teacher moves it by only +0.009, and a
1 px shift of the crop even lowers it, because the teacher is biased by about -1.2/-1.7 px against
the MATLAB-indexed GT), so conventions are pinned by the exact tests (channel fold, decoder vs
numpy, dense vs sparse) and the NME bounds guard the port as a whole.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from realtime_prn.network.uv_basis import UVBasis  # noqa: E402
from realtime_prn.paths import DataNotFoundError  # noqa: E402


def _data_or_skip() -> None:
    try:
        from realtime_prn.paths import data_file

        data_file("train", "tddfa_v2", "mb05_120x120.npz")
        data_file("prn", "uv_kpt_ind.txt")
        data_file("eval", "aflw2000", "3ddfa_test_configs", "AFLW2000-3D.pts68.npy")
    except DataNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    _data_or_skip()
    import check_teacher_port

    return check_teacher_port


@pytest.fixture(scope="module")
def uv() -> UVBasis:
    _data_or_skip()
    from realtime_prn.network.uv_basis import load_uv_basis

    return load_uv_basis()


@pytest.fixture(scope="module")
def model() -> object:
    _data_or_skip()
    pytest.importorskip("tensorflow")
    from realtime_prn.network.mb05uv import build_mb05uv_model

    return build_mb05uv_model()


def test_uv_basis_layout(uv: UVBasis) -> None:
    """Shapes, dtypes and coverage as TEACHER.md section 2 describes (65,102 covered pixels)."""
    from realtime_prn.network.uv_basis import face_ind

    assert uv.mean.shape == (256, 256, 3) and uv.mean.dtype == np.float32
    assert uv.basis.shape == (256, 256, 3, 50) and uv.basis.dtype == np.float32
    assert uv.covered.shape == (256, 256) and uv.covered.dtype == bool
    assert abs(int(uv.covered.sum()) - 65102) <= 50
    assert uv.covered.reshape(-1)[face_ind()].all()
    assert not uv.basis[~uv.covered].any()


def test_dense_vs_sparse_random_params(tool: ModuleType) -> None:
    """Map landmarks at uv_kpt_ind agree with the sparse-basis landmarks of the same params.

    TEACHER.md measured mean 0.73 / p95 1.45 / max 3.3 px (256 crop) on real teacher params; this
    run gives about 0.58 / 1.1 / 2.3 for random ones. Bounds: mean < 1.0, p95 < 2.0, max < 4.0.
    """
    s = tool.dense_vs_sparse(tool.random_params(np.random.default_rng(1), 40))
    assert s["mean"] < 1.0 and s["p95"] < 2.0 and s["max"] < 4.0, s
    assert s["dz_mean"] < 1.0, s


def test_resize_matches_cv2() -> None:
    """The graph's bilinear resize (half-pixel centres) equals cv2.resize INTER_LINEAR when shrinking."""
    cv2 = pytest.importorskip("cv2")
    tf = pytest.importorskip("tensorflow")
    img = np.random.default_rng(0).random((256, 256, 3)).astype(np.float32) * 255
    ref = cv2.resize(img, (120, 120), interpolation=cv2.INTER_LINEAR)
    got = tf.image.resize(img[None], (120, 120), method="bilinear", antialias=False).numpy()[0]
    assert np.abs(ref - got).max() < 0.01


def test_rgb_fold_exact() -> None:
    """mb05uv feeds RGB to a conv1 with reversed input channels; that must equal the BGR teacher."""
    _data_or_skip()
    keras = pytest.importorskip("keras")
    from realtime_prn.network.mb05 import build_mb05_model, load_state_dict, mb05_backbone

    bgr = build_mb05_model()
    inp = keras.Input((120, 120, 3))
    rgb = keras.Model(inp, mb05_backbone(inp, load_state_dict(), name="rgb", rgb_input=True))
    x = np.random.default_rng(2).uniform(-1, 1, (2, 120, 120, 3)).astype(np.float32)
    a = bgr.predict(x, verbose=0)
    b = rgb.predict(x[..., ::-1].copy(), verbose=0)
    assert np.abs(a - b).max() < 1e-4 * max(1.0, np.abs(a).max())


def test_decoder_matches_numpy(model: object, uv: UVBasis, tool: ModuleType) -> None:
    """The TF decoder equals the float64 numpy reference on real crops (to 0.02 px)."""
    import keras

    from realtime_prn.network.mb05 import load_param_stats
    from realtime_prn.network.mb05uv import params_to_posmap_np

    files, pts, _ = tool.load_aflw(4)
    import cv2

    crops = np.stack(
        [
            tool.prn_crop(cv2.imread(str(f)), tool.crop_matrix(*tool.crop_square(p, "prn1.6")))
            for f, p in zip(files, pts)
        ]
    )
    head = keras.Model(model.inputs, model.get_layer("mb05_fc").output)
    p_mean, p_std = load_param_stats()
    params = head.predict(crops, verbose=0).astype(np.float64) * p_std + p_mean
    ref = params_to_posmap_np(params, uv)
    got = model.predict(crops, verbose=0)
    assert got.shape == (4, 256, 256, 3) and got.dtype == np.float32
    assert np.abs(got - ref).max() < 0.02
    assert not got[:, ~uv.covered].any()
    assert np.allclose(got[:, uv.covered, 2].min(axis=1), 0.0, atol=1e-3)


def test_aflw_subset_nme(model: object, tool: ModuleType) -> None:
    """First 100 sorted AFLW2000-3D images: teacher protocol and the 256 model (PRN 1.6 crop).

    Measured: teacher 3.0116, mb05uv 3.1129 (all 2000: 3.384 and 3.480). The teacher bound is
    tight because the port is deterministic (float noise moves it by ~1e-5; RGB input would move it
    by +0.009). The 256 bound leaves 0.09 for resampling differences between builds (cv2 / TF / ORT)
    while a broken decoder (scale, flip, wrong basis) costs whole NME points.
    """
    files, pts, _ = tool.load_aflw(100)
    per, _, _ = tool.teacher_protocol(files, pts)
    assert abs(per.mean() - 3.0116) < 0.005, per.mean()
    res = tool.model_256(files, pts, ("prn1.6",), lambda x: model.predict(x, verbose=0))
    assert res["prn1.6"].mean() < 3.2, res["prn1.6"].mean()


def test_onnx_runner_matches_keras_and_refuses_a_non_model(
    model: object, tool: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--onnx`` runs through the project's ONNX Runtime engine: on 20 AFLW images it gives the Keras
    model's NME (same network, fp32), and a file that is not a model stops the tool in one line,
    before the minutes of the teacher section."""
    from realtime_prn.weights import onnx_model, resolve_weights

    files, pts, _ = tool.load_aflw(20)
    runner, label = tool.make_runner(onnx_model(resolve_weights("mb05uv"), log=lambda s: None), 2)
    got = tool.model_256(files, pts, ("prn1.6",), runner)["prn1.6"]
    ref = tool.model_256(files, pts, ("prn1.6",), lambda x: model.predict(x, verbose=0))["prn1.6"]
    assert label.startswith("onnx:") and np.abs(got - ref).max() < 1e-3, (got.mean(), ref.mean())
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    assert tool.main(["--limit", "5", "--onnx", str(bad), "--skip", "c"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not a usable ONNX model" in err[0], err
    assert "teacher protocol" not in captured.out
