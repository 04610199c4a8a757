"""Per-subject tone mapping: each person (up to 4) gets its own exposure and contrast so that faces land at a
target brightness, blended with the soft person masks; the sky and the background are left to the global curve.

Input/Output: float32 **linear** working RGB (H, W, 3) before the global tone curve; soft masks float32 (H, W) in
[0, 1]. For every person ``k``:

* the face region is ``skin * person_k`` (pixels > 0.5; the skin mask confines it to the person's face/neck); when
  no skin is labelled there (no skin mask, or a person seen from behind) the top quarter of the person's bounding box
  is used as the head proxy;
* ``Y_k`` = median luminance of the face region; the exposure ``ev_k = strength * clip(log2(Y_t / Y_k), +-max_ev)``
  where ``Y_t`` is the luminance whose CIE L* is ``face_target_L``, measured on the linear frame as the global tone
  curve will see it: ``Y * 2^exposure_ev`` (``exposure_ev`` = the exposure the tone stage adds, e.g. the DNG
  BaselineExposure; Y = 1 -> L* = 100). The curve maps mid-tones monotonically; with campipe's default filmic curve
  the default target L* 55 displays at L* ~64, where a well-exposed light-skinned face of the sample DNGs lands;
* an optional contrast change around the face level, ``contrast`` in [-1, 1]:
  ``log2 gain += strength * 0.5 * contrast * c * tanh(log2(Y / Y_k) / c)`` with ``c = 3`` stops.

The per-person log2 gains are blended with the person masks (lightly feathered, ``feather_frac`` of the diagonal,
normalised where people overlap) and multiplied by ``(1 - sky)``: sky pixels keep their values exactly, so no sky
highlight is pushed into clipping; pixels outside every person keep their values (the background goes through the
global tone curve only). The gain is a scalar per pixel, so hues and saturation ratios are unchanged.

References: Apple "Smart HDR" / Google "HDR+ with Bracketing" semantic (face-aware) tone mapping; Hasinoff et al.,
"Burst photography for high dynamic range and low-light imaging on mobile cameras", SIGGRAPH Asia 2016 (face-aware
exposure); CIE 15:2004 (L*).
"""
from __future__ import annotations

import numpy as np

from campipe.colour import luminance_weights

from .masks import bbox, check_image, check_mask, feather

KNEE_STOPS = 3.0


def lstar_to_y(lstar: float) -> float:
    """Relative luminance Y (white = 1) of a CIE L* value."""
    if lstar > 8.0:
        return ((lstar + 16.0) / 116.0) ** 3
    return lstar / 903.2963


def y_to_lstar(y: np.ndarray) -> np.ndarray:
    """CIE L* of relative luminance Y (white = 1), float32."""
    y = np.asarray(y, np.float32)
    return np.where(y > 216 / 24389, 116.0 * np.cbrt(np.maximum(y, 0)) - 16.0, y * 903.2963).astype(np.float32)


def face_region(person: np.ndarray, skin: np.ndarray | None, min_px: int = 16) -> np.ndarray:
    """Boolean (H, W) face region of one person (see the module docstring)."""
    p = person > 0.5
    if skin is not None:
        f = p & (skin > 0.5)
        if int(f.sum()) >= min_px:
            return f
    bb = bbox(person)
    f = np.zeros_like(p)
    if bb is None:
        return f
    y0, x0, y1, x1 = bb
    f[y0:y0 + max(1, (y1 - y0) // 4), x0:x1] = True
    return f & p


def subject_exposures(img: np.ndarray, persons: list[np.ndarray], skin: np.ndarray | None = None, *,
                      face_target_L: float = 55.0, max_ev: float = 2.5,
                      exposure_ev: float = 0.0) -> list[tuple[float, float]]:
    """(face luminance, unscaled EV correction) per person; (nan, 0) for a person without a usable face region."""
    w = luminance_weights()
    res = []
    y_t = lstar_to_y(face_target_L) / 2.0 ** exposure_ev
    for m in persons:
        f = face_region(m, skin)
        if not f.any():
            res.append((float("nan"), 0.0))
            continue
        yf = float(np.median(img[f] @ w))
        ev = float(np.clip(np.log2(y_t / max(yf, 1e-6)), -max_ev, max_ev))
        res.append((yf, ev))
    return res


def subject_tone(img: np.ndarray, persons: list[np.ndarray], skin: np.ndarray | None = None,
                 sky: np.ndarray | None = None, *, strength: float = 1.0, face_target_L: float = 55.0,
                 contrast: float = 0.0, max_ev: float = 2.5, feather_frac: float = 0.003,
                 exposure_ev: float = 0.0) -> np.ndarray:
    """Per-person exposure/contrast so faces land near ``face_target_L``; returns a new float32 (H, W, 3) image.

    Args:
        img: float32 (H, W, 3) linear working RGB, >= 0.
        persons: soft person instance masks, float32 (H, W) in [0, 1]; empty list = no change.
        skin: soft skin mask (locates the faces); None = head proxy (top quarter of each person).
        sky: soft sky mask; sky pixels are never changed. None = zeros.
        strength: 0..1 (0 = identity, 1 = faces exactly at the target, up to ``max_ev``).
        face_target_L: target CIE L* of the faces' median luminance in the linear frame as the tone curve sees it
            (after ``exposure_ev``), 0..100.
        contrast: -1..1, contrast change within each person around its face level (0 = none).
        max_ev: largest exposure change per person, in stops (>= 0).
        feather_frac: feather of the person masks as a fraction of the image diagonal (soft transitions).
        exposure_ev: exposure (stops) the later tone stage applies to the whole frame (the stage passes
            ``meta['baseline_exposure']``, which campipe's tone stage adds by default).
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"subject_tone.strength must be in [0, 1], got {strength}")
    if not 0.0 < face_target_L < 100.0:
        raise ValueError(f"subject_tone.face_target_L must be in (0, 100), got {face_target_L}")
    if not -1.0 <= contrast <= 1.0:
        raise ValueError(f"subject_tone.contrast must be in [-1, 1], got {contrast}")
    if max_ev < 0:
        raise ValueError(f"subject_tone.max_ev must be >= 0 stops, got {max_ev}")
    x = check_image(img)
    shape = x.shape[:2]
    if strength == 0.0 or not persons:
        return x.copy()
    ps = [check_mask(m, shape, f"person {i}") for i, m in enumerate(persons)]
    sk = None if skin is None else check_mask(skin, shape, "skin")
    exps = subject_exposures(x, ps, sk, face_target_L=face_target_L, max_ev=max_ev, exposure_ev=exposure_ev)
    diag = float(np.hypot(*shape))
    num = np.zeros(shape, np.float32)
    den = np.zeros(shape, np.float32)
    y = x @ luminance_weights() if contrast != 0.0 else None
    for m, (yf, ev) in zip(ps, exps):
        if not np.isfinite(yf):
            continue
        a = feather(m, feather_frac * diag)
        g = np.float32(strength * ev)
        if contrast != 0.0:
            e = np.log2(np.maximum(y, 1e-6) / yf)
            g = g + np.float32(strength * 0.5 * contrast * KNEE_STOPS) * np.tanh(e / KNEE_STOPS)
        num += a * g
        den += a
    # Normalise where people overlap (den > 1); elsewhere den is the blend weight towards "no change".
    log_gain = num / np.maximum(den, 1.0)
    if sky is not None:
        log_gain *= 1.0 - check_mask(sky, shape, "sky")
    return x * np.exp2(log_gain)[..., None]
