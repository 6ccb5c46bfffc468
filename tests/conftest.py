import os
from pathlib import Path

import numpy as np
import pytest

from realtime_prn.paths import data_root

SHARED = data_root()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running (full videos, full evaluation)")


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
