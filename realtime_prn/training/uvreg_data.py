"""Training data and loss for ``uvreg`` (:mod:`realtime_prn.network.uvreg`): fast enough for 2 cores.

Why a separate path from the dense student's: uvreg trains at ~90 images/s, so building each
sample from a JPEG on disk and a 65,536-pixel label map (what ``tools/train.py --model student``
does, ~10 ms) would starve it. Here:

* every labelled face is warped ONCE into a 320x320 cache image covering 1.8x its PRN crop
  (landmark rule), enough for the paper's augmentation (+-45 deg, 0.9-1.2 scale, +-10 % shift);
  a sample is one ``warpAffine`` from that cache to the 256 crop, colour scaling, occlusion, then
  the exact 2x2 average to the network's 128 input;
* the label is 62 numbers: the crop-frame camera for the augmented crop matrix (exact: the same
  similarity warps image and label) and the 50 coefficients;
* PRN's weighted position-map loss is evaluated in closed form. The map is linear in the
  coefficient block C (3 x 154), ``pos_d = C_d @ rows``, so
  ``sum_p w_p (pos_d - gt_d)^2 = dC_d (rows W rows^T) dC_d^T``: a 154x154 Gram matrix (one for
  x and y, one of weighted-mean-centred rows for z) instead of two 256x256x3 maps per sample. z is
  compared after removing its weighted mean (z is only defined up to a shift; PRN fixes it by
  min z = 0, which is not differentiable-friendly).
  The Gram is factored once in float64 (G = F F^T) so the loss is the float32 sum of squares of
  ``dC @ F`` -- no cancellation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from realtime_prn.crop import RES, region_from_landmarks
from realtime_prn.network.uvreg import INPUT, N_PARAMS, TEACHER_INPUT
from realtime_prn.training.augment import (
    NO_AUGMENT,
    AugmentConfig,
    colour_scale,
    degrade,
    occlude,
    random_crop_matrix,
)
from realtime_prn.training.labels import move_camera

CACHE_RES = 320
CACHE_EXTENT = 1.8  # cache side / PRN crop side


def cache_matrix() -> np.ndarray:
    """3x3 crop(256) -> cache(320) similarity about the centres."""
    a = CACHE_RES / (RES * CACHE_EXTENT)
    c0, c1 = (RES - 1) / 2, (CACHE_RES - 1) / 2
    return np.array([[a, 0, c1 - a * c0], [0, a, c1 - a * c0], [0, 0, 1]], np.float64)


def move_params(q: np.ndarray, m: np.ndarray) -> np.ndarray:
    """62 params whose camera is followed by the similarity ``m`` (coefficients unchanged)."""
    out = np.array(q, np.float64)
    out[:12] = move_camera(out[:12].reshape(3, 4), m).reshape(12)
    return out


def build_cache(landmarks: np.ndarray, load_image: Callable[[int], np.ndarray], params: np.ndarray,
                roi: np.ndarray, decoder: object, progress: bool = True, backgrounds: bool = False,
                seed: int = 0, mirrored: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                mirror: LabelMirror | None = None, padding_out: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(N, 320, 320, 3) uint8 BGR face images and (N, 62) labels in their frame.

    Image i is its face's PRN crop (landmark rule) grown to 1.8x, so any augmented crop is one
    warp from it; its label is the teacher's camera moved into that frame. Where the cache
    reaches past the source image it is black, unless ``backgrounds`` (:func:`fill_padding`).
    ``mirrored`` = (params, roi, ok) of the teacher on the mirrored images (``labels.build_labels
    (mirrored=True)``): each label is then :func:`flip_averaged` (with ``mirror``) where ok.
    ``padding_out`` (N,) float, if given, receives each face's share of its plain 256 PRN crop that
    the source image did not reach (:func:`crop_padding`), whatever ``backgrounds`` then fills.
    """
    from tqdm import tqdm

    n = len(landmarks)
    cache = np.zeros((n, CACHE_RES, CACHE_RES, 3), np.uint8)
    valid = np.zeros((n, CACHE_RES, CACHE_RES), np.uint8) if backgrounds or padding_out is not None else None
    q = np.zeros((n, N_PARAMS), np.float64)
    k = cache_matrix()
    for i in tqdm(range(n), desc="caching faces", disable=not progress, mininterval=5):
        crop = region_from_landmarks(landmarks[i]).matrix(RES)
        m = k @ crop
        img = load_image(i)
        cv2.warpAffine(img, m[:2], (CACHE_RES, CACHE_RES), dst=cache[i], flags=cv2.INTER_AREA,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if valid is not None:
            cv2.warpAffine(np.full(img.shape[:2], 255, np.uint8), m[:2], (CACHE_RES, CACHE_RES), dst=valid[i],
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if mirrored is not None and mirrored[2][i]:
            q[i] = move_params(flip_averaged(decoder, mirror, params[i], roi[i], mirrored[0][i],
                                             mirrored[1][i], img.shape[1], crop), k)
        else:
            q[i] = decoder.crop_params(params[i], roi[i], m)
    if padding_out is not None:
        padding_out[:] = crop_padding(valid)
    if backgrounds:
        filled, donors = fill_padding(cache, valid, seed)
        if progress:
            print(f"backgrounds: {filled} of {n} faces' padding filled from {donors} donors")
    return cache, q


def crop_padding(valid: np.ndarray) -> np.ndarray:
    """(N,) share of each face's plain 256 PRN crop (the cache's centre) its source image did not reach.

    Why: ~7,000 of the corpus' faces are tight 90-150 px crops, so most of that crop is padding. A
    background fill hides it on a frontal face, but turned out of plane the face's own square of
    pixels turns with it and the donor's head shows round it: a pasted-square profile with a second
    head behind it (looked at, session 15) that no real profile has. ``--synth-max-padding`` turns
    only faces with real context round them. ``valid`` (N, 320, 320) uint8: 255 where the source reached.
    """
    o = (CACHE_RES - RES) // 2
    return _unreached(valid[:, o:o + RES, o:o + RES])


def _unreached(valid: np.ndarray) -> np.ndarray:
    """(N,) share of each (N, h, w) reach mask (255 = reached) that is padding."""
    return 1.0 - valid.reshape(len(valid), -1).mean(axis=1) / 255.0


#: A cache image is a background donor when at most this fraction of it is padding.
DONOR_MAX_PADDING = 0.12


def fill_padding(cache: np.ndarray, valid: np.ndarray, seed: int) -> tuple[int, int]:
    """Replace each cache image's black padding, in place, by the same place of a random donor;
    (faces filled, donors).

    Why: ~7,000 of the corpus' 8,007 faces are tight 90-150 px crops: the median un-augmented
    training crop was 71 % black, while at inference (AFLW2000-3D, a webcam) that is hair,
    shoulders and a room. Measured on uvreg-v3 (AFLW first 400, GT crop): blacking out everything
    outside a tight box round the face LOWERED its error (bin mean 5.69 -> 5.56 %, pose MAE 5.07 ->
    4.07 deg): it had learnt black context. Donors are the cache images with real context nearly
    all round (:data:`DONOR_MAX_PADDING`: video frames, large photos). Every cache image is framed on
    its own landmarks, so the same place of a donor is a head's context where a head's is (hair,
    neck, shoulders) and the donor's face lies under the recipient's own; flipped at random,
    blended over a 2-px-sigma seam so no hard rectangle is left to learn. ``valid`` (N, 320, 320)
    uint8 is 255 where the source image reached.
    """
    pad = _unreached(valid)
    donors = np.flatnonzero(pad <= DONOR_MAX_PADDING)
    if len(donors) < 2:
        return 0, len(donors)
    originals = cache[donors].copy()  # donors give their own pixels, not what they were filled with
    rng = np.random.default_rng([seed, 77])
    filled = 0
    for i in np.flatnonzero(pad > 0):
        j = int(rng.integers(0, len(donors)))
        while donors[j] == i:  # a donor with a little padding takes another's context, not its own
            j = int(rng.integers(0, len(donors)))
        bg = originals[j][:, ::-1] if rng.random() < 0.5 else originals[j]
        a = cv2.GaussianBlur(valid[i], (0, 0), 2.0).astype(np.float32)[..., None] * np.float32(1 / 255)
        a = np.where(valid[i][..., None] == 0, np.float32(0), a)  # where the source never reached: donor only
        cache[i] = np.clip(a * cache[i] + (1 - a) * bg + 0.5, 0, 255).astype(np.uint8)
        filled += 1
    return filled, len(donors)


#: Default out-of-plane turn range (degrees) of the synthesised large-pose faces.
SYNTH_DEG = (30.0, 80.0)


#: How turned faces are made: ``warp`` turns the whole image (:mod:`training.profiling`, 300W-LP
#: style), ``paste`` renders the face alone over a blurred original (the first bank's method).
SYNTH_METHODS = ("warp", "paste")


def synthesise_large_poses(cache: np.ndarray, q: np.ndarray, decoder: object, n: int, seed: int,
                           progress: bool = True, min_deg: float = SYNTH_DEG[0],
                           max_deg: float = SYNTH_DEG[1], limit_deg: float = 88.0,
                           method: str = "warp", recrop: bool = True, pitch_deg: float = 0.0,
                           source_bias_deg: float = 0.0, sources: np.ndarray | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` extra faces turned out of plane (300W-LP's idea), as cache images + cache-frame labels.

    Why: 96 % of the corpus' faces have |yaw| <= 30 deg (teacher labels) and 3 of 8,007 exceed 60,
    so a model trained on it alone fails on profiles (AFLW2000-3D (60,90] bin: 20 % NME measured).
    Each synthetic face: a random source, turned by ``min_deg``-``max_deg`` (default 30-80) in the
    direction that increases its |yaw| (capped at ``limit_deg``), by ``method`` (:data:`SYNTH_METHODS`).
    Labels come from :func:`augment.turned_camera`, exact for x, y. With ``recrop`` the result is
    re-framed on the TURNED face's landmarks (PRN's 1.6 landmark box), as inference crops a real
    profile; without it the turned face keeps its frontal source's crop, which is larger and
    off-centre for a profile. ``pitch_deg`` > 0 also tilts each turned face up or down by a uniform
    random angle in +-``pitch_deg`` (``warp`` only). ``source_bias_deg`` > 0 draws sources with weight
    ``1 + (|yaw| / source_bias_deg)**2`` (:func:`source_weights`) instead of uniformly. ``sources``
    (bool, one per face) limits the draw to those faces (e.g. :func:`crop_padding` below a bound).
    Deterministic in ``seed``.
    """
    from tqdm import tqdm

    from realtime_prn.assets import grid_triangles, load_assets
    from realtime_prn.training.augment import synthesise_yaw, turn_rotation, turned_camera
    from realtime_prn.training.profiling import turn_whole_image

    if method not in SYNTH_METHODS:
        raise ValueError(f"unknown synthesis method {method!r} (expected one of {', '.join(SYNTH_METHODS)})")
    if pitch_deg and method != "warp":
        raise ValueError("pitch turns need the warp synthesis (paste renders the face alone)")
    rng = np.random.default_rng([seed, 90])
    tris = grid_triangles(decoder.covered)
    kpt = load_assets().kpt_flat
    k = cache_matrix()
    out = np.zeros((n, CACHE_RES, CACHE_RES, 3), np.uint8)
    qs = np.zeros((n, N_PARAMS), np.float64)
    w = source_weights(q, source_bias_deg) if source_bias_deg else None
    if sources is not None:
        allowed = np.asarray(sources, bool)
        if allowed.shape != (len(q),) or not allowed.any():
            raise ValueError(f"sources must be one bool per face ({len(q)}) with at least one True")
        w = np.where(allowed, 1.0 / len(q) if w is None else w, 0.0)
        w /= w.sum()
    for j in tqdm(range(n), desc="large-pose synthesis", disable=not progress, mininterval=5):
        while True:
            i = int(rng.integers(0, len(q)) if w is None else rng.choice(len(q), p=w))
            turn = rng.uniform(min_deg, max_deg)
            g, centre = q[i][:12].reshape(3, 4), decoder.centroid(q[i])
            # the direction that turns this face further from frontal
            reach, yaw = max((abs(camera_yaw(turned_camera(g, centre, t))), t) for t in (turn, -turn))
            if abs(camera_yaw(q[i])) < reach <= limit_deg:
                break
        # drawn only when asked, so a bank without pitch is the one earlier releases trained on
        pitch = float(rng.uniform(-pitch_deg, pitch_deg)) if pitch_deg else 0.0
        pos = decoder.posmap_from_crop_params(q[i])
        if method == "warp":
            img, _ = turn_whole_image(cache[i], pos, decoder.covered, tris, turn_rotation(yaw, pitch))
        else:
            rgb = cv2.cvtColor(cache[i], cv2.COLOR_BGR2RGB).astype(np.float32) * np.float32(1 / 255)
            rgb, _ = synthesise_yaw(rgb, pos, decoder.covered, tris, yaw, erase=True)
            img = cv2.cvtColor(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
        qj = np.concatenate([turned_camera(g, centre, yaw, pitch).reshape(12), q[i][12:]])
        if recrop:
            lm = decoder.posmap_from_crop_params(qj).reshape(-1, 3)[kpt, :2]
            m = k @ region_from_landmarks(lm).matrix(RES)
            img = cv2.warpAffine(img, m[:2], (CACHE_RES, CACHE_RES), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            qj = move_params(qj, m)
        out[j], qs[j] = img, qj
    return out, qs


def source_weights(q: np.ndarray, bias_deg: float) -> np.ndarray:
    """Probabilities of drawing each face as a synthesis source: ``1 + (|yaw| / bias_deg)**2``, normalised.

    Why: turning a frontal face to 80 deg stretches its foreshortened near cheek and ear over the
    profile's visible side (blurry, unlike a real profile's); a face the camera already saw at 30 deg
    needs a 50 deg turn for the same profile and shows that side sharper. The corpus has 1,058 faces
    past 20 deg of 8,007; with ``bias_deg`` 15 a 30 deg face is drawn 5x as often as a frontal one.
    """
    if bias_deg <= 0:
        raise ValueError(f"source bias must be > 0 degrees, not {bias_deg:g}")
    yaw = np.abs([camera_yaw(qi) for qi in q])
    w = 1.0 + (yaw / bias_deg) ** 2
    return w / w.sum()


def camera_yaw(q: np.ndarray) -> float:
    """Yaw in degrees of a 62-param label's camera (rows normalised; sign: the turn direction of
    :func:`augment.yaw_rotation`)."""
    g = np.asarray(q, np.float64).reshape(-1)[:12].reshape(3, 4)[:, :3]
    r = g / np.linalg.norm(g, axis=1, keepdims=True)
    return float(np.degrees(np.arcsin(np.clip(r[0, 2], -1.0, 1.0))))


class LabelMirror:
    """A uvreg label (62 crop-frame params) for the crop's mirror image (``x -> RES - 1 - x``).

    Why in parameter space: uvreg's loss is closed-form in the parameters, so a flipped training
    crop needs a 62-number label too. PRN's UV layout is mirror-symmetric (``engines/flip.py``):
    the mirror crop's map is the original map read at mirrored UV columns with x reflected. Its
    shape is ``S'(p) = F S(mirror p) + 2 x0 e_x`` (F = diag(-1, 1, 1), x0 the mean face's
    centre), which the 50-d BFM basis spans up to a small residual, so ``alpha' = M alpha + a`` by
    least squares over the face pixels both columns cover. The camera follows exactly:
    ``A' = F A F``, ``t' = F (2 x0 A e_x + t) + (RES - 1) e_x``. Measured on 500 teacher labels:
    the shape residual is 0.25 % of the face size (mean over pixels; 0.9 % at the 99th
    percentile), an order below the student's error against its teacher (~2 % NME68).
    """

    def __init__(self, decoder: object, face_mask: np.ndarray) -> None:
        both = decoder.covered & decoder.covered[:, ::-1] & np.asarray(face_mask, bool)
        ys, xs = np.nonzero(both)
        p, pm = ys * RES + xs, ys * RES + (RES - 1 - xs)
        mean, basis = decoder.shape_rows(p)
        mean_m, basis_m = decoder.shape_rows(pm)
        self.x0 = float(mean[:, 0].mean())
        flip = np.array([-1.0, 1.0, 1.0])
        target_mean = mean_m * flip + np.array([2 * self.x0, 0.0, 0.0]) - mean
        target_basis = basis_m * flip[None, :, None]
        k = basis.shape[-1]
        rhs = np.concatenate([target_mean.reshape(-1, 1), target_basis.reshape(-1, k)], axis=1)
        sol = np.linalg.lstsq(basis.reshape(-1, k), rhs, rcond=None)[0]  # (K, 1 + K)
        self.offset, self.matrix = sol[:, 0], sol[:, 1:]

    def __call__(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, np.float64)
        g = q[:12].reshape(3, 4)
        f = np.diag([-1.0, 1.0, 1.0])
        a, t = g[:, :3], g[:, 3]
        out = np.empty(N_PARAMS, np.float64)
        shift = f @ (2 * self.x0 * a[:, 0] + t) + [RES - 1, 0, 0]
        out[:12] = np.concatenate([f @ a @ f, shift[:, None]], axis=1).reshape(12)
        out[12:] = self.matrix @ q[12:] + self.offset
        return out


def flip_averaged(decoder: object, mirror: LabelMirror, params: np.ndarray, roi: np.ndarray,
                  params_m: np.ndarray, roi_m: np.ndarray, width: int, crop_matrix: np.ndarray) -> np.ndarray:
    """62 crop-frame params for the crop ``crop_matrix`` (image -> 256) of an image ``width`` wide:
    the mean of the teacher's label of the image and the mirror-back of its label of the mirror image.

    Why: the teacher is not mirror-consistent. On the corpus' first 400 faces its label of the
    mirror image, mirrored back, sits 1.29 px right of its label of the image (mean over the 68
    points, 256 crop, +-0.04 standard error; 2.1 px apart in all): a horizontal bias of about
    0.65 px either way that a student copies, plus noise. The mean of the two cancels the bias and
    halves part of the noise, as flip averaging does at inference (``engines/flip.py``; mb05uv's
    AFLW2000-3D bin mean 3.908 -> 3.757 with it). The mirror image's crop is the mirror of this
    crop (``F_crop @ M @ F_image``), so its label, mirrored in parameter space by ``mirror``, is in
    this crop's frame; the camera's 12 numbers and the 50 coefficients are averaged as they are
    (the two labels are close, so this is the average of their maps to well under a pixel).
    """
    f_img = np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    f_crop = np.array([[-1.0, 0.0, RES - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    q = decoder.crop_params(params, roi, crop_matrix)
    q_m = mirror(decoder.crop_params(params_m, roi_m, f_crop @ crop_matrix @ f_img))
    return 0.5 * (q + q_m)


@dataclass
class UVRegData:
    """Samples (128 input, 62 crop-frame params) that are pure functions of (seed, epoch, position)."""

    cache: np.ndarray  # (N, 320, 320, 3) uint8 BGR face images
    q_cache: np.ndarray  # (N, 62) labels in the cache image's frame
    decoder: object  # labels.PosmapDecoder
    cfg: AugmentConfig
    seed: int
    synthetic: np.ndarray | None = None  # (N,) bool: rows made by synthesise_large_poses
    mirror: LabelMirror | None = None  # needed when cfg.flip_prob > 0
    input_size: int = INPUT  # what the backbone reads (uvreg.input_size of its arch)

    def __len__(self) -> int:
        return len(self.q_cache)

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self))

    def sample(self, row: int, rng: np.random.Generator, cfg: AugmentConfig
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(256 RGB [0,1] crop, 62 crop params float32, cache -> crop matrix)."""
        m = random_crop_matrix(_CACHE_AS_CROP, rng, cfg)
        crop = cv2.warpAffine(self.cache[row], m[:2], (RES, RES), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        crop = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.float32) * np.float32(1 / 255)
        crop = degrade(occlude(colour_scale(crop, rng, cfg), rng, cfg), rng, cfg)
        q = move_params(self.q_cache[row], m)
        # drawn last and only when asked for, so runs without flips keep their exact samples
        if cfg.flip_prob and rng.random() < cfg.flip_prob:
            if self.mirror is None:
                raise ValueError("flip_prob > 0 needs UVRegData.mirror (a LabelMirror)")
            crop, q = np.ascontiguousarray(crop[:, ::-1]), self.mirror(q)
        return crop, q.astype(np.float32), m

    def train_sample(self, epoch: int, pos: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        crop, q, _ = self.sample(row, np.random.default_rng([self.seed, epoch, pos]), self.cfg)
        return to_input(crop, self.input_size), q

    def eval_sample(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The un-augmented 256 crop and its full label map (for the PRN-I/O model's validation)."""
        crop, q, _ = self.sample(row, np.random.default_rng(0), NO_AUGMENT)
        return crop, self.decoder.posmap_from_crop_params(q)


class _Base:
    """Duck-typed CropRegion whose matrix is given (``random_crop_matrix`` needs ``.matrix``)."""

    def __init__(self, m: np.ndarray) -> None:
        self._m = m

    def matrix(self, res: int = RES) -> np.ndarray:
        return self._m


#: The un-augmented crop seen from the cache frame (cache -> crop), the base of every sample.
_CACHE_AS_CROP = _Base(np.linalg.inv(cache_matrix()))


def to_input(crop256: np.ndarray, size: int = INPUT) -> np.ndarray:
    """What the backbone reads, as the PRN-I/O model makes it from the 256 RGB [0, 1] crop: the 128
    view in [-1, 1] (the exact 2x2 average, == its to_128), or the teacher's normalised 120 input
    (half-pixel bilinear without antialiasing, == mb05uv's to_teacher_input)."""
    if size == TEACHER_INPUT:
        small = cv2.resize(np.asarray(crop256, np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
        return (small * np.float32(255 / 128) - np.float32(127.5 / 128)).astype(np.float32)
    if size != INPUT:
        raise ValueError(f"no backbone reads a {size} input (128 view, or the teacher's 120)")
    small = crop256.reshape(INPUT, 2, INPUT, 2, 3).mean(axis=(1, 3))
    return (small * 2.0 - 1.0).astype(np.float32)


def param_stats(data: UVRegData, n: int = 4096, seed: int = 12345) -> tuple[np.ndarray, np.ndarray]:
    """Mean/std of augmented crop-frame labels (no images needed), the network's output scale."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(data), n)
    qs = np.stack([move_params(data.q_cache[r], random_crop_matrix(_CACHE_AS_CROP, rng, data.cfg))
                   for r in rows])
    if data.cfg.flip_prob and data.mirror is not None:  # the flipped labels' share of the scale
        flips = rng.random(n) < data.cfg.flip_prob
        qs[flips] = np.stack([data.mirror(q) for q in qs[flips]])
    std = qs.std(axis=0)
    return qs.mean(axis=0).astype(np.float32), np.maximum(std, 1e-6 * np.abs(qs).max(axis=0) + 1e-12).astype(
        np.float32)


def gram_factors(rows: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(F_xy, F_z, sum w): float32 (154, 154) factors with ``|dC_d @ F|^2`` = the weighted error of axis d.

    ``rows`` is the decoder's (3*nb+1, 65536) constant (per input axis the mean and basis rows,
    then the covered/offset row); output axis d of the map is ``C_d @ rows`` for its coefficient
    row C_d, so one Gram serves x and y, and a weighted-mean-centred one serves z.
    """
    w = weights.reshape(-1).astype(np.float64)
    r = rows.astype(np.float64)
    factors = []
    for centre in (False, True):
        b = r - (r @ w / w.sum())[:, None] if centre else r
        g = (b * w) @ b.T
        vals, vecs = np.linalg.eigh(g)
        factors.append((vecs * np.sqrt(np.clip(vals, 0, None))).astype(np.float32))
    return factors[0], factors[1], float(w.sum())
