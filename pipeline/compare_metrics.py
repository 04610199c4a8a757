"""Numbers shown next to each render on the compare page: skin ΔE, clipping, sky noise, timings.

All inputs are **display-encoded** RGB float32 ``(H, W, 3)`` in [0, 1] (sRGB or Display P3, as written by the output
stage) plus float32 ``(H, W)`` soft masks in [0, 1]. Every function returns plain Python floats (or ``None`` when the
measurement is not defined, e.g. no skin mask), so the page can print ``n/a``.

* :func:`skin_delta_e` — mask-weighted mean CIEDE2000 between two renders over the skin mask (how much a style moves
  skin tones relative to the standard render). Computed on a copy downscaled to at most ``max_side`` pixels: ΔE of
  smooth skin is a low-frequency quantity and CIEDE2000 on 24 MP would cost seconds.
* :func:`clipped_fractions` — fraction of pixels with any channel at the top code value (blown highlights) and with
  all channels at the bottom code value (crushed shadows), at full resolution.
* :func:`sky_noise` — Immerkær's fast noise estimate (Laplacian-difference kernel, robust to smooth gradients such as
  a sky) on the luma of the sky region, in 8-bit code values (σ of the noise; ~0.5 is invisible, >2 is visible).

References: Sharma, Wu, Dalal, "The CIEDE2000 Color-Difference Formula" (2005); J. Immerkær, "Fast Noise Variance
Estimation", CVIU 64(2), 1996; ITU-R BT.709 luma weights for the display-encoded luma.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from .colour import delta_e_2000, display_to_working, working_to_lab

#: A code value at or above this (in [0, 1]) counts as clipped highlight (i.e. 255 in 8 bit after rounding).
CLIP_HI = 254.5 / 255.0
#: A code value at or below this counts as crushed shadow (0 in 8 bit after rounding).
CLIP_LO = 0.5 / 255.0
#: Minimum mask area (sum of soft weights, in pixels of the measured image) for a masked measurement to be reported.
MIN_MASK_PIXELS = 64.0

_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


def _check_rgb(img: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{what}: expected an (H, W, 3) RGB image, got shape {a.shape}")
    return a.astype(np.float32, copy=False)


def _check_mask(mask: np.ndarray | None, shape: tuple[int, int], what: str) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask, dtype=np.float32)
    if m.shape != shape:
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(m, 0.0, 1.0)


def downscale(img: np.ndarray, max_side: int) -> np.ndarray:
    """Area-downscale so the long side is at most ``max_side`` (no-op if already smaller). Keeps dtype float32."""
    h, w = img.shape[:2]
    s = max(h, w)
    if s <= max_side:
        return img
    f = max_side / s
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def skin_delta_e(display: np.ndarray, reference: np.ndarray, skin: np.ndarray | None, space: str = "srgb",
                 max_side: int = 768) -> float | None:
    """Mask-weighted mean CIEDE2000 between ``display`` and ``reference`` over the soft ``skin`` mask.

    Both images are display-encoded in ``space`` and must have the same size (the mask is resized to them if needed).
    Returns ``None`` when there is no skin mask or it covers fewer than :data:`MIN_MASK_PIXELS` pixels.
    """
    a = _check_rgb(display, "skin_delta_e display")
    b = _check_rgb(reference, "skin_delta_e reference")
    if a.shape != b.shape:
        raise ValueError(f"skin_delta_e: render {a.shape} and reference {b.shape} differ in size")
    if skin is None:
        return None
    m = _check_mask(skin, a.shape[:2], "skin")
    a, b, m = downscale(a, max_side), downscale(b, max_side), downscale(m, max_side)
    sel = m > 1e-3
    weight = m[sel]
    if weight.sum() * (display.shape[0] * display.shape[1]) / m.size < MIN_MASK_PIXELS:
        return None
    lab_a = working_to_lab(display_to_working(a[sel], space))
    lab_b = working_to_lab(display_to_working(b[sel], space))
    de = delta_e_2000(lab_a, lab_b)
    return float(np.sum(de * weight) / np.sum(weight))


def mean_delta_e(display: np.ndarray, reference: np.ndarray, space: str = "srgb", max_side: int = 512,
                 reference_space: str | None = None) -> float:
    """Mean CIEDE2000 over the whole frame (used for pairs of batch renders, which carry no masks).

    ``space`` / ``reference_space`` are the encodings of the two images (they may differ: sRGB vs Display P3).
    """
    a = _check_rgb(display, "mean_delta_e display")
    b = _check_rgb(reference, "mean_delta_e reference")
    if a.shape != b.shape:
        b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
    a, b = downscale(a, max_side), downscale(b, max_side)
    lab_a = working_to_lab(display_to_working(a, space))
    lab_b = working_to_lab(display_to_working(b, reference_space or space))
    return float(delta_e_2000(lab_a, lab_b).mean())


def histograms(display: np.ndarray, bins: int = 64, max_side: int = 1024) -> dict[str, list[float]]:
    """Per-channel and luma histograms of the display-encoded values (what a camera's histogram shows).

    Returns ``{'r', 'g', 'b', 'y'}`` -> ``bins`` counts normalised so the largest interior bin of the four is 1 (end
    bins capped at 1; rounded to 3 decimals for the page). Computed on a copy area-downscaled to ``max_side`` (shape, not detail, matters here);
    luma uses BT.709 weights on the encoded values, as in-camera histograms do.
    """
    a = downscale(_check_rgb(display, "histograms"), max_side)
    q = np.clip(a * bins, 0, bins - 1).astype(np.int32)
    y = np.clip((a @ np.array([0.2126, 0.7152, 0.0722], np.float32)) * bins, 0, bins - 1).astype(np.int32)
    h = {c: np.bincount(q[..., i].ravel(), minlength=bins) for i, c in enumerate("rgb")}
    h["y"] = np.bincount(y.ravel(), minlength=bins)
    # Scale by the tallest *interior* bin: the end bins of a clipped image would otherwise flatten everything else
    # (they are capped at 1, which is how in-camera histograms show clipping).
    top = max(1, max(int(v[1:-1].max()) for v in h.values()))
    return {k: [round(min(1.0, float(x) / top), 3) for x in v] for k, v in h.items()}


def clipped_fractions(display: np.ndarray) -> dict[str, float]:
    """Fractions in [0, 1] of pixels clipped at the top (any channel) and crushed at the bottom (all channels)."""
    a = _check_rgb(display, "clipped_fractions")
    n = a.shape[0] * a.shape[1]
    # any channel >= hi  <=>  max >= hi;  all channels <= lo  <=>  max <= lo. The channel max of three strided views
    # is ~4x faster than .any/.all over the channel axis on 24 MP.
    mx = np.maximum(np.maximum(a[..., 0], a[..., 1]), a[..., 2])
    hi = np.count_nonzero(mx >= CLIP_HI) / n
    lo = np.count_nonzero(mx <= CLIP_LO) / n
    return {"highlights": float(hi), "shadows": float(lo)}


def sky_noise(display: np.ndarray, sky: np.ndarray | None) -> float | None:
    """Immerkær noise σ of the display luma over the sky (mask > 0.5, eroded by 2 px), in 8-bit code values.

    Returns ``None`` without a sky mask or when the (eroded) sky covers fewer than :data:`MIN_MASK_PIXELS` pixels.
    """
    a = _check_rgb(display, "sky_noise")
    if sky is None:
        return None
    m = _check_mask(sky, a.shape[:2], "sky")
    # The 3x3 kernel straddles the mask edge: erode so sky/foreground edges do not count as noise.
    inside = cv2.erode((m > 0.5).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    # The image border is not covered by a valid 3x3 response.
    inside[0, :] = inside[-1, :] = False
    inside[:, 0] = inside[:, -1] = False
    n = int(np.count_nonzero(inside))
    if n < MIN_MASK_PIXELS:
        return None
    luma = (a @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)) * 255.0
    resp = cv2.filter2D(luma, cv2.CV_32F, _IMMERKAER, borderType=cv2.BORDER_REFLECT)
    return float(math.sqrt(math.pi / 2.0) / 6.0 * np.abs(resp[inside]).mean())


def render_metrics(display: np.ndarray, masks: dict[str, np.ndarray] | None, reference: np.ndarray | None = None,
                   reference_skin: np.ndarray | None = None, space: str = "srgb") -> dict[str, float | None]:
    """All per-render numbers as a flat dict: ``skin_de``, ``clip_hi``, ``clip_lo``, ``sky_noise``.

    ``reference`` is the standard render (``None`` for the standard render itself: its skin ΔE is 0 if it has a skin
    mask); the skin mask is ``reference_skin`` if given, else ``masks['skin']``.
    """
    masks = masks or {}
    skin = reference_skin if reference_skin is not None else masks.get("skin")
    ref = display if reference is None else reference
    clip = clipped_fractions(display)
    return {
        "skin_de": skin_delta_e(display, ref, skin, space=space),
        "clip_hi": clip["highlights"],
        "clip_lo": clip["shadows"],
        "sky_noise": sky_noise(display, masks.get("sky")),
    }
