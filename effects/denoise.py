"""Sky- and skin-aware denoising driven by the sensor noise model.

Input/Output: float32 **linear** working RGB (H, W, 3) (noise statistics are simplest in linear light, where the
variance is ``a * signal + b``; see :mod:`campipe.effects.noise`) and soft masks float32 (H, W) in [0, 1].

The denoiser is an edge-preserving guided filter (He et al.) in a luminance / colour-difference split:

* luminance ``Y`` is self-guided: ``q = mean(A) * Y + mean(B)`` with ``A = var_Y / (var_Y + eps)`` over a box of
  radius ``r``; ``eps(x) = (k * s(x))^2 * var_noise(x)`` where ``var_noise = a * Y + b`` comes from the noise model,
  so flat areas (local variance ~ noise variance) are smoothed and edges/texture (variance >> noise) are kept;
* the colour differences ``R - Y`` and ``B - Y`` are filtered with the denoised luminance as guide at radius
  ``2 r`` (chroma noise is coarse and the eye is less sensitive to chroma detail);
* per-pixel strength ``s(x) = strength * (1 + (sky_boost * sky + skin_boost * skin) * flat(x))``: the low-texture
  classes are denoised harder where they are actually flat; ``flat(x) = clip((1 + c - v / var_n) / c, 0, 1)``
  (box-averaged) with ``v`` the local luminance variance over the filter window and ``c = FLAT_RANGE``, so a cloud
  edge, an eye or a nostril inside the sky/skin masks keeps the base strength. Elsewhere ``strength`` applies and
  the guided filter preserves texture.

Calibration (simulated ISO 1600/3200 captures of real photos, ``benchmarks/bench_effects_denoise.py``, on images
that the benchmark then leaves out): ``EPS_GAIN = 2.1`` puts ``strength = 1`` at the texture-SSIM optimum of the
photos upsampled 2x (closer to the pixel statistics of a 12 MP capture than the 250-640 px originals, where the
optimum is ~30 % lower); sky and skin keep improving beyond it, hence the boosts (sky 0.4, skin 0.3; doubling them
was measured to be worse). A larger filter radius on the classes was measured to lower PSNR, so the boost raises
the edge threshold only.

With all masks zero the filter is the same at every pixel (a uniform denoiser of strength ``strength``), which is the
baseline the benchmark compares against at the same average strength. ``strength = 0`` returns an exact copy.

Banding: the smooth sky that results must go through the dithered 8-bit output (the ``dither`` stage after
``output`` in every preset), which is what keeps sky gradients free of banding; this module works in float32 and does
not quantise.

References: He, Sun & Tang, "Guided Image Filtering", IEEE TPAMI 2013; Foi et al. 2008 (Poissonian-Gaussian model);
Liba et al., "Handheld Mobile Photography in Very Low Light", SIGGRAPH Asia 2019 (semantic-aware denoising strength).
"""
from __future__ import annotations

import cv2
import numpy as np

from campipe.colour import luminance_weights

from .masks import check_image, check_mask
from .noise import NoiseModel

EPS_GAIN = 2.1  # k in eps = (k * s)^2 * var_noise
FLAT_RANGE = 3.0  # c in flat(x): the class boost fades out between v = var_n and v = (1 + c) var_n


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: np.ndarray | float) -> np.ndarray:
    """Grey guided filter (He et al. 2013) with a scalar or per-pixel ``eps``; float32 (H, W) in and out."""
    mean_i = _box(guide, r)
    mean_p = mean_i if src is guide else _box(src, r)
    corr_ip = _box(guide * src, r)
    var_i = _box(guide * guide, r) - mean_i * mean_i
    cov_ip = var_i if src is guide else corr_ip - mean_i * mean_p
    a = cov_ip / (np.maximum(var_i, 0.0) + np.maximum(eps, 1e-12))  # eps -> 0 would give 0/0 = NaN
    b = mean_p - a * mean_i
    return _box(a, r) * guide + _box(b, r)


def strength_map(shape: tuple[int, int], strength: float, sky: np.ndarray | None, skin: np.ndarray | None,
                 sky_boost: float, skin_boost: float, flat: np.ndarray | None = None) -> np.ndarray:
    """``strength * (1 + (sky_boost * sky + skin_boost * skin) * flat)`` (float32 (H, W)); ``flat`` None = ones."""
    boost = np.zeros(shape, np.float32)
    if sky is not None and sky_boost:
        boost += np.float32(sky_boost) * check_mask(sky, shape, "sky")
    if skin is not None and skin_boost:
        boost += np.float32(skin_boost) * check_mask(skin, shape, "skin")
    if flat is not None:
        boost *= flat
    boost += np.float32(1.0)
    boost *= np.float32(strength)
    return boost


def flatness(y: np.ndarray, noise: NoiseModel, r: int, c: float = FLAT_RANGE) -> np.ndarray:
    """1 where the local variance of ``y`` over a (2r+1)^2 box is at the noise level, 0 from (1 + c) times it."""
    m = _box(y, r)
    v = _box(y * y, r) - m * m
    v /= np.maximum(noise.variance(m), np.float32(1e-12))
    f = np.clip((np.float32(1.0 + c) - v) / np.float32(c), 0.0, 1.0)
    return _box(f, r)


def auto_radius(shape: tuple[int, int]) -> int:
    """Default luminance filter radius: ``max(2, long side / 1000)`` px."""
    return max(2, int(round(max(shape) / 1000)))


def class_strength(img: np.ndarray, noise: NoiseModel, sky: np.ndarray | None, skin: np.ndarray | None, *,
                   strength: float = 1.0, sky_boost: float = 0.4, skin_boost: float = 0.3,
                   radius: int = 0) -> np.ndarray:
    """The per-pixel strength map :func:`denoise` uses (float32 (H, W)); its mean is the average strength."""
    shape = img.shape[:2]
    if (sky is None or not sky_boost) and (skin is None or not skin_boost):
        return strength_map(shape, strength, None, None, 0.0, 0.0)
    y = np.ascontiguousarray(np.asarray(img, np.float32) @ luminance_weights())
    flat = flatness(y, noise, int(radius) or auto_radius(shape))
    return strength_map(shape, strength, sky, skin, sky_boost, skin_boost, flat)


def denoise(img: np.ndarray, noise: NoiseModel, sky: np.ndarray | None = None, skin: np.ndarray | None = None, *,
            strength: float = 1.0, sky_boost: float = 0.4, skin_boost: float = 0.3, radius: int = 0,
            strength_px: np.ndarray | None = None) -> np.ndarray:
    """Class-aware guided-filter denoising; returns a new float32 (H, W, 3) linear image.

    Args:
        img: float32 (H, W, 3) linear working RGB, >= 0.
        noise: noise model, variance = a * signal + b (linear units), e.g. from
            :func:`campipe.effects.noise.noise_model_from_meta`.
        sky, skin: soft masks (None = zeros).
        strength: >= 0, base strength (0 = identity; 1 = noise-level edge threshold).
        sky_boost, skin_boost: >= 0, extra strength on sky / skin (0 = treated like everything else).
        radius: box radius in pixels of the luminance filter (>= 1); 0 = automatic, ``max(2, long side / 1000)``.
        strength_px: optional explicit strength map float32 (H, W) overriding ``strength``/masks (benchmarks).
    """
    if strength < 0 or sky_boost < 0 or skin_boost < 0:
        raise ValueError(f"denoise.strength, sky_boost and skin_boost must be >= 0, got {strength}, {sky_boost}, "
                         f"{skin_boost}")
    if radius < 0:
        raise ValueError(f"denoise.radius must be >= 0 px (0 = automatic), got {radius}")
    x = check_image(img)
    shape = x.shape[:2]
    if strength_px is None:
        if strength == 0:
            return x.copy()
        s = class_strength(x, noise, sky, skin, strength=strength, sky_boost=sky_boost, skin_boost=skin_boost,
                           radius=radius)
    else:
        s = np.asarray(strength_px, np.float32)
    if not s.any():
        return x.copy()
    r = int(radius) if radius else auto_radius(shape)
    w = luminance_weights()
    y = x @ w
    cr = x[..., 0] - y
    cb = x[..., 2] - y
    var_n = noise.variance(y)
    eps = (np.float32(EPS_GAIN) * s) ** 2 * var_n
    yd = guided_filter(y, y, r, eps)
    # chroma: colour differences carry ~2x the per-channel variance
    eps_c = 2.0 * eps
    crd = guided_filter(yd, cr, 2 * r, eps_c)
    cbd = guided_filter(yd, cb, 2 * r, eps_c)
    # where s == 0 keep the input exactly (blend weight saturates quickly above 0)
    keep = np.clip(s * 8.0, 0.0, 1.0) if float(s.min()) < 0.125 else None
    out = np.empty_like(x)
    out[..., 0] = yd + crd
    out[..., 2] = yd + cbd
    out[..., 1] = (yd - w[0] * out[..., 0] - w[2] * out[..., 2]) / w[1]
    if keep is not None:
        out = x + keep[..., None] * (out - x)
    np.maximum(out, 0.0, out=out)
    return out

