"""ONNX Runtime execution of an exported HyperDETR graph, without PyTorch (see :mod:`.runtime` for the back-ends
and the default choice, :mod:`.graph_cache` for where graphs live).

References: ONNX Runtime Python API (InferenceSession, SessionOptions).
"""
from __future__ import annotations

import os

import numpy as np


def default_threads() -> int:
    """Intra-op threads: ``$CAMPIPE_THREADS``, else min(2, cpu count) — but 1 when the 1-minute load average already
    exceeds the cpu count: on a saturated CPU a second thread only adds synchronisation waits (measured on 2 shared
    cores at load ~4: ONNX Runtime 63 ms with 1 thread vs 112 ms with 2 per 384x512 forward)."""
    env = os.environ.get("CAMPIPE_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"CAMPIPE_THREADS must be an integer, got {env!r}") from None
    n = max(1, min(2, os.cpu_count() or 1))
    try:
        if os.getloadavg()[0] >= (os.cpu_count() or 1):
            return 1
    except OSError:  # no load average on this platform
        pass
    return n


class OrtRunner:
    """ONNX Runtime CPU session on an exported graph."""

    name = "onnx"

    def __init__(self, onnx_path, threads: int | None = None, name: str = "onnx") -> None:
        import onnxruntime as ort

        self.name = name
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or default_threads()
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        # no busy-waiting between ops: on a CPU shared with other processes, spinning threads made 2-thread runs
        # ~1.7x slower (measured 190 -> 112 ms per 384x512 forward at load ~4 on 2 cores); CAMPIPE_ORT_SPIN=1 restores it
        so.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("CAMPIPE_ORT_SPIN", "0"))
        self.session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.path = str(onnx_path)

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})
        return dict(zip(self.output_names, outs))
