"""Whole-image face profiling (training.profiling) and the re-cropped large-pose bank.

Exact where the maths is: a harmonic field reproduces a linear one, no turn leaves the image as it
was, the label is the turned map; and the properties that distinguish it from the pasted bank: the
image border stays put, the texture under each visible landmark follows it, the face has no halo.
"""

from __future__ import annotations

import numpy as np
import pytest

from realtime_prn.crop import region_from_landmarks


@pytest.fixture(scope="module")
def face(decoder):
    """A teacher-space face (stats mean + 0.5 std noise) as crop-frame params in a 320 image."""
    from realtime_prn.network.mb05 import load_param_stats
    from realtime_prn.network.uv_basis import load_sparse68
    from realtime_prn.training.labels import teacher_landmarks
    from realtime_prn.training.uvreg_data import cache_matrix

    mean, std = load_param_stats()
    q = (mean + 0.5 * std * np.random.default_rng(7).standard_normal(62)).astype(np.float32)
    roi = np.array([80.0, 70.0, 240.0, 230.0], np.float32)
    lm = teacher_landmarks(q, roi, load_sparse68())[:2].T
    qc = decoder.crop_params(q, roi, cache_matrix() @ region_from_landmarks(lm).matrix())
    return qc


def test_harmonic_fill_reproduces_a_linear_field():
    """A linear function is harmonic: known on the border and a blob, the fill equals it everywhere."""
    from realtime_prn.training.profiling import harmonic_fill

    yy, xx = np.mgrid[0:30, 0:40].astype(np.float64)
    field = np.stack([2 * xx - 3 * yy + 5, 0.5 * yy], axis=-1)
    known = np.zeros((30, 40), bool)
    known[[0, -1], :] = known[:, [0, -1]] = True
    known[10:14, 12:20] = True
    out = harmonic_fill(np.where(known[..., None], field, 0.0), known)
    assert np.abs(out - field).max() < 1e-8


def test_no_turn_leaves_image_and_map_unchanged(decoder, face):
    from realtime_prn.assets import grid_triangles
    from realtime_prn.training.profiling import turn_whole_image

    pos = decoder.posmap_from_crop_params(face)
    img = np.random.default_rng(1).integers(0, 256, (320, 320, 3), dtype=np.uint8)
    out, pos2 = turn_whole_image(img, pos, decoder.covered, grid_triangles(decoder.covered), np.eye(3))
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.abs(out.astype(int) - img).max() <= 1
    assert np.abs(pos2 - pos).max() < 1e-3


@pytest.mark.parametrize(("yaw", "pitch"), [(40.0, 0.0), (-65.0, 0.0), (45.0, 20.0), (-40.0, -15.0)])
def test_turn_moves_texture_with_the_label_and_keeps_the_border(decoder, face, assets, yaw, pitch):
    """Coordinate-coded image: after the turn, the colour under each turned landmark is the source
    pixel it came from (visible ones: median, the far side is hidden); the label camera equals the
    returned map; the image border is the source's (the background is not dragged along)."""
    from realtime_prn.assets import grid_triangles
    from realtime_prn.training.augment import turn_rotation, turned_camera
    from realtime_prn.training.profiling import turn_whole_image

    pos = decoder.posmap_from_crop_params(face)
    yy, xx = np.mgrid[0:320, 0:320].astype(np.float32)
    img = np.dstack([xx, yy, np.zeros_like(xx)])
    tris = grid_triangles(decoder.covered)
    out, pos2 = turn_whole_image(img, pos, decoder.covered, tris, turn_rotation(yaw, pitch))
    g = turned_camera(face[:12].reshape(3, 4), decoder.centroid(face), yaw, pitch)
    label = decoder.posmap_from_crop_params(np.r_[g.reshape(12), face[12:]])
    cov = decoder.covered
    assert np.abs(label[cov] - pos2[cov]).max() < 0.05
    before = pos[assets.kpt_ind[1], assets.kpt_ind[0], :2]
    after = label[assets.kpt_ind[1], assets.kpt_ind[0], :2]
    ij = np.clip(np.round(after).astype(int), 0, 319)
    err = np.linalg.norm(out[ij[:, 1], ij[:, 0], :2] - before, axis=1)
    assert np.median(err) < 2.0, np.median(err)
    border = np.ones((320, 320), bool)
    border[2:-2, 2:-2] = False
    assert np.abs(out[border] - img[border]).max() < 1.0
    # continuity: no pixel of the turned image comes from far away from its neighbours' sources
    # (a pasted face over a blurred original would jump by the face's size at its outline)
    jump = np.linalg.norm(np.diff(out[..., :2], axis=1), axis=-1)
    assert np.percentile(jump, 99) < 4.0


def test_recropped_bank_is_framed_like_an_inference_crop(decoder, face, assets):
    """A turned face of the bank sits in its un-augmented crop as PRN's landmark rule frames a real
    profile: the turned landmarks' 1.6 box is the whole 256 crop. Without recrop it is not."""
    from realtime_prn.training.augment import NO_AUGMENT
    from realtime_prn.training.uvreg_data import UVRegData, camera_yaw, synthesise_large_poses

    cache = np.random.default_rng(2).integers(0, 256, (1, 320, 320, 3), dtype=np.uint8)
    for recrop in (True, False):
        c2, q2 = synthesise_large_poses(cache, face[None].astype(np.float64), decoder, 1, seed=3,
                                        progress=False, min_deg=60, max_deg=60, recrop=recrop)
        assert abs(camera_yaw(q2[0])) > 55
        data = UVRegData(c2, q2, decoder, NO_AUGMENT, 0)
        _, label = data.eval_sample(0)
        lm = label[assets.kpt_ind[1], assets.kpt_ind[0], :2]
        r = region_from_landmarks(lm)
        off = max(abs(r.cx - 127.5), abs(r.cy - 127.5), abs(r.size - 255))
        if recrop:
            assert off < 2.5, (r.cx, r.cy, r.size)
        else:
            assert off > 10, (r.cx, r.cy, r.size)


def test_bank_pitch_tilts_within_its_range_and_keeps_the_yaw_turn(decoder, face):
    """``pitch_deg``: each turned face's camera is its source's turned by yaw then pitch, the pitch
    within +-pitch_deg and not all near 0; without it the bank has no pitch change at all."""
    from realtime_prn.training.uvreg_data import camera_yaw, synthesise_large_poses

    cache = np.random.default_rng(4).integers(0, 256, (1, 320, 320, 3), dtype=np.uint8)
    src = face[None].astype(np.float64)

    def rotation(q: np.ndarray) -> np.ndarray:
        g = q[:12].reshape(3, 4)[:, :3]
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    for pitch_deg in (0.0, 25.0):
        _, q2 = synthesise_large_poses(cache, src, decoder, 5, seed=7, progress=False, min_deg=40,
                                       max_deg=60, pitch_deg=pitch_deg)
        rel = [rotation(q) @ rotation(src[0]).T for q in q2]
        pitch = np.array([np.degrees(np.arccos(np.clip(r[1, 1], -1, 1))) for r in rel])
        assert all(abs(camera_yaw(q)) > abs(camera_yaw(src[0])) + 30 for q in q2)
        if pitch_deg:
            assert pitch.max() <= pitch_deg + 1.5 and pitch.max() > 5, pitch
        else:
            assert pitch.max() < 1.5, pitch
