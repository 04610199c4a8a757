"""Mask-aware sharpening: luminance unsharp masking suppressed on sky, skin and teeth, with noise coring.

Input/Output: float32 **linear** working RGB (H, W, 3) and soft masks float32 (H, W) in [0, 1].

``detail = Y - G_radius(Y)`` (Gaussian of sigma ``radius`` px on luminance); ``out = img + amount * w * core(detail)``
added equally to the three channels (luminance-only sharpening: no colour fringes), with

* ``w = 1 - max(sky, skin, teeth)``: no sharpening on smooth sky gradients (it would amplify noise and banding),
  on skin (it would accentuate pores and blemishes) or on teeth;
* ``core(d) = d * (1 - exp(-(d / (noise_floor * sigma_n))^2))``: detail at the noise level (``sigma_n`` from the noise
  model at the pixel's luminance) is not amplified; ``noise_floor = 0`` or no model disables coring.

``amount = 0`` returns an exact copy. Negative results are clipped to 0.

References: unsharp masking (e.g. Gonzalez & Woods, Digital Image Processing, 4th ed., 3.6); coring as in
video/ISP sharpeners (e.g. fast-openISP ``eeh`` edge enhancement with a noise threshold).
"""
from __future__ import annotations

import cv2
import numpy as np

from campipe.colour import luminance_weights

from .masks import check_image, check_mask
from .noise import NoiseModel


def suppression_weight(shape: tuple[int, int], *masks: np.ndarray | None) -> np.ndarray:
    """``1 - max(masks)`` (float32 (H, W)); ones when every mask is None."""
    w = np.ones(shape, np.float32)
    for i, m in enumerate(masks):
        if m is not None:
            np.minimum(w, 1.0 - check_mask(m, shape, f"mask {i}"), out=w)
    return w


def sharpen(img: np.ndarray, sky: np.ndarray | None = None, skin: np.ndarray | None = None,
            teeth: np.ndarray | None = None, *, amount: float = 0.5, radius: float = 1.0,
            noise: NoiseModel | None = None, noise_floor: float = 1.0) -> np.ndarray:
    """Unsharp-mask luminance sharpening, suppressed on sky/skin/teeth; returns a new float32 (H, W, 3) image.

    Args:
        img: float32 (H, W, 3) linear working RGB, >= 0.
        sky, skin, teeth: soft masks (None = zeros = sharpened normally).
        amount: >= 0, gain of the detail layer (0 = identity; 0.5 = +50 % local contrast at the radius scale).
        radius: Gaussian sigma of the detail scale in pixels (> 0).
        noise: optional noise model for coring; None = no coring.
        noise_floor: coring threshold in noise standard deviations (>= 0; 0 = no coring).
    """
    if amount < 0:
        raise ValueError(f"sharpen.amount must be >= 0, got {amount}")
    if not radius > 0:
        raise ValueError(f"sharpen.radius must be > 0 px, got {radius}")
    if noise_floor < 0:
        raise ValueError(f"sharpen.noise_floor must be >= 0, got {noise_floor}")
    x = check_image(img)
    if amount == 0:
        return x.copy()
    shape = x.shape[:2]
    y = np.ascontiguousarray(x @ luminance_weights())
    detail = y - cv2.GaussianBlur(y, (0, 0), float(radius), borderType=cv2.BORDER_REFLECT)
    if noise is not None and noise_floor > 0:
        t = noise.sigma(y) * np.float32(noise_floor)
        detail *= 1.0 - np.exp(-np.square(detail / np.maximum(t, 1e-12)))
    detail *= suppression_weight(shape, sky, skin, teeth)
    detail *= np.float32(amount)
    out = x + detail[..., None]
    np.maximum(out, 0.0, out=out)
    return out
