"""Inference API: ``segment(image)`` -> soft masks at the image's resolution + person instances.

Input (any size and orientation):
    * a path (JPEG/PNG/TIFF/HEIC/DNG/RAW; decoded by ``campipe.decode.decode_file``, EXIF orientation applied,
      RAW rendered display-referred at its own exposure, see ``campipe.segment_stage.frame_render``);
    * a uint8 / uint16 (H, W, 3) sRGB array (also (H, W) gray or (H, W, 4) with alpha, which is ignored);
    * a float32 (H, W, 3) display-referred sRGB array in [0, 1] (values outside are clipped).

Output :class:`SegmentationResult`:
    ``masks``: {"sky", "person", "hair", "skin", "teeth", "glasses"} -> float32 (H, W) in [0, 1]; "person" is the
    union (pixel-wise max) of the semantic person channel and the kept instances;
    ``persons``: list of :class:`campipe.frame.PersonInstance` (mask float32 (H, W) in [0, 1], score in [0, 1]:
    the query's person probability x its mask quality, see :func:`.postprocess.decode_outputs`), sorted by
    descending score, score >= ``score_threshold``, at most ``max_persons`` (default 4), no empty masks;
    ``timings``: seconds per step; ``model``: name, file, sha256, runtime, decoder layers, quantized, tta,
    sky_refine, person_refine and hair_refine flags.

Steps: letterbox to the network size -> runner (ONNX Runtime or eager torch, see :mod:`.runtime`; with ``tta=True``
also on the mirrored canvas, static-channel logits averaged, :func:`.postprocess.merge_flip`) -> sigmoid/softmax,
crop, select instances (:mod:`.postprocess`) -> edge-aware upsampling with the guided filter against the
full-resolution image (:mod:`.guided_filter`) -> sky, person channel and hair refined with the photo's own colours
(``sky_refine``, ``person_refine``, ``hair_refine``, all on by default, :mod:`.sky_refine`: sky seen through
branches, plain backgrounds around people, hair edges) -> person = the refined person channel united with the
instances.

Without trained weights, :class:`campipe.segmentation.NoWeightsError` is raised (never random masks).

References: DETR (Carion et al. 2020) post-processing; He et al. guided filter (2010).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from campipe.frame import PersonInstance

from . import weights_path
from .postprocess import (DEFAULT_DEDUP_IOU, DEFAULT_PERSON_FRAMING, REFINE_MODES, decode_outputs, flip_canvas,
                          guide_params, letterbox, merge_flip, normalize, upsample_classes, upsample_masks)

MODEL_NAME = "HyperDETR"
MASK_KEYS = ("sky", "person", "hair", "skin", "teeth", "glasses")


@dataclass
class SegmentationResult:
    """Soft masks and person instances at the input image's resolution (see module docstring)."""

    masks: dict[str, np.ndarray]
    persons: list[PersonInstance]
    size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)


def gray_guide(rgb: np.ndarray) -> np.ndarray:
    """Display-referred RGB (H, W, 3) in [0, 1] -> float32 (H, W) guide (Rec.709 luma weights on encoded values)."""
    return np.ascontiguousarray(rgb @ np.array([0.2126, 0.7152, 0.0722], np.float32), dtype=np.float32)


def to_display_rgb(image) -> np.ndarray:
    """Any accepted input (see module docstring) -> float32 (H, W, 3) display-referred sRGB in [0, 1]."""
    if isinstance(image, (str, Path)):
        from campipe.decode import decode_file
        from campipe.segment_stage import frame_render

        return frame_render(decode_file(image))[0]
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"image must be (H, W, 3) RGB (or (H, W) gray / (H, W, 4) RGBA), got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ValueError(f"image is too small to segment: {arr.shape[1]}x{arr.shape[0]}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if np.issubdtype(arr.dtype, np.floating):
        out = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return np.clip(out, 0.0, 1.0)
    raise ValueError(f"unsupported image dtype {arr.dtype}; give uint8/uint16 sRGB or float32 in [0, 1]")


class Segmenter:
    """A loaded model + runner; call it on images. Thread-safe (one inference at a time).

    Args:
        weights: checkpoint path (default :func:`campipe.segmentation.weights_path`).
        runtime: "auto" (ONNX Runtime fp32 if available, else eager torch), or one of
            "onnx", "onnx-int8", "torch", "compile-bf16" (see :mod:`.runtime`).
        keep_dec_layers: prune the decoder to the first k layers at load.
        max_persons, score_threshold: instance selection.
        dedup_iou: drop a person instance whose mask overlaps a higher-scoring one by more than this IoU
            (duplicate answers of several queries); 1.0 keeps them all.
        refine: "guided" (edge-aware, default) or "bilinear" upsampling to the output resolution.
        guide_radius, guide_eps: guided-filter window radius (network-resolution pixels) and regularisation for
            every class; default None: each class's own (:data:`.postprocess.CLASS_GUIDE`, else radius 2, eps
            1e-3).
        sky_refine: refine the sky mask with the photo's colours (:mod:`.sky_refine`; default on). It runs at the
            resolution of the image given to the call and, when the output size differs (a ``guide`` or
            ``out_size``), the refined sky is upsampled from there.
        person_refine: the same for the person channel, before its union with the instances
            (:func:`.sky_refine.refine_person`; default on).
        hair_refine: the same for hair (:func:`.sky_refine.refine_hair`; default on).
        person_framing: a stricter person threshold when the subject fills the frame (close-ups), for the person
            channel and the person instances (:class:`.postprocess.PersonFraming`; default on).
        tta: horizontal-flip test-time augmentation of the static channels (sky, person, hair, skin, teeth,
            glasses): twice the network time; on the validation split +0.01 IoU on most classes (MODEL_CARD.md).
    """

    def __init__(self, weights=None, *, runtime: str = "auto", keep_dec_layers: int | None = None,
                 threads: int | None = None, max_persons: int = 4, score_threshold: float = 0.5,
                 refine: str = "guided", guide_radius: int | None = None, guide_eps: float | None = None,
                 dedup_iou: float = DEFAULT_DEDUP_IOU, tta: bool = False, sky_refine: bool = True,
                 person_refine: bool = True, hair_refine: bool = True, person_framing: bool = True) -> None:
        if not 0.0 <= dedup_iou <= 1.0:
            raise ValueError(f"dedup_iou must be in [0, 1], got {dedup_iou}")
        if refine not in REFINE_MODES:
            raise ValueError(f"refine must be 'guided' or 'bilinear', got {refine!r}")
        if max_persons < 0 or not 0.0 <= score_threshold <= 1.0:
            raise ValueError("max_persons must be >= 0 and score_threshold in [0, 1]")
        self.path = weights_path(weights)
        t0 = time.perf_counter()
        self.runtime_request, self.threads, self._keep = runtime, threads, keep_dec_layers
        self._scene_runner = None
        if not self._load_cached_graph():
            self._load_model()
            from .runtime import make_runner

            self.runner = make_runner(self.model, self.meta["sha256"], runtime, threads=threads,
                                      weights_file=self.path)
            self._record_graph_meta()
        self.load_seconds = time.perf_counter() - t0
        self.max_persons, self.score_threshold = int(max_persons), float(score_threshold)
        self.dedup_iou = float(dedup_iou)
        self.tta = bool(tta)
        self.sky_refine, self.person_refine, self.hair_refine = bool(sky_refine), bool(person_refine), bool(hair_refine)
        self.person_framing = bool(person_framing)
        self.refine = refine
        self.guide_radius = None if guide_radius is None else int(guide_radius)
        self.guide_eps = None if guide_eps is None else float(guide_eps)
        self.mean = self.meta["normalization"]["mean"]
        self.std = self.meta["normalization"]["std"]
        self.classes = tuple(self.meta.get("classes") or self.cfg.semantic_classes)
        self._lock = threading.Lock()

    def _load_model(self) -> None:
        """Build the PyTorch model from the checkpoint (imports torch)."""
        from .checkpoint import load_checkpoint

        self.model, self.meta = load_checkpoint(self.path, keep_dec_layers=self._keep)
        self.cfg = self.meta["config_obj"]
        self.dec_layers = len(self.model.transformer.decoder)

    def _load_cached_graph(self) -> bool:
        """ONNX Runtime on the graph already exported for exactly these weights (same sha256), without PyTorch:
        only for the default fp32 ONNX path (runtime auto/onnx, no pruning override) and only when the cache holds
        both the graph and its metadata (:mod:`.graph_cache`). Anything missing or unreadable: False (the caller
        loads the checkpoint, which re-exports and re-records)."""
        if self.runtime_request not in ("auto", "onnx") or self._keep is not None:
            return False
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
        from .config import HyperDETRConfig
        from .graph_cache import FP32_VARIANT, cached_onnx_path, file_sha256, read_meta
        from .ort_runner import OrtRunner

        try:
            sha = file_sha256(self.path)
            m = read_meta(sha)
            if m is None:
                return False
            graph = cached_onnx_path(sha, int(m["dec_layers"]), FP32_VARIANT)
            if not graph.is_file():
                return False
            cfg = HyperDETRConfig.from_dict(dict(m["config"]))
            runner = OrtRunner(graph, self.threads)
        except Exception:  # noqa: BLE001 - a damaged cache entry is never fatal: the checkpoint path is exact
            return False
        self.model, self.cfg, self.runner, self.dec_layers = None, cfg, runner, int(m["dec_layers"])
        self.meta = {"sha256": sha, "path": str(self.path), "file_size": self.path.stat().st_size,
                     "config_obj": cfg, "classes": m["classes"], "normalization": m["normalization"],
                     "quantized": bool(m.get("quantized", False))}
        return True

    def _record_graph_meta(self) -> None:
        """After an fp32 ONNX runner was built from the checkpoint, record what :meth:`_load_cached_graph` needs."""
        if getattr(self.runner, "name", None) != "onnx" or self._keep is not None:
            return
        from .graph_cache import write_meta

        try:
            write_meta(self.meta["sha256"], {"dec_layers": self.dec_layers, "config": self.cfg.to_dict(),
                                             "classes": list(self.meta.get("classes") or self.cfg.semantic_classes),
                                             "normalization": dict(self.meta["normalization"]),
                                             "quantized": bool(self.meta.get("quantized", False))})
        except OSError:  # read-only cache: the next process simply loads the checkpoint again
            pass

    def _refiners(self, classes) -> list[tuple[int, Any, str]]:
        """(channel index, refinement function, timing name) of the colour refinements to run, by channel index."""
        from .sky_refine import refiners

        on = refiners(self.sky_refine, self.person_refine, self.hair_refine)
        return sorted((list(classes).index(c), fn, f"{c}_refine") for c, fn in on if c in classes)

    def _refined(self, fn, name: str, prob: np.ndarray, rgb: np.ndarray, out_hw, g, g_rgb) -> np.ndarray:
        """``fn(prob, rgb)`` (a :mod:`.sky_refine` function) for class ``name``. ``prob`` is the mask already at the
        output resolution when that is ``rgb``'s; otherwise the network-resolution mask, which is upsampled to
        ``rgb``'s resolution (guided by ``g_rgb``, ``rgb``'s :func:`gray_guide`, or bilinear when None), refined
        there and upsampled to ``out_hw`` like the other masks (with the class's guided-filter window)."""
        if tuple(out_hw) == rgb.shape[:2]:
            return fn(prob, rgb)
        r, e = guide_params(name, self.guide_radius, self.guide_eps)
        at_rgb = upsample_masks(prob[None], rgb.shape[:2], g_rgb, r, e)[0]
        return upsample_masks(fn(at_rgb, rgb)[None], out_hw, g, r, e)[0]

    @property
    def info(self) -> dict[str, Any]:
        return {"name": MODEL_NAME, "file": self.path.name, "path": str(self.path), "sha256": self.meta["sha256"],
                "runtime": getattr(self.runner, "name", "?"), "decoder_layers": self.dec_layers,
                "num_queries": self.cfg.num_queries, "input_size": list(self.cfg.input_size),
                "quantized": bool(self.meta.get("quantized", False)), "classes": list(self.classes),
                "tta": self.tta, "sky_refine": self.sky_refine, "person_refine": self.person_refine,
                "hair_refine": self.hair_refine, "person_framing": self.person_framing, "upsampling": self.refine,
                "guide_windows": {c: list(guide_params(c, self.guide_radius, self.guide_eps)) for c in self.classes}
                if self.refine == "guided" else None}

    def _runner_for(self, scene_only: bool):
        if not scene_only:
            return self.runner
        if self._scene_runner is None:
            rt = self.runtime_request if self.runtime_request != "onnx-int8" else "onnx"
            if self.model is None:  # loaded from the graph cache: the scene-only graph needs the model once
                self._load_model()
            from .runtime import make_runner

            self._scene_runner = make_runner(self.model, self.meta["sha256"], rt, scene_only=True,
                                             threads=self.threads)
        return self._scene_runner

    def __call__(self, image, *, guide: np.ndarray | None = None, out_size: tuple[int, int] | None = None,
                 scene_only: bool = False) -> SegmentationResult:
        """Segment one image.

        ``guide`` (H, W) float32 in [0, 1], if given, sets the output resolution and is the guided filter's guide
        (the pipeline stage feeds a downscaled render and gets masks at the frame's full resolution). ``out_size``
        (H, W) sets the output resolution without a guide (then the input, resized, is the guide). Default: the
        input image's resolution. ``scene_only`` skips the transformer (no person instances)."""
        timings: dict[str, float] = {}
        t = time.perf_counter()
        rgb = to_display_rgb(image)
        if guide is not None:
            guide = np.asarray(guide, np.float32)
            if guide.ndim != 2:
                raise ValueError(f"guide must be (H, W), got {guide.shape}")
            out_hw = guide.shape
        elif out_size is not None:
            out_hw = (int(out_size[0]), int(out_size[1]))
            if min(out_hw) < 1:
                raise ValueError(f"out_size must be positive (H, W), got {out_size}")
        else:
            out_hw = rgb.shape[:2]
        canvas, box = letterbox(rgb, self.cfg.input_size, tuple(self.mean))
        x = normalize(canvas, self.mean, self.std)
        timings["preprocess"] = time.perf_counter() - t
        t = time.perf_counter()
        with self._lock:
            runner = self._runner_for(scene_only)
            outputs = runner(x)
            if self.tta:
                outputs = merge_flip(outputs, runner(flip_canvas(x)))
        timings["network"] = time.perf_counter() - t
        t = time.perf_counter()
        raw = decode_outputs(outputs, box, self.classes, mask_stride=self.cfg.mask_stride,
                             score_threshold=self.score_threshold, max_persons=self.max_persons,
                             dedup_iou=self.dedup_iou,
                             person_framing=DEFAULT_PERSON_FRAMING if self.person_framing else None)
        refiners = self._refiners(raw.classes)
        # at another output size the refined channels are upsampled on their own (below): not in the common stack
        apart = bool(refiners) and tuple(out_hw) != rgb.shape[:2]
        gone = [i for i, _, _ in refiners] if apart else []
        sem = np.delete(raw.semantic, gone, axis=0)
        stack = np.concatenate([sem, raw.instances], axis=0)
        names = [c for i, c in enumerate(raw.classes) if i not in gone] + ["person"] * len(raw.instances)
        g = g_rgb = None
        if self.refine == "guided":
            if guide is not None:
                g = np.clip(guide, 0.0, 1.0)
            else:
                g = g_rgb = gray_guide(rgb)
                if g.shape != tuple(out_hw):
                    g = cv2.resize(g, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_LINEAR)
            if apart and g_rgb is None:
                g_rgb = gray_guide(rgb)
        planes = upsample_classes(stack, names, out_hw, g, self.guide_radius, self.guide_eps)
        timings["upsample"] = time.perf_counter() - t
        for i, fn, name in refiners:  # ascending channel index: the inserts land where they were deleted
            t = time.perf_counter()
            if apart:
                planes.insert(i, self._refined(fn, raw.classes[i], raw.semantic[i], rgb, out_hw, g, g_rgb))
            else:
                planes[i] = self._refined(fn, raw.classes[i], planes[i], rgb, out_hw, g, g_rgb)
            timings[name] = time.perf_counter() - t
        k = raw.semantic.shape[0]
        masks = {name: planes[i] for i, name in enumerate(raw.classes)}
        persons = [PersonInstance(planes[k + j], float(s)) for j, s in enumerate(raw.scores)]
        person = masks.get("person")
        if persons:
            union = planes[k].copy()
            for m in planes[k + 1:]:
                np.maximum(union, m, out=union)
            person = union if person is None else np.maximum(person, union)
        if person is not None:
            masks["person"] = person
        for key in MASK_KEYS:  # a checkpoint without some class still yields the full contract (zeros)
            masks.setdefault(key, np.zeros(out_hw, np.float32))
        return SegmentationResult(masks, persons, (int(out_hw[0]), int(out_hw[1])), timings, self.info)


_CACHE: dict[tuple, Segmenter] = {}
_CACHE_LOCK = threading.Lock()


def get_segmenter(weights=None, **kwargs) -> Segmenter:
    """A cached :class:`Segmenter` per (weights file, mtime, options)."""
    p = weights_path(weights)
    key = (str(p.resolve()), p.stat().st_mtime_ns, tuple(sorted(kwargs.items())))
    with _CACHE_LOCK:
        seg = _CACHE.get(key)
        if seg is None:
            seg = _CACHE[key] = Segmenter(p, **kwargs)
    return seg


def segment(image, *, weights=None, runtime: str = "auto", max_persons: int = 4, score_threshold: float = 0.5,
            refine: str = "guided", keep_dec_layers: int | None = None, scene_only: bool = False,
            guide: np.ndarray | None = None, out_size: tuple[int, int] | None = None,
            dedup_iou: float = DEFAULT_DEDUP_IOU, tta: bool = False, sky_refine: bool = True,
            person_refine: bool = True, hair_refine: bool = True, person_framing: bool = True) -> SegmentationResult:
    """Segment ``image`` (path, uint8/uint16 sRGB array or float32 display-referred array); see module docstring
    and :class:`Segmenter` for the options.

    Raises :class:`campipe.segmentation.NoWeightsError` when no trained weights are installed.
    """
    seg = get_segmenter(weights, runtime=runtime, max_persons=max_persons, score_threshold=score_threshold,
                        refine=refine, keep_dec_layers=keep_dec_layers, dedup_iou=dedup_iou, tta=tta,
                        sky_refine=sky_refine, person_refine=person_refine, hair_refine=hair_refine,
                        person_framing=person_framing)
    return seg(image, guide=guide, out_size=out_size, scene_only=scene_only)
