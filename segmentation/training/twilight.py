"""Twilight augmentation: a daytime photo with labelled sky re-lit as dusk (dark scene, deep-blue gradient sky).

The only sky labels in the shared data are CamVid's daytime streets, so the trained model took the dusk sky of the
rocket sample for a person and gave it no sky (MODEL_CARD.md, known failure modes). This label-preserving photometric
augmentation turns a sample whose labels mark sky pixels (CamVid photos, copy-paste scenes on CamVid backgrounds)
into a plausible dusk shot, computed in linear light:

* the whole scene is darkened by ``exposure`` (log-uniform, default 1/25 .. 1/3, i.e. -1.6 to -4.6 EV) and cooled
  (red and green gains below blue), as a camera's auto white balance leaves a blue-hour street;
* the sky pixels are replaced by a vertical gradient from a deep-blue zenith colour (hue 205-235 degrees, saturated,
  dark) at the top row to a horizon colour (pale blue, or pink/orange afterglow) at the lowest sky row, shaped by a
  random gamma, times a weak copy of the original sky's luminance texture (clouds) so it is not a flat ramp;
* sky and scene are blended with a slightly blurred sky mask (no hard seam at the labelled boundary).

Labels are unchanged: sky stays sky, people stay people (and are darkened with the scene).

Input/output: ``image`` uint8 (H, W, 3) sRGB, ``lab`` the packed labels of :mod:`.datasets`; returns a new uint8
image (the input is never modified). A sample with less than ``min_sky_fraction`` labelled sky is returned unchanged.

Transfer functions: :func:`campipe.colour.srgb_decode` / :func:`campipe.colour.srgb_encode` (IEC 61966-2-1).
References: for dusk sky colours, e.g. Lee & Hernandez-Andres, "Colors of the
daytime overcast sky" / "Measuring and modeling twilight's purple light" (Applied Optics 2005, 2003).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from campipe.colour import srgb_decode, srgb_encode

from .datasets import SKY


@dataclass
class TwilightConfig:
    exposure: tuple[float, float] = (0.04, 0.33)     # scene gain, log-uniform
    zenith_hue: tuple[float, float] = (205.0, 235.0)  # degrees
    zenith_value: tuple[float, float] = (0.006, 0.05)  # linear luminance-ish value of the zenith colour
    horizon_value: tuple[float, float] = (0.04, 0.35)
    p_afterglow: float = 0.4                         # horizon pink/orange instead of pale blue
    texture: tuple[float, float] = (0.15, 0.6)      # exponent on the original sky's relative luminance
    min_sky_fraction: float = 0.03


def _hsv_colour(hue_deg: float, sat: float, value: float) -> np.ndarray:
    """Linear RGB (3,) of a hue/saturation with max channel = ``value``."""
    hsv = np.array([[[hue_deg / 2.0, sat * 255.0, 255.0]]], np.float32)  # OpenCV 8-bit-style ranges on float input
    lin = srgb_decode(cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0)
    return lin / max(float(lin.max()), 1e-6) * value


def sky_mask(lab: np.ndarray) -> np.ndarray:
    """float32 (H, W) in {0, 1}: pixels whose packed label says sky (present and known)."""
    return (((lab[..., 0] >> SKY) & (lab[..., 1] >> SKY) & 1)).astype(np.float32)


def twilight(image: np.ndarray, lab: np.ndarray, rng: np.random.Generator,
             cfg: TwilightConfig | None = None) -> np.ndarray:
    """Re-light ``image`` as dusk (module docstring); labels are unchanged, so only the image is returned."""
    cfg = cfg or TwilightConfig()
    sky = sky_mask(lab)
    h, w = sky.shape
    if sky.mean() < cfg.min_sky_fraction:
        return image
    lin = srgb_decode(image.astype(np.float32) / 255.0)

    exposure = float(np.exp(rng.uniform(np.log(cfg.exposure[0]), np.log(cfg.exposure[1]))))
    cool = np.array([rng.uniform(0.65, 0.9), rng.uniform(0.8, 0.95), 1.0], np.float32)
    scene = lin * (exposure * cool)

    zenith = _hsv_colour(rng.uniform(*cfg.zenith_hue), rng.uniform(0.55, 0.9), rng.uniform(*cfg.zenith_value))
    if rng.random() < cfg.p_afterglow:
        hor_hue, hor_sat = rng.uniform(-20.0, 40.0) % 360.0, rng.uniform(0.25, 0.6)
    else:
        hor_hue, hor_sat = rng.uniform(195.0, 220.0), rng.uniform(0.2, 0.5)
    horizon = _hsv_colour(hor_hue, hor_sat, rng.uniform(*cfg.horizon_value))
    rows = np.nonzero(sky.any(axis=1))[0]
    horizon_row = max(int(np.percentile(np.nonzero(sky)[0], 97)), int(rows[0]) + 1)
    t = np.clip(np.arange(h, dtype=np.float32) / horizon_row, 0.0, 1.0) ** rng.uniform(0.6, 1.8)
    grad = zenith[None, :] * (1.0 - t[:, None]) + horizon[None, :] * t[:, None]  # (H, 3)

    lum = lin @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    rel = lum / max(float((lum * sky).sum() / sky.sum()), 1e-4)
    tex = np.clip(rel, 0.05, 4.0) ** rng.uniform(*cfg.texture)
    sky_lin = grad[:, None, :] * tex[..., None]

    alpha = cv2.GaussianBlur(sky, (0, 0), sigmaX=max(0.6, 0.004 * max(h, w)))[..., None]
    out = scene * (1.0 - alpha) + sky_lin * alpha
    return np.round(srgb_encode(out) * 255.0).astype(np.uint8)
