"""Pipeline stage ``segment``: fill ``frame.masks`` and ``frame.persons`` with HyperDETR soft masks.

The network sees a *downscaled display-referred sRGB render* of the frame (long side <= ``max_side``). A
scene-referred frame keeps its own exposure (times 2^BaselineExposure for DNGs, as raw converters render it) as long
as its log-average luminance then lies within that of typical photos the network was trained on (``KEY_RANGE``:
15th to 85th percentile of the training split, 0.033-0.189; ``python benchmarks/seg_diagnostics.py photo-keys``);
only a frame outside it is brought to the nearest end (correction clipped to [1/8, 16]). The range was chosen among
the 5-95, 15-85 and 25-75 percentile ranges on training photos re-exposed by -4 ... +2 EV (``python
benchmarks/seg_diagnostics.py exposure --split train --limit 30 --ranges 5-95,15-85,25-75``: mean IoU over EV -2 ...
+1 0.752 / 0.753 / 0.751, over every EV 0.736 / 0.748 / 0.748; the 5-95 range leaves a frame 4 stops under too
dark). Until 2026-12-05 every frame was normalised to a log-average of 0.18 (Reinhard's key, meant for his
compressive operator, not for a plain sRGB encode): that rendered typical photos 1-2.5 stops brighter than the
training photos, and the samples' white studio backdrop became sky and their dusk sky a person (``python
benchmarks/seg_diagnostics.py exposure`` measures both policies on validation photos re-exposed as raw data). The
masks come back at the frame's full resolution, upsampled edge-aware against the frame's full-resolution display
luminance. ``frame.image`` itself is never modified.

Without trained weights the stage logs one clear warning per process and leaves ``frame.masks`` empty and
``frame.persons`` empty: every mask-driven effect treats a missing mask as zeros (effect not applied).

Provides: ``"masks"``, ``"persons"``. Requires: ``"linear"``.
Params: ``max_persons`` (4), ``score_threshold`` (0.5), ``max_side`` (1024, render size for the network input),
``refine`` (True: guided-filter upsampling; False: bilinear), ``runtime`` ("auto" | "onnx" | "torch"),
``weights`` ("" = installed weights / $CAMPIPE_WEIGHTS), ``dedup_iou`` (0.8: a person instance overlapping a
higher-scoring one by more than this mask IoU is a duplicate answer and dropped; 1 keeps all), ``tta`` (False:
True also runs the network on the mirrored render and averages the static channels, twice the network time; e.g.
``campipe process IMG --set segment.tta=true``), ``sky_refine`` (True: the sky mask is refined with the render's
colours, :mod:`campipe.segmentation.sky_refine`), ``person_refine`` (True: the same for the person channel, before
its union with the instances), ``hair_refine`` (True: the same for hair), ``person_framing`` (True: a stricter
person threshold when the subject fills the frame, :class:`campipe.segmentation.postprocess.PersonFraming`).

References: Reinhard et al., "Photographic Tone Reproduction for Digital Images" (SIGGRAPH 2002) for the log-average
key; He et al. guided filter (2010).
"""
from __future__ import annotations

import logging

import cv2
import numpy as np

from . import colour as cc
from .frame import Frame
from .registry import register_stage

log = logging.getLogger("campipe")
_warned_no_weights = False

#: log-average luminance of the training photos (linearised sRGB), 15th and 85th percentile of the training split
#: (``python benchmarks/seg_diagnostics.py photo-keys``: 0.033 / 0.189 over the 3,573 photos of the five sets)
KEY_RANGE = (0.033, 0.189)
#: largest correction applied to a frame's own exposure
GAIN_RANGE = (1.0 / 8.0, 16.0)


def log_average(linear: np.ndarray) -> float:
    """Log-average luminance (Reinhard's key) of linear working RGB (H, W, 3), on a <= ~256 x 256 subsample."""
    y = cc.luminance(linear[:: max(1, linear.shape[0] // 256), :: max(1, linear.shape[1] // 256)])
    return float(np.exp(np.mean(np.log(np.maximum(y, 0.0) + 1e-4))))


def exposure_gain(linear: np.ndarray, baseline_ev: float = 0.0) -> float:
    """Gain for the network's render of scene-linear RGB (H, W, 3): ``2**baseline_ev`` (the frame's own exposure)
    when the log-average luminance then lies in ``KEY_RANGE``, else the gain bringing it to the nearest end of the
    range (the correction clipped to ``GAIN_RANGE``)."""
    g0 = float(2.0 ** baseline_ev)
    key = g0 * log_average(linear)
    target = min(max(key, KEY_RANGE[0]), KEY_RANGE[1])
    return g0 * float(np.clip(target / max(key, 1e-6), *GAIN_RANGE))


def frame_gain(frame: Frame) -> float:
    """:func:`exposure_gain` of a scene-referred frame (with its DNG BaselineExposure); 1 for display-referred."""
    if not frame.meta.get("scene_referred", True):
        return 1.0
    return exposure_gain(frame.image, float(frame.meta.get("baseline_exposure", 0.0) or 0.0))


def frame_render(frame: Frame, max_side: int | None = None) -> tuple[np.ndarray, float]:
    """(the network's input render of ``frame`` (:func:`display_render` with :func:`frame_gain`), that gain)."""
    gain = frame_gain(frame)
    scene = bool(frame.meta.get("scene_referred", True))
    return display_render(frame.image, scene_referred=scene, max_side=max_side, gain=gain), gain


def display_render(linear: np.ndarray, scene_referred: bool = True, max_side: int | None = None,
                   gain: float | None = None) -> np.ndarray:
    """Linear working RGB (H, W, 3) -> float32 display-referred sRGB in [0, 1], optionally downscaled (INTER_AREA)
    so that the long side is <= ``max_side``. Scene-referred input is multiplied by ``gain`` (default
    :func:`exposure_gain`); display-referred input is only encoded."""
    img = np.asarray(linear, np.float32)
    if max_side and max(img.shape[:2]) > max_side:
        s = max_side / max(img.shape[:2])
        size = (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    if scene_referred:
        img = img * np.float32(exposure_gain(img) if gain is None else gain)
    return cc.working_to_display(img, "srgb")


def display_luma(linear: np.ndarray, scene_referred: bool = True, gain: float | None = None) -> np.ndarray:
    """Full-resolution guide: sRGB-encoded luminance float32 (H, W) in [0, 1] of linear working RGB."""
    if gain is None:
        gain = exposure_gain(linear) if scene_referred else 1.0
    return cc.srgb_encode(cc.luminance(linear) * np.float32(gain))


def _warn_no_weights(msg: str) -> None:
    global _warned_no_weights
    if not _warned_no_weights:
        log.warning("no trained HyperDETR weights installed (%s); semantic effects are disabled", msg)
        _warned_no_weights = True


@register_stage("segment", requires=("linear",), provides=("masks", "persons"),
                params={"max_persons": 4, "score_threshold": 0.5, "max_side": 1024, "refine": True,
                        "runtime": "auto", "weights": "", "dedup_iou": 0.8, "tta": False, "sky_refine": True,
                        "person_refine": True, "hair_refine": True, "person_framing": True})
def segment_stage(frame: Frame, max_persons: int, score_threshold: float, max_side: int, refine: bool,
                  runtime: str, weights: str, dedup_iou: float = 0.8, tta: bool = False,
                  sky_refine: bool = True, person_refine: bool = True, hair_refine: bool = True,
                  person_framing: bool = True) -> Frame:
    """Semantic masks (sky, person, hair, skin, teeth, glasses) and person instances from HyperDETR."""
    from campipe.segmentation import NoWeightsError, weights_path

    try:
        wpath = weights_path(weights or None)
    except NoWeightsError:
        if weights:  # an explicit path that does not exist is a user mistake, not a missing install
            raise
        _warn_no_weights(f"looked for {weights_path(must_exist=False)}; train with `campipe train` or set "
                         f"CAMPIPE_WEIGHTS")
        frame.masks, frame.persons = {}, []
        return frame
    from campipe.segmentation.inference import get_segmenter

    seg = get_segmenter(wpath, runtime=runtime, max_persons=int(max_persons), score_threshold=float(score_threshold),
                        refine="guided" if refine else "bilinear", dedup_iou=float(dedup_iou), tta=bool(tta),
                        sky_refine=bool(sky_refine), person_refine=bool(person_refine),
                        hair_refine=bool(hair_refine), person_framing=bool(person_framing))
    small, gain = frame_render(frame, max_side)
    if refine:
        res = seg(small, guide=display_luma(frame.image, gain=gain))
    else:
        res = seg(small, out_size=(frame.height, frame.width))
    frame.masks = dict(res.masks)
    frame.persons = list(res.persons)
    frame.meta["segmentation"] = {"model": res.model, "timings": res.timings,
                                  "scores": [p.score for p in res.persons]}
    return frame
