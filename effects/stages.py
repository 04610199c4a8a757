"""Registered pipeline stages for the semantic effects: thin wrappers that read the frame's image, masks, persons
and metadata, call the pure functions of :mod:`campipe.effects`, and write the result back into the frame.

Missing masks are zeros (the effect is not applied there): without trained segmentation weights the ``segment`` stage
leaves ``frame.masks`` empty and ``frame.persons`` empty, so style/denoise/sharpen then act as their mask-free
versions, ``subject_tone`` does nothing, and ``portrait`` / ``stage_light`` raise a ValueError naming the file.

Stages and parameters (the defaults are the values below; see each function for units and ranges):

====================  ===============================================================================================
``style``             tone, warmth, colour (-1..1), skin_protect (0..1) -> :func:`.styles.apply_style`
``denoise``           strength (>= 0), sky_boost, skin_boost (>= 0), radius (px, 0 = auto) -> :func:`.denoise.denoise`
``sharpen``           amount (>= 0), radius (px), noise_floor (sigmas) -> :func:`.sharpen.sharpen`
``subject_tone``      strength (0..1), face_target_L (L*), contrast (-1..1), max_ev (stops)
                      -> :func:`.subject_tone.subject_tone`
``portrait``          aperture (f-number), focal_length_35mm (mm, 0 = EXIF or 26), focus (-1 = auto),
                      grain, polygon_blades, max_blur_frac -> :func:`.bokeh.portrait_blur`
``stage_light``       focus (-1 = everyone), strength, falloff, edge_softness -> :func:`.stage_light.stage_light`
``stage_light_mono``  focus, strength, falloff, edge_softness, mono_contrast -> same, ``mono=True``
====================  ===============================================================================================
"""
from __future__ import annotations

from campipe.frame import Frame
from campipe.registry import register_stage

from .bokeh import portrait_blur
from .denoise import denoise
from .masks import mask_or_zeros
from .noise import NoiseModel, estimate_noise_model, noise_model_from_meta
from .sharpen import sharpen
from .stage_light import stage_light
from .styles import apply_style
from .subject_tone import subject_tone

DEFAULT_FOCAL_35MM = 26.0


def _mask(frame: Frame, key: str):
    """The frame's mask ``key`` or None when absent (the functions treat None as zeros without allocating)."""
    m = frame.masks.get(key)
    return None if m is None else mask_or_zeros(frame.masks, key, frame.image.shape[:2])


def _where(frame: Frame) -> str:
    return str(frame.meta.get("source") or "this frame")


def frame_noise_model(frame: Frame) -> NoiseModel:
    """Noise model of the frame (metadata, else estimated once and cached in ``frame.meta['noise_model']``)."""
    cached = frame.meta.get("noise_model")
    if isinstance(cached, dict) and "a" in cached and "b" in cached:
        return NoiseModel(float(cached["a"]), float(cached["b"]), str(cached.get("source", "metadata")))
    model = noise_model_from_meta(frame.meta, frame.image)
    frame.meta["noise_model"] = {"a": model.a, "b": model.b, "source": model.source}
    return model


def _persons(frame: Frame, what: str) -> list:
    ps = [p.mask for p in frame.persons]
    if not ps or all(float(m.max(initial=0.0)) < 0.5 for m in ps):
        raise ValueError(f"{what} needs a detected person; none found in {_where(frame)}")
    return ps


@register_stage("style", requires=("linear", "masks"),
                params={"tone": 0.0, "warmth": 0.0, "colour": 0.0, "skin_protect": 1.0})
def style_stage(frame: Frame, tone: float, warmth: float, colour: float, skin_protect: float) -> Frame:
    """Photographic style (tone, warmth, colour) that keeps skin at the standard render."""
    frame.image = apply_style(frame.image, _mask(frame, "skin"), tone=tone, warmth=warmth, colour=colour,
                              skin_protect=skin_protect)
    return frame


@register_stage("denoise", requires=("linear", "masks"),
                params={"strength": 1.0, "sky_boost": 0.4, "skin_boost": 0.3, "radius": 0})
def denoise_stage(frame: Frame, strength: float, sky_boost: float, skin_boost: float, radius: int) -> Frame:
    """Noise-model-driven guided-filter denoise, stronger on sky and skin."""
    if strength == 0:
        return frame
    frame.image = denoise(frame.image, frame_noise_model(frame), _mask(frame, "sky"), _mask(frame, "skin"),
                          strength=strength, sky_boost=sky_boost, skin_boost=skin_boost, radius=radius)
    frame.meta["denoised"] = True
    return frame


def current_noise_model(frame: Frame) -> NoiseModel:
    """Noise of the image as it is now: the sensor model while the frame is the raw capture's scene-linear data;
    once ``denoise`` has run (residual noise) or the tone curve has (``meta['display_linear']``: the curve reshapes
    the noise), it is estimated from the current image. Used for re-added grain and for sharpening's coring."""
    if frame.meta.get("denoised") or frame.meta.get("display_linear"):
        return estimate_noise_model(frame.image)
    return frame_noise_model(frame)


@register_stage("sharpen", requires=("linear", "masks"), params={"amount": 0.5, "radius": 1.0, "noise_floor": 1.0})
def sharpen_stage(frame: Frame, amount: float, radius: float, noise_floor: float) -> Frame:
    """Luminance unsharp mask with noise coring, suppressed on sky, skin and teeth."""
    if amount == 0:
        return frame
    model = current_noise_model(frame) if noise_floor > 0 else None
    frame.image = sharpen(frame.image, _mask(frame, "sky"), _mask(frame, "skin"), _mask(frame, "teeth"),
                          amount=amount, radius=radius, noise=model, noise_floor=noise_floor)
    return frame


@register_stage("subject_tone", requires=("linear", "masks", "persons"),
                params={"strength": 1.0, "face_target_L": 55.0, "contrast": 0.0, "max_ev": 2.5})
def subject_tone_stage(frame: Frame, strength: float, face_target_L: float, contrast: float,
                       max_ev: float) -> Frame:
    """Per-person exposure/contrast so faces land at a target brightness; sky untouched."""
    frame.image = subject_tone(frame.image, [p.mask for p in frame.persons], _mask(frame, "skin"),
                               _mask(frame, "sky"), strength=strength, face_target_L=face_target_L,
                               contrast=contrast, max_ev=max_ev,
                               exposure_ev=float(frame.meta.get("baseline_exposure") or 0.0))
    return frame


@register_stage("portrait", requires=("linear", "persons"),
                params={"aperture": 2.8, "focal_length_35mm": 0.0, "focus": -1, "grain": True,
                        "polygon_blades": 0, "max_blur_frac": 0.05})
def portrait_stage(frame: Frame, aperture: float, focal_length_35mm: float, focus: int, grain: bool,
                   polygon_blades: int, max_blur_frac: float) -> Frame:
    """Portrait mode: disc-kernel background blur in linear light around the focus person, grain re-added."""
    ps = _persons(frame, "portrait mode")
    f35 = focal_length_35mm or float(frame.meta.get("focal_length_35mm") or DEFAULT_FOCAL_35MM)
    frame.image = portrait_blur(frame.image, ps, focus=focus, aperture=aperture, focal_length_35mm=f35,
                                hair=_mask(frame, "hair"), polygon_blades=polygon_blades, grain=grain,
                                noise=current_noise_model(frame) if grain else None, max_blur_frac=max_blur_frac)
    return frame


@register_stage("stage_light", requires=("linear", "persons"),
                params={"focus": -1, "strength": 1.0, "falloff": 0.35, "edge_softness": 0.02})
def stage_light_stage(frame: Frame, focus: int, strength: float, falloff: float, edge_softness: float) -> Frame:
    """Stage Light: the people lit on a black background with a soft falloff."""
    ps = _persons(frame, "stage light")
    frame.image = stage_light(frame.image, ps, _mask(frame, "hair"), focus=focus, strength=strength,
                              falloff=falloff, edge_softness=edge_softness)
    return frame


@register_stage("stage_light_mono", requires=("linear", "persons"),
                params={"focus": -1, "strength": 1.0, "falloff": 0.35, "edge_softness": 0.02, "mono_contrast": 0.5})
def stage_light_mono_stage(frame: Frame, focus: int, strength: float, falloff: float, edge_softness: float,
                           mono_contrast: float) -> Frame:
    """Stage Light Mono: the people in black and white on a black background."""
    ps = _persons(frame, "stage light mono")
    frame.image = stage_light(frame.image, ps, _mask(frame, "hair"), focus=focus, strength=strength,
                              falloff=falloff, edge_softness=edge_softness, mono=True, mono_contrast=mono_contrast)
    return frame
