"""False hair: where the hair channel fires on what is known not to be hair.

``python benchmarks/false_hair.py W.pt [W2.pt ...] [--data ../shared/data] [--frac 0.35]`` prints, per weights file:

* on the Penn-Fudan *validation* photos (none is in any fit; Penn-Fudan is not scored on hair, so no validation
  figure is touched): the share of the pixels known not to be hair (background, and each person's body below the
  top ``--frac`` of its height, :func:`campipe.segmentation.training.datasets.hair_absent_below_head`) that campipe's
  whole protocol (:func:`~campipe.segmentation.training.evaluate.predict`) calls hair (>= 0.5), pooled over the
  photos, and the same over the bodies alone;
* on the three raw samples (campipe's render for the network), the share of the frame called hair.

Written for MODEL_CARD.md's rules 14 and 15 (thirteenth session), where a hair branch took dark clothes, helmets and
steel lattices for hair; about 15 s per weights file on 2 cores.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from seg_diagnostics import RAW_SAMPLES  # the samples the branch rules read (same folder)

HERE = Path(__file__).resolve().parent


def false_hair(weights: str, data: Path, frac: float = 0.35) -> dict:
    """The figures of the module docstring for one weights file (percentages)."""
    from campipe.segmentation.checkpoint import IMAGENET_MEAN, IMAGENET_STD, load_checkpoint
    from campipe.segmentation.training.datasets import (HAIR, hair_absent_below_head, list_stems, map_labels,
                                                        read_pair, unpack)
    from campipe.segmentation.inference import to_display_rgb
    from campipe.segmentation.training.evaluate import predict
    from campipe.sidebyside import to_uint8

    m = load_checkpoint(weights)[0].eval()
    c = m.cfg

    def hair(img: np.ndarray) -> np.ndarray:
        return predict(m, img, c.input_size, IMAGENET_MEAN, IMAGENET_STD, tuple(c.semantic_classes),
                       c.mask_stride)[0]["hair"] >= 0.5

    stems = list_stems(data, "pennfudan", "val")
    fp = n = fp_body = n_body = 0
    for t in stems:
        img, raw = read_pair(data, "pennfudan", t)
        u = unpack(hair_absent_below_head(map_labels("pennfudan", raw, img)[0], frac))
        known_no = (u["known"][HAIR] == 1) & (u["sem"][HAIR] == 0)
        body = known_no & (raw > 0)
        h = hair(img)
        fp, n = fp + int((h & known_no).sum()), n + int(known_no.sum())
        fp_body, n_body = fp_body + int((h & body).sum()), n_body + int(body.sum())
    res = {"pennfudan_val_photos": len(stems), "pennfudan_false_hair_pct": 100 * fp / max(n, 1),
           "pennfudan_bodies_false_hair_pct": 100 * fp_body / max(n_body, 1)}
    for name in RAW_SAMPLES:
        u8 = to_uint8(to_display_rgb(HERE.parent / "samples" / name))  # campipe's render for the network
        res[f"sample:{name}"] = 100 * float(hair(u8).mean())  # % of the frame called hair
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="+")
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--frac", type=float, default=0.35, help="head line, as a fraction of each person's height")
    a = ap.parse_args(argv)
    if not (a.data / "pennfudan").is_dir():
        raise SystemExit(f"no pennfudan under {a.data} (the shared data directory)")
    for w in a.weights:
        r = false_hair(w, a.data, a.frac)
        samples = "; ".join(f"{k[7:21]} {v:.2f} %" for k, v in r.items() if k.startswith("sample:"))
        print(f"{w} | Penn-Fudan val ({r['pennfudan_val_photos']}) false hair {r['pennfudan_false_hair_pct']:.2f} % "
              f"of known-not-hair pixels, {r['pennfudan_bodies_false_hair_pct']:.2f} % of the bodies below the head "
              f"line; {samples}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
