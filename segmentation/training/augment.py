"""Training augmentations (MediaPipe/HyperDETR-style): random resize-crop-resize, random orientation (90 degree
rotations and flips), small rotations with the invalid region masked, colour jitter, resolution loss.

Geometry is one affine warp per sample: image bilinear, packed labels (see :mod:`.datasets`) nearest with border 0,
so pixels rotated in from outside the photo get ``VALID`` = 0 and all known bits 0 (no loss there). Outside the
photo the image is filled with the normalisation mean, exactly like the inference letterbox padding
(:func:`campipe.segmentation.postprocess.letterbox`); a fraction of samples are letterboxed like inference.

Inputs/outputs: image uint8 (H, W, 3) sRGB; lab uint8 (H, W, 3) packed; out_hw = (h, w) of the result.

Reference: MediaPipe selfie/hair segmentation model cards (random crop/resize/rotation, colour jitter); DETR
(random resize + crop); torchvision ``RandomResizedCrop``/``ColorJitter`` parameterisation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class AugmentConfig:
    min_area: float = 0.25          # crop area fraction of the (rotated) source, lower bound
    max_area: float = 1.0
    aspect_jitter: float = 1.35     # crop aspect / target aspect in [1/j, j] (log-uniform)
    p_rot90: float = 0.15           # probability of a +-90 degree orientation
    p_rot180: float = 0.03
    p_flip: float = 0.5
    p_small_rot: float = 0.35
    max_small_rot_deg: float = 15.0
    brightness: float = 0.3         # multiplicative factor in [1-b, 1+b]
    contrast: float = 0.3
    saturation: float = 0.35
    hue_deg: float = 8.0
    p_blur_resize: float = 0.25     # downscale by [0.35, 0.8] and back up (resolution loss)
    p_letterbox: float = 0.3        # whole (or most of the) photo fitted with its own aspect, padded (as inference)
    fill: tuple[int, int, int] = (124, 116, 104)  # padding colour = normalisation mean (ImageNet) in uint8 sRGB


def _inverse_affine(src_hw, out_hw, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """2x3 matrix mapping output pixel coords -> source pixel coords (for WARP_INVERSE_MAP)."""
    H, W = src_hw
    oh, ow = out_hw
    k = 0
    u = rng.random()
    if u < cfg.p_rot90:
        k = 1 if rng.random() < 0.5 else 3
    elif u < cfg.p_rot90 + cfg.p_rot180:
        k = 2
    small = rng.uniform(-cfg.max_small_rot_deg, cfg.max_small_rot_deg) if rng.random() < cfg.p_small_rot else 0.0
    theta = math.radians(90.0 * k + small)
    # crop size in the output's (rotated) frame
    if rng.random() < cfg.p_letterbox:
        # letterbox like inference: a large crop with the photo's own aspect, uniform scale, padded output
        f = math.sqrt(rng.uniform(0.6, 1.0))
        ex, ey = W * f, H * f
        cw0, ch0 = (ey, ex) if k % 2 else (ex, ey)  # crop extents in the output frame
        s_fit = min(ow / cw0, oh / ch0)
        cw, ch = ow / s_fit, oh / s_fit  # output canvas in source units (>= crop: the rest is padding)
    else:
        area = rng.uniform(cfg.min_area, cfg.max_area) * H * W
        aspect = (ow / oh) * math.exp(rng.uniform(-math.log(cfg.aspect_jitter), math.log(cfg.aspect_jitter)))
        cw, ch = math.sqrt(area * aspect), math.sqrt(area / aspect)
        ex, ey = (ch, cw) if k % 2 else (cw, ch)  # source-axis extents of the crop
        shrink = min(1.0, W / ex, H / ey)
        cw, ch, ex, ey = cw * shrink, ch * shrink, ex * shrink, ey * shrink
    cx = rng.uniform(ex / 2, W - ex / 2) if W > ex else W / 2
    cy = rng.uniform(ey / 2, H - ey / 2) if H > ey else H / 2
    flip = -1.0 if rng.random() < cfg.p_flip else 1.0
    c, s = math.cos(theta), math.sin(theta)
    # src = centre + R(theta) @ (diag(flip*cw/ow, ch/oh) @ (out - out_centre))
    S = np.array([[flip * cw / ow, 0.0], [0.0, ch / oh]])
    R = np.array([[c, -s], [s, c]])
    A = R @ S
    t = np.array([cx, cy]) - A @ np.array([ow / 2.0, oh / 2.0])
    # pixel-centre convention: OpenCV maps integer coords; shift by half a pixel on both sides
    t = t + A @ np.array([0.5, 0.5]) - 0.5
    return np.hstack([A, t[:, None]]).astype(np.float64)


def geometric(image: np.ndarray, lab: np.ndarray, out_hw: tuple[int, int], rng: np.random.Generator,
              cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Random resize-crop-resize + orientation + small rotation as one affine warp."""
    M = _inverse_affine(image.shape[:2], out_hw, rng, cfg)
    oh, ow = out_hw
    flags = cv2.WARP_INVERSE_MAP
    # area-like prefilter when shrinking a lot (avoid aliasing): scale = sqrt(|det|)
    scale = math.sqrt(abs(np.linalg.det(M[:, :2])))
    src = image
    if scale > 1.6:
        f = 1.0 / scale
        src = cv2.resize(image, None, fx=f * 1.25, fy=f * 1.25, interpolation=cv2.INTER_AREA)
        sx, sy = src.shape[1] / image.shape[1], src.shape[0] / image.shape[0]
        M_img = np.diag([sx, sy]) @ M
        M_img[:, 2] += np.array([0.5 * sx - 0.5, 0.5 * sy - 0.5])
    else:
        M_img = M
    img = cv2.warpAffine(src, M_img, (ow, oh), flags=cv2.INTER_LINEAR | flags, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=tuple(int(v) for v in cfg.fill))
    lb = cv2.warpAffine(lab, M, (ow, oh), flags=cv2.INTER_NEAREST | flags, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=0)
    return img, lb


def colour_jitter(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Brightness, contrast, saturation (float32 on the small crop), hue (HSV), in random order-free form."""
    x = image.astype(np.float32)
    b = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    c = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    s = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = (x - gray.mean()) * c + gray.mean()
    g2 = (gray - gray.mean()) * c + gray.mean()
    x = g2[..., None] + (x - g2[..., None]) * s
    x = np.clip(x * b, 0, 255).astype(np.uint8)
    if cfg.hue_deg > 0:
        dh = int(round(rng.uniform(-cfg.hue_deg, cfg.hue_deg) / 2))  # OpenCV hue unit = 2 degrees
        if dh:
            hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
            hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + dh) % 180).astype(np.uint8)
            x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return x


def blur_resize(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """With probability p: downscale by a random factor and upscale back (the 'resize again' of the recipe)."""
    if rng.random() >= cfg.p_blur_resize:
        return image
    f = rng.uniform(0.35, 0.8)
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def augment(image: np.ndarray, lab: np.ndarray, out_hw: tuple[int, int], rng: np.random.Generator,
            cfg: AugmentConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Full training augmentation -> (image uint8 (h, w, 3), lab uint8 (h, w, 3))."""
    cfg = cfg or AugmentConfig()
    img, lb = geometric(image, lab, out_hw, rng, cfg)
    img = colour_jitter(img, rng, cfg)
    img = blur_resize(img, rng, cfg)
    return img, lb


def resize_only(image: np.ndarray, lab: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Validation transform: plain resize to ``out_hw`` (as the inference path does)."""
    oh, ow = out_hw
    return (cv2.resize(image, (ow, oh), interpolation=cv2.INTER_AREA),
            cv2.resize(lab, (ow, oh), interpolation=cv2.INTER_NEAREST))
