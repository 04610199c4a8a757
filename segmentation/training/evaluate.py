"""Evaluation of HyperDETR on the held-out split of the shared sets: pooled per-class IoU and person panoptic quality.

Protocol (the issue's validation targets):

* inference exactly as campipe runs it: sRGB photo -> letterbox to the checkpoint's ``input_size`` (aspect kept,
  padded with the mean) -> network -> sigmoid / softmax -> crop the padding -> upsampling to the label's resolution,
  edge-aware (guided filter against the photo's luma, campipe's default ``refine="guided"``) or, with
  ``refine="bilinear"``, plain bilinear (the protocol of the reports before 2026-12-04)
  (:mod:`campipe.segmentation.postprocess`); with ``tta=True`` the static channels are flip test-time augmented as
  ``segment(..., tta=True)`` does (:func:`campipe.segmentation.postprocess.merge_flip`); the sky is refined with
  the photo's colours as campipe does by default (:mod:`campipe.segmentation.sky_refine`; ``sky_refine=False``
  gives the protocol of the reports before 2026-12-05), and so are the person channel and hair
  (``person_refine=False``, ``hair_refine=False``: the protocol before 2026-12-05's fourth session); the person
  channel and instances get campipe's framing-aware offset (:class:`campipe.segmentation.postprocess.PersonFraming`;
  ``person_framing=False``: the protocol before 2026-12-06's ninth session);
* **pooled IoU** per class: a pixel is predicted positive where the probability is >= 0.5; intersections and unions
  are summed over all images of the split before dividing (pooled, not a mean of per-image IoUs). Pixels a set does
  not label are ignored (CamVid "unlabelled"; bicyclists for person);
* ``person`` is campipe's person mask: the pixel-wise maximum of the person channel and the kept instances (as
  :class:`campipe.segmentation.SegmentationResult` gives it); ``person_channel`` is the static channel alone;
* class definitions: sky = CamVid 0; hair = Figaro1k/LFW 255, CelebAMask 13; face skin = CelebAMask 1, 2, 8, 9, 17;
  teeth / inner mouth = CelebAMask 10; glasses = CelebAMask 3, on the images that contain glasses only; person =
  every non-zero CelebAMask id, Penn-Fudan instances, CamVid pedestrians;
* **panoptic quality** (Kirillov et al. 2019) of person instances on CelebAMask (one person per image) and
  Penn-Fudan: predicted instances are the queries with score >= 0.5, each pixel given to the query with the highest
  score x probability among those >= 0.5; a prediction and a ground truth match when IoU > 0.5;
  PQ = sum(IoU of matches) / (TP + FP/2 + FN/2); SQ and RQ reported too.

All results are plain dicts (JSON-ready); :func:`format_table` renders them.

References: A. Kirillov et al., "Panoptic Segmentation", CVPR 2019; the data sets' README (label ids).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..postprocess import (CLASS_GUIDE, DEFAULT_PERSON_FRAMING, REFINE_MODES, Letterbox, PersonFraming,
                           decode_outputs, flip_canvas, letterbox, merge_flip, normalize, upsample_classes)
from ..inference import gray_guide
from ..sky_refine import DEFAULT_WEIGHT as SKY_REFINE_WEIGHT, refiners
from .datasets import CAMVID_BICYCLIST, CAMVID_UNLABELLED, CELEBA_SKIN_IDS, list_stems, read_pair

# set -> class -> (positive(raw), ignore(raw) or None, image filter(raw) or None)
Spec = tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray] | None,
             Callable[[np.ndarray], bool] | None]
EVAL_SPEC: dict[str, dict[str, Spec]] = {
    "celebamask": {
        "person": (lambda r: r != 0, None, None),
        "hair": (lambda r: r == 13, None, None),
        "skin": (lambda r: np.isin(r, CELEBA_SKIN_IDS), None, None),
        "teeth": (lambda r: r == 10, None, None),
        "glasses": (lambda r: r == 3, None, lambda r: bool((r == 3).any())),
    },
    "figaro1k": {"hair": (lambda r: r >= 128, None, None)},
    "lfw_hair": {"hair": (lambda r: r >= 128, None, None)},
    "camvid": {
        "sky": (lambda r: r == 0, lambda r: r == CAMVID_UNLABELLED, None),
        "person": (lambda r: r == 9, lambda r: (r == CAMVID_UNLABELLED) | (r == CAMVID_BICYCLIST), None),
    },
    "pennfudan": {"person": (lambda r: r > 0, None, None)},
}
#: sets with person instance labels -> raw label -> instance masks (T, H, W)
INSTANCE_SPEC: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "celebamask": lambda r: (r != 0)[None] if (r != 0).any() else np.zeros((0,) + r.shape, bool),
    "pennfudan": lambda r: np.stack([r == i for i in np.unique(r) if i > 0]) if (r > 0).any()
    else np.zeros((0,) + r.shape, bool),
}
#: the issue's targets (shipped int8 model, pooled IoU on the validation split)
TARGETS = {("camvid", "sky"): 0.92, ("figaro1k", "hair"): 0.85, ("celebamask", "skin"): 0.90,
           ("celebamask", "teeth"): 0.75, ("celebamask", "glasses"): 0.75, ("celebamask", "person"): 0.95,
           ("pennfudan", "person"): 0.75}


@dataclass
class IoUAccumulator:
    """Pooled IoU: sums of intersection and union over images."""

    inter: float = 0.0
    union: float = 0.0
    n_images: int = 0

    def update(self, pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> None:
        pred, gt = pred.astype(bool), gt.astype(bool)
        if ignore is not None:
            keep = ~ignore.astype(bool)
            pred, gt = pred & keep, gt & keep
        self.inter += float(np.count_nonzero(pred & gt))
        self.union += float(np.count_nonzero(pred | gt))
        self.n_images += 1

    @property
    def iou(self) -> float:
        return self.inter / self.union if self.union > 0 else float("nan")


@dataclass
class PQAccumulator:
    """Panoptic quality of one 'thing' class over images."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0
    n_images: int = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """pred (M, H, W) bool non-overlapping segments; gt (T, H, W) bool."""
        self.n_images += 1
        m, t = pred.shape[0], gt.shape[0]
        if m == 0 or t == 0:
            self.fp += m
            self.fn += t
            return
        p2 = pred.reshape(m, -1).astype(np.float32)
        g2 = gt.reshape(t, -1).astype(np.float32)
        inter = p2 @ g2.T
        union = p2.sum(1)[:, None] + g2.sum(1)[None, :] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        # IoU > 0.5 matches are unique by construction (Kirillov et al. 2019, Theorem 1)
        pi, gi = np.nonzero(iou > 0.5)
        self.tp += len(pi)
        self.fp += m - len(set(pi.tolist()))
        self.fn += t - len(set(gi.tolist()))
        self.iou_sum += float(iou[pi, gi].sum())

    @property
    def sq(self) -> float:
        return self.iou_sum / self.tp if self.tp else 0.0

    @property
    def rq(self) -> float:
        d = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return self.tp / d if d else float("nan")

    @property
    def pq(self) -> float:
        d = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return self.iou_sum / d if d else float("nan")


def panoptic_segments(inst_probs: np.ndarray, scores: np.ndarray, thr: float = 0.5) -> np.ndarray:
    """(M, H, W) instance probabilities + scores -> (M, H, W) bool non-overlapping segments (empty ones dropped)."""
    if inst_probs.shape[0] == 0:
        return np.zeros((0,) + inst_probs.shape[1:], bool)
    weighted = inst_probs * scores[:, None, None]
    arg = weighted.argmax(0)
    fg = (inst_probs >= thr).any(0)
    segs = np.stack([(arg == i) & fg & (inst_probs[i] >= thr) for i in range(inst_probs.shape[0])])
    return segs[segs.reshape(segs.shape[0], -1).any(1)]


@torch.no_grad()
def predict(model: torch.nn.Module, image: np.ndarray, input_size: tuple[int, int], mean, std,
            classes: tuple[str, ...], mask_stride: int, score_threshold: float = 0.5, max_persons: int = 4,
            refine: str = "guided", tta: bool = False, sky_refine: bool = True, person_refine: bool = True,
            hair_refine: bool = True, person_framing: bool = True
            ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """uint8 sRGB (H, W, 3) -> (class -> prob float32 (H, W), instance probs (M, H, W), scores (M,)).

    ``refine``: "guided" (campipe's default upsampling, guided by the photo) or "bilinear"; ``tta``: flip test-time
    augmentation of the static channels; ``sky_refine`` / ``person_refine`` / ``hair_refine``: the sky / the person
    channel / hair refined with the photo's colours (campipe's defaults); ``person_framing``: the framing-aware person
    offset (:class:`..postprocess.PersonFraming`, campipe's default).
    """
    if refine not in REFINE_MODES:
        raise ValueError(f"refine must be one of {REFINE_MODES}, got {refine!r}")
    out_np, box = network_outputs(model, image, input_size, mean, std, tta)
    return postprocess_outputs(out_np, box, image, classes, mask_stride, score_threshold, max_persons, refine,
                               sky_refine, person_refine, hair_refine,
                               DEFAULT_PERSON_FRAMING if person_framing else None)


@torch.no_grad()
def network_outputs(model: torch.nn.Module, image: np.ndarray, input_size: tuple[int, int], mean, std,
                    tta: bool = False) -> tuple[dict[str, np.ndarray], Letterbox]:
    """The first half of :func:`predict`: uint8 sRGB (H, W, 3) letterboxed and run -> (float32 outputs, letterbox)."""
    img = image.astype(np.float32) / 255.0
    canvas, box = letterbox(img, tuple(input_size), tuple(mean))
    x = normalize(canvas, mean, std)

    def run(inp: np.ndarray) -> dict[str, np.ndarray]:
        out = model(torch.from_numpy(inp))
        return {k: v.float().numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}

    out_np = run(x)
    if tta:
        out_np = merge_flip(out_np, run(flip_canvas(x)))
    return out_np, box


def postprocess_outputs(out_np: dict[str, np.ndarray], box: Letterbox, image: np.ndarray, classes: tuple[str, ...],
                        mask_stride: int, score_threshold: float = 0.5, max_persons: int = 4,
                        refine: str = "guided", sky_refine: bool = True, person_refine: bool = True,
                        hair_refine: bool = True, person_framing: PersonFraming | None = DEFAULT_PERSON_FRAMING
                        ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The second half of :func:`predict` (same return value): decode, upsample to the photo, colour refinements;
    ``person_framing`` is the rule itself here (or ``None``)."""
    raw = decode_outputs(out_np, box, classes, mask_stride=mask_stride, score_threshold=score_threshold,
                         max_persons=max_persons, person_framing=person_framing)
    img = image.astype(np.float32) / 255.0
    H, W = image.shape[:2]
    guide = gray_guide(img) if refine == "guided" else None
    names = list(classes) + ["person"] * len(raw.instances)  # each class with its own window, as campipe runs it
    up = np.stack(upsample_classes(np.concatenate([raw.semantic, raw.instances]), names, (H, W), guide))
    sem, inst = up[:len(classes)], up[len(classes):]
    for c, fn in refiners(sky_refine, person_refine, hair_refine):
        if c in classes:
            i = list(classes).index(c)
            sem[i] = fn(sem[i], img)
    return {c: sem[i] for i, c in enumerate(classes)}, inst, raw.scores


def evaluate_model(model: torch.nn.Module, data_dir: str | Path, sets=None, split: str = "val",
                   limit: int | None = None, input_size=None, mean=None, std=None, threshold: float = 0.5,
                   progress: Callable[[str, int, int], None] | None = None, refine: str = "guided",
                   tta: bool = False, sky_refine: bool = True, person_refine: bool = True,
                   hair_refine: bool = True, person_framing: bool = True) -> dict[str, dict[str, Any]]:
    """Evaluate ``model`` (float32, eval mode) on ``split`` of every set in ``sets``.

    Returns ``{set: {"iou_<class>": float, "n_images": int, "pq"/"sq"/"rq": float (instance sets),
    "seconds": float}}``.
    """
    from ..checkpoint import IMAGENET_MEAN, IMAGENET_STD

    cfg = model.cfg
    input_size = tuple(input_size or cfg.input_size)
    mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
    sets = [s for s in (sets or EVAL_SPEC) if s in EVAL_SPEC]
    model.eval()
    results: dict[str, dict[str, Any]] = {}
    for s in sets:
        t0 = time.time()
        stems = list_stems(Path(data_dir), s, split)
        if limit:
            stems = stems[:limit]
        specs = dict(EVAL_SPEC[s])
        if "person" in specs:
            specs["person_channel"] = specs["person"]
        accs = {c: IoUAccumulator() for c in specs}
        pq = PQAccumulator() if s in INSTANCE_SPEC else None
        for i, stem in enumerate(stems):
            image, raw = read_pair(Path(data_dir), s, stem)
            probs, inst, scores = predict(model, image, input_size, mean, std, tuple(cfg.semantic_classes),
                                          cfg.mask_stride, refine=refine, tta=tta, sky_refine=sky_refine,
                                          person_refine=person_refine, hair_refine=hair_refine,
                                          person_framing=person_framing)
            if "person" in probs:
                probs["person_channel"] = probs["person"]
                if len(inst):
                    probs["person"] = np.maximum(probs["person"], inst.max(0))
            for c, (pos, ign, filt) in specs.items():
                if filt is not None and not filt(raw):
                    continue
                accs[c].update(probs[c] >= threshold, pos(raw), None if ign is None else ign(raw))
            if pq is not None:
                pq.update(panoptic_segments(inst, scores, threshold), INSTANCE_SPEC[s](raw))
            if progress:
                progress(s, i + 1, len(stems))
        r: dict[str, Any] = {f"iou_{c}": a.iou for c, a in accs.items()}
        r["n_images"] = len(stems)
        if "glasses" in accs:
            r["n_images_glasses"] = accs["glasses"].n_images
        if pq is not None:
            r.update(pq=pq.pq, sq=pq.sq, rq=pq.rq, tp=pq.tp, fp=pq.fp, fn=pq.fn)
        r["seconds"] = time.time() - t0
        results[s] = r
    return results


def quantized_pruned_copy(model: torch.nn.Module, keep_dec_layers: int = 2) -> torch.nn.Module:
    """The model as shipped: weights through int8 per-channel quantisation, decoder pruned to ``keep`` layers."""
    import tempfile

    from ..checkpoint import load_checkpoint, save_checkpoint

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "q.pt"
        save_checkpoint(p, model, model.cfg, quantize=True,
                        keep_dec_layers=min(keep_dec_layers, model.num_dec_layers))
        m, _ = load_checkpoint(p)
    return m


def evaluate_checkpoints(weights: dict[str, str | Path], data_dir: str | Path, sets=None, split: str = "val",
                         limit: int | None = None, derive_int8_from: str | None = None,
                         progress=None, refine: str = "guided", tta: bool = False, sky_refine: bool = True,
                         person_refine: bool = True, hair_refine: bool = True, person_framing: bool = True
                         ) -> dict[str, Any]:
    """Evaluate several checkpoints (label -> path). With ``derive_int8_from=label``, also evaluate that float
    checkpoint quantised + pruned to 2 layers in memory (label ``<label>-int8-l2``)."""
    from ..checkpoint import load_checkpoint

    torch.set_num_threads(min(2, torch.get_num_threads()))
    out: dict[str, Any] = {"split": split, "limit": limit, "refine": refine, "tta": tta, "sky_refine": sky_refine,
                           "sky_refine_weight": SKY_REFINE_WEIGHT if sky_refine else None,
                           "person_refine": person_refine, "hair_refine": hair_refine,
                           "person_framing": asdict(DEFAULT_PERSON_FRAMING) if person_framing else None,
                           "guide_windows": {c: list(w) for c, w in CLASS_GUIDE.items()} if refine == "guided" else None,
                           "models": {}, "results": {}}
    items = list(weights.items())
    for label, path in items:
        model, meta = load_checkpoint(path)
        norm = meta["normalization"]
        variants = [(label, model)]
        if derive_int8_from == label:
            variants.append((f"{label}-int8-l2", quantized_pruned_copy(model, 2)))
        for lab, m in variants:
            derived = lab.endswith("int8-l2") and lab != label
            out["models"][lab] = {"path": str(path), "sha256": meta["sha256"],
                                  "file_size": None if derived else meta["file_size"],
                                  "derived": "int8 + first 2 decoder layers, made in memory from this float file "
                                             "(same weights as ship.py writes)" if derived else None,
                                  "quantized": bool(meta.get("quantized")) or derived,
                                  "dec_layers": m.num_dec_layers}
            out["results"][lab] = evaluate_model(m, data_dir, sets, split, limit, mean=norm["mean"],
                                                 std=norm["std"], progress=progress, refine=refine, tta=tta,
                                                 sky_refine=sky_refine, person_refine=person_refine,
                                                 hair_refine=hair_refine, person_framing=person_framing)
    return out


def format_table(report: dict[str, Any]) -> list[list[str]]:
    """Rows [set, metric, target, value per model...] for a report of :func:`evaluate_checkpoints`."""
    labels = list(report["results"])
    rows = [["set", "metric", "target"] + labels]
    first = report["results"][labels[0]] if labels else {}
    for s, r in first.items():
        for k in r:
            if not (k.startswith("iou_") or k in ("pq", "sq", "rq")):
                continue
            tgt = TARGETS.get((s, k[4:])) if k.startswith("iou_") else None
            vals = [report["results"][lab].get(s, {}).get(k, float("nan")) for lab in labels]
            rows.append([s, k, f"{tgt:.2f}" if tgt else "", *[f"{v:.3f}" for v in vals]])
    return rows


def markdown_table(report: dict[str, Any]) -> str:
    """The :func:`format_table` rows as a Markdown table, plus (with 2+ models) the difference last - first, and
    whether the last model meets the target."""
    rows = format_table(report)
    multi = len(rows[0]) > 4
    head = rows[0] + (["last - first"] if multi else []) + ["target met (last column)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows[1:]:
        met = ""
        if r[2]:
            met = "yes" if float(r[-1]) >= float(r[2]) else "no"
        delta = [f"{float(r[-1]) - float(r[3]):+.3f}"] if multi else []
        lines.append("| " + " | ".join(r + delta + [met]) + " |")
    return "\n".join(lines)
