"""HyperDETR training losses: static (scene) channels with per-pixel "known" masks + Hungarian-matched instances.

* Static channels (``sem_logits``): per class, BCE averaged over the pixels where that class is *known*, plus a
  soft Dice over the known pixels of the batch; a class a set does not label contributes nothing (its known mask is
  0), so the model is never taught that an unlabelled class is absent. Per-class weights up-weight the rare classes
  (teeth, glasses).
* Person instances (``pred_logits``/``pred_masks`` and every ``aux_outputs`` layer): queries are matched to the
  ground-truth instances by :func:`campipe.segmentation.matcher.hungarian_match` (class + BCE + Dice cost); loss =
  cross-entropy on [person, no-object] (no-object down-weighted by ``eos_coef``) + BCE + Dice on matched masks over
  the valid pixels. Only images whose instances are completely labelled take part. Supervising every decoder layer
  makes each one a usable predictor, so pruning the decoder to 2 layers at load time costs little.

Targets (all float32 torch tensors, full target resolution; resized here to the prediction's resolution):
    ``sem`` (B, C, H, W) in {0, 1}; ``known`` (B, C, H, W) in {0, 1};
    ``instances`` list of B tensors (T_i, H, W) in {0, 1}; ``inst_valid`` (B, H, W) in {0, 1};
    ``inst_known`` (B,) bool.

References: DETR (Carion et al., 2020; facebookresearch/detr ``models/detr.py`` SetCriterion,
``models/segmentation.py`` dice_loss / sigmoid_focal_loss), MaskFormer (Cheng et al., 2021), V-Net Dice loss
(Milletari et al., 2016).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .matcher import hungarian_match_many

#: Default per-class weights of the static loss (order = semantic_classes): rare classes count more.
DEFAULT_CLASS_WEIGHTS = {"sky": 1.0, "person": 1.0, "hair": 1.0, "skin": 1.0, "teeth": 2.5, "glasses": 2.5}


def resize_targets(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize (B, C, H, W) targets to ``size``: 'soft' = area average, 'all' = 1 only where the whole block is 1."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    y = F.interpolate(x, size=size, mode="area")
    return y if mode == "soft" else (y > 0.999).to(x.dtype)


def masked_bce_dice(logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor, class_w: torch.Tensor,
                    pos_w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Static-channel loss. logits/target/known (B, C, H, W); class_w (C,); pos_w (C,) optional BCE weight of the
    positive pixels (> 1 for classes covering a tiny fraction of the image, so "absent everywhere" stops paying off).

    Returns (bce, dice, per_class_known_count): bce and dice are class-weighted means over the classes that have
    at least one known pixel in the batch (0 if none).
    """
    pw = None if pos_w is None else pos_w.view(1, -1, 1, 1).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=pw) * known
    n_known = known.sum(dim=(0, 2, 3))
    has = (n_known > 0).to(logits.dtype)
    bce_c = bce.sum(dim=(0, 2, 3)) / n_known.clamp_min(1.0)
    p = logits.sigmoid() * known
    t = target * known
    inter = (p * t).sum(dim=(0, 2, 3))
    dice_c = 1 - (2 * inter + 1) / (p.sum(dim=(0, 2, 3)) + t.sum(dim=(0, 2, 3)) + 1)
    w = class_w * has
    wsum = w.sum().clamp_min(1e-6)
    return (bce_c * w).sum() / wsum, (dice_c * w).sum() / wsum, n_known


def _mask_losses(pm: torch.Tensor, tm: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BCE (mean over valid pixels) and 1 - Dice, each summed over the M matched pairs. pm/tm (M, h, w)."""
    v = valid.expand_as(pm)
    nv = v.sum(dim=(1, 2)).clamp_min(1.0)
    bce = (F.binary_cross_entropy_with_logits(pm, tm, reduction="none") * v).sum(dim=(1, 2)) / nv
    p = pm.sigmoid() * v
    t = tm * v
    dice = 1 - (2 * (p * t).sum(dim=(1, 2)) + 1) / (p.sum(dim=(1, 2)) + t.sum(dim=(1, 2)) + 1)
    return bce.sum(), dice.sum()


def _host_bools(x) -> list[bool]:
    """A (B,) bool tensor on any device, or a sequence, as a Python list (one transfer)."""
    if isinstance(x, torch.Tensor):
        return [bool(v) for v in x.detach().cpu().tolist()]
    return [bool(v) for v in x]


@dataclass
class CriterionConfig:
    class_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CLASS_WEIGHTS))
    pos_weights: dict[str, float] = field(default_factory=dict)  # BCE weight of positives per class (default 1)
    w_sem_bce: float = 1.0
    w_sem_dice: float = 1.0
    w_inst: float = 1.0          # weight of the whole instance term
    w_class: float = 1.0
    w_mask_bce: float = 2.0
    w_mask_dice: float = 2.0
    eos_coef: float = 0.1        # weight of the no-object class in the query CE (DETR)


class HyperDETRCriterion(nn.Module):
    """``forward(outputs, targets) -> (total_loss, logs)``; see the module docstring."""

    def __init__(self, classes: tuple[str, ...], cfg: CriterionConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or CriterionConfig()
        self.classes = tuple(classes)
        for key in ("class_weights", "pos_weights"):
            unknown = set(getattr(self.cfg, key)) - set(self.classes)
            if unknown:
                raise ValueError(f"{key} names unknown classes: {sorted(unknown)}")
        self.register_buffer("class_w", torch.tensor([float(self.cfg.class_weights.get(c, 1.0))
                                                      for c in self.classes]))
        self.register_buffer("pos_w", torch.tensor([float(self.cfg.pos_weights.get(c, 1.0)) for c in self.classes]))
        self.register_buffer("ce_w", torch.tensor([1.0, self.cfg.eos_coef]))

    def static_loss(self, sem_logits: torch.Tensor, targets: dict) -> tuple[torch.Tensor, dict]:
        size = tuple(sem_logits.shape[-2:])
        sem = resize_targets(targets["sem"], size, "soft")
        known = resize_targets(targets["known"], size, "all")
        bce, dice, _ = masked_bce_dice(sem_logits.float(), sem, known, self.class_w, self.pos_w)
        loss = self.cfg.w_sem_bce * bce + self.cfg.w_sem_dice * dice
        return loss, {"sem_bce": float(bce.detach()), "sem_dice": float(dice.detach())}

    def instance_loss_layer(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor, tgts: list, valid: torch.Tensor,
                            inst_known, matches: dict | None = None) -> tuple[torch.Tensor, dict]:
        """Instance loss of one decoder layer, averaged over the images with complete instance labels.

        ``inst_known`` (B,) bool (tensor or sequence); ``matches`` (image index -> (query indices, target indices))
        skips the matching (precomputed for the batch). Vectorised over the batch: one cross-entropy and one mask
        loss over all matched pairs, index tensors moved to the device once, no device synchronisation (per-image
        Python loops made the main process the limit of GPU training: ~80 img/s on an H200)."""
        c = self.cfg
        known = _host_bools(inst_known)
        idx = [i for i in range(pred_logits.shape[0]) if known[i]]
        zero = pred_masks.sum() * 0.0
        if not idx:
            return zero, {"inst_ce": 0.0, "inst_bce": 0.0, "inst_dice": 0.0}
        if matches is None:
            got = hungarian_match_many([(pred_logits[i], pred_masks[i], tgts[i], valid[i]) for i in idx],
                                       w_class=c.w_class, w_bce=c.w_mask_bce, w_dice=c.w_mask_dice)
            matches = dict(zip(idx, got))
        n_q = pred_logits.shape[1]
        labels = np.ones((len(idx), n_q), np.int64)  # 1 = no-object
        b_sel, q_sel, t_sel = [], [], []
        offsets, o = {}, 0
        for i in idx:
            offsets[i] = o
            o += tgts[i].shape[0]
        for k, i in enumerate(idx):
            qi, ti = matches[i]
            labels[k, qi] = 0
            b_sel.extend([i] * len(qi))
            q_sel.extend(int(q) for q in qi)
            t_sel.extend(offsets[i] + int(t) for t in ti)
        dev = pred_logits.device
        lab = torch.from_numpy(labels).to(dev, non_blocking=True)
        lg = pred_logits[torch.tensor(idx, device=dev)].float()  # (K, N, 2)
        nll = F.cross_entropy(lg.reshape(-1, 2), lab.reshape(-1), reduction="none").view(len(idx), n_q)
        w = self.ce_w[lab]
        ce_sum = ((w * nll).sum(1) / w.sum(1)).sum()  # = per image F.cross_entropy(weight=ce_w), summed
        n_inst = len(b_sel)
        if n_inst:
            sel = torch.tensor([b_sel, q_sel, t_sel], dtype=torch.long).to(dev, non_blocking=True)
            tm_all = torch.cat([tgts[i] for i in idx])
            bce_sum, dice_sum = _mask_losses(pred_masks[sel[0], sel[1]].float(), tm_all[sel[2]], valid[sel[0]])
        else:
            bce_sum = dice_sum = zero
        n_img = len(idx)
        n_inst = max(n_inst, 1)
        ce, bce, dice = ce_sum / n_img, bce_sum / n_inst, dice_sum / n_inst
        loss = c.w_class * ce + c.w_mask_bce * bce + c.w_mask_dice * dice
        return loss, {"inst_ce": float(ce.detach()), "inst_bce": float(bce.detach()), "inst_dice": float(dice.detach())}

    def forward(self, outputs: dict, targets: dict) -> tuple[torch.Tensor, dict]:
        loss, logs = self.static_loss(outputs["sem_logits"], targets)
        if "pred_logits" in outputs and "instances" in targets:
            size = tuple(outputs["pred_masks"].shape[-2:])
            valid = resize_targets(targets["inst_valid"][:, None], size, "all")[:, 0]
            tgts = [resize_targets(t[None], size, "soft")[0].round() if t.shape[0] else
                    t.new_zeros((0,) + size) for t in targets["instances"]]
            layers = [(outputs["pred_logits"], outputs["pred_masks"])]
            layers += [(a["pred_logits"], a["pred_masks"]) for a in outputs.get("aux_outputs", [])]
            # every layer's matching in one batch: one host transfer per step instead of one per image and layer
            ik = _host_bools(targets["inst_known"])  # one transfer, not one sync per image
            known = [i for i in range(len(tgts)) if ik[i]]
            flat = hungarian_match_many([(lg[i], pm[i], tgts[i], valid[i]) for lg, pm in layers for i in known],
                                        w_class=self.cfg.w_class, w_bce=self.cfg.w_mask_bce,
                                        w_dice=self.cfg.w_mask_dice)
            per_layer = [dict(zip(known, flat[j * len(known):(j + 1) * len(known)])) for j in range(len(layers))]
            inst_total = 0.0
            for j, (lg, pm) in enumerate(layers):
                l_j, lg_j = self.instance_loss_layer(lg, pm, tgts, valid, ik, per_layer[j])
                inst_total = inst_total + l_j
                if j == 0:
                    logs.update(lg_j)
            inst_total = inst_total / len(layers)
            loss = loss + self.cfg.w_inst * inst_total
            logs["inst"] = float(inst_total.detach())
        logs["loss"] = float(loss.detach())
        return loss, logs
