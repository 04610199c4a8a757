"""The Python API: ``campipe.process(path_or_array, style=...)``.

Example::

    import campipe
    res = campipe.process("samples/astronaut_iso200.dng", style="warm")
    res.image.shape, res.image.dtype        # (H, W, 3) float32 display-encoded sRGB in [0, 1]
    res.masks.keys()                        # soft masks (float32 (H, W) in [0, 1]) when segmentation ran
    res.frame.timings                       # seconds per stage
    campipe.encode.write_image("out.jpg", res.image, meta=res.frame.meta)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .decode import DEFAULT_MAX_MEGAPIXELS, decode_file
from .frame import Frame
from .pipeline import Pipeline
from .presets import Preset, load_preset


@dataclass
class ProcessResult:
    """image: float32 (H, W, 3) display-encoded RGB in [0, 1] in ``frame.meta['output_space']``;
    masks: name -> float32 (H, W) in [0, 1]; frame: the final Frame; pipeline: what ran."""

    image: np.ndarray
    masks: dict[str, np.ndarray]
    frame: Frame
    pipeline: Pipeline


def effect_overrides(portrait: bool = False, stage_light: str | None = None, aperture: float | None = None,
                     focus: str | int | None = None) -> tuple[list[str], list[str]]:
    """Translate the portrait-mode flags into (extra stages, ``stage.param=value`` settings)."""
    extra, sets = [], []
    stage = None
    if stage_light:
        if stage_light not in ("stage_light", "stage_light_mono"):
            raise ValueError("stage light must be 'stage_light' or 'stage_light_mono'")
        stage = stage_light
    elif portrait or aperture is not None or focus is not None:
        stage = "portrait"
    if stage:
        extra.append(stage)
        if aperture is not None and stage == "portrait":
            sets.append(f"portrait.aperture={float(aperture)}")
        if focus is not None:
            k = str(focus)
            if k.startswith("person:"):
                k = k.split(":", 1)[1]
            try:
                idx = int(k)
            except ValueError:
                raise ValueError(f"--focus expects person:K (K = 0, 1, ...), got {focus!r}") from None
            sets.append(f"{stage}.focus={idx}")
    return extra, sets


def build(style: str | Path | Preset = "standard", sets: list[str] | None = None,
          extra_stages: list[str] | None = None) -> Pipeline:
    preset = style if isinstance(style, Preset) else load_preset(style)
    return preset.build(sets, extra_stages)


def _output_may_reuse_linear(pipeline: Pipeline) -> bool:
    """True when the pipeline has an ``output`` stage and no later stage requires the linear image."""
    names = pipeline.names
    if "output" not in names:
        return False
    later = pipeline.stages[len(names) - names[::-1].index("output"):]
    return all("linear" not in st.spec.requires for st in later)


def process(source: str | Path | np.ndarray | Frame, style: str | Path | Preset = "standard",
            sets: list[str] | None = None, portrait: bool = False, stage_light: str | None = None,
            aperture: float | None = None, focus: str | int | None = None,
            on_stage: Callable[[str, Frame, float], None] | None = None, half_size: bool = False,
            max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, strict: bool = False,
            pipeline: Pipeline | None = None, meta: dict[str, Any] | None = None,
            keep_linear: bool = True) -> ProcessResult:
    """Render ``source`` (a file path, a float32 linear working-space (H, W, 3) array, or a Frame) with a style.

    The pipeline is built (and its requirements checked) before the input is decoded.

    ``keep_linear=False`` is for callers that only want the rendered image (the CLI and batch writers): the output
    stage then encodes in the linear buffer itself instead of allocating a second full-size image, so
    ``res.frame.image`` is the display image afterwards (``meta['linear_released']``). It applies only when no stage
    after ``output`` needs the linear image.
    """
    if pipeline is None:
        extra, more_sets = effect_overrides(portrait, stage_light, aperture, focus)
        pipeline = build(style, list(sets or []) + more_sets, extra)
    if isinstance(source, Frame):
        frame = source
    elif isinstance(source, np.ndarray):
        arr = np.asarray(source)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected a (H, W, 3) linear RGB array, got shape {arr.shape}")
        frame = Frame(image=arr.astype(np.float32, copy=True), meta=dict(meta or {"scene_referred": True}))
    else:
        frame = decode_file(source, half_size=half_size, max_megapixels=max_megapixels, strict=strict)
    frame.meta["style"] = pipeline.preset_name
    if not keep_linear and _output_may_reuse_linear(pipeline):
        frame.meta["_output_in_place"] = True
    frame = pipeline.run(frame, on_stage=on_stage)
    frame.meta.pop("_output_in_place", None)
    if frame.display is None:
        from .output import output_transform
        frame.display = output_transform(np.clip(frame.image, 0, 1), frame.meta.get("output_space", "srgb"))
    return ProcessResult(frame.display, frame.masks, frame, pipeline)
