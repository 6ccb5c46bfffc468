"""The open training pipeline: label conventions, augmentation consistency, loss weights, resume.

Fast (no corpus labelling): synthetic parameter sets, the one 300W-LP sample, a tiny student.
"""
from __future__ import annotations

import numpy as np
import pytest

from realtime_prn.crop import region_from_landmarks

SAMPLE = "samples_300wlp/IBUG_image_008_1_0"


@pytest.fixture(scope="module")
def basis():
    pytest.importorskip("scipy")
    from realtime_prn.network.uv_basis import load_sparse68, load_uv_basis
    from realtime_prn.paths import DataNotFoundError
    try:
        return load_uv_basis(), load_sparse68()
    except DataNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def decoder(basis):
    from realtime_prn.training.labels import PosmapDecoder
    return PosmapDecoder(basis[0])


def _synthetic_params(n: int, seed: int = 0) -> np.ndarray:
    from realtime_prn.network.mb05 import load_param_stats
    mean, std = load_param_stats()
    rng = np.random.default_rng(seed)
    return (mean + 0.5 * std * rng.standard_normal((n, 62))).astype(np.float32)


def test_posmap_equals_mb05uv_decoder(decoder, basis):
    """roi [0,0,256,256] and an identity crop reproduce mb05uv's numpy decoder exactly."""
    from realtime_prn.network.mb05uv import params_to_posmap_np
    p = _synthetic_params(2)
    for q in p:
        a = decoder.posmap(q, [0, 0, 256, 256], np.eye(3))
        b = params_to_posmap_np(q[None], basis[0])[0]
        assert np.abs(a - b).max() < 0.02


def test_synthetic_landmarks_match_sparse_basis(decoder, basis, assets):
    """Map landmarks at uv_kpt_ind = the teacher's sparse landmarks within TEACHER.md's tolerance
    (there: mean 0.73, max 3.3 px in the 256 crop), for random params, ROIs and rotated crops."""
    from realtime_prn.training.augment import similarity_about_centre
    from realtime_prn.training.labels import teacher_landmarks
    sp = basis[1]
    rng = np.random.default_rng(1)
    errs, dz = [], []
    for q in _synthetic_params(6, seed=2):
        x0, y0, side = rng.uniform(0, 200), rng.uniform(0, 200), rng.uniform(80, 300)
        roi = [x0, y0, x0 + side, y0 + side]
        pts = teacher_landmarks(q, roi, sp)  # (3, 68) image px, z min 0
        m = similarity_about_centre(rng.uniform(-40, 40), rng.uniform(0.9, 1.2), (5, -3)) @ \
            region_from_landmarks(pts[:2].T).matrix()
        pos = decoder.posmap(q, roi, m)
        got = pos[assets.kpt_ind[1], assets.kpt_ind[0]]
        want_xy = pts[:2].T @ m[:2, :2].T + m[:2, 2]
        errs.append(np.linalg.norm(got[:, :2] - want_xy, axis=1))
        k = np.sqrt(abs(np.linalg.det(m[:2, :2])))
        z = got[:, 2] - k * pts[2]
        dz.append(np.abs(z - np.median(z)))  # the dense and sparse min-z shifts differ by a constant
    errs = np.concatenate(errs)
    assert errs.mean() < 1.0 and errs.max() < 4.0, (errs.mean(), errs.max())
    assert np.concatenate(dz).mean() < 1.0


def test_300wlp_sample_conventions(decoder, basis, assets):
    """Teacher labels on the real 300W-LP sample: its pt2d landmarks land where the map says,
    the nose is nearest the camera (z up toward the viewer) and the yaw magnitude agrees."""
    import cv2
    import scipy.io

    from realtime_prn.network.mb05 import roi_box_from_landmarks
    from realtime_prn.paths import DataNotFoundError, data_file
    from realtime_prn.training.labels import Teacher
    try:
        img_path = data_file("train", *f"{SAMPLE}.jpg".split("/"))
        mat = scipy.io.loadmat(str(data_file("train", *f"{SAMPLE}.mat".split("/"))))
    except DataNotFoundError as exc:
        pytest.skip(str(exc))
    img = cv2.imread(str(img_path))
    pt2d = mat["pt2d"].astype(np.float64)  # (2, 68)
    teacher = Teacher()
    roi = roi_box_from_landmarks(pt2d)
    for _ in range(2):
        params = teacher.params([img], [roi])[0]
        roi = roi_box_from_landmarks(teacher.landmarks(params, roi))
    params = teacher.params([img], [roi])[0]
    m = region_from_landmarks(pt2d.T).matrix()
    pos = decoder.posmap(params, roi, m)
    got = pos[assets.kpt_ind[1], assets.kpt_ind[0]]
    gt = pt2d.T @ m[:2, :2].T + m[:2, 2]
    size = np.sqrt(np.ptp(gt[:, 0]) * np.ptp(gt[:, 1]))
    nme = np.linalg.norm(got[:, :2] - gt, axis=1).mean() / size
    assert nme < 0.08, nme
    assert got[30, 2] > np.median(got[:, 2])  # nose tip toward the camera
    cam = params[:12].reshape(3, 4)[:, :3]
    r0, r1 = cam[0] / np.linalg.norm(cam[0]), cam[1] / np.linalg.norm(cam[1])
    yaw_teacher = np.degrees(np.arcsin(np.clip(np.cross(r0, r1)[0], -1, 1)))
    yaw_gt = np.degrees(mat["Pose_Para"][0, 1])
    assert abs(abs(yaw_teacher) - abs(yaw_gt)) < 15, (yaw_teacher, yaw_gt)


def test_augmentation_keeps_image_and_label_consistent(decoder, basis, assets):
    """On an image whose colour encodes its own pixel position, the augmented crop's colour at the
    augmented label's landmark decodes to where the un-augmented label puts that landmark."""
    import cv2

    from realtime_prn.training.augment import AugmentConfig, augment_sample
    from realtime_prn.training.labels import teacher_landmarks
    h = w = 400
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 2] = np.round(xx * 255 / (w - 1))  # BGR: red = x
    img[..., 1] = np.round(yy * 255 / (h - 1))  # green = y
    cfg = AugmentConfig(colour_min=1.0, colour_max=1.0, occlusion_prob=0.0)
    q = _synthetic_params(1, seed=5)[0]
    roi = np.array([110.0, 100.0, 290.0, 280.0])
    pts = teacher_landmarks(q, roi, basis[1])
    ref = decoder.posmap(q, roi, np.eye(3))[assets.kpt_ind[1], assets.kpt_ind[0]]
    base = region_from_landmarks(pts[:2].T)
    rng = np.random.default_rng(3)
    for _ in range(4):
        crop, pos, m = augment_sample(img, q, roi, base, rng, cfg, decoder)
        lm = pos[assets.kpt_ind[1], assets.kpt_ind[0]]
        inside = (lm[:, :2] > 2).all(1) & (lm[:, :2] < 253).all(1)
        assert inside.sum() > 30
        sx = cv2.remap(crop, lm[inside, 0:1].astype(np.float32), lm[inside, 1:2].astype(np.float32),
                       cv2.INTER_LINEAR)[:, 0]
        decoded = np.stack([sx[:, 0] * (w - 1), sx[:, 1] * (h - 1)], 1)  # crop is RGB: R = x, G = y
        err = np.linalg.norm(decoded - ref[inside, :2], axis=1)
        assert err.mean() < 1.0 and err.max() < 3.0, (err.mean(), err.max())
        k = np.sqrt(abs(np.linalg.det(m[:2, :2])))
        assert np.ptp(lm[:, 2]) == pytest.approx(k * np.ptp(ref[:, 2]), rel=1e-3)


def test_degradations_blur_compress_or_add_noise_but_keep_geometry(eval_dir):
    """Every kind of --degrade loses detail (or adds noise) on a real photo, yet moves nothing: on an
    image whose colour encodes its pixel position, 16-px patch means still decode to their own
    place (blur and resampling exactly), so the untouched label stays right. Off (probability 0)
    it returns the crop and draws nothing, so runs without it keep their exact samples."""
    import cv2

    from realtime_prn.training.augment import DEGRADATIONS, AugmentConfig, apply_degradation, degrade
    photo = cv2.imread(str(sorted((eval_dir / "images").glob("*.jpg"))[0]))
    photo = cv2.cvtColor(cv2.resize(photo, (256, 256), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    photo = photo.astype(np.float32) / 255
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    coded = np.stack([xx / 255, yy / 255, np.full_like(xx, 0.5)], -1)  # R = x, G = y

    def detail(img):
        return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.CV_32F).var())

    for kind in DEGRADATIONS:
        for seed in range(3):
            out = apply_degradation(photo, kind, np.random.default_rng(seed))
            assert out.shape == photo.shape and out.dtype == np.float32, kind
            assert 0.0 <= out.min() and out.max() <= 1.0, kind
            if kind in ("blur", "resample"):
                assert detail(out) < 0.5 * detail(photo), kind
            elif kind == "jpeg":
                assert np.abs(out - photo).mean() > 0.003, kind
            else:
                assert 0.008 < float((out - photo)[(photo > 0.2) & (photo < 0.8)].std()) < 0.052
            dec = apply_degradation(coded, kind, np.random.default_rng(seed))
            inner = (slice(16, 240), slice(16, 240))
            patch = dec[inner].reshape(14, 16, 14, 16, 3).mean(axis=(1, 3))
            truth = coded[inner].reshape(14, 16, 14, 16, 3).mean(axis=(1, 3))
            err = np.abs(patch[..., :2] - truth[..., :2]) * 255  # in pixels
            if kind in ("blur", "resample"):  # exact on a linear field away from the border
                assert err.max() < 0.1, kind
            else:  # 8-bit JPEG colour quantisation / noise: scatter about the place, no shift
                assert err.mean() < 1.2 and err.max() < 3.5, kind
    rng = np.random.default_rng(7)
    assert degrade(photo, rng, AugmentConfig()) is photo
    assert rng.random() == np.random.default_rng(7).random()
    drawn = [degrade(photo, np.random.default_rng(s), AugmentConfig(degrade_prob=0.5)) is photo
             for s in range(200)]
    assert 70 < sum(drawn) < 130
    with pytest.raises(ValueError, match="unknown degradation"):
        apply_degradation(photo, "fog", np.random.default_rng(0))


def test_loss_weights_follow_paper_ratio(assets, basis):
    from realtime_prn.training import trainer as trainer_mod
    w = trainer_mod.loss_weights(assets.weight_mask, assets.face_mask, basis[0].covered)
    assert set(np.unique(w).tolist()) == {0.0, 3.0, 4.0, 16.0}
    assert (w == 16).sum() == 68
    assert np.all(w[assets.kpt_ind[1], assets.kpt_ind[0]] == 16)
    assert np.all(w[~assets.face_mask] == 0)  # neck, ears, background: weight 0
    assert (w == 4).sum() > 10000  # eyes, nose, mouth


def test_landmark_weight_moves_only_the_68_points(assets, basis):
    from realtime_prn.training import trainer as trainer_mod
    paper = trainer_mod.loss_weights(assets.weight_mask, assets.face_mask, basis[0].covered)
    heavy = trainer_mod.loss_weights(assets.weight_mask, assets.face_mask, basis[0].covered, 640.0)
    kpt = np.zeros(paper.shape, bool)
    kpt[assets.kpt_ind[1], assets.kpt_ind[0]] = True
    assert np.all(heavy[kpt] == 640) and np.array_equal(heavy[~kpt], paper[~kpt])
    # at PRN's 16 the 68 points are under 1 % of the loss; at 640 about a quarter
    assert paper[kpt].sum() / paper.sum() < 0.01
    assert 0.2 < heavy[kpt].sum() / heavy.sum() < 0.3
    with pytest.raises(ValueError, match="landmark weight"):
        trainer_mod.loss_weights(assets.weight_mask, assets.face_mask, landmark=0.0)


def test_jaw_weight_sets_the_17_jaw_points_apart(assets, basis):
    from realtime_prn.training import trainer as trainer_mod
    args = (assets.weight_mask, assets.face_mask, basis[0].covered)
    inner = trainer_mod.loss_weights(*args, 640.0, jaw=16.0, kpt_ind=assets.kpt_ind)
    heavy = trainer_mod.loss_weights(*args, 640.0)
    jaw = np.zeros(inner.shape, bool)
    jaw[assets.kpt_ind[1, :17], assets.kpt_ind[0, :17]] = True
    rest = np.zeros(inner.shape, bool)
    rest[assets.kpt_ind[1, 17:], assets.kpt_ind[0, 17:]] = True
    assert not (jaw & rest).any()  # the 68 points sit on 68 distinct pixels
    covered_jaw = jaw & (heavy > 0)
    assert covered_jaw.sum() == 17 and np.all(inner[covered_jaw] == 16)
    assert np.array_equal(inner[~jaw], heavy[~jaw])  # inner 51 points and the face untouched
    with pytest.raises(ValueError, match="kpt_ind"):
        trainer_mod.loss_weights(*args, 640.0, jaw=16.0)
    with pytest.raises(ValueError, match="jaw weight"):
        trainer_mod.loss_weights(*args, 640.0, jaw=-1.0, kpt_ind=assets.kpt_ind)


def test_split_by_group_is_disjoint_and_seeded():
    from realtime_prn.training import trainer as trainer_mod
    groups = np.array([f"g{i // 3}" for i in range(300)] + [f"s{i}" for i in range(200)])
    a = trainer_mod.split_by_group(groups, 0.1, 0, 1000)
    assert np.array_equal(a, trainer_mod.split_by_group(groups, 0.1, 0, 1000))
    assert not set(groups[a]) & set(groups[~a])
    assert 40 <= a.sum() <= 60


def test_resume_is_exact(tmp_path, decoder, basis, assets):
    """2 steps + checkpoint + a fresh process-like Trainer + 2 steps == 4 uninterrupted steps."""
    tf = pytest.importorskip("tensorflow")
    import keras

    from realtime_prn.training.augment import AugmentConfig
    from realtime_prn.training.labels import teacher_landmarks
    from realtime_prn.training.student import build_student
    tf.config.experimental.enable_op_determinism()
    from realtime_prn.training import trainer as trainer_mod
    q = _synthetic_params(4, seed=7)
    roi = np.tile(np.array([60.0, 60.0, 240.0, 240.0], np.float32), (4, 1))
    lms = np.stack([teacher_landmarks(p, r, basis[1])[:2].T for p, r in zip(q, roi)])
    imgs = [np.random.default_rng(i).integers(0, 255, (300, 300, 3), dtype=np.uint8) for i in range(4)]
    data = trainer_mod.FaceData(q, roi, lms, lambda i: imgs[i], decoder, AugmentConfig(), seed=3)
    w = trainer_mod.loss_weights(assets.weight_mask, assets.face_mask, basis[0].covered)

    def trainer(seed: int):
        keras.utils.set_random_seed(seed)
        model = build_student(width=0.25)
        return trainer_mod.Trainer(model, w, data, None, assets.kpt_ind, assets.face_ind, batch=2, lr=1e-3,
                            halve_every_steps=3, workers=2, log=lambda s: None)

    full = trainer(0)
    full.run(4, log_every=0)
    part = trainer(0)
    part.run(2, out=tmp_path, ckpt_every=0, log_every=0)
    resumed = trainer(123)  # different init: everything must come from the checkpoint
    resumed.load(tmp_path / "last.npz")
    assert (resumed.state.step, resumed.state.epoch, resumed.state.pos) == (2, 0, 4)
    resumed.run(4, log_every=0)
    assert (resumed.state.step, resumed.state.epoch, resumed.state.pos) == \
        (full.state.step, full.state.epoch, full.state.pos)
    for a, b in zip(full.model.weights, resumed.model.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
    for a, b in zip(full.opt.variables, resumed.opt.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


def test_yaw_synthesis_is_identity_at_zero_and_turns_the_face(decoder, basis, assets):
    """The simple 300W-LP-style re-render: yaw 0 keeps map and face pixels; yaw 30 turns the map."""
    from realtime_prn.assets import grid_triangles
    from realtime_prn.training.augment import synthesise_yaw
    from realtime_prn.training.labels import teacher_landmarks
    q = _synthetic_params(1, seed=9)[0]
    roi = np.array([60.0, 60.0, 240.0, 240.0])
    m = region_from_landmarks(teacher_landmarks(q, roi, basis[1])[:2].T).matrix()
    pos = decoder.posmap(q, roi, m)
    yy, xx = np.mgrid[0:256, 0:256]
    crop = np.stack([xx / 255, yy / 255, np.full_like(xx, 0.5, dtype=float)], -1).astype(np.float32)
    tris = grid_triangles(decoder.covered)
    img0, pos0 = synthesise_yaw(crop, pos, decoder.covered, tris, 0.0)
    np.testing.assert_allclose(pos0, pos, atol=1e-3)
    assert np.abs(img0 - crop).mean() < 0.01
    _, pos30 = synthesise_yaw(crop, pos, decoder.covered, tris, 30.0)
    kx = assets.kpt_ind
    a, b = pos[kx[1], kx[0]], pos30[kx[1], kx[0]]
    eye_gap = lambda p: np.linalg.norm(p[45, :2] - p[36, :2])  # outer eye corners
    assert eye_gap(b) < 0.95 * eye_gap(a)  # foreshortened by the turn
    assert pos30[decoder.covered, 2].min() == pytest.approx(0.0, abs=1e-3)
