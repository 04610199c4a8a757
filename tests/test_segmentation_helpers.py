"""Helpers for the segmentation tests: tiny randomly initialised HyperDETR checkpoints (no trained weights needed).

Random weights are fine for shape/range/contract tests; BatchNorm running statistics are set from one training-mode
pass on noise so activations stay O(1) through the depth (otherwise they vanish and comparisons are meaningless).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from campipe.segmentation.checkpoint import save_checkpoint
from campipe.segmentation.config import HyperDETRConfig
from campipe.segmentation.model import build_model
from campipe.segmentation.training.datasets import is_val

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


def _stems(set_name: str, n_train: int, n_val: int) -> list[str]:
    """Stems whose deterministic split puts ``n_train`` of them in training and ``n_val`` in validation."""
    tr, va, i = [], [], 0
    while len(tr) < n_train or len(va) < n_val:
        s = f"s{i:03d}"
        (va if is_val(set_name, s) else tr).append(s)
        i += 1
    return tr[:n_train] + va[:n_val]


def _write(root, set_name, stem, img, raw):
    for sub in ("images", "masks"):
        (root / set_name / sub).mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / set_name / "images" / f"{stem}.png"), img)
    cv2.imwrite(str(root / set_name / "masks" / f"{stem}.png"), raw)


def write_tiny_data(root: Path) -> Path:
    """CelebAMask-, CamVid- and Penn-Fudan-like images (96x96) with labels in each set's own id scheme, under
    ``root`` (each set's ``images/`` and ``masks/``, split deterministically: 6 + 2, 4 + 2, 4 + 2 photos)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    for k, stem in enumerate(_stems("celebamask", 6, 2)):
        raw = np.zeros((96, 96), np.uint8)
        cx, cy, r = 48 + k % 5, 52, 26 + k % 4
        raw[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = 1                     # face skin
        raw[(yy < cy - r // 2) & ((xx - cx) ** 2 + (yy - cy) ** 2 < (r + 8) ** 2)] = 13   # hair
        raw[(abs(yy - cy - 12) < 3) & (abs(xx - cx) < 8)] = 10               # inner mouth
        raw[84:, 20:76] = 18                                                 # cloth
        img = np.full((96, 96, 3), 40, np.uint8)
        img[raw == 1], img[raw == 13], img[raw == 10], img[raw == 18] = (120, 150, 210), (30, 40, 60), \
            (230, 230, 230), (200, 60, 60)
        _write(root, "celebamask", stem, img + rng.integers(0, 8, img.shape, dtype=np.uint8), raw)
    for k, stem in enumerate(_stems("camvid", 4, 2)):
        raw = np.full((96, 96), 1, np.uint8)       # building
        raw[: 30 + k] = 0                          # sky
        raw[60:, :] = 3                            # road
        raw[40:80, 40 + k:52 + k] = 9              # pedestrian
        img = np.where((raw == 0)[..., None], np.uint8([230, 180, 120]), np.uint8([90, 90, 90])).astype(np.uint8)
        _write(root, "camvid", stem, img, raw)
    for k, stem in enumerate(_stems("pennfudan", 4, 2)):
        raw = np.zeros((96, 96), np.uint8)
        raw[20:90, 10 + k:30 + k] = 1
        raw[25:90, 55:75] = 2
        img = np.full((96, 96, 3), 100, np.uint8)
        img[raw == 1], img[raw == 2] = (40, 40, 160), (40, 160, 40)
        _write(root, "pennfudan", stem, img, raw)
    return root
