"""Soft-mask helpers shared by the semantic effects.

Every mask here is float32 (H, W) in [0, 1] at the image's resolution (the :class:`campipe.frame.Frame` contract).
A mask that the segmentation stage did not produce (no trained weights, class not detected) is treated as all
zeros, which by construction means "effect not applied there".

References: Porter & Duff, "Compositing Digital Images" (SIGGRAPH 1984) for soft-alpha compositing; Knutsson &
Westin, "Normalized and differential convolution" (CVPR 1993) for the masked (normalised) blurs used by callers.
"""
from __future__ import annotations

from typing import Mapping

import cv2
import numpy as np


def mask_or_zeros(masks: Mapping[str, np.ndarray] | None, key: str, shape: tuple[int, int]) -> np.ndarray:
    """Return ``masks[key]`` as float32 (H, W) clipped to [0, 1], or zeros of ``shape`` when absent.

    Raises ValueError naming the key when the mask has another size than ``shape`` (a stage bug, not a user error
    that could be silently fixed by resizing).
    """
    m = None if masks is None else masks.get(key)
    if m is None:
        return np.zeros(shape, np.float32)
    return check_mask(m, shape, key)


def check_mask(m: np.ndarray, shape: tuple[int, int], name: str = "mask") -> np.ndarray:
    """Validate a soft mask against an image size; return it float32 in [0, 1] (copy only when needed)."""
    m = np.asarray(m)
    if m.shape != tuple(shape):
        raise ValueError(f"{name} mask has shape {m.shape}, expected {tuple(shape)} (the image's H, W)")
    m = m.astype(np.float32, copy=False)
    if m.size and (m.min() < 0.0 or m.max() > 1.0):
        m = np.clip(m, 0.0, 1.0)
    return m


def check_image(img: np.ndarray) -> np.ndarray:
    """Validate an effect's input image: (H, W, 3); returned as float32 (no copy when it already is)."""
    x = np.asarray(img, np.float32)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got {x.shape}")
    return x


def detected_persons(persons, shape: tuple[int, int], focus: int, effect: str) -> tuple[list[np.ndarray], int]:
    """The person masks that hold a detection (max >= 0.5) and the position of ``focus`` among them.

    ``focus`` is an index into ``persons`` (-1: none requested, then -1 is returned). Raises a clear ValueError when
    no person is present or the requested one is not (``effect`` names the effect in the message)."""
    masks = [check_mask(m, shape, f"person {i}") for i, m in enumerate(persons)]
    keep = [i for i, m in enumerate(masks) if float(m.max(initial=0.0)) >= 0.5]
    if not keep:
        raise ValueError(f"{effect} needs a detected person; none found in the person masks")
    if focus >= 0 and focus not in keep:
        raise ValueError(f"focus person {focus} does not exist; {len(keep)} person(s) detected "
                         f"(indices {', '.join(map(str, keep))})")
    return [masks[i] for i in keep], (keep.index(focus) if focus >= 0 else -1)


def union(*masks: np.ndarray) -> np.ndarray:
    """Soft union (per-pixel maximum) of masks of the same shape."""
    out = np.zeros_like(masks[0], dtype=np.float32)
    for m in masks:
        np.maximum(out, m, out=out)
    return out


def _crop_box(mask: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    """Slices of the bounding box of ``mask > 0`` grown by ``margin`` (clipped to the image); None when empty."""
    b = bbox(mask, 0.0)
    if b is None:
        return None
    h, w = mask.shape
    return slice(max(0, b[0] - margin), min(h, b[2] + margin)), slice(max(0, b[1] - margin), min(w, b[3] + margin))


def feather(mask: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian-feathered copy of ``mask`` (sigma in pixels; 0 returns a copy).

    Only the mask's bounding box grown by 4 sigma is filtered (zero elsewhere: the Gaussian is truncated at 4 sigma,
    < 1e-4 of its mass), and sigmas above 8 px are computed at 1/k resolution with ``k = sigma // 4`` (a Gaussian
    that wide carries no detail finer than k px), so wide feathers on 12 MP frames stay cheap.
    """
    m = np.ascontiguousarray(mask, dtype=np.float32)
    if sigma_px <= 0:
        return m.copy()
    out = np.zeros_like(m)
    box = _crop_box(m, int(np.ceil(4 * sigma_px)) + 1)
    if box is None:
        return out
    c = m[box]
    k = int(sigma_px // 4) if sigma_px > 8 else 1
    if k > 1:
        small = cv2.resize(c, (max(1, c.shape[1] // k), max(1, c.shape[0] // k)), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), float(sigma_px) / k, borderType=cv2.BORDER_REFLECT)
        out[box] = cv2.resize(small, (c.shape[1], c.shape[0]), interpolation=cv2.INTER_LINEAR)
    else:
        out[box] = cv2.GaussianBlur(c, (0, 0), float(sigma_px), borderType=cv2.BORDER_REFLECT)
    return out


def grow(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """Grey-level dilation of a soft mask by ``radius_px`` pixels (0 returns a copy).

    The structuring element is a (2r+1)^2 square (Chebyshev distance; separable, so O(1) per pixel in OpenCV —
    an elliptic element costs O(r) and took seconds on 12 MP), applied to the mask's bounding box only.
    """
    m = np.ascontiguousarray(mask, dtype=np.float32)
    r = int(round(radius_px))
    if r <= 0:
        return m.copy()
    out = np.zeros_like(m)
    box = _crop_box(m, r + 1)
    if box is None:
        return out
    k = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * r + 1, 2 * r + 1))
    out[box] = cv2.dilate(np.ascontiguousarray(m[box]), k, borderType=cv2.BORDER_REPLICATE)
    return out


def bbox(mask: np.ndarray, thresh: float = 0.5) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1) half-open bounding box of ``mask > thresh``; None when empty."""
    ys = np.flatnonzero((mask > thresh).any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero((mask > thresh).any(axis=0))
    return int(ys[0]), int(xs[0]), int(ys[-1]) + 1, int(xs[-1]) + 1
