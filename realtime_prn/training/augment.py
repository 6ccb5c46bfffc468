"""PRN-paper augmentation on teacher-labelled faces: one similarity warp for image AND label.

Why this shape: PRN (Feng et al. 2018, section 4) trains with rotation +-45 deg, translation +-10 %,
scale 0.9-1.2, per-channel colour scaling 0.6-1.4 and synthetic occlusion. Since a label here is
(teacher params, ROI) rather than a label image, the augmented crop is ONE 3x3 similarity
``M = A @ base`` from image pixels to the 256 crop; the image is warped once with it and the label
is recomputed exactly for it by :func:`realtime_prn.training.labels.posmap_for_crop` (x, y through
M, z multiplied by M's scale). Nothing is resampled twice, so image and label cannot drift apart.

Occlusion follows the paper's spirit: 0-2 random rectangles or ellipses filled with uniform
noise, a flat colour or a texture patch cut from elsewhere in the same crop. The label is left
as it is (the network must hallucinate the occluded part, as PRN's does).

Large-pose synthesis (300W-LP style) -- a SIMPLE version, :func:`synthesise_yaw`: the face's
texture is sampled from the crop at the label's x, y; the position map is rotated about the
vertical axis through the face centre by a few tens of degrees and re-rendered with the numba
rasteriser (``geometry.depth.render_values``) over the original warped crop as background. Limits,
stated plainly: the original face stays visible in the background where the rotated face no longer
covers it (300W-LP re-meshes the background; we do not), and parts hidden in the source view get
the colour of whatever was in front of them. It is off by default (``yaw_prob=0``). The uvreg bank
now turns the whole image instead (:mod:`realtime_prn.training.profiling`); this one stays for the
dense student's on-the-fly option and as the ``paste`` method of the bank.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from realtime_prn.crop import RES, CropRegion


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges from the PRN paper; probabilities are this project's choices."""

    rotation_deg: float = 45.0
    translation: float = 0.10  # fraction of the crop side
    scale_min: float = 0.9
    scale_max: float = 1.2
    colour_min: float = 0.6
    colour_max: float = 1.4
    occlusion_prob: float = 0.5
    max_occluders: int = 2
    yaw_prob: float = 0.0  # large-pose synthesis (see module docstring)
    yaw_max_deg: float = 40.0
    flip_prob: float = 0.0  # horizontal mirror (uvreg: label by uvreg_data.LabelMirror)
    degrade_prob: float = 0.0  # camera degradation (see :func:`degrade`)


NO_AUGMENT = AugmentConfig(rotation_deg=0.0, translation=0.0, scale_min=1.0, scale_max=1.0,
                           colour_min=1.0, colour_max=1.0, occlusion_prob=0.0, yaw_prob=0.0)


def similarity_about_centre(angle_deg: float, scale: float, shift_xy: tuple[float, float],
                            res: int = RES) -> np.ndarray:
    """3x3 crop -> crop similarity: rotate by ``angle_deg`` and zoom by ``scale`` about the crop
    centre, then shift by ``shift_xy`` pixels. Positive angles turn the face counter-clockwise on screen."""
    c = (res - 1) / 2.0
    t = np.radians(angle_deg)
    rot = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]]) * scale
    a = np.eye(3)
    a[:2, :2] = rot
    a[:2, 2] = np.array([c, c]) + np.asarray(shift_xy, np.float64) - rot @ np.array([c, c])
    return a


def random_crop_matrix(base: CropRegion, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Image -> crop 3x3 similarity: the base region's matrix, then a random PRN-paper similarity."""
    angle = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)
    scale = rng.uniform(cfg.scale_min, cfg.scale_max)
    shift = rng.uniform(-cfg.translation, cfg.translation, size=2) * RES
    return similarity_about_centre(angle, scale, (shift[0], shift[1])) @ base.matrix(RES)


def warp_crop(image_bgr: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The 256 crop as float32 RGB [0, 1], warped exactly as ``crop.crop_faces`` does (zero border)."""
    crop = cv2.warpAffine(image_bgr, np.asarray(matrix, np.float64)[:2], (RES, RES),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.float32) * np.float32(1 / 255)


def colour_scale(crop: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Per-channel multiplicative colour jitter, clipped back to [0, 1]."""
    if cfg.colour_min == cfg.colour_max == 1.0:
        return crop
    gains = rng.uniform(cfg.colour_min, cfg.colour_max, size=3).astype(np.float32)
    return np.clip(crop * gains, 0.0, 1.0)


def occlude(crop: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Paste 1..max_occluders rectangles/ellipses of noise, flat colour or a texture patch."""
    if cfg.occlusion_prob <= 0 or rng.random() >= cfg.occlusion_prob:
        return crop
    out = crop.copy()
    for _ in range(int(rng.integers(1, cfg.max_occluders + 1))):
        w, h = (rng.uniform(0.1, 0.4, size=2) * RES).astype(int)
        x0, y0 = int(rng.integers(0, RES - w)), int(rng.integers(0, RES - h))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            fill = rng.random((h, w, 3), dtype=np.float32)
        elif kind == 1:
            fill = np.broadcast_to(rng.random(3, dtype=np.float32), (h, w, 3))
        else:  # texture: a patch of the same crop, flipped so it is not a copy in place
            sx, sy = int(rng.integers(0, RES - w)), int(rng.integers(0, RES - h))
            fill = crop[sy : sy + h, sx : sx + w][::-1, ::-1]
        if rng.random() < 0.5:
            mask = np.ones((h, w), bool)
        else:
            yy, xx = np.mgrid[0:h, 0:w]
            mask = ((xx - (w - 1) / 2) / (w / 2)) ** 2 + ((yy - (h - 1) / 2) / (h / 2)) ** 2 <= 1.0
        region = out[y0 : y0 + h, x0 : x0 + w]
        region[mask] = fill[mask]
    return out


#: The kinds :func:`degrade` draws from (equally likely) and the range of each one's strength:
#: blur sigma (px), down-sampling factor, JPEG quality, noise sigma (of [0, 1] values).
DEGRADATION_RANGES = {"blur": (1.0, 3.0), "resample": (2.0, 4.0), "jpeg": (10, 50), "noise": (0.01, 0.05)}
DEGRADATIONS = tuple(DEGRADATION_RANGES)


def degrade(crop: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """One camera degradation of the 256 RGB [0,1] crop, with probability ``cfg.degrade_prob``.

    Why: the corpus' faces are clean photos and video frames, a webcam's are defocused, low-light
    noisy, compressed or small in the frame. One of: Gaussian blur (sigma 1-3 crop px, 0.5-1.5 at
    the network's 128 view), down- and up-sampling by 2-4x (a face far from the camera), JPEG at
    quality 10-50, Gaussian noise (sigma 0.01-0.05). Geometry is untouched, so the label stands.
    Nothing is drawn when ``degrade_prob`` is 0, so runs without it keep their exact samples.
    """
    if not cfg.degrade_prob or rng.random() >= cfg.degrade_prob:
        return crop
    return apply_degradation(crop, DEGRADATIONS[int(rng.integers(0, len(DEGRADATIONS)))], rng)


def apply_degradation(crop: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """The named degradation (one of :data:`DEGRADATIONS`) at a strength drawn from its range."""
    if kind not in DEGRADATION_RANGES:
        raise ValueError(f"unknown degradation {kind!r} (expected one of {', '.join(DEGRADATIONS)})")
    lo, hi = DEGRADATION_RANGES[kind]
    amount = int(rng.integers(lo, hi + 1)) if kind == "jpeg" else float(rng.uniform(lo, hi))
    return degradation(crop, kind, amount, rng)


def degradation(image: np.ndarray, kind: str, amount: float, rng: np.random.Generator | None = None
                ) -> np.ndarray:
    """``image`` (RGB float [0, 1], any size) degraded by ``kind`` at strength ``amount`` (see
    :data:`DEGRADATION_RANGES`); ``rng`` draws the noise. Also what ``evaluate_aflw2000.py --corrupt``
    applies, at one fixed strength, to measure robustness."""
    if kind == "blur":
        return cv2.GaussianBlur(image, (0, 0), float(amount))
    if kind == "resample":
        h, w = image.shape[:2]
        side = (int(round(w / amount)), int(round(h / amount)))
        small = cv2.resize(image, side, interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if kind == "jpeg":
        bgr = cv2.cvtColor(np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
        _, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(amount)])
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        return cv2.cvtColor(out, cv2.COLOR_BGR2RGB).astype(np.float32) * np.float32(1 / 255)
    if kind != "noise":
        raise ValueError(f"unknown degradation {kind!r} (expected one of {', '.join(DEGRADATIONS)})")
    rng = rng if rng is not None else np.random.default_rng(0)
    noise = rng.normal(0.0, amount, image.shape).astype(np.float32)
    return np.clip(image + noise, 0.0, 1.0)


def yaw_rotation(yaw_deg: float) -> np.ndarray:
    """3x3 turn about the image's vertical axis (x right, y down, z toward the camera)."""
    t = np.radians(yaw_deg)
    return np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])


def turn_rotation(yaw_deg: float, pitch_deg: float = 0.0) -> np.ndarray:
    """3x3 turn by ``yaw_deg`` about the vertical axis, then ``pitch_deg`` about the horizontal one.

    Why pitch too: real profiles look up or down as well; a bank turned about the vertical axis
    only taught uvreg that profiles have their source's (mostly level) pitch.
    """
    t = np.radians(pitch_deg)
    pitch = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    return pitch @ yaw_rotation(yaw_deg)


def erase_face(crop: np.ndarray, posmap: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """The crop with the face's silhouette replaced by a heavy blur of the crop, so a re-rendered
    turned face does not leave a sharp ghost of the original one where it no longer covers."""
    h, w = crop.shape[:2]
    pts = posmap[covered][:, :2]
    hull = cv2.convexHull(np.round(pts).astype(np.int32))
    mask = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    mask = cv2.dilate(mask, np.ones((9, 9), np.uint8)).astype(bool)
    blurred = cv2.resize(cv2.resize(crop, (8, 8), interpolation=cv2.INTER_AREA), (w, h),
                         interpolation=cv2.INTER_CUBIC)
    out = crop.copy()
    out[mask] = np.clip(blurred[mask], 0.0, 1.0)
    return out


def synthesise_yaw(crop: np.ndarray, posmap: np.ndarray, covered: np.ndarray, triangles: np.ndarray,
                   yaw_deg: float, erase: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Re-render the textured face turned by ``yaw_deg`` about its vertical axis (simple 300W-LP).

    ``triangles`` index ``np.flatnonzero(covered)`` (``assets.grid_triangles(covered)``). Returns the
    new crop (same size as ``crop``, any size) and the new position map (z shifted to min 0 over
    covered pixels again). ``erase`` blurs the original face away first (:func:`erase_face`).
    The turn is about the centroid of the covered points; :func:`turned_camera` gives the same
    map as a camera, for parameter labels.
    """
    from realtime_prn.geometry.depth import render_values

    idx, pts, _, out_pos = turn_posmap(posmap, covered, yaw_rotation(yaw_deg))
    # cv2.remap maps must stay under 32767 per side: lay the n points out as rows of 256.
    n = len(pts)
    rows = -(-n // RES)
    maps = np.zeros((2, rows * RES), np.float32)
    maps[:, :n] = pts[:, :2].T
    tex = cv2.remap(crop, maps[0].reshape(rows, RES), maps[1].reshape(rows, RES), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REFLECT).reshape(-1, 3)[:n]
    h, w = crop.shape[:2]
    # the z shift of the turned map does not change which surface is in front
    img, depth = render_values(out_pos.reshape(-1, 3)[idx], triangles, tex, h, w)
    drawn = np.isfinite(depth)[..., None]
    background = erase_face(crop, posmap, covered) if erase else crop
    out_img = np.where(drawn, img, background).astype(np.float32)
    return out_img, out_pos


def turn_posmap(posmap: np.ndarray, covered: np.ndarray, rotation: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(covered indices, their points, their centre, the map turned by ``rotation`` about that centre).

    The turn every large-pose synthesis applies to its label (:func:`turned_camera` is the same as a
    camera); the turned map's z is shifted to min 0 over the covered pixels again, as PRN's maps are.
    """
    idx = np.flatnonzero(covered.reshape(-1))
    pts = posmap.reshape(-1, 3)[idx].astype(np.float64)
    centre = pts.mean(axis=0)
    new = (pts - centre) @ rotation.T + centre
    new[:, 2] -= new[:, 2].min()
    out = np.zeros((covered.size, 3), np.float32)
    out[idx] = new
    return idx, pts, centre, out.reshape(posmap.shape)


def turned_camera(g: np.ndarray, centre: np.ndarray, yaw_deg: float, pitch_deg: float = 0.0) -> np.ndarray:
    """The 3x4 camera whose map is ``g``'s turned by :func:`turn_rotation` about ``centre``
    (x, y exactly; z up to the constant that the min-z shift removes anyway)."""
    rot = turn_rotation(yaw_deg, pitch_deg)
    out = np.empty((3, 4))
    out[:, :3] = rot @ g[:, :3]
    out[:, 3] = rot @ (g[:, 3] - centre) + centre
    return out


def augment_sample(
    image_bgr: np.ndarray,
    params: np.ndarray,
    roi: np.ndarray,
    base: CropRegion,
    rng: np.random.Generator,
    cfg: AugmentConfig,
    decoder: object,
    yaw_triangles: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training pair: (crop 256x256x3 RGB [0,1], position map 256x256x3, 3x3 image->crop matrix).

    ``decoder`` is a :class:`realtime_prn.training.labels.PosmapDecoder`. With :data:`NO_AUGMENT`
    this is exactly the inference crop of ``base`` and its label (used for validation).
    """
    m = random_crop_matrix(base, rng, cfg)
    crop = warp_crop(image_bgr, m)
    pos = decoder.posmap(params, roi, m)
    if cfg.yaw_prob > 0 and yaw_triangles is not None and rng.random() < cfg.yaw_prob:
        yaw = rng.uniform(-cfg.yaw_max_deg, cfg.yaw_max_deg)
        crop, pos = synthesise_yaw(crop, pos, decoder.covered, yaw_triangles, yaw)
    crop = colour_scale(crop, rng, cfg)
    crop = occlude(crop, rng, cfg)
    return crop.astype(np.float32), pos.astype(np.float32), m
