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

__all__ = ["process", "load_raw", "load_image", "Frame", "__version__"]


def __getattr__(name):  # lazy: `import campipe` stays fast (no torch/rawpy import)
    if name in ("process", "ProcessResult"):
        from . import api
        return getattr(api, name)
    if name in ("load_raw", "load_image", "decode"):
        from . import decode
        return getattr(decode, name if name != "decode" else "decode_file")
    if name == "Frame":
        from .frame import Frame
        return Frame
    raise AttributeError(f"module 'campipe' has no attribute {name!r}")
