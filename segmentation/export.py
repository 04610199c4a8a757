"""ONNX export of HyperDETR and the on-disk cache of exported graphs (keyed by the weights' sha256).

Graph interface (fixed input size, batch 1 by default, batch axis dynamic):
    input  ``image``       float32 (B, 3, H, W), normalised RGB (checkpoint mean/std)
    output ``sem_logits``  float32 (B, K, H/s, W/s)
    output ``pred_logits`` float32 (B, N, 2)        (absent in the ``scene_only`` graph)
    output ``pred_masks``  float32 (B, N, H/s, W/s) (absent in the ``scene_only`` graph)

The exporter is run on a deep copy of the model: PyTorch's exporter may touch module state while tracing (observed
with torch 2.13: the eager model's outputs changed after an in-place export), and the caller's model must not change.

Cache: ``$CAMPIPE_CACHE`` or ``~/.cache/campipe``, file ``onnx/hyperdetr-<sha256[:16]>-d<k>-<variant>.onnx``, written
atomically; no network is ever needed.

References: PyTorch ``torch.onnx.export``; ONNX Runtime documentation (graph optimisations, CPU EP).
"""
from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch
from torch import nn

OUTPUT_NAMES = ("sem_logits", "pred_logits", "pred_masks")
OPSET = 18


class OnnxWrapper(nn.Module):
    """Dict outputs -> tuple in :data:`OUTPUT_NAMES` order (``scene_only``: only ``sem_logits``)."""

    def __init__(self, model: nn.Module, scene_only: bool = False) -> None:
        super().__init__()
        self.model = model
        self.scene_only = scene_only

    def forward(self, x: torch.Tensor):
        out = self.model(x, scene_only=self.scene_only)
        if self.scene_only:
            return out["sem_logits"]
        return out["sem_logits"], out["pred_logits"], out["pred_masks"]


def cache_dir() -> Path:
    """Root of campipe's user cache (``$CAMPIPE_CACHE`` or ``~/.cache/campipe``)."""
    return Path(os.environ.get("CAMPIPE_CACHE") or Path.home() / ".cache" / "campipe")


def export_onnx(model: nn.Module, path: str | Path, *, scene_only: bool = False, batch: int = 1,
                opset: int = OPSET) -> Path:
    """Export ``model`` (eval, float32) at its config's input size to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = model.cfg.input_size
    net = OnnxWrapper(copy.deepcopy(model).eval().float(), scene_only)
    x = torch.zeros(batch, 3, h, w)
    names = ["sem_logits"] if scene_only else list(OUTPUT_NAMES)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:  # the TorchScript-based exporter: fast, no extra dependency
            torch.onnx.export(net, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=["image"],
                              output_names=names, dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in names}})
        except TypeError:  # a torch without the `dynamo` switch
            torch.onnx.export(net, (x,), str(tmp), opset_version=opset, input_names=["image"], output_names=names)
    tmp.replace(path)
    return path


def cached_onnx_path(sha256: str, dec_layers: int, variant: str = "fp32") -> Path:
    return cache_dir() / "onnx" / f"hyperdetr-{sha256[:16]}-d{dec_layers}-{variant}.onnx"


def get_or_export(model: nn.Module, sha256: str, *, scene_only: bool = False) -> Path:
    """Path of the cached fp32 ONNX graph for these weights, exporting it on first use."""
    variant = "fp32-scene" if scene_only else "fp32"
    p = cached_onnx_path(sha256, len(model.transformer.decoder), variant)
    if not p.is_file():
        export_onnx(model, p, scene_only=scene_only)
    return p
