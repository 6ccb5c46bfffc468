import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from realtime_prn.paths import data_root

SHARED = data_root()


ROOT = Path(__file__).resolve().parent.parent
CHILD_ENV = "REALTIME_PRN_TEST_CHILD"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running (full videos, full evaluation)")
    config.addinivalue_line("markers", "isolated: runs in a fresh Python process (EGL/vispy tests: "
                                       "Mesa and TensorFlow cannot share one process)")


def pytest_pyfunc_call(pyfuncitem):
    """Run ``isolated`` tests in a child pytest so other tests' TensorFlow never meets EGL."""
    if pyfuncitem.get_closest_marker("isolated") is None or os.environ.get(CHILD_ENV):
        return None
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          pyfuncitem.nodeid], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, CHILD_ENV: "1"}, timeout=900)
    if res.returncode == 0 and " passed" not in res.stdout and "skipped" in res.stdout:
        reason = [ln for ln in res.stdout.splitlines() if ln.startswith("SKIPPED")]
        pytest.skip(reason[-1] if reason else "skipped in the child process")
    if res.returncode != 0:
        pytest.fail(f"isolated run failed:\n{(res.stdout + res.stderr)[-4000:]}", pytrace=False)
    return True


@pytest.fixture(scope="session")
def assets():
    from realtime_prn.assets import load_assets
    return load_assets()


@pytest.fixture(scope="session")
def eval_dir() -> Path:
    path = SHARED / "eval"
    if not path.exists():
        pytest.skip(f"shared eval data not found at {path} (set REALTIME_PRN_DATA)")
    return path


def synthetic_position_map(assets, rotation, translation, scale, centre=None):
    """PRN position map of the canonical face under a known similarity transform.

    With ``centre`` the translation is chosen so that the canonical mean lands there.
    """
    pos = np.zeros((256 * 256, 3), np.float32)
    if centre is not None:
        translation = np.asarray(centre, float) - scale * rotation @ assets.canonical_vertices.mean(0)
    verts = scale * assets.canonical_vertices @ rotation.T + translation
    pos[assets.face_ind] = verts
    return pos.reshape(256, 256, 3), verts


@pytest.fixture
def synth():
    return synthetic_position_map


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def train_tool():
    """tools/train.py as a module (tools/ is not a package), registered once so its dataclasses
    work and every test module shares the same copy."""
    if "train_tool" not in sys.modules:
        spec = importlib.util.spec_from_file_location("train_tool", ROOT / "tools" / "train.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["train_tool"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["train_tool"]


@pytest.fixture(scope="module")
def decoder():
    """The teacher-label position-map decoder (PRN UV basis), skipped without the shared data."""
    from realtime_prn.paths import DataNotFoundError
    from realtime_prn.training.labels import PosmapDecoder

    try:
        return PosmapDecoder()
    except DataNotFoundError as exc:
        pytest.skip(str(exc))
