"""Body-skin derivation (arms, hands, legs, faces of pedestrians), which no data set labels.

Method (kept simple on purpose):

1. A per-image skin-colour model is a Gaussian over (Cr, Cb) in YCrCb (the classic chroma-only skin space, robust to
   shading). It is fitted on *seed* pixels: the labelled face skin where a set has it (:func:`fit_skin_model`), or,
   for sets without any skin label (Penn-Fudan), the person pixels of the top 25 % of each person's box (the head)
   that pass the generic Chai & Ngan chroma rule ``133 <= Cr <= 173, 77 <= Cb <= 127``.
2. It is applied only *inside the person mask*, outside hair/clothes when those are known: Mahalanobis distance
   d^2 <= ``pos_d2`` -> skin (1), d^2 >= ``neg_d2`` -> not skin (0), in between -> unknown (255, no loss). Pixels
   that are too dark (Y < 40) are unknown (chroma is unreliable there).
3. Without enough seeds (< ``min_seeds`` pixels) the person's skin stays unknown.

The three-state output feeds the "known" masks, so doubtful pixels (beige clothes, shadows) never teach the model.

Input/outputs: image uint8 (H, W, 3) sRGB RGB; masks bool (H, W); output uint8 (H, W) in {0, 1, 255}.

References: D. Chai, K. N. Ngan, "Face segmentation using skin-color map in videophone applications", IEEE TCSVT 1999;
M. J. Jones, J. M. Rehg, "Statistical color models with application to skin detection", IJCV 2002.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

UNKNOWN = 255


@dataclass(frozen=True)
class SkinModel:
    """Gaussian over (Cr, Cb): mean (2,), inverse covariance (2, 2)."""

    mean: np.ndarray
    icov: np.ndarray


def _crcb(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ycc = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2YCrCb)
    return ycc[..., 0], ycc[..., 1:].astype(np.float32)


def fit_skin_model(image: np.ndarray, seeds: np.ndarray, min_seeds: int = 50) -> SkinModel | None:
    """Fit the (Cr, Cb) Gaussian on ``seeds`` (bool mask of skin pixels); None if fewer than ``min_seeds``."""
    y, cc = _crcb(image)
    sel = seeds & (y >= 40)
    if int(sel.sum()) < min_seeds:
        return None
    x = cc[sel]
    mean = x.mean(0)
    cov = np.cov(x, rowvar=False) + np.eye(2, dtype=np.float64) * 4.0  # floor: >= 2 code values of spread
    return SkinModel(mean.astype(np.float32), np.linalg.inv(cov).astype(np.float32))


def skin_distance2(image: np.ndarray, model: SkinModel) -> np.ndarray:
    """Squared Mahalanobis distance float32 (H, W) of every pixel's (Cr, Cb) to the model."""
    _, cc = _crcb(image)
    d = cc - model.mean
    return np.einsum("hwi,ij,hwj->hw", d, model.icov, d).astype(np.float32)


def apply_skin_model(image: np.ndarray, model: SkinModel | None, region: np.ndarray, pos_d2: float = 4.0,
                     neg_d2: float = 16.0) -> np.ndarray:
    """Three-state skin label inside ``region`` (bool); outside region: UNKNOWN (caller decides)."""
    out = np.full(region.shape, UNKNOWN, np.uint8)
    if model is None:
        return out
    y, _ = _crcb(image)
    d2 = skin_distance2(image, model)
    ok = region & (y >= 40)
    out[ok & (d2 <= pos_d2)] = 1
    out[ok & (d2 >= neg_d2)] = 0
    return out


def head_seeds(image: np.ndarray, person: np.ndarray, head_frac: float = 0.25) -> np.ndarray:
    """Seed pixels for images without skin labels: generic-rule skin in the top ``head_frac`` of each person blob."""
    y, cc = _crcb(image)
    cr, cb = cc[..., 0], cc[..., 1]
    rule = (cr >= 133) & (cr <= 173) & (cb >= 77) & (cb <= 127) & (y >= 40)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(person.astype(np.uint8), connectivity=8)
    rows = np.arange(person.shape[0])[:, None]
    seeds = np.zeros_like(person)
    for i in range(1, n):  # loop over person blobs (a handful), not pixels
        top, hgt = stats[i, cv2.CC_STAT_TOP], stats[i, cv2.CC_STAT_HEIGHT]
        seeds |= (lab == i) & (rows < top + head_frac * hgt)
    return seeds & rule


def derive_body_skin(image: np.ndarray, person: np.ndarray, exclude: np.ndarray | None = None,
                     face_skin: np.ndarray | None = None) -> np.ndarray:
    """Skin label uint8 (H, W): 1 skin, 0 not skin, 255 unknown.

    Outside ``person``: 0 (no skin outside people). Inside: the per-image colour model (seeded by ``face_skin`` if
    given, else by :func:`head_seeds`); pixels of ``exclude`` (hair, clothes, when known) are 0; ``face_skin`` is 1.
    """
    person = person.astype(bool)
    seeds = face_skin.astype(bool) if face_skin is not None else head_seeds(image, person)
    model = fit_skin_model(image, seeds)
    out = apply_skin_model(image, model, person)
    out[~person] = 0
    if exclude is not None:
        out[exclude.astype(bool)] = 0
    if face_skin is not None:
        out[face_skin.astype(bool)] = 1
    return out
