"""Execution back-ends for HyperDETR on CPU, behind one interface, and the default choice.

A runner is called with a normalised input float32 (1, 3, H, W) numpy array and returns a dict of float32 numpy
arrays with the model's output names (``sem_logits``, ``pred_logits``, ``pred_masks``; only ``sem_logits`` for a
scene-only runner).

Back-ends (measured by ``benchmarks/bench_segmentation.py``; see its table):
    ``"torch"``      eager PyTorch fp32 (always available; the fallback);
    ``"onnx"``       ONNX Runtime fp32, graph exported on first use into the user cache (see :mod:`.export`);
    ``"auto"``       ``"onnx"`` when onnxruntime imports and export succeeds, else ``"torch"`` (with a warning).
ONNX Runtime int8 (QDQ, static calibration) is available through :mod:`.export`'s sibling benchmark path only when
calibration images are provided; it is not the default because it needs real data to be exact enough.

References: ONNX Runtime Python API (InferenceSession, SessionOptions); PyTorch inference mode.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import numpy as np
import torch

log = logging.getLogger("campipe")

RUNTIMES = ("auto", "onnx", "torch")


def default_threads() -> int:
    """Intra-op threads: ``$CAMPIPE_THREADS`` or min(2, cpu count) (the project's shared-machine default)."""
    env = os.environ.get("CAMPIPE_THREADS")
    if env:
        return max(1, int(env))
    return max(1, min(2, os.cpu_count() or 1))


class TorchRunner:
    """Eager PyTorch fp32 under ``torch.inference_mode``."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, scene_only: bool = False, threads: int | None = None) -> None:
        self.model = model.eval()
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


class OrtRunner:
    """ONNX Runtime CPU session on an exported graph."""

    name = "onnx"

    def __init__(self, onnx_path, threads: int | None = None) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or default_threads()
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.path = str(onnx_path)

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})
        return dict(zip(self.output_names, outs))


def make_runner(model: torch.nn.Module, sha256: str, runtime: str = "auto", *, scene_only: bool = False,
                threads: int | None = None) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """Build the runner for ``runtime`` (one of :data:`RUNTIMES`)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "torch":
        return TorchRunner(model, scene_only, threads)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        if runtime == "onnx":
            raise RuntimeError("runtime 'onnx' needs the onnxruntime package (pip install onnxruntime)") from None
        log.warning("campipe: onnxruntime is not installed; HyperDETR runs in eager PyTorch (slower)")
        return TorchRunner(model, scene_only, threads)
    from .export import get_or_export

    try:
        path = get_or_export(model, sha256, scene_only=scene_only)
        return OrtRunner(path, threads)
    except Exception as e:  # export or session creation failed: the eager model is always correct
        if runtime == "onnx":
            raise
        log.warning("campipe: ONNX export/runtime unavailable (%s: %s); using eager PyTorch", type(e).__name__, e)
        return TorchRunner(model, scene_only, threads)
