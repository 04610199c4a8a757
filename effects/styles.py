"""Photographic styles that keep skin at the standard render: tone (contrast), warmth and colour (vibrance).

Operates on float32 **linear** working-space RGB (linear Rec.2020, D65; 1.0 = diffuse white, highlights above 1 are
kept), *before* the global filmic tone curve. All three adjustments are multiplicative or luminance-anchored so that
they commute well with the later curve:

* ``tone`` in [-1, 1]: contrast around scene mid grey (Y = 0.18) in the log2 domain,
  ``log2 Y' = log2 Y + 0.5 * tone * c * tanh(log2(Y / 0.18) / c)`` with ``c = 3`` stops; the change is bounded
  (at most +-1.5 stops at tone = +-1) so deep shadows/highlights are not pushed to extremes. Applied as a per-pixel
  gain on all channels (hue and saturation ratios are preserved).
* ``warmth`` in [-1, 1]: a white-balance shift along the Planckian locus of ``warmth * 100`` mired (+ = warmer,
  6504 K -> 4915 K at +0.5... see :func:`warmth_gains`), as von Kries gains in the working space normalised to keep
  luminance of neutrals.
* ``colour`` in [-1, 1]: vibrance, ``rgb' = Y + (rgb - Y) * (1 + colour * (1 - 0.5 * s))`` where ``s`` in [0, 1] is
  the pixel's saturation ``(max - min) / max``: already saturated colours move less, so they do not clip.
* ``skin_protect`` in [0, 1]: per pixel the result is blended back to the input with weight
  ``skin_protect * skin'``, where ``skin'`` is the skin mask grown outward by a short feather (inside the labelled
  skin the weight is the mask itself). Skin therefore keeps its standard-render tone while the rest of the scene
  takes the style. A missing skin mask (zeros) means no protection.

All-zero ``tone``/``warmth``/``colour`` returns an exact copy of the input.

References: Apple "Photographic Styles" (tone / warmth parameters, skin-tone preservation);
Wyszecki & Stiles (mired scale); Kang et al. 2002, "Design of advanced color temperature control system for HDTV
applications" (Planckian locus xy); von Kries adaptation.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from campipe.colour import luminance_weights, xyz_to_working

from .masks import bbox, check_image, check_mask, feather

REF_CCT = 6504.0
MID_GREY = 0.18
TONE_STOPS = 0.5
TONE_KNEE_STOPS = 3.0
WARMTH_MIRED = 100.0


def _xy_planck(cct: float) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import colour
    return np.asarray(colour.temperature.CCT_to_xy_Kang2002(float(np.clip(cct, 1667.0, 25000.0))), np.float64)


@lru_cache(maxsize=64)
def warmth_gains(warmth: float) -> np.ndarray:
    """Per-channel gains (3,) float32 for a warmth shift: ``warmth * 100`` mired along the Planckian locus.

    The gains map the neutral of the reference locus point (6504 K) to the neutral of the shifted point, normalised
    so that a neutral keeps its luminance. warmth = 0 returns exactly ones.
    """
    if warmth == 0.0:
        return np.ones(3, np.float32)
    target = 1e6 / (1e6 / REF_CCT + WARMTH_MIRED * float(warmth))

    def rgb(cct):
        x, y = _xy_planck(cct)
        xyz = np.array([x / y, 1.0, (1 - x - y) / y])
        return xyz_to_working() @ xyz

    g = rgb(target) / rgb(REF_CCT)
    g = g / float(luminance_weights().astype(np.float64) @ g)
    return g.astype(np.float32)


def tone_gain(y: np.ndarray, tone: float) -> np.ndarray:
    """Per-pixel multiplicative gain (float32) implementing the ``tone`` contrast curve on luminance ``y``."""
    e = np.log2(np.maximum(y, 1e-6, dtype=np.float32) / MID_GREY)
    de = (TONE_STOPS * tone * TONE_KNEE_STOPS) * np.tanh(e / TONE_KNEE_STOPS)
    return np.exp2(de).astype(np.float32)


def apply_style(img: np.ndarray, skin: np.ndarray | None = None, *, tone: float = 0.0, warmth: float = 0.0,
                colour: float = 0.0, skin_protect: float = 1.0, feather_frac: float = 0.004) -> np.ndarray:
    """Apply a photographic style to float32 linear RGB (H, W, 3); returns a new float32 array.

    Args:
        img: float32 (H, W, 3) linear working RGB, >= 0.
        skin: float32 (H, W) soft skin mask in [0, 1], or None (= zeros, no protection).
        tone: contrast, -1..1 (0 = none).
        warmth: -1..1, + warmer (0 = none).
        colour: vibrance, -1..1 (0 = none, -1 = monochrome for unsaturated pixels).
        skin_protect: 0..1, how strongly skin keeps the input (standard) rendering.
        feather_frac: outward feather of the skin mask, as a fraction of the image diagonal.
    """
    for name, v, lo, hi in (("tone", tone, -1, 1), ("warmth", warmth, -1, 1), ("colour", colour, -1, 1),
                            ("skin_protect", skin_protect, 0, 1)):
        if not (lo <= v <= hi):
            raise ValueError(f"style.{name} must be in [{lo}, {hi}], got {v}")
    x = check_image(img)
    if tone == 0.0 and warmth == 0.0 and colour == 0.0:
        return x.copy()
    out = x * warmth_gains(float(warmth)) if warmth != 0.0 else x.copy()
    w = luminance_weights()
    if colour != 0.0:
        y = (out @ w)[..., None]
        r, g, b = out[..., 0], out[..., 1], out[..., 2]
        if colour > 0:
            mx = np.maximum(np.maximum(r, g), b)
            sat = np.minimum(np.minimum(r, g), b)
            np.subtract(mx, sat, out=sat)
            np.maximum(mx, np.float32(1e-8), out=mx)
            sat /= mx  # (max - min) / max in [0, 1]; 0 for black
            k = np.float32(1.0 + colour) - np.float32(0.5 * colour) * sat
            k = k[..., None]
        else:
            k = np.float32(1.0 + colour)
        out -= y
        out *= k
        out += y
        np.maximum(out, 0.0, out=out)
    if tone != 0.0:
        out *= tone_gain(out @ w, float(tone))[..., None]
    if skin is not None and skin_protect > 0.0:
        s = check_mask(skin, x.shape[:2], "skin")
        box = bbox(s, 0.0)
        if box is not None:
            diag = float(np.hypot(*x.shape[:2]))
            sigma = feather_frac * diag
            # the blend only touches the skin's bounding box grown by the feather's reach (4 sigma)
            m = int(np.ceil(4 * sigma)) + 1
            y0, x0 = max(0, box[0] - m), max(0, box[1] - m)
            y1, x1 = min(x.shape[0], box[2] + m), min(x.shape[1], box[3] + m)
            sc = s[y0:y1, x0:x1]
            p = np.maximum(sc, feather(sc, sigma)) * np.float32(skin_protect)
            o = out[y0:y1, x0:x1]
            o += p[..., None] * (x[y0:y1, x0:x1] - o)
    return out
