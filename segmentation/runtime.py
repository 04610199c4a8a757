"""Execution back-ends for HyperDETR on CPU, behind one interface, and the default choice.

A runner is called with a normalised input float32 (1, 3, H, W) numpy array and returns a dict of float32 numpy
arrays with the model's output names (``sem_logits``, ``pred_logits``, ``pred_masks``; only ``sem_logits`` for a
scene-only runner).

Back-ends (measured by ``benchmarks/bench_segmentation.py``; see its table):
    ``"torch"``        eager PyTorch fp32 (always available; the fallback);
    ``"onnx"``         ONNX Runtime fp32, graph exported on first use into the user cache (see :mod:`.export`);
    ``"onnx-int8"``    ONNX Runtime int8 QDQ graph calibrated on real photos: the sidecar ``<weights>.int8.onnx``
                       written by ``python -m campipe.segmentation.export --int8 --calib ...``; used only if its
                       recorded weights hash + decoder depth match the loaded weights. Opt-in: ~25% less CPU than
                       fp32 but, measured on a partially trained checkpoint with 32 calibration photos, masks agreed
                       with fp32 only at IoU 0.80 (mean |dp| 0.07) — not exact enough to be the default;
    ``"compile-bf16"`` torch.compile (inductor) + bfloat16 autocast + channels_last; fast on CPUs with AMX/AVX512-BF16
                       but the first call compiles for tens of seconds, so it is opt-in (long-running batch jobs);
    ``"auto"``         ``"onnx"`` (exact to ~1e-5, 1.7x less CPU than eager), else ``"torch"`` (with a warning).

References: ONNX Runtime Python API (InferenceSession, SessionOptions); PyTorch inference mode.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch

from .ort_runner import OrtRunner, default_threads  # noqa: F401 - torch-free, re-exported here

log = logging.getLogger("campipe")

RUNTIMES = ("auto", "onnx", "onnx-int8", "torch", "compile-bf16")


def _fold_pair(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> None:
    """Fold eval-mode BatchNorm into the preceding conv.

    w' = w * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta."""
    s = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    conv.weight = torch.nn.Parameter(conv.weight.detach() * s.reshape(-1, 1, 1, 1), requires_grad=False)
    b = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = torch.nn.Parameter((b - bn.running_mean) * s + bn.bias.detach(), requires_grad=False)


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Inference copy of HyperDETR with every Conv2d -> BatchNorm2d pair folded (same outputs to float rounding,
    ~8% faster in eager mode; ONNX Runtime does the same fusion itself). The original model is not modified."""
    import copy

    from .model import ResidualDWBlock

    m = copy.deepcopy(model).eval()
    for mod in list(m.modules()):
        if isinstance(mod, torch.nn.Sequential):
            for i in range(len(mod) - 1):
                if isinstance(mod[i], torch.nn.Conv2d) and isinstance(mod[i + 1], torch.nn.BatchNorm2d):
                    _fold_pair(mod[i], mod[i + 1])
                    mod[i + 1] = torch.nn.Identity()
        elif isinstance(mod, ResidualDWBlock):
            _fold_pair(mod.pw1, mod.bn1)
            _fold_pair(mod.pw2, mod.bn2)
            mod.bn1, mod.bn2 = torch.nn.Identity(), torch.nn.Identity()
    return m


class TorchRunner:
    """Eager PyTorch fp32 under ``torch.inference_mode`` (on a BatchNorm-folded copy of the model)."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, scene_only: bool = False, threads: int | None = None) -> None:
        self.model = fold_batchnorm(model)
        self.scene_only = scene_only
        self.threads = threads or default_threads()

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        prev = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                out = self.model(torch.from_numpy(np.ascontiguousarray(x, np.float32)), scene_only=self.scene_only)
        finally:
            torch.set_num_threads(prev)
        return {k: v.float().numpy() for k, v in out.items() if torch.is_tensor(v)}


class CompiledBF16Runner:
    """torch.compile + bfloat16 autocast + channels_last (outputs returned as float32)."""

    name = "compile-bf16"

    def __init__(self, model: torch.nn.Module, scene_only: bool = False, threads: int | None = None) -> None:
        import copy

        self.threads = threads or default_threads()
        self.scene_only = scene_only
        m = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
        self.model = torch.compile(m, dynamic=False)

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        prev = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                out = self.model(t, scene_only=self.scene_only)
        finally:
            torch.set_num_threads(prev)
        return {k: v.float().numpy() for k, v in out.items() if torch.is_tensor(v)}


def _int8_sidecar(weights_file, sha256: str, dec_layers: int):
    """Path of a matching calibrated int8 graph next to the weights, or None."""
    if weights_file is None:
        return None
    from .export import int8_sidecar_path, onnx_weights_sha256, weights_key

    p = int8_sidecar_path(weights_file)
    if not p.is_file():
        return None
    try:
        ok = onnx_weights_sha256(p) == weights_key(sha256, dec_layers)
    except Exception:  # unreadable file: ignore it
        ok = False
    if not ok:
        log.warning("%s does not match the loaded weights (hash/decoder depth); ignoring it", p)
        return None
    return p


def make_runner(model: torch.nn.Module, sha256: str, runtime: str = "auto", *, scene_only: bool = False,
                threads: int | None = None, weights_file=None) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """Build the runner for ``runtime`` (one of :data:`RUNTIMES`); ``weights_file`` locates the int8 sidecar."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "torch":
        return TorchRunner(model, scene_only, threads)
    if runtime == "compile-bf16":
        return CompiledBF16Runner(model, scene_only, threads)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        if runtime != "auto":
            raise RuntimeError(f"runtime {runtime!r} needs the onnxruntime package (pip install onnxruntime)") \
                from None
        log.warning("onnxruntime is not installed; HyperDETR runs in eager PyTorch (slower)")
        return TorchRunner(model, scene_only, threads)
    if runtime == "onnx-int8" and not scene_only:
        side = _int8_sidecar(weights_file, sha256, len(model.transformer.decoder))
        if side is not None:
            return OrtRunner(side, threads, name="onnx-int8")
        raise RuntimeError("runtime 'onnx-int8' needs a calibrated int8 graph matching the weights next to them; "
                           "create it with `python -m campipe.segmentation.export --int8 --calib PHOTOS...`")
    from .export import get_or_export

    try:
        path = get_or_export(model, sha256, scene_only=scene_only)
        return OrtRunner(path, threads)
    except Exception as e:  # export or session creation failed: the eager model is always correct
        if runtime == "onnx":
            raise
        log.warning("ONNX export/runtime unavailable (%s: %s); using eager PyTorch", type(e).__name__, e)
        return TorchRunner(model, scene_only, threads)
