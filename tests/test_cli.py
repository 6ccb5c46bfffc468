"""The batch CLI as a user runs it: real photos and folders, outputs read back, bad input."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, cwd=ROOT):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "realtime_prn", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=600)


def _one_error_line(res):
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_photo_all_outputs_read_back(tmp_path, eval_dir):
    from realtime_prn.io.mesh import read_obj
    res = cli("run", eval_dir / "images" / "face_recognition_two_people.jpg", "-o", tmp_path,
              "--obj", "--kpt", "--pose", "--depth", "--npz", "--overlay")
    assert res.returncode == 0, res.stderr
    assert "2 face(s)" in res.stdout
    for i in (0, 1):
        mesh = read_obj(tmp_path / f"face_recognition_two_people_{i}.obj")
        assert mesh["vertices"].shape == (43867, 3)
        kpt = np.loadtxt(tmp_path / f"face_recognition_two_people_{i}_kpt.txt")
        data = np.load(tmp_path / f"face_recognition_two_people_{i}.npz")
        np.testing.assert_allclose(kpt, data["landmarks"], atol=1e-3)
        assert (tmp_path / f"face_recognition_two_people_{i}_depth.png").stat().st_size > 1000
    assert (tmp_path / "face_recognition_two_people_overlay.jpg").exists()
    assert (tmp_path / "summary.json").exists()


def test_folder_with_a_corrupt_image_continues(tmp_path, eval_dir):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("prnet_1.jpg", "prnet_2.jpg"):
        (src / name).write_bytes((eval_dir / "images" / name).read_bytes())
    (src / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "out"
    res = cli("run", src, "-o", out, "--kpt")
    assert res.returncode == 0, res.stderr
    assert "cannot decode" in res.stderr
    assert sorted(p.name for p in out.glob("*_kpt.txt")) == ["prnet_1_0_kpt.txt", "prnet_2_0_kpt.txt"]


@pytest.mark.parametrize("case", ["missing", "corrupt", "empty_dir", "no_face", "weights", "engine",
                                  "detector", "corrupt_video", "refine"])
def test_bad_input_one_line_nonzero_nothing_lost(tmp_path, case):
    out = tmp_path / "out"
    out.mkdir()
    keep = out / "earlier_result.txt"
    keep.write_text("from an earlier run")
    args = {
        "missing": [tmp_path / "nope.jpg"],
        "corrupt": [tmp_path / "bad.png"],
        "empty_dir": [tmp_path / "empty"],
        "no_face": [tmp_path / "grey.png"],
        "weights": [tmp_path / "grey.png", "--weights", tmp_path / "w.onnx"],
        "engine": [tmp_path / "grey.png", "--engine", "cuda-magic"],
        "detector": [tmp_path / "grey.png", "--detector", "nope"],
        "corrupt_video": [tmp_path / "bad.mp4"],
        "refine": [tmp_path / "grey.png", "--refine", "-1"],
    }[case]
    (tmp_path / "bad.png").write_bytes(b"garbage")
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage")
    (tmp_path / "empty").mkdir()
    import cv2
    cv2.imwrite(str(tmp_path / "grey.png"), np.full((240, 320, 3), 128, np.uint8))
    res = cli("run", *args, "-o", out)
    line = _one_error_line(res)
    expect = {"missing": "not found", "corrupt": "cannot decode", "empty_dir": "no images",
              "no_face": "no face", "weights": "not found", "engine": "unknown engine",
              "detector": "unknown detector", "corrupt_video": "video", "refine": "refine"}[case]
    assert expect in line
    assert keep.read_text() == "from an earlier run"


def test_help_explains():
    res = cli("run", "--help")
    assert res.returncode == 0
    for flag in ("--engine", "--weights", "--obj", "--depth", "--texture", "--every", "--refine"):
        assert flag in res.stdout
