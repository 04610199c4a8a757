"""campipe.segmentation: HyperDETR panoptic segmentation (sky, person instances, hair, skin, teeth, glasses).

Public API::

    from campipe.segmentation import segment, weights_path, NoWeightsError
    res = segment("photo.jpg")          # or a uint8 sRGB (H, W, 3) array, or float32 display-referred in [0, 1]
    res.masks["hair"]                   # float32 (H, W) in [0, 1] at the input's resolution
    res.persons                         # [PersonInstance(mask, score)] sorted by score, at most 4

Modules (one concept each): config, backbone, transformer, hyperdetr_head, model, panoptic_baseline (DETR head for the
benchmark), checkpoint, quantize, postprocess, guided_filter, tiling, export, runtime, inference.

Weights: ``segmentation/weights/hyperdetr.pt`` (see weights/README.md); ``CAMPIPE_WEIGHTS`` overrides the path.
Importing this package is cheap (torch is imported only when a model is needed).
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["segment", "Segmenter", "SegmentationResult", "weights_path", "NoWeightsError", "DEFAULT_WEIGHTS"]

#: Where trained weights are installed (shipped in the package).
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "hyperdetr.pt"


class NoWeightsError(FileNotFoundError):
    """No trained HyperDETR weights are installed (or the given path does not exist)."""


def weights_path(path: str | os.PathLike | None = None, *, must_exist: bool = True) -> Path:
    """Path of the HyperDETR checkpoint: ``path`` if given, else ``$CAMPIPE_WEIGHTS``, else :data:`DEFAULT_WEIGHTS`.

    Raises :class:`NoWeightsError` (with the path and how to get weights) if it does not exist and ``must_exist``.
    """
    p = Path(path) if path is not None else Path(os.environ.get("CAMPIPE_WEIGHTS") or DEFAULT_WEIGHTS)
    if must_exist and not p.is_file():
        src = "given path" if path is not None else ("$CAMPIPE_WEIGHTS" if os.environ.get("CAMPIPE_WEIGHTS")
                                                    else "default location")
        raise NoWeightsError(
            f"no trained HyperDETR weights are installed at {p} ({src}); train with `campipe train` "
            f"(see segmentation/weights/README.md) or point CAMPIPE_WEIGHTS at a checkpoint")
    return p


def __getattr__(name):  # lazy: no torch import until needed
    if name in ("segment", "Segmenter", "SegmentationResult"):
        from . import inference
        return getattr(inference, name)
    raise AttributeError(f"module 'campipe.segmentation' has no attribute {name!r}")
