"""ONNX export of HyperDETR and the on-disk cache of exported graphs (keyed by the weights' sha256).

Graph interface (fixed input size; batch 1 and every shape static by default, so ONNX Runtime folds the shape
arithmetic of the transformer's reshapes into constants: 32 -> 26 ms per 384x512 image on 2 cores; a graph with a
dynamic batch axis is exported with ``dynamic_batch=True``):
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

from .graph_cache import FP32_SCENE_VARIANT, FP32_VARIANT, cached_onnx_path, remove_stale

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


def export_onnx(model: nn.Module, path: str | Path, *, scene_only: bool = False, batch: int = 1,
                opset: int = OPSET, dynamic_batch: bool = False) -> Path:
    """Export ``model`` (eval, float32) at its config's input size to ``path``; returns the path.

    The graph takes exactly ``batch`` images unless ``dynamic_batch`` (any batch size, but about 20 % slower at
    batch 1: the shape computations stay in the graph). A dynamic-batch graph is traced with 2 images, so that the
    hyper-head's batch-1 form (a Conv with computed kernels, :mod:`.hyperdetr_head`) is not baked into it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = model.cfg.input_size
    net = OnnxWrapper(copy.deepcopy(model).eval().float(), scene_only)
    x = torch.zeros(max(batch, 2) if dynamic_batch else batch, 3, h, w)
    names = ["sem_logits"] if scene_only else list(OUTPUT_NAMES)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:  # the TorchScript-based exporter: fast, no extra dependency
            axes = {"image": {0: "batch"}, **{n: {0: "batch"} for n in names}} if dynamic_batch else None
            torch.onnx.export(net, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=["image"],
                              output_names=names, dynamic_axes=axes)
        except TypeError:  # a torch without the `dynamo` switch
            torch.onnx.export(net, (x,), str(tmp), opset_version=opset, input_names=["image"], output_names=names)
    tmp.replace(path)
    return path


def calibration_inputs(images, cfg, mean, std) -> list:
    """Network inputs (1, 3, H, W) float32 for int8 calibration from image paths or sRGB arrays (same
    pre-processing as inference: letterbox + normalisation)."""
    import numpy as np

    from .inference import to_display_rgb
    from .postprocess import letterbox, normalize

    out = []
    for im in images:
        canvas, _ = letterbox(to_display_rgb(im), cfg.input_size, tuple(mean))
        out.append(normalize(canvas, mean, std).astype(np.float32))
    return out


def quantize_onnx_int8(fp32_path: str | Path, out_path: str | Path, calib: list, *, weights_sha256: str = "",
                       method: str = "percentile") -> Path:
    """Static int8 QDQ quantization (per-channel int8 weights, uint8 activations) with ONNX Runtime.

    ``calib``: list of normalised inputs (see :func:`calibration_inputs`) — use real photos; random inputs give
    activation ranges that do not match photos. The weights' sha256 is stored in the graph's metadata
    (``campipe_weights_sha256``; pass :func:`weights_key`) so a stale int8 graph is never used with other weights.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calib:
        raise ValueError("int8 quantization needs at least one calibration image")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"image": x}

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    tmp = out_path.with_name(out_path.name + f".{os.getpid()}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        cm = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax,
              "entropy": CalibrationMethod.Entropy}[method]
        quantize_static(str(pre), str(tmp), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=cm,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    pre.unlink(missing_ok=True)
    m = onnx.load(str(tmp))
    onnx.helper.set_model_props(m, {"campipe_weights_sha256": weights_sha256, "campipe_calibration_images":
                                    str(len(calib)), "campipe_calibration_method": method})
    onnx.save(m, str(tmp))
    tmp.replace(out_path)
    return out_path


def weights_key(sha256: str, dec_layers: int) -> str:
    """Identity of an exported graph: weights hash + number of decoder layers kept."""
    return f"{sha256}:d{dec_layers}"


def onnx_weights_sha256(path: str | Path) -> str:
    """The ``campipe_weights_sha256`` metadata of an ONNX file ('' if absent)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}.get("campipe_weights_sha256", "")


def int8_sidecar_path(weights: str | Path) -> Path:
    """Where a calibrated int8 graph for ``weights`` is looked for: ``<weights stem>.int8.onnx`` next to it."""
    weights = Path(weights)
    return weights.with_name(weights.stem + ".int8.onnx")


def get_or_export(model: nn.Module, sha256: str, *, scene_only: bool = False) -> Path:
    """Path of the cached fp32 ONNX graph for these weights, exporting it on first use (and then removing the graphs
    older campipe versions cached for the same weights, see :func:`.graph_cache.remove_stale`)."""
    variant = FP32_SCENE_VARIANT if scene_only else FP32_VARIANT
    layers = len(model.transformer.decoder)
    p = cached_onnx_path(sha256, layers, variant)
    if not p.is_file():
        export_onnx(model, p, scene_only=scene_only)
        if not scene_only:
            remove_stale(sha256, layers)
    return p


def main(argv=None) -> int:
    """``python -m campipe.segmentation.export --weights W.pt [--int8 --calib DIR_OR_FILES...]``.

    Exports the fp32 graph into the cache; with ``--int8`` also writes the calibrated int8 sidecar
    (``<weights>.int8.onnx``) used by ``runtime="onnx-int8"`` when its recorded weights hash matches.
    """
    import argparse

    from .checkpoint import load_checkpoint

    ap = argparse.ArgumentParser(prog="python -m campipe.segmentation.export", description=main.__doc__)
    ap.add_argument("--weights", default=None, help="checkpoint (default: installed weights)")
    ap.add_argument("--keep-dec-layers", type=int, default=None)
    ap.add_argument("--int8", action="store_true", help="also write the calibrated int8 QDQ sidecar")
    ap.add_argument("--calib", nargs="*", default=[], help="calibration images or folders (real photos)")
    ap.add_argument("--max-calib", type=int, default=64)
    ap.add_argument("--out", default=None, help="int8 output path (default: next to the weights)")
    a = ap.parse_args(argv)
    from . import weights_path

    wp = weights_path(a.weights)
    model, meta = load_checkpoint(wp, keep_dec_layers=a.keep_dec_layers)
    fp32 = get_or_export(model, meta["sha256"])
    print(f"fp32 ONNX: {fp32}")
    if a.int8:
        files: list[Path] = []
        for c in a.calib:
            p = Path(c)
            files += sorted(q for q in p.rglob("*") if q.suffix.lower() in (".jpg", ".jpeg", ".png")) \
                if p.is_dir() else [p]
        files = files[:: max(1, len(files) // a.max_calib)][: a.max_calib]
        if not files:
            ap.error("--int8 needs --calib images (real photos)")
        calib = calibration_inputs(files, meta["config_obj"], meta["normalization"]["mean"],
                                   meta["normalization"]["std"])
        out = quantize_onnx_int8(fp32, a.out or int8_sidecar_path(wp), calib,
                                 weights_sha256=weights_key(meta["sha256"], len(model.transformer.decoder)))
        print(f"int8 ONNX ({len(calib)} calibration images): {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
