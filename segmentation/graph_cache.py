"""The user cache of exported HyperDETR graphs, readable without PyTorch.

Layout under :func:`cache_dir` (``$CAMPIPE_CACHE`` or ``~/.cache/campipe``), keyed by the first 16 hex digits of
the weights file's sha256:

* ``onnx/hyperdetr-<sha16>-d<layers>-<variant>.onnx``: a graph exported by :mod:`.export` (variant
  :data:`FP32_VARIANT` or :data:`FP32_SCENE_VARIANT`: static batch-1 graphs; older caches' ``fp32`` graphs, with a
  dynamic batch axis, ``fp32-b1`` graphs, whose hyper-head was a MatMul, and ``fp32-b1-g2`` / ``fp32-scene-b1``
  graphs, whose branch convs read a concatenation, are deleted when the current graph for the same weights is
  exported);
* ``onnx/hyperdetr-<sha16>.meta.json``: what inference needs besides the graph (decoder depth, model config, class
  list, input normalisation, quantized flag), written next to the first export. With both present,
  :class:`campipe.segmentation.inference.Segmenter` runs ONNX Runtime without importing PyTorch (about 1.3 s of a
  process's start-up); the checkpoint itself is only hashed.

Nothing here imports torch. References: ONNX Runtime Python API; the checkpoint format in :mod:`.checkpoint`.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

META_VERSION = 1
#: Cache variants of the fp32 graphs (batch 1, all shapes static; "g2": the hyper-head exported as a Conv with
#: computed kernels, see hyperdetr_head.py; "c3": the semantic and sky branches' first convs run on channel groups,
#: model.conv_of_concat, same outputs but faster; the scene-only graph has no hyper-head).
FP32_VARIANT, FP32_SCENE_VARIANT = "fp32-b1-g2-c3", "fp32-scene-b1-c3"
#: Variants earlier campipe versions wrote in place of FP32_VARIANT / FP32_SCENE_VARIANT; removed once the
#: current full graph is exported.
STALE_FP32_VARIANTS = ("fp32", "fp32-b1", "fp32-b1-g2", "fp32-scene-b1")


def cache_dir() -> Path:
    """Root of campipe's user cache (``$CAMPIPE_CACHE`` or ``~/.cache/campipe``)."""
    return Path(os.environ.get("CAMPIPE_CACHE") or Path.home() / ".cache" / "campipe")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cached_onnx_path(sha256: str, dec_layers: int, variant: str = FP32_VARIANT) -> Path:
    return cache_dir() / "onnx" / f"hyperdetr-{sha256[:16]}-d{dec_layers}-{variant}.onnx"


def remove_stale(sha256: str, dec_layers: int) -> None:
    """Delete the graphs older campipe versions cached for these weights in place of :data:`FP32_VARIANT` (about
    32 MB each, never read again)."""
    for v in STALE_FP32_VARIANTS:
        cached_onnx_path(sha256, dec_layers, v).unlink(missing_ok=True)


def meta_path(sha256: str) -> Path:
    return cache_dir() / "onnx" / f"hyperdetr-{sha256[:16]}.meta.json"


def write_meta(sha256: str, meta: dict[str, Any]) -> Path:
    """Atomically write the metadata of the weights with this hash (keys: dec_layers, config, classes,
    normalization, quantized)."""
    p = meta_path(sha256)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"version": META_VERSION, "sha256": sha256, **meta}))
    tmp.replace(p)
    return p


def read_meta(sha256: str) -> dict[str, Any] | None:
    """The metadata written by :func:`write_meta` for exactly this hash, or None (missing, unreadable, other
    version or hash)."""
    try:
        d = json.loads(meta_path(sha256).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(d, dict) or d.get("version") != META_VERSION or d.get("sha256") != sha256:
        return None
    if not all(k in d for k in ("dec_layers", "config", "classes", "normalization")):
        return None
    return d
