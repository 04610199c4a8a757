"""Hungarian matching of HyperDETR's N person queries to the ground-truth person instances of each image.

Cost of assigning query q to instance t (lower is better), as in DETR / MaskFormer::

    C[q, t] = w_class * (-p_person[q]) + w_bce * BCE(mask_q, mask_t) + w_dice * dice(mask_q, mask_t)

``BCE`` is the mean sigmoid binary cross-entropy over the valid pixels, ``dice`` is 1 - soft Dice (sigmoid
probabilities). The assignment is :func:`scipy.optimize.linear_sum_assignment` on the (N, T) matrix; with T > N
only N instances are matched (the caller keeps at most N instances per image).

Masks are compared at a reduced resolution (``max_points`` pixels on a regular grid) to keep the cost cheap; the
losses themselves are computed at full output resolution by :mod:`.criterion`.

References: N. Carion et al., "End-to-End Object Detection with Transformers" (DETR), ECCV 2020
(facebookresearch/detr ``models/matcher.py``); B. Cheng et al., "Per-Pixel Classification is Not All You Need"
(MaskFormer), NeurIPS 2021.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch.nn import functional as F


def pairwise_bce(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean BCE between every prediction row (N, P) logits and every target row (T, P) in [0, 1] -> (N, T)."""
    pos = F.softplus(-logits)  # -log sigmoid(x)
    neg = F.softplus(logits)   # -log(1 - sigmoid(x))
    if weight is None:
        weight = torch.ones(logits.shape[1], dtype=logits.dtype, device=logits.device)
    wsum = weight.sum().clamp_min(1.0)
    return ((pos * weight) @ targets.T + (neg * weight) @ (1 - targets).T) / wsum


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """1 - soft Dice between every prediction (N, P) logits and every target (T, P) -> (N, T)."""
    p = logits.sigmoid()
    if weight is not None:
        p = p * weight
        targets = targets * weight
    num = 2 * p @ targets.T
    den = p.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (num + 1) / (den + 1)


def cost_matrix(pred_logits: torch.Tensor, pred_masks: torch.Tensor, tgt_masks: torch.Tensor,
                valid: torch.Tensor | None = None, w_class: float = 1.0, w_bce: float = 5.0,
                w_dice: float = 5.0) -> torch.Tensor:
    """(N, T) matching cost for one image.

    Args:
        pred_logits: (N, 2) logits [person, no-object].
        pred_masks: (N, h, w) mask logits.
        tgt_masks: (T, h, w) float {0, 1} (same h, w).
        valid: optional (h, w) float {0, 1}; pixels with 0 are ignored.
    """
    prob = pred_logits.softmax(-1)[:, 0]
    n, t = pred_masks.shape[0], tgt_masks.shape[0]
    pm = pred_masks.reshape(n, -1)
    tm = tgt_masks.reshape(t, -1).to(pm.dtype)
    w = None if valid is None else valid.reshape(-1).to(pm.dtype)
    return w_class * (-prob[:, None]) + w_bce * pairwise_bce(pm, tm, w) + w_dice * pairwise_dice(pm, tm, w)


def _subsample(x: torch.Tensor, max_points: int) -> torch.Tensor:
    """Strided spatial subsampling of (..., h, w) so that h*w <= about ``max_points``."""
    h, w = x.shape[-2:]
    step = int(np.ceil(np.sqrt(h * w / max_points))) if h * w > max_points else 1
    return x[..., ::step, ::step]


def _subsampled_cost(pred_logits, pred_masks, tgt_masks, valid, max_points: int, **weights) -> torch.Tensor:
    """:func:`cost_matrix` in float32 on masks (and valid map) subsampled to about ``max_points`` pixels."""
    v = None if valid is None else _subsample(valid.float(), max_points)
    return cost_matrix(pred_logits.float(), _subsample(pred_masks.float(), max_points),
                       _subsample(tgt_masks.float(), max_points), v, **weights)


@torch.no_grad()
def hungarian_match(pred_logits: torch.Tensor, pred_masks: torch.Tensor, tgt_masks: torch.Tensor,
                    valid: torch.Tensor | None = None, max_points: int = 4096, **weights
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Optimal (query indices, target indices) for one image; empty arrays when there is no target."""
    if tgt_masks.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    c = _subsampled_cost(pred_logits, pred_masks, tgt_masks, valid, max_points, **weights)
    qi, ti = linear_sum_assignment(c.cpu().numpy())
    return qi.astype(np.int64), ti.astype(np.int64)


@torch.no_grad()
def hungarian_match_many(items: list, max_points: int = 4096, **weights) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`hungarian_match` for many images at once: ``items`` = [(pred_logits, pred_masks, tgt_masks, valid)].

    All cost matrices are computed first and copied to the host in one transfer (one device synchronisation for the
    whole batch and every decoder layer instead of one per image and layer); the assignments are the same.
    """
    out: list = [None] * len(items)
    costs, where = [], []
    for k, (lg, pm, tm, v) in enumerate(items):
        if tm.shape[0] == 0:
            out[k] = (np.zeros(0, np.int64), np.zeros(0, np.int64))
            continue
        c = _subsampled_cost(lg, pm, tm, v, max_points, **weights)
        costs.append(c.reshape(-1))
        where.append((k, c.shape))
    if costs:
        # a non-finite prediction must not stop the assignment (scipy rejects NaN/inf): it costs the most
        flat = torch.nan_to_num(torch.cat(costs), nan=1e4, posinf=1e4, neginf=-1e4).cpu().numpy()
        o = 0
        for k, shape in where:
            n = shape[0] * shape[1]
            qi, ti = linear_sum_assignment(flat[o:o + n].reshape(shape))
            out[k] = (qi.astype(np.int64), ti.astype(np.int64))
            o += n
    return out


def match_cost(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian assignment of a given cost matrix (N, T) (thin wrapper, for tests and tools)."""
    qi, ti = linear_sum_assignment(np.asarray(cost))
    return qi.astype(np.int64), ti.astype(np.int64)
