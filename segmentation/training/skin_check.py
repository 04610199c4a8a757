"""Check of the body-skin derivation (:mod:`.skin`) where ground truth exists.

Penn-Fudan (where the derivation is used) has no skin labels, so the derivation is run *as if* the face skin were
unknown on CelebAMask validation photos (seeds from the head region of the person mask with the generic chroma
rule, per-image Gaussian, three-state output) and compared with the labelled skin (ids 1, 2, 8, 9, 17):

* precision of the pixels it calls skin (how often "skin" is really skin: clothes/hair leaking in lower this),
* recall of the labelled skin among the pixels it decides on, and the fraction left unknown.

Neck/face are the only labelled skin there; arms are rare in these crops, so this measures colour-model quality,
not limb coverage. ``python -m campipe.segmentation.training.skin_check [DATA_DIR] [--limit N]`` prints the figures.
"""
from __future__ import annotations

import argparse

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", nargs="?", default=None)
    ap.add_argument("--limit", type=int, default=60)
    a = ap.parse_args(argv)
    r = check(a.data_dir or default_data_dir(), a.limit)
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
