"""campipe: a camera-pipeline simulator (RAW decode, HyperDETR semantic masks, semantic effects, colour-managed output).

Public API::

    import campipe
    frame = campipe.load_raw("IMG.dng")            # Frame: float32 linear Rec.2020 (H, W, 3) + metadata
    result = campipe.process("IMG.dng", style="warm")
    result.image      # float32 (H, W, 3) display-encoded RGB in [0, 1] (sRGB unless output.space says otherwise)
    result.masks      # dict of float32 (H, W) soft masks in [0, 1]
    result.frame      # the final Frame (linear image, masks, persons, metadata, per-stage timings)

This package maps the repository folders into one namespace: ``campipe`` is ``pipeline/``,
``campipe.segmentation`` is ``segmentation/``, ``campipe.effects`` is ``effects/``.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["process", "load_raw", "load_image", "decode_file", "Frame", "__version__"]


def __getattr__(name):  # lazy: `import campipe` stays fast (no torch/rawpy import)
    import importlib

    if name in ("process", "ProcessResult"):
        return getattr(importlib.import_module(__name__ + ".api"), name)
    if name in ("load_raw", "load_image", "decode_file"):
        return getattr(importlib.import_module(__name__ + ".decode"), name)
    if name == "Frame":
        return importlib.import_module(__name__ + ".frame").Frame
    raise AttributeError(f"module 'campipe' has no attribute {name!r}")
