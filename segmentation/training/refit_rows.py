"""Refit the linear read-out of chosen static channels on one labelled set, everything else frozen.

With ``model.sem_head_hidden`` a static channel's logit is linear in what the trunk and the branch's hidden layer
produce: ``z_c = w_c . [hidden (sem_head_hidden), mask features (mask_dim)] + b_c`` (the rows ``c`` of
``decoder.sem_branch.2`` and ``decoder.sem_head``). This module fits ``w_c, b_c`` for some classes (face skin and
teeth: only CelebAMask labels them, and the multi-set training objective pulls them towards the noisy derived
body-skin labels) by BCE (positive weight) + soft Dice on that set's *training* split, at the mask-feature
resolution, cropped to the photo, starting from the current rows. Nothing else changes, so the result can be merged
per class (:mod:`.merge_heads`) and calibrated (:mod:`.calibrate`) like any checkpoint.

``python -m campipe.segmentation.training.refit_rows --float V5_cal.pt --data ../shared/data --classes skin,teeth
--out REFIT.pt`` (then calibrate REFIT.pt and merge its rows into V5_cal.pt).

``--holdout P`` keeps ~P % of the training faces (deterministic, :func:`is_holdout`) out of the fit and uses them to
*choose*: a class's new rows are kept only when their pooled IoU on the held-out faces, each read-out at its own
best threshold there, beats the current rows'; the kept rows are calibrated on those faces (their bias moved so 0.5
reads the mask at that threshold) and the other classes stay exactly as they were. The output is then a calibrated
checkpoint (the base's calibration report kept, the refit's choice and thresholds in ``extra["refit_rows"]``), and
no validation photo takes part in the choice. Without ``--holdout`` every training face is fitted and the result
needs :mod:`.calibrate` and a choice made elsewhere.

Reference: linear probing of frozen features (Alain & Bengio, 2016).
"""
from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

#: the set whose labels drive each class's refit (positive(raw) from the evaluation's definitions)
REFIT_SET = "celebamask"


def readout_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, sem_head_hidden + mask_dim, h, w) float32: the inputs of the static channels' linear read-out."""
    if model.decoder.sem_branch is None:
        raise ValueError("the model has no static branch (model.sem_head_hidden = 0): nothing to refit")
    grab = {}
    hooks = [model.decoder.sem_branch[1].register_forward_hook(lambda m, i, o: grab.__setitem__("hid", o)),
             model.decoder.sem_head.register_forward_hook(lambda m, i, o: grab.__setitem__("mf", i[0]))]
    try:
        with torch.no_grad():
            model(x, scene_only=True)
    finally:
        for h in hooks:
            h.remove()
    return torch.cat([grab["hid"], grab["mf"]], 1)


def current_rows(model: torch.nn.Module, classes) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (K, hidden + mask_dim), b (K,)) of ``classes`` as the model has them now."""
    idx = [list(model.cfg.semantic_classes).index(c) for c in classes]
    last, lin = model.decoder.sem_branch[2], model.decoder.sem_head
    w = torch.cat([last.weight[idx, :, 0, 0], lin.weight[idx, :, 0, 0]], 1)
    return w.detach().clone(), (last.bias[idx] + lin.bias[idx]).detach().clone()


@torch.no_grad()
def set_rows(model: torch.nn.Module, classes, w: torch.Tensor, b: torch.Tensor) -> torch.nn.Module:
    """Write read-out rows (as from :func:`current_rows`) into the model (in place); the bias goes to the branch."""
    names = list(model.cfg.semantic_classes)
    last, lin = model.decoder.sem_branch[2], model.decoder.sem_head
    nh = last.weight.shape[1]
    for k, c in enumerate(classes):
        i = names.index(c)
        last.weight[i, :, 0, 0] = w[k, :nh]
        lin.weight[i, :, 0, 0] = w[k, nh:]
        last.bias[i] = b[k]
        lin.bias[i] = 0.0
    return model


def pooled_ious(w, b, xs, ys) -> list[float]:
    """Pooled IoU per class at logit 0 of the read-out over feature maps ``xs`` (C, h, w) and labels ``ys`` (K, h, w)."""
    tp = fp = fn = 0
    for x, y in zip(xs, ys):
        p, g = torch.einsum("kc,chw->khw", w, x.float()) + b[:, None, None] > 0, y >= 0.5
        tp, fp, fn = tp + (p & g).sum((1, 2)), fp + (p & ~g).sum((1, 2)), fn + (~p & g).sum((1, 2))
    return (tp / (tp + fp + fn).clamp(min=1)).tolist()


def fit_rows(w0: torch.Tensor, b0: torch.Tensor, xs, ys, epochs: int = 8, lr: float = 1e-3, batch: int = 8,
             pos_weight=None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on mean BCE (``pos_weight`` per class) + soft Dice per image, from (w0, b0); returns the new rows."""
    g = torch.Generator().manual_seed(seed)
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    pw = torch.as_tensor(pos_weight if pos_weight is not None else [1.0] * len(b0), dtype=torch.float32)
    opt = torch.optim.Adam([w, b], lr)
    for _ in range(epochs):
        perm = torch.randperm(len(xs), generator=g).tolist()
        for i in range(0, len(perm), batch):
            loss = 0.0
            for j in perm[i:i + batch]:
                x, y = xs[j].float(), ys[j]
                lg = torch.einsum("kc,chw->khw", w, x) + b[:, None, None]
                pr = lg.sigmoid()
                dice = 1 - (2 * (pr * y).sum((1, 2)) + 1) / (pr.sum((1, 2)) + y.sum((1, 2)) + 1)
                loss = loss + F.binary_cross_entropy_with_logits(lg, y, pos_weight=pw[:, None, None]) + dice.mean()
            opt.zero_grad()
            (loss / len(perm[i:i + batch])).backward()
            opt.step()
    return w.detach(), b.detach()


def is_holdout(stem: str, percent: int) -> bool:
    """Deterministic held-out part of REFIT_SET's training split (independent of the train/validation hash)."""
    return int(hashlib.md5(f"refit-holdout/{REFIT_SET}/{stem}".encode()).hexdigest()[:8], 16) % 100 < percent


def holdout_choice(w0, b0, w, b, xs, ys, classes) -> dict[str, dict]:
    """Per class: the current and the refitted read-out's pooled IoU on held-out features ``xs``/labels ``ys``, each
    at its own best threshold (``calibrate.best_threshold``, so neither gains from a threshold the other did not
    get), whether the refit wins, and the bias offset calibrating the refit at its threshold."""
    from .calibrate import BINS, best_threshold, offset_for, probability_histograms

    hist = {k: np.zeros((2, 2, BINS), np.int64) for k in range(len(classes))}  # [current/refit][pos/neg]
    for x, y in zip(xs, ys):
        x = x.float()
        for r, (ww, bb) in enumerate(((w0, b0), (w, b))):
            prob = torch.sigmoid(torch.einsum("kc,chw->khw", ww, x) + bb[:, None, None]).numpy()
            for k in range(len(classes)):
                pos, neg = probability_histograms(prob[k], (y[k] >= 0.5).numpy())
                hist[k][r, 0] += pos
                hist[k][r, 1] += neg
    out = {}
    for k, c in enumerate(classes):
        (t0, u0, h0), (t1, u1, h1) = (best_threshold(hist[k][r, 0], hist[k][r, 1]) for r in (0, 1))
        out[c] = {"current": {"threshold": t0, "iou": u0, "iou_at_0.5": h0},
                  "refit": {"threshold": t1, "iou": u1, "iou_at_0.5": h1},
                  "keep": bool(u1 > u0), "offset": offset_for(t1)}
    return out


def collect(model, data_dir: Path, split: str, classes, mean, std, limit: int | None = None, progress=None,
            stems=None):
    """Read-out features (float16) and area-resampled labels of REFIT_SET's ``split`` (or of ``stems``), cropped to
    the photo."""
    import cv2

    from ..postprocess import letterbox, normalize
    from .datasets import list_stems, read_pair
    from .evaluate import EVAL_SPEC

    spec = EVAL_SPEC[REFIT_SET]
    s = model.cfg.mask_stride
    xs, ys = [], []
    stems = (list_stems(Path(data_dir), REFIT_SET, split) if stems is None else list(stems))[:limit]
    for n, stem in enumerate(stems, 1):
        img, raw = read_pair(Path(data_dir), REFIT_SET, stem)
        canvas, box = letterbox(img.astype(np.float32) / 255.0, tuple(model.cfg.input_size), tuple(mean))
        f = readout_features(model, torch.from_numpy(normalize(canvas, mean, std)))[0]
        (t, left), (ch, cw) = box.offset, box.content_hw
        f = f[:, t // s:(t + ch) // s, left // s:(left + cw) // s]
        h, w = f.shape[1:]
        lab = [spec[c][0](raw).astype(np.float32) for c in classes]
        xs.append(f.half())
        ys.append(torch.from_numpy(np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA) for m in lab])))
        if progress:
            progress(split, n, len(stems))
    return xs, ys


def main(argv=None) -> int:
    from ..checkpoint import file_sha256, load_checkpoint, save_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--float", dest="float_ckpt", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path, help="the shared data directory (../shared/data)")
    ap.add_argument("--classes", default="skin,teeth")
    ap.add_argument("--pos-weight", default="1,3", help="BCE positive weight per class (the training criterion's)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--holdout", type=int, default=0, metavar="PERCENT",
                    help="keep ~PERCENT %% of the training faces out of the fit to choose and calibrate the refit "
                         "classes on (0: fit on all of them, choose and calibrate elsewhere)")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    if not 0 <= a.holdout < 100:
        ap.error("--holdout must be a percentage in [0, 100)")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, meta = load_checkpoint(a.float_ckpt)
    if meta.get("quantized"):
        raise SystemExit("refit the float checkpoint, not the int8 one")
    model.eval()
    classes = [c.strip() for c in a.classes.split(",") if c.strip()]
    from .evaluate import EVAL_SPEC

    spec_missing = [c for c in classes if c not in EVAL_SPEC[REFIT_SET]]
    if spec_missing:
        raise SystemExit(f"{REFIT_SET} does not label {spec_missing}")
    norm = meta["normalization"]
    t0 = time.time()

    def progress(split, i, n):
        if i == n or i % 100 == 0:
            print(f"  {REFIT_SET}/{split}: {i}/{n}", flush=True)

    from .datasets import list_stems

    stems = list_stems(a.data, REFIT_SET, "train")
    held = [st for st in stems if a.holdout and is_holdout(st, a.holdout)]
    held_set = frozenset(held)
    fit_stems = [st for st in stems if st not in held_set]
    xs, ys = collect(model, a.data, "train", classes, norm["mean"], norm["std"], progress=progress, stems=fit_stems)
    w0, b0 = current_rows(model, classes)
    before = pooled_ious(w0, b0, xs, ys)
    w, b = fit_rows(w0, b0, xs, ys, a.epochs, pos_weight=[float(v) for v in a.pos_weight.split(",")])
    after = pooled_ious(w, b, xs, ys)
    for c, u, v in zip(classes, before, after):
        print(f"{c:8s} fitted faces' IoU at the feature resolution {u:.3f} -> {v:.3f}")
    extra = dict(meta.get("extra") or {})
    report = {"set": REFIT_SET, "split": "train", "classes": classes, "epochs": a.epochs,
              "fitted_images": len(fit_stems), "train_iou_before": before, "train_iou_after": after,
              "made_from": {"file": a.float_ckpt.name, "sha256": file_sha256(a.float_ckpt)}}
    if held:
        xh, yh = collect(model, a.data, "train", classes, norm["mean"], norm["std"], stems=held)
        choice = holdout_choice(w0, b0, w, b, xh, yh, classes)
        kept = [c for c in classes if choice[c]["keep"]]
        for c in classes:
            r = choice[c]
            print(f"{c:8s} held-out faces ({len(held)}), IoU at each one's best threshold: current "
                  f"{r['current']['iou']:.3f} (t {r['current']['threshold']:.3f}) -> refit {r['refit']['iou']:.3f} "
                  f"(t {r['refit']['threshold']:.3f}): {'kept' if r['keep'] else 'not kept'}")
        if not kept:
            print(f"no class improves on the held-out faces: {a.out} not written")
            return 1
        k_idx = [classes.index(c) for c in kept]
        set_rows(model, kept, w[k_idx], b[k_idx] + torch.tensor([choice[c]["offset"] for c in kept]))
        report.update(holdout_percent=a.holdout, holdout_images=len(held), holdout=choice, kept=kept,
                      calibrated_on_holdout=True)
    else:
        set_rows(model, classes, w, b)
        extra.pop("calibration", None)  # the refitted rows need their own calibration
    report["seconds"] = round(time.time() - t0, 1)
    extra["refit_rows"] = report
    save_checkpoint(a.out, model, model.cfg, mean=norm["mean"], std=norm["std"], extra=extra)
    print(f"wrote {a.out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
