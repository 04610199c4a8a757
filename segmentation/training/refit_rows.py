"""Refit the linear read-out of chosen static channels on the sets that label them, everything else frozen.

With ``model.sem_head_hidden`` a static channel's logit is linear in what the trunk and the branch's hidden layer
produce: ``z_c = w_c . [hidden (sem_head_hidden), mask features (mask_dim)] + b_c`` (the rows ``c`` of
``decoder.sem_branch.2`` and ``decoder.sem_head``). This module fits ``w_c, b_c`` for some classes by BCE (positive
weight) + soft Dice over the pixels each set labels (the evaluation's class definitions, :data:`.evaluate.EVAL_SPEC`:
face skin and teeth from CelebAMask alone, person from CelebAMask, Penn-Fudan and CamVid, ...; every set weighs the
same in the loss, as every set weighs the same in :mod:`.calibrate`'s threshold choice), on the *training* split, at
the mask-feature resolution, cropped to the photo, starting from the current rows. Why: the multi-set training
objective pulls face skin and teeth towards the noisy derived body-skin labels, and a frozen trunk's read-out can be
refitted in minutes. Nothing else changes, so the result can be merged per class (:mod:`.merge_heads`) and
calibrated (:mod:`.calibrate`) like any checkpoint.

``python -m campipe.segmentation.training.refit_rows --float V5_cal.pt --data ../shared/data --classes skin,teeth
--holdout 25 --out V6_cal.pt``

``--holdout P`` keeps ~P % of each set's training photos (deterministic, :func:`is_holdout`) out of the fit and uses
them to *choose*: a class's new row is kept only when its pooled IoU on the held-out photos (mean over the sets
labelling the class), each read-out at its own best threshold there, beats the current row's; the kept rows are
calibrated on those photos (bias moved so 0.5 reads the mask at that threshold) and the other classes stay exactly as
they were. The output is then a calibrated checkpoint (the base's calibration report kept, the refit's choice and
thresholds in ``extra["refit_rows"]``), and no validation photo takes part in the choice. Without ``--holdout`` every
training photo is fitted and the result needs :mod:`.calibrate` and a choice made elsewhere.

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

from ..model import check_rows_free_of_branch


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
    check_rows_free_of_branch((model,), classes, "refit")
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


def _known(ys, ks):
    return [torch.ones_like(y, dtype=torch.bool) if k is None else k for y, k in zip(ys, ks or [None] * len(ys))]


def pooled_ious(w, b, xs, ys, ks=None) -> list[float]:
    """Pooled IoU per class at logit 0 of the read-out over feature maps ``xs`` (C, h, w), labels ``ys`` (K, h, w)
    and optional known masks ``ks`` (K, h, w) bool (unknown pixels are not counted)."""
    tp = fp = fn = 0
    for x, y, k in zip(xs, ys, _known(ys, ks)):
        p, g = torch.einsum("kc,chw->khw", w, x.float()) + b[:, None, None] > 0, y >= 0.5
        tp, fp, fn = tp + (p & g & k).sum((1, 2)), fp + (p & ~g & k).sum((1, 2)), fn + (~p & g & k).sum((1, 2))
    return (tp / (tp + fp + fn).clamp(min=1)).tolist()


def fit_rows(w0: torch.Tensor, b0: torch.Tensor, xs, ys, epochs: int = 8, lr: float = 1e-3, batch: int = 8,
             pos_weight=None, seed: int = 0, ks=None, sample_weights=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on BCE (``pos_weight`` per class, mean over known pixels) + soft Dice over known pixels, per image and
    class, weighted by ``sample_weights`` (default 1); from (w0, b0); returns the new rows."""
    g = torch.Generator().manual_seed(seed)
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    pw = torch.as_tensor(pos_weight if pos_weight is not None else [1.0] * len(b0), dtype=torch.float32)
    ks = _known(ys, ks)
    sw = [1.0] * len(xs) if sample_weights is None else [float(v) for v in sample_weights]
    opt = torch.optim.Adam([w, b], lr)
    for _ in range(epochs):
        perm = torch.randperm(len(xs), generator=g).tolist()
        for i in range(0, len(perm), batch):
            loss = 0.0
            for j in perm[i:i + batch]:
                x, y, kn = xs[j].float(), ys[j], ks[j].float()
                n = kn.sum((1, 2))
                if not bool((n > 0).any()):
                    continue
                lg = torch.einsum("kc,chw->khw", w, x) + b[:, None, None]
                pr = lg.sigmoid() * kn
                yk = y * kn
                bce = (F.binary_cross_entropy_with_logits(lg, y, pos_weight=pw[:, None, None], reduction="none")
                       * kn).sum((1, 2)) / n.clamp(min=1)
                dice = 1 - (2 * (pr * yk).sum((1, 2)) + 1) / (pr.sum((1, 2)) + yk.sum((1, 2)) + 1)
                loss = loss + sw[j] * ((bce + dice) * (n > 0)).sum() / (n > 0).sum()
            if isinstance(loss, float):
                continue
            opt.zero_grad()
            (loss / len(perm[i:i + batch])).backward()
            opt.step()
    return w.detach(), b.detach()


def is_holdout(stem: str, percent: int, set_name: str = "celebamask") -> bool:
    """Deterministic held-out part of a set's training split (independent of the train/validation hash)."""
    return int(hashlib.md5(f"refit-holdout/{set_name}/{stem}".encode()).hexdigest()[:8], 16) % 100 < percent


def holdout_choice(w0, b0, w, b, xs, ys, classes, ks=None, sets=None) -> dict[str, dict]:
    """Per class: the current and the refitted read-out's pooled IoU on held-out features ``xs``/labels ``ys`` (known
    masks ``ks``; ``sets``: each sample's set name, the IoU curve being the mean over the sets that label the class,
    as in :mod:`.calibrate`), each at its own best threshold (``calibrate.best_threshold``, so neither gains from a
    threshold the other did not get), whether the refit wins, and the bias offset calibrating the refit there."""
    from .calibrate import BINS, best_threshold, offset_for, probability_histograms

    sets = sets or ["set"] * len(xs)
    hist: dict[tuple[int, str], np.ndarray] = {}  # (class, set) -> [current/refit][pos/neg] (2, 2, BINS)
    for x, y, kn, st in zip(xs, ys, _known(ys, ks), sets):
        x = x.float()
        for r, (ww, bb) in enumerate(((w0, b0), (w, b))):
            prob = torch.sigmoid(torch.einsum("kc,chw->khw", ww, x) + bb[:, None, None]).numpy()
            for k in range(len(classes)):
                if not bool(kn[k].any()):
                    continue
                pos, neg = probability_histograms(prob[k], (y[k] >= 0.5).numpy(), (~kn[k]).numpy())
                h = hist.setdefault((k, st), np.zeros((2, 2, BINS), np.int64))
                h[r, 0] += pos
                h[r, 1] += neg
    out = {}
    for k, c in enumerate(classes):
        hs = [h for (kk, _), h in sorted(hist.items()) if kk == k]
        if not hs:
            raise ValueError(f"no held-out photo labels {c!r}")
        (t0, u0, h0), (t1, u1, h1) = (best_threshold(np.stack([h[r, 0] for h in hs]),
                                                     np.stack([h[r, 1] for h in hs])) for r in (0, 1))
        out[c] = {"current": {"threshold": t0, "iou": u0, "iou_at_0.5": h0},
                  "refit": {"threshold": t1, "iou": u1, "iou_at_0.5": h1},
                  "sets": [st for (kk, st) in sorted(hist) if kk == k],
                  "keep": bool(u1 > u0), "offset": offset_for(t1)}
    return out


def collect(model, data_dir: Path, set_name: str, classes, mean, std, stems, progress=None):
    """Read-out features (float16 (C, h, w)), area-resampled labels (K, h, w) and known masks (K, h, w) bool of
    ``set_name``'s ``stems``, cropped to the photo. A class the set does not label (or an image its filter rejects,
    or pixels its ignore rule marks) is unknown."""
    import cv2

    from ..postprocess import letterbox, normalize
    from .datasets import read_pair
    from .evaluate import EVAL_SPEC

    spec = EVAL_SPEC[set_name]
    s = model.cfg.mask_stride
    xs, ys, ks = [], [], []
    for n, stem in enumerate(stems, 1):
        img, raw = read_pair(Path(data_dir), set_name, stem)
        canvas, box = letterbox(img.astype(np.float32) / 255.0, tuple(model.cfg.input_size), tuple(mean))
        f = readout_features(model, torch.from_numpy(normalize(canvas, mean, std)))[0]
        (t, left), (ch, cw) = box.offset, box.content_hw
        f = f[:, t // s:(t + ch) // s, left // s:(left + cw) // s]
        h, w = f.shape[1:]
        area = lambda m: cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)  # noqa: E731
        lab, known = [], []
        for c in classes:
            pos_fn, ign_fn, filt = spec.get(c, (None, None, None))
            ok = pos_fn is not None and (filt is None or filt(raw))
            lab.append(area(pos_fn(raw)) if ok else np.zeros((h, w), np.float32))
            known.append((area(~ign_fn(raw)) >= 0.5 if ign_fn is not None else np.ones((h, w), bool)) if ok
                         else np.zeros((h, w), bool))
        xs.append(f.half())
        ys.append(torch.from_numpy(np.stack(lab)))
        ks.append(torch.from_numpy(np.stack(known)))
        if progress:
            progress(set_name, n, len(stems))
    return xs, ys, ks


def refit_sets(classes) -> list[str]:
    """The sets labelling at least one of ``classes`` (evaluation definitions), in :data:`EVAL_SPEC` order."""
    from .evaluate import EVAL_SPEC

    return [s for s, spec in EVAL_SPEC.items() if any(c in spec for c in classes)]


def main(argv=None) -> int:
    from ..checkpoint import file_sha256, load_checkpoint, save_checkpoint
    from .datasets import list_stems

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--float", dest="float_ckpt", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path, help="the shared data directory (../shared/data)")
    ap.add_argument("--classes", default="skin,teeth")
    ap.add_argument("--pos-weight", default=None,
                    help="BCE positive weight per class, comma-separated (default: the training criterion's, "
                         "3 for teeth and glasses, 1 otherwise)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    ap.add_argument("--limit", type=int, default=0, help="training photos per set, evenly spaced (0 = all)")
    ap.add_argument("--holdout", type=int, default=0, metavar="PERCENT",
                    help="keep ~PERCENT %% of each set's training photos out of the fit to choose and calibrate the "
                         "refit classes on (0: fit on all of them, choose and calibrate elsewhere)")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    if not 0 <= a.holdout < 100:
        ap.error("--holdout must be a percentage in [0, 100)")
    classes = [c.strip() for c in a.classes.split(",") if c.strip()]
    pos_weight = ([float(v) for v in a.pos_weight.split(",")] if a.pos_weight
                  else [3.0 if c in ("teeth", "glasses") else 1.0 for c in classes])
    if len(pos_weight) != len(classes):
        ap.error(f"--pos-weight gives {len(pos_weight)} values for {len(classes)} classes")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, meta = load_checkpoint(a.float_ckpt)
    if meta.get("quantized"):
        raise SystemExit("refit the float checkpoint, not the int8 one")
    model.eval()
    unknown = [c for c in classes if c not in model.cfg.semantic_classes]
    sets = refit_sets(classes)
    if unknown or not sets:
        raise SystemExit(f"no labelled set for {unknown or classes} "
                         f"(model classes: {list(model.cfg.semantic_classes)})")
    norm = meta["normalization"]
    t0 = time.time()

    def progress(set_name, i, n):
        if i == n or i % 100 == 0:
            print(f"  {set_name}/train: {i}/{n}", flush=True)

    fit, held = ([], [], [], []), ([], [], [], [])  # xs, ys, ks, set names
    counts = {}
    for st in sets:
        stems = list_stems(a.data, st, "train")
        if a.limit and a.limit < len(stems):
            stems = [stems[i] for i in np.linspace(0, len(stems) - 1, a.limit).round().astype(int)]
        h_stems = [x for x in stems if a.holdout and is_holdout(x, a.holdout, st)]
        h_set = frozenset(h_stems)
        f_stems = [x for x in stems if x not in h_set]
        counts[st] = {"fitted": len(f_stems), "held_out": len(h_stems)}
        for part, part_stems in ((fit, f_stems), (held, h_stems)):
            xs, ys, ks = collect(model, a.data, st, classes, norm["mean"], norm["std"], part_stems, progress)
            for lst, v in zip(part, (xs, ys, ks, [st] * len(xs))):
                lst.extend(v)
    xs, ys, ks, names = fit
    per_set = {st: names.count(st) for st in sets}
    weights = [len(names) / (len(sets) * per_set[st]) for st in names]  # every set weighs the same
    w0, b0 = current_rows(model, classes)
    before = pooled_ious(w0, b0, xs, ys, ks)
    w, b = fit_rows(w0, b0, xs, ys, a.epochs, a.lr, pos_weight=pos_weight, ks=ks, sample_weights=weights)
    after = pooled_ious(w, b, xs, ys, ks)
    for c, u, v in zip(classes, before, after):
        print(f"{c:8s} fitted photos' pooled IoU at the feature resolution {u:.3f} -> {v:.3f}")
    extra = dict(meta.get("extra") or {})
    report = {"sets": counts, "split": "train", "classes": classes, "epochs": a.epochs, "lr": a.lr,
              "pos_weight": pos_weight, "train_iou_before": before, "train_iou_after": after,
              "made_from": {"file": a.float_ckpt.name, "sha256": file_sha256(a.float_ckpt)}}
    if a.holdout:
        choice = holdout_choice(w0, b0, w, b, held[0], held[1], classes, ks=held[2], sets=held[3])
        kept = [c for c in classes if choice[c]["keep"]]
        for c in classes:
            r = choice[c]
            print(f"{c:8s} held-out photos ({', '.join(r['sets'])}), mean IoU at each one's best threshold: current "
                  f"{r['current']['iou']:.3f} (t {r['current']['threshold']:.3f}) -> refit {r['refit']['iou']:.3f} "
                  f"(t {r['refit']['threshold']:.3f}): {'kept' if r['keep'] else 'not kept'}")
        if not kept:
            print(f"no class improves on the held-out photos: {a.out} not written")
            return 1
        k_idx = [classes.index(c) for c in kept]
        set_rows(model, kept, w[k_idx], b[k_idx] + torch.tensor([choice[c]["offset"] for c in kept]))
        report.update(holdout_percent=a.holdout, holdout=choice, kept=kept, calibrated_on_holdout=True)
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
