"""Per-class threshold calibration of the static channels, fitted on the TRAINING split and folded into the model.

The static channels are trained with BCE + Dice, rare classes with positive weights (``criterion.pos_weights``) and
class weights; all of these move the logit at which a pixel is best called positive away from 0 (a positive weight
``w`` alone moves the BCE optimum by ``log w``). campipe, its effects and ``campipe eval`` read a mask at
probability 0.5, so the shipped model should put its best IoU threshold there. This module measures, per class, the
pooled IoU as a function of the threshold on the **training** split (never the validation split that
``campipe eval`` reports), picks the best threshold ``t_c`` and adds ``-logit(t_c)`` to that class's bias in the
semantic head (``decoder.sem_head``): ``sigmoid(z - logit(t)) >= 0.5  <=>  sigmoid(z) >= t`` (for a class a
residual branch refines, where :func:`apply_offsets` puts it so that the final logit moves by exactly that). Nothing
else changes; the offsets are stored in the checkpoint's ``extra["calibration"]`` with the training IoUs before and
after.

Protocol: the same inference and class definitions as :mod:`.evaluate` (letterbox -> network -> guided upsampling
to the label's resolution, as campipe runs it; :data:`.evaluate.EVAL_SPEC`). Per class, the objective is the mean
over the training sets that label it of each set's pooled IoU (the targets are per set; pooling the pixels of all
sets would let the set with the largest masks, CelebAMask, decide alone).
Images are an evenly spaced subset of each set's training stems (``limit`` per set), plus every training image that
passes a class's image filter (glasses: the CelebAMask images with glasses, which are rare).

``python -m campipe.segmentation.training.calibrate --float RUN/ema_float.pt --data ../shared/data
--out RUN/ema_float_cal.pt [--limit 120] [--json RUN/calibration.json] [--classes hair,...] [--again]``

``--classes`` fits every class (the report shows them all) but applies the offsets of the named ones only.
``--again`` recalibrates a file that already carries a calibration (a residual branch fitted after it can move its
class's best threshold): the first report stays in ``extra["calibration"]`` and the new one is appended to
``extra["recalibration"]``; the file may then be the shipped int8 one, read dequantised (its weights re-quantise to
themselves bit for bit in ``ship.py``), and the output is float. Mind which photos decide: most of the calibration's
photos are among a branch fit's training photos, and for v10's hair branch the threshold they chose (0.383) did not
help on the photos that fit held out (MODEL_CARD.md, rule 26).

References: J. Platt, "Probabilistic outputs for support vector machines" (1999) and C. Guo et al., "On Calibration
of Modern Neural Networks" (ICML 2017) for post-hoc recalibration of a trained model's logits on held-in data.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .datasets import list_stems, read_pair
from .evaluate import EVAL_SPEC, predict

#: probability histogram resolution (thresholds are multiples of 1 / BINS)
BINS = 1000
#: largest bias change applied (logits); a larger optimum means the channel is broken, not miscalibrated
MAX_OFFSET = 3.0


def probability_histograms(prob: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Counts of positive and negative pixels per probability bin: two int64 (BINS,) arrays.

    prob float (H, W) in [0, 1]; gt bool (H, W); ignore bool (H, W) or None (ignored pixels are not counted).
    Bin k holds probabilities in [k / BINS, (k + 1) / BINS) (1.0 in the last bin).
    """
    idx = np.minimum((prob * BINS).astype(np.int64), BINS - 1)
    keep = ~ignore if ignore is not None else np.ones(gt.shape, bool)
    pos = np.bincount(idx[keep & gt], minlength=BINS)
    neg = np.bincount(idx[keep & ~gt], minlength=BINS)
    return pos, neg


def iou_curve(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Pooled IoU when pixels with probability >= k / BINS are called positive, for k = 0..BINS-1: float64 (BINS,)."""
    tp = np.cumsum(pos[::-1])[::-1].astype(np.float64)   # positives at or above bin k
    fp = np.cumsum(neg[::-1])[::-1].astype(np.float64)
    fn = pos.sum() - tp
    den = tp + fp + fn
    return np.where(den > 0, tp / np.maximum(den, 1), 0.0)


def best_threshold(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float, float]:
    """(best threshold, IoU there, IoU at 0.5); ties go to the threshold closest to 0.5.

    ``pos``/``neg``: (BINS,) histograms of one pool, or (S, BINS) for S sets: the curve is then the mean of the sets'
    IoU curves.
    """
    pos, neg = np.atleast_2d(pos), np.atleast_2d(neg)
    curve = np.mean([iou_curve(p, n) for p, n in zip(pos, neg)], axis=0)
    ks = np.arange(BINS)
    k = int(np.lexsort((np.abs(ks - BINS // 2), -curve))[0])
    return k / BINS, float(curve[k]), float(curve[BINS // 2])


def offset_for(threshold: float) -> float:
    """Bias change that moves the 0.5 decision to ``threshold``: ``-logit(t)``, clipped to +-MAX_OFFSET."""
    t = min(max(threshold, 1.0 / BINS), 1.0 - 1.0 / BINS)
    return float(np.clip(-math.log(t / (1.0 - t)), -MAX_OFFSET, MAX_OFFSET))


def calibration_stems(data_dir: Path, set_name: str, split: str, limit: int | None) -> list[str]:
    """An evenly spaced subset (``limit``) of the split's stems, plus every stem passing a class's image filter."""
    stems = list_stems(data_dir, set_name, split)
    if not limit or limit >= len(stems):
        return stems
    pick = set(np.linspace(0, len(stems) - 1, limit).round().astype(int).tolist())
    filters = [f for _, _, f in EVAL_SPEC[set_name].values() if f is not None]
    out = []
    for i, s in enumerate(stems):
        if i in pick:
            out.append(s)
        elif filters:
            raw = read_pair(data_dir, set_name, s)[1]
            if any(f(raw) for f in filters):
                out.append(s)
    return out


@torch.no_grad()
def collect_histograms(model: torch.nn.Module, data_dir: str | Path, sets=None, split: str = "train",
                       limit: int | None = 120, mean=None, std=None,
                       progress: Callable[[str, int, int], None] | None = None) -> dict[str, dict[str, Any]]:
    """class -> {"pos": (S, BINS), "neg": (S, BINS), "sets": [S set names], "n_images": int}."""
    from ..checkpoint import IMAGENET_MEAN, IMAGENET_STD

    cfg = model.cfg
    mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
    model.eval()
    hists: dict[str, dict[str, Any]] = {}
    for s in [s for s in (sets or EVAL_SPEC) if s in EVAL_SPEC]:
        stems = calibration_stems(Path(data_dir), s, split, limit)
        for i, stem in enumerate(stems):
            image, raw = read_pair(Path(data_dir), s, stem)
            probs, _, _ = predict(model, image, tuple(cfg.input_size), mean, std, tuple(cfg.semantic_classes),
                                  cfg.mask_stride, max_persons=0, sky_refine=False,
                                  person_refine=False, hair_refine=False,
                                  person_framing=False)  # the network's own outputs
            for c, (pos_fn, ign_fn, filt) in EVAL_SPEC[s].items():
                if filt is not None and not filt(raw):
                    continue
                pos, neg = probability_histograms(probs[c], pos_fn(raw), None if ign_fn is None else ign_fn(raw))
                h = hists.setdefault(c, {"pos": np.zeros((0, BINS), np.int64), "neg": np.zeros((0, BINS), np.int64),
                                         "sets": [], "n_images": 0})
                if s not in h["sets"]:
                    h["sets"].append(s)
                    h["pos"] = np.vstack([h["pos"], np.zeros(BINS, np.int64)])
                    h["neg"] = np.vstack([h["neg"], np.zeros(BINS, np.int64)])
                h["pos"][-1] += pos
                h["neg"][-1] += neg
                h["n_images"] += 1
            if progress:
                progress(s, i + 1, len(stems))
    return hists


def fit_offsets(hists: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """class -> {"threshold", "offset", "iou_at_0.5", "iou_at_threshold" (means over the sets), "per_set": {set:
    {"iou_at_0.5", "iou_at_threshold"}}, "sets", "n_images"} (training figures)."""
    out = {}
    for c, h in hists.items():
        t, iou_t, iou_05 = best_threshold(h["pos"], h["neg"])
        k = min(int(round(t * BINS)), BINS - 1)
        curves = {s: iou_curve(p, n) for s, p, n in zip(h["sets"], h["pos"], h["neg"])}
        per_set = {s: {"iou_at_0.5": float(cv[BINS // 2]), "iou_at_threshold": float(cv[k])} for s, cv in curves.items()}
        out[c] = {"threshold": t, "offset": offset_for(t), "iou_at_0.5": iou_05, "iou_at_threshold": iou_t,
                  "per_set": per_set, "sets": list(h["sets"]), "n_images": int(h["n_images"])}
    return out


@torch.no_grad()
def apply_offsets(model: torch.nn.Module, offsets: dict[str, float]) -> torch.nn.Module:
    """Add ``offsets[class]`` to that class's bias in ``model.decoder.sem_head`` (in place); returns the model.
    With residual branches (the sky branch, ``model.sky_head_classes``; ``model.class_branches``), which read the
    logits of the classes they refine, the offset of each of those goes to the last bias of its branch of mode
    "both" instead, so the logit moves by exactly the offset and every branch's input stays as it was fitted. A
    class refined by lower-only branches alone (whose clamped residual ``min(r, 0)`` no bias after it can shift) gets
    the offset on its ``sem_head`` bias, and the ``in_mean`` of that logit's input channel in each of those branches
    moves with it (the mean is subtracted before the zero-padded convs, and average pooling passes a constant
    through), so the branches read what they were fitted on and the final logit moves by exactly the offset too."""
    from ..model import branches

    classes = list(model.cfg.semantic_classes)
    bias = model.decoder.sem_head.bias
    refined: dict[str, list] = {}
    for br, cs in branches(model):
        for j, c in enumerate(cs):  # j-th logit of the branch: input channel in_mean.numel() - len(cs) + j
            refined.setdefault(c, []).append((br, j, len(cs)))
    for c, off in offsets.items():
        if c not in classes:
            raise KeyError(f"unknown class {c!r} (model classes: {classes})")
        both = [(br, j) for br, j, _ in refined.get(c, []) if not br.lower_only]
        if both:
            br, j = both[0]
            br.last.bias[j] += float(off)
            continue
        bias[classes.index(c)] += float(off)
        for br, j, n in refined.get(c, []):  # lower-only branches alone
            br.in_mean[br.in_mean.numel() - n + j] += float(off)
    return model


def calibrate_checkpoint(float_ckpt: Path, data_dir: Path, out: Path, limit: int | None = 120,
                         sets=None, progress=None, classes=None, again: bool = False) -> dict[str, Any]:
    """Fit the offsets of a float checkpoint on the training split and write the calibrated float checkpoint.
    ``classes``: apply only these classes' offsets (default all); ``again``: recalibrate (module docstring)."""
    from ..checkpoint import file_sha256, load_checkpoint, save_checkpoint

    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, meta = load_checkpoint(float_ckpt)
    extra = dict(meta.get("extra") or {})
    if not again:
        if meta.get("quantized"):
            raise ValueError(f"{float_ckpt}: calibrate the float checkpoint, not the int8 one (or recalibrate the "
                             "shipped file with --again)")
        if "calibration" in extra:
            raise ValueError(f"{float_ckpt}: already calibrated (extra['calibration'] present; --again "
                             "recalibrates it)")
    names = list(model.cfg.semantic_classes)
    unknown = [c for c in classes or () if c not in names]
    if unknown:
        raise ValueError(f"unknown classes {unknown} (model classes: {names})")
    norm = meta["normalization"]
    t0 = time.time()
    fit = fit_offsets(collect_histograms(model, data_dir, sets, "train", limit, norm["mean"], norm["std"], progress))
    applied = [c for c in fit if classes is None or c in classes]
    apply_offsets(model, {c: fit[c]["offset"] for c in applied})
    report = {"split": "train", "limit_per_set": limit, "classes": fit, "applied": applied,
              "seconds": round(time.time() - t0, 1),
              "made_from": {"file": Path(float_ckpt).name, "sha256": file_sha256(float_ckpt)}}
    if "calibration" in extra:
        extra["recalibration"] = list(extra.get("recalibration") or []) + [report]
    else:
        extra["calibration"] = report
    save_checkpoint(out, model, model.cfg, mean=norm["mean"], std=norm["std"], metrics=meta.get("metrics"),
                    extra=extra)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--float", dest="float_ckpt", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path, help="the shared data directory (../shared/data)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--limit", type=int, default=120, help="training images per set (0 = all)")
    ap.add_argument("--set", dest="sets", action="append", default=None, help="restrict to these sets")
    ap.add_argument("--json", type=Path, default=None, help="also write the report here")
    ap.add_argument("--classes", default=None, help="apply only these classes' offsets (comma-separated)")
    ap.add_argument("--again", action="store_true",
                    help="recalibrate a calibrated (also the shipped int8) file; the output is float")
    a = ap.parse_args(argv)
    classes = [c.strip() for c in a.classes.split(",") if c.strip()] if a.classes else None
    last = {}

    def progress(s, i, n):
        if i == n or i - last.get(s, 0) >= 25:
            last[s] = i
            print(f"  {s}: {i}/{n}", flush=True)

    try:
        rep = calibrate_checkpoint(a.float_ckpt, a.data, a.out, a.limit or None, a.sets, progress, classes, a.again)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"calibrate: {e}") from None
    print(f"{'class':8s} {'threshold':>9s} {'offset':>7s} {'IoU@0.5':>8s} {'IoU@t':>7s}  (training split)")
    for c, r in rep["classes"].items():
        sets = ", ".join(f"{s} {v['iou_at_0.5']:.3f}->{v['iou_at_threshold']:.3f}" for s, v in r["per_set"].items())
        print(f"{c:8s} {r['threshold']:9.3f} {r['offset']:+7.3f} {r['iou_at_0.5']:8.3f} {r['iou_at_threshold']:7.3f}"
              f"  {sets} ({r['n_images']} images){'' if c in rep['applied'] else ' (not applied)'}")
    print(f"wrote {a.out} ({rep['seconds']:.0f} s)")
    if a.json:
        a.json.write_text(json.dumps(rep, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
