"""The sample figures the shipping rules read: the boxes of ``tests/test_training_weights.py`` on the raw samples.

``python benchmarks/sample_boxes.py W.pt [W2.pt ...]`` prints, per weights file and sample, the masks as the weights
tests compute them (campipe's raw render for the network, :class:`~campipe.segmentation.inference.Segmenter` with
the torch runtime and bilinear upsampling):

* the mean sky and person probability over the frame, the share of the frame with sky >= 0.5 and with hair >= 0.5,
  and the number of person instances;
* rocket: mean sky in the test's box (top quarter, middle half of the columns; ``test_rocket_has_sky`` needs > 0.5);
* astronauts: mean skin in the test's face box (rows 0.15-0.33, columns 0.33-0.5; the test needs > 0.3) and in a
  box on the orange suit (rows 0.6-0.95, columns 0.05-0.6: skin-coloured clothes taken for skin).

Written for MODEL_CARD.md's rules 16-20 (fourteenth session), whose sample clauses it measures; about 10 s per
weights file on 2 cores, no shared data needed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from seg_diagnostics import RAW_SAMPLES  # the samples the branch rules read (same folder)

HERE = Path(__file__).resolve().parent


def _box(a: np.ndarray, rows: tuple[float, float], cols: tuple[float, float]) -> float:
    h, w = a.shape
    return float(a[int(rows[0] * h):int(rows[1] * h), int(cols[0] * w):int(cols[1] * w)].mean())


def sample_boxes(weights: str, frames: dict) -> dict:
    """{sample name: {figure: value}} for one weights file; ``frames``: sample name -> rendered frame."""
    from campipe.segmentation.inference import Segmenter

    seg = Segmenter(weights, runtime="torch", refine="bilinear")
    out = {}
    for name, rgb in frames.items():
        r = seg(rgb)
        m = r.masks
        fig = {"sky mean": float(m["sky"].mean()), "sky >= 0.5": float(np.mean(m["sky"] >= 0.5)),
               "person mean": float(m["person"].mean()), "hair >= 0.5": float(np.mean(m["hair"] >= 0.5)),
               "instances": len(r.persons)}
        if name.startswith("rocket"):
            fig["sky in the test's box"] = _box(m["sky"], (0.0, 0.25), (0.25, 0.75))
        else:
            fig["skin in the face box"] = _box(m["skin"], (0.15, 0.33), (0.33, 0.5))
            fig["skin in the suit box"] = _box(m["skin"], (0.6, 0.95), (0.05, 0.6))
        out[name] = fig
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="+")
    a = ap.parse_args(argv)
    from campipe.decode import decode_file
    from campipe.segment_stage import frame_render

    frames = {n: frame_render(decode_file(HERE.parent / "samples" / n))[0] for n in RAW_SAMPLES}
    for w in a.weights:
        for name, fig in sample_boxes(w, frames).items():
            print(f"{Path(w).name} | {name}: " + ", ".join(
                f"{k} {v}" if isinstance(v, int) else f"{k} {v:.4f}" for k, v in fig.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
