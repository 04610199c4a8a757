"""Sky- and skin-aware denoising driven by the sensor noise model.

Input/Output: float32 **linear** working RGB (H, W, 3) (noise statistics are simplest in linear light, where the
variance is ``a * signal + b``; see :mod:`campipe.effects.noise`) and soft masks float32 (H, W) in [0, 1].

The denoiser is an edge-preserving guided filter (He et al.) in a luminance / colour-difference split:

* luminance ``Y`` is self-guided: ``q = mean(A) * Y + mean(B)`` with ``A = var_Y / (var_Y + eps)`` over a box of
  radius ``r``; ``eps(x) = (k * s(x))^2 * var_noise(x)`` where ``var_noise = a * Y + b`` comes from the noise model,
  so flat areas (local variance ~ noise variance) are smoothed and edges/texture (variance >> noise) are kept;
* each colour difference ``C`` (``R - Y``, ``B - Y``) is filtered at radius ``2 r`` with a two-channel guide
  (denoised ``Y``, ``C`` itself) and ``eps_C = 2 eps`` (:func:`joint_guided_filter`): chroma edges that follow
  luminance edges are kept through the ``Y`` coefficient, chroma edges with no luminance edge (blue sky against
  green foliage of similar brightness, lips and skin) through the ``C`` coefficient. Guiding chroma by luminance
  alone (the previous version) blurred those: on native-resolution ISO 1600 photos it cost 1.8 dB in sky and
  0.8 dB in skin (``benchmarks/bench_effects_denoise.py``). From ``FAST_CHROMA_MIN_PIXELS`` (0.5 MP) up the chroma
  filter is the *fast* guided filter (He & Sun 2015, ``CHROMA_SCALE = 2``): window statistics and coefficients on
  2x2 block means at radius ``r`` blocks (the same 2 r window), coefficients upsampled bilinearly and applied to the
  full-resolution (denoised ``Y``, ``C``), so chroma edges stay sharp while the chroma work drops ~4x. ``eps`` is
  not divided by 4 on the blocks: demosaiced noise is spatially correlated, so block means keep more than a quarter
  of its variance; measured on the benchmark's 2x-upsampled rows (0.7-1 MP), eps / 4 lost 0.25-0.45 dB and eps / 2
  0.1-0.2 dB against full-resolution chroma, eps as is gained 0.0-0.2 dB. On the native 250-640 px photos, where
  chroma detail sits at the pixel scale, block chroma lost 0.1-0.3 dB, hence full resolution below 0.5 MP (where
  speed does not matter);
* per-pixel strength ``s(x) = strength * (1 + beta(x) * ((1 + p) * flat(x) - p))`` with the class weight
  ``beta = sky_boost * sky + skin_boost * skin`` and ``p = PROTECT``: where a sky/skin pixel is locally flat
  (``flat = 1``) it gets ``strength * (1 + beta)``, where it carries structure (``flat = 0``: a cloud edge, a
  nostril, stubble, the class boundary) ``strength * (1 - p * beta)`` (never below half the base strength).
  ``flat(x) = clip((1 + c - v / var_n) / c, 0, 1)`` (box-averaged) with ``v`` the local luminance variance over the
  filter window and ``c = FLAT_RANGE``. Outside the classes ``strength`` applies and the guided filter preserves
  texture.

Why the redistribution inside the classes rather than only a boost: measured on the benchmark (simulated ISO 1600,
native resolution), the flat sky/skin pixels are already at a floor: the filter applied to the *clean* reference
there costs 43.8 dB (sky) / 43.2 dB (skin) because the photos' own grain and JPEG artefacts at that scale are part of
the reference, and raising eps, the radius or the chroma strength on them gains < 0.05 dB (or loses). The structured
pixels inside the classes (about half of the sky, 70 % of the skin) carry most of the error and prefer a weaker
filter. Class knowledge is what makes the split safe: inside sky/skin "locally flat" means smooth, while elsewhere
low-contrast texture (grass, fabric) can look flat at the noise level. With the defaults the class-average strength
still rises (image means 1.01-1.06 against 1.0).

Calibration (simulated ISO 1600/3200 captures of real photos, ``benchmarks/bench_effects_denoise.py``, on images
that the benchmark then leaves out): ``EPS_GAIN = 2.1`` puts ``strength = 1`` at the texture-SSIM optimum of the
photos upsampled 2x (closer to the pixel statistics of a 12 MP capture than the 250-640 px originals, where the
optimum is ~30 % lower). ``PROTECT = 0.5`` and ``FLAT_RANGE = 5`` were chosen on the benchmark's own images (no held-out set
for these two; p = 0.3 gives margins of ~0.1 dB, p = 0.75 pulls the mean strength below 1 on portraits, and the
uniform baseline run at that lower strength then wins on texture SSIM at native resolution). A larger filter radius on the classes was measured to lower
PSNR, so the boost raises the edge threshold only.

With all masks zero the filter is the same at every pixel (a uniform denoiser of strength ``strength``), which is the
baseline the benchmark compares against at the same average strength. ``strength = 0`` returns an exact copy.

Implementation (12 MP in ~1 s of CPU): three passes over row bands, on up to two threads (``MAX_THREADS``, capped
by ``cv2.getNumThreads()``): (1) full resolution with a 3 r halo: the luminance box statistics are computed once and
serve both the flatness (strength map) and the luminance guided filter; then denoised ``Y`` and the block means of
``Y``, ``C`` and ``eps``; (2) block resolution with a 2 r halo: chroma coefficients; (3) full resolution: upsampled
coefficients applied, back to RGB. Each band's result equals the whole-image computation (tested to 1e-5).

Banding: the smooth sky that results must go through the dithered 8-bit output (the ``dither`` stage after
``output`` in every preset), which is what keeps sky gradients free of banding; this module works in float32 and does
not quantise. (The benchmark's banding check, a 0.5 MP sky ramp at ISO 3200, runs the block chroma path: its
smoother sky raises the *undithered* low-passed quantisation error from 0.036 to 0.100 LSB max; dithered output is
unchanged at 0.037 LSB, against 0.46 LSB for a noise-free ramp without dither.)

References: He, Sun & Tang, "Guided Image Filtering", IEEE TPAMI 2013; Foi et al. 2008 (Poissonian-Gaussian model);
Liba et al., "Handheld Mobile Photography in Very Low Light", SIGGRAPH Asia 2019 (semantic-aware denoising strength).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Callable

import cv2
import numpy as np

from campipe.colour import luminance_weights

from .masks import check_image, check_mask
from .noise import NoiseModel

EPS_GAIN = 2.1  # k in eps = (k * s)^2 * var_noise
FLAT_RANGE = 5.0  # c in flat(x): the class boost fades out between v = var_n and v = (1 + c) var_n
PROTECT = 0.5  # p: structured sky/skin pixels get strength * (1 - p * boost)
MIN_FACTOR = 0.5  # the class redistribution never takes a pixel below this fraction of the base strength
CHROMA_SCALE = 2  # colour-difference coefficients on 2x2 block means (fast guided filter) ...
FAST_CHROMA_MIN_PIXELS = 500_000  # ... for frames of at least this many pixels (automatic chroma_scale)
BAND_ROWS = 128  # rows per band of the full-resolution passes
MAX_THREADS = 2  # bands run on min(MAX_THREADS, cv2.getNumThreads(), cpu count) threads

_F32 = np.float32


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


def _f32(v):
    """float32 array or float32 scalar (a float64 scalar would promote float32 arrays under NumPy 2)."""
    return np.asarray(v, np.float32) if isinstance(v, np.ndarray) else np.float32(v)


def _down(x: np.ndarray, f: int) -> np.ndarray:
    """Means of ``f`` x ``f`` blocks (bottom/right reflect-padded to multiples of ``f`` first); keeps a channel
    axis of length 1 (cv2 would drop it)."""
    h, w = x.shape[:2]
    dh, dw = -h % f, -w % f
    if dh or dw:
        x = cv2.copyMakeBorder(x, 0, dh, 0, dw, cv2.BORDER_REFLECT)
    d = cv2.resize(x, (x.shape[1] // f, x.shape[0] // f), interpolation=cv2.INTER_AREA)
    return d.reshape(d.shape[:2] + x.shape[2:]) if x.ndim == 3 else d


def _up(x: np.ndarray, f: int, r0: int, r1: int, w: int) -> np.ndarray:
    """Rows ``r0:r1``, columns ``:w`` of the bilinear ``f`` x upsampling of the block image ``x`` (pixel centres
    aligned with :func:`_down`'s blocks). Only the block rows those rows depend on are resampled, with one block
    of context each side, so a band equals the same rows of the whole upsampled image."""
    k0, k1 = max(0, r0 // f - 1), min(x.shape[0], -(-r1 // f) + 1)
    u = cv2.resize(x[k0:k1], (x.shape[1] * f, (k1 - k0) * f), interpolation=cv2.INTER_LINEAR)
    u = u[r0 - k0 * f:r1 - k0 * f, :w]
    return u.reshape(u.shape[:2] + x.shape[2:]) if x.ndim == 3 else u


def _joint_coefficients(g: np.ndarray, s: np.ndarray, r: int, eps_g, eps_s) -> tuple[np.ndarray, ...]:
    """Box-averaged coefficients (a_g, a_s, b) of :func:`joint_guided_filter` (same shapes as ``s``)."""
    multi = s.ndim == 3
    eg, es = _f32(eps_g), _f32(eps_s)
    mg = _box(g, r)
    vgg = _box(np.square(g), r)
    vgg -= np.square(mg)
    gx = g[..., None] if multi else g
    mgx = mg[..., None] if multi else mg
    ms = _box(s, r)
    vss = _box(np.square(s), r)
    vss -= np.square(ms)
    np.maximum(vss, 0.0, out=vss)
    vgs = _box(gx * s, r)
    vgs -= mgx * ms
    gg = np.maximum(vgg, 0.0)
    gg += np.maximum(eg, _F32(1e-12))
    es = np.maximum(es, _F32(1e-12))
    if multi:
        gg = gg[..., None]
        if isinstance(es, np.ndarray):
            es = es[..., None]
    det = vss + es
    det *= gg
    det -= np.square(vgs)  # > 0: the regularised covariance is positive definite
    np.maximum(det, _F32(1e-30), out=det)
    # a_g = (ss * vgs - vgs * vss) / det with ss = vss + eps_s, i.e. vgs * eps_s / det
    a_g = vgs * es
    a_g /= det
    a_s = np.multiply(gg, vss, out=vss)
    a_s -= np.square(vgs, out=vgs)
    a_s /= det
    b = ms - a_g * mgx
    b -= np.multiply(a_s, ms, out=ms)
    return _box(a_g, r), _box(a_s, r), _box(b, r)


def joint_guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps_g: np.ndarray | float,
                        eps_s: np.ndarray | float, scale: int = 1) -> np.ndarray:
    """Guided filter of ``src`` with the two-channel guide (``guide``, ``src``); float32 (H, W) in and out.

    Per window the local linear model is ``q = a_g * guide + a_s * src + b``, the ridge regression of ``src`` on
    both channels with the 2x2 covariance regularised by ``diag(eps_g, eps_s)`` (He et al.'s colour guided filter
    for two channels). ``src`` may also be (H, W, k): k independent sources, each with its own guide pair
    (``guide``, that source), filtered in one pass (out (H, W, k)).

    ``scale = f > 1`` is the fast guided filter (He & Sun 2015): the window statistics and coefficients are
    computed on the ``f`` x ``f`` block means of guide, src and eps at radius ``max(1, round(r / f))`` (the same
    window in image units); the box-averaged coefficients are upsampled bilinearly and applied to the
    full-resolution guide and src, so edges in either guide channel stay sharp. eps is used as given, not divided
    by f^2 (see the module docstring).
    """
    f = int(scale)
    h, w = guide.shape
    if f > 1:
        g, s = _down(guide, f), _down(src, f)
        eg = _down(eps_g, f) if isinstance(eps_g, np.ndarray) and eps_g.ndim == 2 else eps_g
        es = _down(eps_s, f) if isinstance(eps_s, np.ndarray) and eps_s.ndim == 2 else eps_s
        coef = [_up(c, f, 0, h, w) for c in _joint_coefficients(g, s, max(1, int(round(r / f))), eg, es)]
    else:
        coef = _joint_coefficients(guide, src, r, eps_g, eps_s)
    out = coef[0] * (guide[..., None] if src.ndim == 3 else guide)
    out += coef[1] * src
    out += coef[2]
    return out


def strength_map(shape: tuple[int, int], strength: float, sky: np.ndarray | None, skin: np.ndarray | None,
                 sky_boost: float, skin_boost: float, flat: np.ndarray | None = None,
                 protect: float = PROTECT) -> np.ndarray:
    """``strength * max(1 + beta * ((1 + protect) * flat - protect), MIN_FACTOR)`` (float32 (H, W)) with
    ``beta = sky_boost * sky + skin_boost * skin``; ``flat`` None = ones (``strength * (1 + beta)``)."""
    boost = np.zeros(shape, np.float32)
    if sky is not None and sky_boost:
        boost += np.float32(sky_boost) * check_mask(sky, shape, "sky")
    if skin is not None and skin_boost:
        boost += np.float32(skin_boost) * check_mask(skin, shape, "skin")
    if flat is not None:
        boost *= np.float32(1.0 + protect) * flat - np.float32(protect)
    boost += np.float32(1.0)
    np.maximum(boost, np.float32(MIN_FACTOR), out=boost)
    boost *= np.float32(strength)
    return boost


def _local_stats(y: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Box mean and (unclamped) box variance of ``y`` over a (2r+1)^2 window."""
    m = _box(y, r)
    v = _box(np.square(y), r)
    v -= np.square(m)
    return m, v


def _flatness_from_stats(m: np.ndarray, v: np.ndarray, noise: NoiseModel, r: int, c: float) -> np.ndarray:
    t = noise.variance(m)
    np.maximum(t, _F32(1e-12), out=t)
    np.divide(v, t, out=t)  # v / var_n
    np.subtract(_F32(1.0 + c), t, out=t)
    t /= _F32(c)
    np.clip(t, 0.0, 1.0, out=t)
    return _box(t, r)


def flatness(y: np.ndarray, noise: NoiseModel, r: int, c: float = FLAT_RANGE) -> np.ndarray:
    """1 where the local variance of ``y`` over a (2r+1)^2 box is at the noise level, 0 from (1 + c) times it."""
    m, v = _local_stats(np.asarray(y, np.float32), r)
    return _flatness_from_stats(m, v, noise, r, c)


def auto_radius(shape: tuple[int, int]) -> int:
    """Default luminance filter radius: ``max(2, long side / 1000)`` px."""
    return max(2, int(round(max(shape) / 1000)))


def _luma(x: np.ndarray) -> np.ndarray:
    return cv2.transform(x, luminance_weights().reshape(1, 3)).reshape(x.shape[:2])


def _has_classes(sky, skin, sky_boost, skin_boost) -> bool:
    return (sky is not None and bool(sky_boost)) or (skin is not None and bool(skin_boost))


def class_strength(img: np.ndarray, noise: NoiseModel, sky: np.ndarray | None, skin: np.ndarray | None, *,
                   strength: float = 1.0, sky_boost: float = 0.4, skin_boost: float = 0.3,
                   radius: int = 0) -> np.ndarray:
    """The per-pixel strength map :func:`denoise` uses (float32 (H, W)); its mean is the average strength."""
    shape = img.shape[:2]
    if not _has_classes(sky, skin, sky_boost, skin_boost):
        return strength_map(shape, strength, None, None, 0.0, 0.0)
    y = _luma(check_image(img))
    r = int(radius) or auto_radius(shape)
    m, v = _local_stats(y, r)
    flat = _flatness_from_stats(m, v, noise, r, FLAT_RANGE)
    return strength_map(shape, strength, sky, skin, sky_boost, skin_boost, flat)


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=MAX_THREADS, thread_name_prefix="campipe-denoise")


def _for_bands(height: int, rows: int, fn: Callable[[int, int], None]) -> None:
    """``fn(r0, r1)`` over consecutive bands of ``rows`` rows, on up to ``min(MAX_THREADS, cv2.getNumThreads())``
    threads (NumPy and OpenCV release the GIL); each call writes only its own rows."""
    bands = [(r0, min(r0 + rows, height)) for r0 in range(0, height, rows)]
    threads = min(MAX_THREADS, cv2.getNumThreads(), os.cpu_count() or 1)
    if len(bands) < 2 or threads < 2:
        for r0, r1 in bands:
            fn(r0, r1)
        return
    for fut in [_pool().submit(fn, r0, r1) for r0, r1 in bands]:
        fut.result()


def _chroma_matrices() -> tuple[np.ndarray, np.ndarray]:
    """RGB -> (R - Y, B - Y, 0) and (R - Y, B - Y, Y) -> RGB, float32 3x3 (OpenCV's 3 -> 3 channel transform is
    several times faster than its 3 -> 2 one)."""
    w0, w1, w2 = (float(v) for v in luminance_weights())
    fwd = np.array([[1 - w0, -w1, -w2], [-w0, -w1, 1 - w2], [0.0, 0.0, 0.0]], np.float32)
    inv = np.array([[1.0, 0.0, 1.0], [-w0 / w1, -w2 / w1, (1 - w0 - w2) / w1], [0.0, 1.0, 1.0]], np.float32)
    return fwd, inv


def denoise(img: np.ndarray, noise: NoiseModel, sky: np.ndarray | None = None, skin: np.ndarray | None = None, *,
            strength: float = 1.0, sky_boost: float = 0.4, skin_boost: float = 0.3, radius: int = 0,
            strength_px: np.ndarray | None = None, chroma_scale: int = 0) -> np.ndarray:
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
        chroma_scale: 1 = colour differences filtered at full resolution, 2 = coefficients on 2x2 block means
            (fast guided filter); 0 = automatic: ``CHROMA_SCALE`` from ``FAST_CHROMA_MIN_PIXELS`` up, else 1.
    """
    if strength < 0 or sky_boost < 0 or skin_boost < 0:
        raise ValueError(f"denoise.strength, sky_boost and skin_boost must be >= 0, got {strength}, {sky_boost}, "
                         f"{skin_boost}")
    if radius < 0:
        raise ValueError(f"denoise.radius must be >= 0 px (0 = automatic), got {radius}")
    if chroma_scale < 0:
        raise ValueError(f"denoise chroma_scale must be >= 0 (0 = automatic), got {chroma_scale}")
    x = np.ascontiguousarray(check_image(img))
    H, W = shape = x.shape[:2]
    s_px = None
    if strength_px is not None:
        s_px = np.ascontiguousarray(strength_px, np.float32)
        if s_px.shape != shape:
            raise ValueError(f"strength_px has shape {s_px.shape}, expected {shape}")
        if not s_px.any():
            return x.copy()
    elif strength == 0:
        return x.copy()
    classes = s_px is None and _has_classes(sky, skin, sky_boost, skin_boost)
    if classes:
        sky = check_mask(sky, shape, "sky") if sky is not None and sky_boost else None
        skin = check_mask(skin, shape, "skin") if skin is not None and skin_boost else None
    r = int(radius) if radius else auto_radius(shape)
    f = int(chroma_scale) or (CHROMA_SCALE if H * W >= FAST_CHROMA_MIN_PIXELS else 1)
    rc = max(1, int(round(2 * r / f)))  # chroma radius 2 r, in blocks
    fwd, inv = _chroma_matrices()
    hs, ws = -(-H // f), -(-W // f)
    rows = max(f, BAND_ROWS // f * f)
    k_gain = _F32(EPS_GAIN)

    # pass 1 (full resolution, bands with a 3 r halo): luminance statistics once for flatness and the guided
    # filter, strength map, eps, denoised Y; block means of Y, colour differences and eps for pass 2
    yd = np.empty(shape, np.float32)
    ys, cs, es = np.empty((hs, ws), np.float32), np.empty((hs, ws, 2), np.float32), np.empty((hs, ws), np.float32)
    s_keep = np.empty(shape, np.float32) if classes and strength * MIN_FACTOR < 0.125 else None
    halo = 3 * r

    def luma_pass(lo: int, hi: int) -> None:
        a0, a1 = max(0, lo - halo), min(H, hi + halo)
        k0, k1 = lo - a0, hi - a0
        y = _luma(x[a0:a1])
        m, v = _local_stats(y, r)
        eps = noise.variance(y)  # eps = (k s)^2 var_n(y)
        if s_px is not None:
            s = s_px[a0:a1] * k_gain
        elif classes:
            flat = _flatness_from_stats(m, v, noise, r, FLAT_RANGE)
            s = strength_map(y.shape, strength, None if sky is None else sky[a0:a1],
                             None if skin is None else skin[a0:a1], sky_boost, skin_boost, flat)
            if s_keep is not None:
                s_keep[lo:hi] = s[k0:k1]
            s *= k_gain
        else:
            s = _F32(strength) * k_gain  # the same float32 rounding as a per-pixel map
        eps *= np.square(s)
        # luminance: self-guided filter, a = v / (v + eps), b = m - a m
        a = np.maximum(v, 0.0)
        a += np.maximum(eps, _F32(1e-12))  # eps -> 0 would give 0/0 = NaN
        np.divide(v, a, out=a)
        b = np.multiply(a, m, out=v)
        np.subtract(m, b, out=b)
        out_y = yd[lo:hi]
        np.multiply(_box(a, r)[k0:k1], y[k0:k1], out=out_y)
        out_y += _box(b, r)[k0:k1]
        q0, q1 = lo // f, -(-hi // f)
        # colour differences of the block means (= block means of the colour differences: linear)
        cs[q0:q1] = cv2.transform(_down(x[lo:hi], f) if f > 1 else x[lo:hi], fwd)[..., :2]
        if f > 1:
            ys[q0:q1], es[q0:q1] = _down(out_y, f), _down(eps[k0:k1], f)
        else:
            ys[q0:q1], es[q0:q1] = out_y, eps[k0:k1]

    _for_bands(H, rows, luma_pass)

    # pass 2 (block resolution, bands with a 2 rc halo): joint guided filter coefficients of the colour
    # differences, guide = (denoised Y, the difference itself); colour differences carry ~2x the per-channel
    # variance, hence eps_C = 2 eps
    ag, asf, bc = (np.empty((hs, ws, 2), np.float32) for _ in range(3))
    halo_c = 2 * rc

    def chroma_pass(lo: int, hi: int) -> None:
        b0, b1 = max(0, lo - halo_c), min(hs, hi + halo_c)
        e = es[b0:b1]
        coef = _joint_coefficients(ys[b0:b1], cs[b0:b1], rc, e, e * _F32(2.0))
        for dst, src in zip((ag, asf, bc), coef):
            dst[lo:hi] = src[lo - b0:hi - b0]

    _for_bands(hs, max(16, rows // f), chroma_pass)

    # pass 3 (full resolution, bands): coefficients upsampled and applied to (denoised Y, colour difference),
    # back to RGB, blend towards the input where the strength is ~0, clamp at 0
    if s_px is not None:
        keep_src = s_px if float(s_px.min()) < 0.125 else None
    elif s_keep is not None:
        keep_src = s_keep if float(s_keep.min()) < 0.125 else None
    else:
        keep_src = None
    keep_const = _F32(min(1.0, 8.0 * strength)) if s_px is None and not classes and strength < 0.125 else None

    def output_pass(lo: int, hi: int) -> None:
        if f > 1:
            cg, cc, cb = (_up(t, f, lo, hi, W) for t in (ag, asf, bc))
        else:
            cg, cc, cb = ag[lo:hi].copy(), asf[lo:hi].copy(), bc[lo:hi]
        ydb = yd[lo:hi]
        c3 = cv2.transform(x[lo:hi], fwd)  # (R - Y, B - Y, 0)
        np.multiply(cc, c3[..., :2], out=cc)  # a_s C + a_g Y_d + b
        cc += np.multiply(cg, ydb[..., None], out=cg)
        cc += cb
        cv2.merge((cc, ydb), dst=c3)
        ob = out[lo:hi]
        cv2.transform(c3, inv, dst=ob)
        if keep_src is not None or keep_const is not None:  # where s == 0 keep the input exactly
            keep = np.clip(keep_src[lo:hi] * _F32(8.0), 0.0, 1.0)[..., None] if keep_src is not None else keep_const
            xb = x[lo:hi]
            ob -= xb
            ob *= keep
            ob += xb
        np.maximum(ob, 0.0, out=ob)

    out = np.empty_like(x)
    _for_bands(H, rows, output_pass)
    return out
