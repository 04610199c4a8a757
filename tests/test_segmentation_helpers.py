"""Helpers for the segmentation tests: tiny randomly initialised HyperDETR checkpoints (no trained weights needed).

Random weights are fine for shape/range/contract tests; BatchNorm running statistics are set from one training-mode
pass on noise so activations stay O(1) through the depth (otherwise they vanish and comparisons are meaningless).
"""
from __future__ import annotations

from pathlib import Path

import torch

from campipe.segmentation.checkpoint import save_checkpoint
from campipe.segmentation.config import HyperDETRConfig
from campipe.segmentation.model import build_model

TINY = dict(width_mult=0.5, hidden_dim=32, nheads=2, dim_feedforward=64, enc_layers=1, dec_layers=6,
            num_queries=4, mask_dim=16, input_size=(64, 96), decoder_dims=(24, 16, 16, 16))


def tiny_config(**kw) -> HyperDETRConfig:
    return HyperDETRConfig(**{**TINY, **kw})


def calibrated_model(cfg: HyperDETRConfig, seed: int = 0):
    """A random model with BatchNorm statistics estimated on noise; eval mode."""
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    m = build_model(cfg)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None  # cumulative average
    m.train()
    with torch.no_grad():
        m(torch.randn(2, 3, *cfg.input_size))
    return m.eval()


def tiny_checkpoint(path: Path, seed: int = 0, quantize: bool = False, **kw) -> Path:
    m = calibrated_model(tiny_config(**kw), seed)
    return save_checkpoint(path, m, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), quantize=quantize,
                           metrics={"note": "random init (test)"})


class SoftRampModel(torch.nn.Module):
    """Stand-in network for post-processing tests: input (32, 32), mask stride 2, six static channels that are all
    the same left-to-right logit ramp -3 ... 3 over 16 columns (a blurry vertical edge), no instance outputs."""

    def __init__(self):
        super().__init__()
        self.cfg = HyperDETRConfig(input_size=(32, 32), mask_stride=2)

    def forward(self, x, scene_only=False):
        ramp = torch.linspace(-3, 3, 16).view(1, 1, 1, 16).expand(x.shape[0], 6, 16, 16)
        return {"sem_logits": ramp.clone()}


def assert_onnx_matches_eager(model, path: Path, seed: int = 3) -> None:
    """Export ``model`` to ``path``, run it in ONNX Runtime on a seeded (1, 3, 64, 96) input and check the static
    logits and instance masks against eager PyTorch (atol/rtol 1e-4)."""
    import numpy as np

    from campipe.segmentation.export import export_onnx
    from campipe.segmentation.runtime import OrtRunner

    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = model(x)
    out = OrtRunner(export_onnx(model, path), threads=1)(x.numpy())
    np.testing.assert_allclose(out["sem_logits"], ref["sem_logits"].numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(out["pred_masks"], ref["pred_masks"].numpy(), atol=1e-4, rtol=1e-4)
