"""Portrait mode: synthetic shallow depth of field from person masks, with physically plausible bokeh.

Input/Output: float32 **linear** working RGB (H, W, 3) (scene-referred, before the tone curve, so that bright
highlights, which hold most of the energy, spread into bright discs exactly as a real lens does) and float32 soft
person masks (H, W) in [0, 1].

Model (thin lens, 35 mm-equivalent units):

* The focus subject is chosen automatically (largest and most central person: ``area * (1 - 0.5 * d)`` with ``d``
  the centroid's distance to the image centre over the half diagonal) or by index.
* Its distance is estimated from its size: shoulders ~0.45 m wide span ``w`` of the frame width, so
  ``s_f = f * 0.45 m / (w * sensor_width)`` (sensor 36 x 24 mm, long side along the long image side), clamped to
  0.3..20 m. Other people are placed at ``s_k = s_f * sqrt(area_f / area_k)`` (relative size as the depth proxy:
  the same size = the same plane, smaller = farther); the background is at infinity.
* Circle of confusion diameter on the 35 mm frame: ``c(s) = f^2 / (N (s_f - f)) * |s - s_f| / s`` (mm), converted to
  pixels along the long side, capped at ``max_blur_frac`` of the long side.

Rendering (layered, back to front, all in linear light):

* Background = everything that is not a person; it is blurred with a disc (or ``polygon_blades``-gon) kernel by
  *normalised convolution* ``blur(img * w) / blur(w)`` with ``w = (1 - grow(persons, guard))^2``: subject pixels get
  no weight, so no subject colour bleeds into the background (no halo), and the hidden background behind the
  subject's edges is filled from the surrounding background; holes wider than the kernel are filled by push-pull
  (coarse-to-fine normalised interpolation).
* Other people are blurred the same way with their own diameters, each a layer whose alpha spreads with its blur.
* The focus subject (its person mask, extended by the hair mask near it) is composited sharp with its soft alpha, so
  hair and other soft edges keep their partial coverage.
* Grain: the blur removes sensor noise, so noise of the same model (``variance = a * signal + b``) is re-added in
  proportion to how much of each pixel comes from blurred layers; blurred areas then match the sharp ones.

Large kernels are computed on a downsampled copy (the blurred layers hold no detail finer than the kernel; the disc is
kept at >= 12 px across), with cv2.filter2D, so a 12 MP frame costs a few filter passes at reduced size.

References: Wadhwa et al., "Synthetic Depth-of-Field with a Single-Camera Mobile Phone", SIGGRAPH 2018;
Knutsson & Westin, "Normalized and differential convolution", CVPR 1993; Gortler et al., "The Lumigraph" (push-pull),
SIGGRAPH 1996; Potmesil & Chakravarty 1981 (thin-lens circle of confusion).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .masks import bbox, check_image, check_mask, detected_persons, grow, union
from .noise import NoiseModel, add_grain, estimate_noise_model

SHOULDER_WIDTH_M = 0.45
MIN_KERNEL_PX = 12  # disc diameter kept at >= this many pixels at the working (downsampled) scale


@dataclass(frozen=True)
class Layer:
    """One depth layer: which person (-1 = background), distance (m), blur diameter (px)."""

    index: int
    distance_m: float
    diameter_px: float


def choose_focus(persons: list[np.ndarray]) -> int:
    """Index of the largest, most central person (``area * (1 - 0.5 * d)``, ``d`` = normalised centre distance)."""
    best, best_score = 0, -1.0
    for i, m in enumerate(persons):
        h, w = m.shape
        area = float(m.sum())
        if area <= 0:
            continue
        ys, xs = np.mgrid[0:h, 0:w] if h * w <= 4096 else (None, None)
        if ys is None:  # centroid from projections (no (H, W) index grids on big frames)
            cy = float((m.sum(axis=1) * np.arange(h)).sum() / area)
            cx = float((m.sum(axis=0) * np.arange(w)).sum() / area)
        else:
            cy, cx = float((m * ys).sum() / area), float((m * xs).sum() / area)
        d = np.hypot((cy - (h - 1) / 2) / (h / 2), (cx - (w - 1) / 2) / (w / 2)) / np.sqrt(2)
        score = area * (1.0 - 0.5 * min(d, 1.0))
        if score > best_score:
            best, best_score = i, score
    return best


def coc_px(distance_m: float, focus_m: float, *, aperture: float, focal_length_35mm: float, long_side_px: int,
           max_px: float) -> float:
    """Thin-lens circle-of-confusion diameter in pixels for an object at ``distance_m`` (inf allowed)."""
    f = focal_length_35mm
    s_f = focus_m * 1000.0
    base = f * f / (aperture * max(s_f - f, 1e-3))  # mm, object at infinity
    rel = 1.0 if not np.isfinite(distance_m) else abs(distance_m - focus_m) / max(distance_m, 1e-6)
    return float(min(base * rel / 36.0 * long_side_px, max_px))


def plan_layers(persons: list[np.ndarray], focus: int, *, aperture: float, focal_length_35mm: float,
                max_blur_frac: float) -> tuple[list[Layer], float]:
    """Depth proxy and blur diameter for the background and every person; returns (layers, focus distance)."""
    h, w = persons[focus].shape
    long_side = max(h, w)
    sensor_long_mm = 36.0
    bb = bbox(persons[focus])
    if bb is None:
        raise ValueError("the focus person's mask is empty")
    width_frac = (bb[3] - bb[1]) / w
    sensor_w = sensor_long_mm if w >= h else 24.0
    s_f = float(np.clip(focal_length_35mm * SHOULDER_WIDTH_M / (width_frac * sensor_w), 0.3, 20.0))
    kw = dict(aperture=aperture, focal_length_35mm=focal_length_35mm, long_side_px=long_side,
              max_px=max_blur_frac * long_side)
    layers = [Layer(-1, float("inf"), coc_px(float("inf"), s_f, **kw))]
    area_f = float(persons[focus].sum())
    for i, m in enumerate(persons):
        if i == focus:
            layers.append(Layer(i, s_f, 0.0))
            continue
        ratio = float(np.clip(np.sqrt(area_f / max(float(m.sum()), 1.0)), 0.25, 8.0))
        s_k = s_f * ratio
        layers.append(Layer(i, s_k, coc_px(s_k, s_f, **kw)))
    layers.sort(key=lambda L: -L.distance_m)  # far to near
    return layers, s_f


def aperture_kernel(diameter_px: float, blades: int = 0, supersample: int = 4) -> np.ndarray:
    """Normalised float32 aperture kernel: an anti-aliased disc, or a regular polygon with ``blades`` >= 5 sides."""
    r = max(diameter_px, 1.0) / 2.0
    n = int(np.ceil(r - 0.5)) * 2 + 1
    ss = supersample
    c = (np.arange(n * ss, dtype=np.float32) + 0.5) / ss - n / 2.0
    y, x = np.meshgrid(c, c, indexing="ij")
    if blades and blades >= 3:
        # inside a regular polygon of circumradius r: the max projection onto the edge normals <= apothem
        ang = np.arctan2(y, x)
        sector = 2 * np.pi / blades
        a = np.mod(ang + np.pi / 2, sector) - sector / 2
        inside = np.hypot(x, y) * np.cos(a) <= r * np.cos(np.pi / blades)
    else:
        inside = x * x + y * y <= r * r
    k = inside.reshape(n, ss, n, ss).mean(axis=(1, 3)).astype(np.float32)
    return k / k.sum()


def _resize(x: np.ndarray, size: tuple[int, int], area: bool) -> np.ndarray:
    return cv2.resize(x, size, interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR)


def _push_pull(num: np.ndarray, den: np.ndarray, thr: float = 0.05) -> np.ndarray:
    """Normalised values ``num / den`` with low-confidence pixels (den < thr) filled coarse-to-fine."""
    if den.min() >= thr:
        return num / den[..., None]
    h, w = den.shape
    if min(h, w) <= 4:
        tot = float(den.sum())
        fill = num.reshape(-1, 3).sum(0) / tot if tot > 0 else np.zeros(3, np.float32)
        return np.broadcast_to(fill.astype(np.float32), num.shape).copy()
    size = (max(1, w // 2), max(1, h // 2))
    coarse = _push_pull(_resize(num, size, True), _resize(den, size, True), thr)
    coarse = _resize(coarse, (w, h), False)
    a = np.clip(den / thr, 0.0, 1.0)[..., None]
    val = num / np.maximum(den, 1e-12)[..., None]
    return a * val + (1.0 - a) * coarse


def _blur_layer(img: np.ndarray, weight: np.ndarray, diameter: float, blades: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised-convolution disc blur of ``img`` with per-pixel ``weight``; returns (colour, blurred weight)."""
    h, w = weight.shape
    d = max(1, int(diameter // MIN_KERNEL_PX))
    size = (max(1, round(w / d)), max(1, round(h / d)))
    if d > 1:
        wi = _resize(weight, size, True)
        num = _resize(img * weight[..., None], size, True)
    else:
        wi, num = weight, img * weight[..., None]
    k = aperture_kernel(diameter / d, blades)
    numb = cv2.filter2D(num, -1, k, borderType=cv2.BORDER_REFLECT)
    denb = cv2.filter2D(wi, -1, k, borderType=cv2.BORDER_REFLECT)
    col = _push_pull(numb, denb)
    if d > 1:
        col = _resize(col, (w, h), False)
        denb = _resize(denb, (w, h), False)
    np.maximum(col, 0.0, out=col)
    np.clip(denb, 0.0, 1.0, out=denb)
    return col, denb


def portrait_blur(img: np.ndarray, persons: list[np.ndarray], *, focus: int = -1, aperture: float = 2.8,
                  focal_length_35mm: float = 26.0, hair: np.ndarray | None = None, polygon_blades: int = 0,
                  grain: bool = True, noise: NoiseModel | None = None, max_blur_frac: float = 0.05,
                  edge_guard_frac: float = 0.002, seed: int = 0) -> np.ndarray:
    """Render a shallow depth of field around one person; returns a new float32 (H, W, 3) linear image.

    Args:
        img: float32 (H, W, 3) linear working RGB, >= 0 (scene-referred; highlights > 1 become bright discs).
        persons: soft person masks, float32 (H, W) in [0, 1] (e.g. ``[p.mask for p in frame.persons]``).
        focus: index into ``persons`` of the subject in focus; -1 = automatic (:func:`choose_focus`).
        aperture: simulated f-number (> 0; smaller = more blur), 35 mm-equivalent.
        focal_length_35mm: 35 mm-equivalent focal length in mm (> 0).
        hair: optional soft hair mask; hair within a few pixels of the focus subject stays sharp with it.
        polygon_blades: 0 = circular aperture, >= 5 = polygonal aperture with that many blades.
        grain: re-add sensor noise to blurred areas (needs ``noise`` or estimates it from ``img``).
        noise: noise model (``variance = a * signal + b``).
        max_blur_frac: cap on the blur diameter, as a fraction of the image's long side.
        edge_guard_frac: how far (fraction of the long side, >= 1 px) around people is excluded from the
            background's normalised convolution, so soft edge pixels (part subject colour) do not bleed.
        seed: grain random seed (deterministic output).

    Raises:
        ValueError: no person with a non-empty mask, bad ``focus`` index, or out-of-range parameters.
    """
    x = check_image(img)
    if not aperture > 0:
        raise ValueError(f"portrait.aperture must be > 0 (an f-number such as 1.8), got {aperture}")
    if not focal_length_35mm > 0:
        raise ValueError(f"portrait.focal_length_35mm must be > 0 mm, got {focal_length_35mm}")
    if polygon_blades not in (0,) and not 5 <= polygon_blades <= 16:
        raise ValueError(f"portrait.polygon_blades must be 0 (disc) or 5..16, got {polygon_blades}")
    shape = x.shape[:2]
    masks, fi = detected_persons(persons, shape, focus, "portrait mode")
    if fi < 0:
        fi = choose_focus(masks)
    layers, _ = plan_layers(masks, fi, aperture=aperture, focal_length_35mm=focal_length_35mm,
                            max_blur_frac=max_blur_frac)
    if all(L.diameter_px < 1.0 for L in layers):
        return x.copy()
    long_side = max(shape)
    guard = max(1, int(round(edge_guard_frac * long_side)))
    alphas = list(masks)
    if hair is not None:
        hm = check_mask(hair, shape, "hair")
        alphas[fi] = np.maximum(alphas[fi], hm * grow(masks[fi], max(2, 4 * guard)))
    everyone = union(*alphas)
    out = None
    blur_frac = None
    for L in layers:
        if L.index < 0:
            wbg = 1.0 - grow(everyone, guard)
            wbg *= wbg
            if L.diameter_px >= 1.0:
                out, _ = _blur_layer(x, wbg, L.diameter_px, polygon_blades)
                blur_frac = np.ones(shape, np.float32)
            else:
                out, blur_frac = x.copy(), np.zeros(shape, np.float32)
            continue
        a = alphas[L.index]
        if L.diameter_px >= 1.0:
            col, spread = _blur_layer(x, a, L.diameter_px, polygon_blades)
            A, blurred = spread, 1.0
        else:
            col, A, blurred = x, a, 0.0
        out += A[..., None] * (col - out)
        blur_frac += A * (blurred - blur_frac)
    if grain:
        model = noise if noise is not None else estimate_noise_model(x)
        if model.a > 0 or model.b > 0:
            out = add_grain(out, model, blur_frac, seed)
    return out.astype(np.float32, copy=False)
