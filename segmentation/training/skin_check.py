"""Check of the body-skin derivation (:mod:`.skin`) where ground truth exists.

Penn-Fudan (where the derivation is used) has no skin labels, so the derivation is run *as if* the face skin were
unknown on CelebAMask validation photos (seeds from the head region of the person mask with the generic chroma
rule, per-image Gaussian, three-state output) and compared with the labelled skin (ids 1, 2, 8, 9, 17):

* precision of the pixels it calls skin (how often "skin" is really skin: clothes/hair leaking in lower this),
* recall of the labelled skin among the pixels it decides on, and the fraction left unknown.

Neck/face are the only labelled skin there; arms are rare in these crops, so this measures colour-model quality,
not limb coverage. Limb coverage is checked on full-body photos labelled by hand (:func:`check_full_body`: visible
skin polygons of faces, arms, hands and feet on three Penn-Fudan validation photos, ``skin_labels_fullbody.json``),
for the derivation and, with ``--weights``, for a model's skin channel.

``python -m campipe.segmentation.training.skin_check [DATA_DIR] [--limit N] [--weights CKPT]`` prints the figures.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from .datasets import CELEBA_SKIN_IDS, default_data_dir, list_stems, read_pair
from .skin import derive_body_skin


def check(data_dir, limit: int = 60) -> dict[str, float]:
    tp = fp = fn = unknown = person_px = 0
    stems = list_stems(data_dir, "celebamask", "val")[:limit]
    for stem in stems:
        img, raw = read_pair(data_dir, "celebamask", stem)
        person = raw != 0
        gt = np.isin(raw, CELEBA_SKIN_IDS)
        d = derive_body_skin(img, person)
        dec = d != 255
        tp += int(((d == 1) & gt).sum())
        fp += int(((d == 1) & ~gt & person).sum())
        fn += int(((d == 0) & gt).sum())
        unknown += int((~dec & person).sum())
        person_px += int(person.sum())
    return {"images": len(stems), "precision": tp / max(1, tp + fp), "recall_decided": tp / max(1, tp + fn),
            "unknown_fraction_of_person": unknown / max(1, person_px)}


FULL_BODY_LABELS = Path(__file__).with_name("skin_labels_fullbody.json")


def full_body_truth(raw: np.ndarray, polygons: list) -> tuple[np.ndarray, np.ndarray]:
    """(skin ground truth, person) bool (H, W): the hand-drawn polygons inside the data set's person mask."""
    m = np.zeros(raw.shape[:2], np.uint8)
    for p in polygons:
        cv2.fillPoly(m, [np.asarray(p, np.int32)], 1)
    person = raw > 0
    return (m > 0) & person, person


def _prf(pred: np.ndarray, gt: np.ndarray, region: np.ndarray) -> tuple[int, int, int]:
    return int((pred & gt & region).sum()), int((pred & ~gt & region).sum()), int((~pred & gt & region).sum())


def check_full_body(data_dir, weights=None, labels: Path = FULL_BODY_LABELS) -> dict[str, float]:
    """Precision/recall of the derived body skin (on the pixels it decides) and, if ``weights`` is given, IoU /
    precision / recall of that model's skin channel (> 0.5) over the person pixels of the hand-labelled photos."""
    doc = json.loads(Path(labels).read_text())
    acc = {"d": [0, 0, 0], "m": [0, 0, 0]}
    undecided = person_px = skin_px = 0
    seg = None
    if weights is not None:
        from ..inference import Segmenter

        seg = Segmenter(weights, runtime="torch")
    for stem, polys in doc["images"].items():
        img, raw = read_pair(data_dir, doc["set"], stem)
        gt, person = full_body_truth(raw, polys)
        skin_px += int(gt.sum())
        d = derive_body_skin(img, person)
        dec = d != 255
        acc["d"] = [a + b for a, b in zip(acc["d"], _prf(d == 1, gt, person & dec))]
        undecided += int((~dec & person).sum())
        person_px += int(person.sum())
        if seg is not None:
            skin = seg(img).masks["skin"] > 0.5
            acc["m"] = [a + b for a, b in zip(acc["m"], _prf(skin, gt, person))]
    tp, fp, fn = acc["d"]
    out = {"images": len(doc["images"]), "skin_px": skin_px, "derived_precision": tp / max(1, tp + fp), "derived_recall_decided": tp / max(1, tp + fn),
           "derived_unknown_fraction_of_person": undecided / max(1, person_px)}
    if seg is not None:
        tp, fp, fn = acc["m"]
        out.update(model_iou=tp / max(1, tp + fp + fn), model_precision=tp / max(1, tp + fp),
                   model_recall=tp / max(1, tp + fn))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", nargs="?", default=None)
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--weights", default=None, help="also score this checkpoint's skin channel on the full-body set")
    a = ap.parse_args(argv)
    data = Path(a.data_dir) if a.data_dir else default_data_dir()
    fmt = lambda r: " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items())  # noqa
    print("celebamask face skin (derivation):", fmt(check(data, a.limit)))
    print("hand-labelled full-body photos:   ", fmt(check_full_body(data, a.weights)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
