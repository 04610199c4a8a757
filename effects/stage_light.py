"""Stage Light and Stage Light Mono: the people lit as on a stage, on a black background, with a soft falloff.

Input/Output: float32 **linear** working RGB (H, W, 3) (applied before the tone curve, so black stays black and the
subject keeps its exposure) and soft person masks float32 (H, W) in [0, 1].

* Subject alpha ``A = union(persons)``, extended by the hair mask near the people (hair keeps its soft coverage).
* Edge softness: ``A' = A * G_sigma(A)`` with ``sigma = edge_softness * subject height``: the silhouette's rim
  darkens smoothly into the black background instead of a cut-out edge (a spot light's penumbra).
* Vertical falloff: over the bottom ``falloff`` fraction of the subjects' bounding box the light drops smoothly
  (smoothstep) to 0, like a spot aimed at the faces: ``light(t) = 1 - smoothstep(1 - falloff, 1, t)``, ``t`` = 0 at
  the top of the subjects and 1 at their bottom.
* ``lit = img * A' * light`` (background -> 0, i.e. black); mono converts ``lit`` to its luminance (a neutral in the
  D65 working space) with an S-curve of ``mono_contrast`` stops around the subject's median, like Apple's Stage
  Light Mono.
* ``out = img + strength * (lit - img)``; ``strength = 0`` returns an exact copy.

References: Apple iPhone Portrait Lighting ("Stage Light", "Stage Light Mono"); Porter & Duff 1984 (compositing).
"""
from __future__ import annotations

import numpy as np

from campipe.colour import luminance_weights

from .masks import bbox, check_image, check_mask, detected_persons, feather, grow, union


def stage_light(img: np.ndarray, persons: list[np.ndarray], hair: np.ndarray | None = None, *,
                focus: int = -1, strength: float = 1.0, falloff: float = 0.35, edge_softness: float = 0.02,
                mono: bool = False, mono_contrast: float = 0.5) -> np.ndarray:
    """Light the people on a black background; returns a new float32 (H, W, 3) linear image.

    Args:
        img: float32 (H, W, 3) linear working RGB, >= 0.
        persons: soft person masks (at least one non-empty), float32 (H, W) in [0, 1].
        hair: optional soft hair mask (only hair within a few pixels of a person is kept).
        focus: -1 = every detected person is lit; K = only ``persons[K]`` is lit (the others go dark).
        strength: 0..1 blend (0 = identity).
        falloff: 0..1, fraction of the subjects' height over which the light fades to black at the bottom
            (0 = no vertical falloff).
        edge_softness: >= 0, rim penumbra as a fraction of the subjects' height (0 = the mask's own edge).
        mono: Stage Light Mono (luminance only, with contrast).
        mono_contrast: >= 0, S-curve strength in stops for mono (0 = none).

    Raises:
        ValueError: no person, or parameters out of range.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"stage_light.strength must be in [0, 1], got {strength}")
    if not 0.0 <= falloff <= 1.0:
        raise ValueError(f"stage_light.falloff must be in [0, 1], got {falloff}")
    if edge_softness < 0 or mono_contrast < 0:
        raise ValueError("stage_light.edge_softness and mono_contrast must be >= 0")
    x = check_image(img)
    shape = x.shape[:2]
    ps, fi = detected_persons(persons, shape, focus, "stage light")
    if fi >= 0:
        ps = [ps[fi]]
    if strength == 0.0:
        return x.copy()
    a = union(*ps)
    bb = bbox(a)
    y0, y1 = bb[0], bb[2]
    height = max(y1 - y0, 1)
    if hair is not None:
        a = np.maximum(a, check_mask(hair, shape, "hair") * grow(a, max(2, height // 50)))
    if edge_softness > 0:
        a = a * feather(a, edge_softness * height)
    if falloff > 0:
        t = (np.arange(shape[0], dtype=np.float32) - y0) / np.float32(height)
        u = np.clip((t - (1.0 - falloff)) / max(falloff, 1e-6), 0.0, 1.0)
        light = 1.0 - u * u * (3.0 - 2.0 * u)
        a = a * light[:, None]
    lit = x * a[..., None]
    if mono:
        w = luminance_weights()
        y = lit @ w
        if mono_contrast > 0:
            sel = a > 0.5
            mid = float(np.median(y[sel])) if sel.any() else 0.18
            e = np.log2(np.maximum(y, 1e-6) / max(mid, 1e-6))
            y = y * np.exp2(np.float32(mono_contrast) * np.tanh(e / 2.0)).astype(np.float32)
        # a neutral grey of luminance y: equal RGB (D65 white is (1, 1, 1) in the working space)
        lit = np.repeat(y[..., None], 3, axis=2) / np.float32(w.sum())
    return x + np.float32(strength) * (lit - x)
