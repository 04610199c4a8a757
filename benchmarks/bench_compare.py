"""Benchmark: cost of showing the difference at camera resolution (compare numbers, overlays, stage dumps, report).

Synthetic display/linear images of ``--mp`` megapixels (3:2) with a sky band, a skin ellipse and person masks, so the
figures do not depend on the segmentation weights being installed. Timed pieces (median of ``--repeat`` runs):

* ``compare_metrics``: clipped fractions (full res), sky noise (full res), skin ΔE (at the 768 px working size);
* ``write_overlays``: RGBA overlay PNGs for the 6 semantic classes + 2 persons (downscaled to 2048 px);
* stage dump of one stage (linear -> sRGB view + JPEG q92, full resolution) and of the masks after segmentation;
* ``StageReport`` bookkeeping per stage (reading /proc/self/status and resetting the peak).

Also the resident-set peak above the start, to size the memory the compare command adds on top of a render.

Run:  python benchmarks/bench_compare.py [--mp 24] [--repeat 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from campipe.compare_metrics import clipped_fractions, downscale, skin_delta_e, sky_noise
from campipe.compare_page import write_overlays
from campipe.frame import Frame, PersonInstance
from campipe.stagedump import StageReport, _ru_maxrss_mib, make_stage_dumper, memory_snapshot


def scene(mp: float, rng: np.random.Generator):
    w = int(round((mp * 1e6 * 1.5) ** 0.5))
    h = int(round(w / 1.5))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    lin = np.empty((h, w, 3), np.float32)
    lin[..., 0] = 0.2 + 0.5 * x / w
    lin[..., 1] = 0.3 + 0.4 * y / h
    lin[..., 2] = 0.5
    lin += rng.normal(0, 0.01, (h, w, 1)).astype(np.float32)
    sky = (y < 0.3 * h).astype(np.float32)
    skin = ((((x - 0.5 * w) / (0.1 * w)) ** 2 + ((y - 0.45 * h) / (0.15 * h)) ** 2) < 1).astype(np.float32)
    person = ((((x - 0.5 * w) / (0.25 * w)) ** 2 + ((y - 0.75 * h) / (0.4 * h)) ** 2) < 1).astype(np.float32)
    masks = {"sky": sky, "person": person, "hair": skin * 0.5, "skin": skin, "teeth": skin * 0.1,
             "glasses": skin * 0.2}
    persons = [PersonInstance(person, 0.9), PersonInstance(skin, 0.5)]
    return lin, masks, persons


def timed(fn, repeat: int) -> float:
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mp", type=float, default=24.0, help="megapixels of the synthetic image")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    _, rss0 = memory_snapshot()
    lin, masks, persons = scene(args.mp, rng)
    disp = np.clip(lin, 0, 1) ** (1 / 2.2)
    warm = np.clip(disp * np.float32([1.06, 1.0, 0.9]), 0, 1)
    h, w = disp.shape[:2]
    print(f"image {w}x{h} ({w * h / 1e6:.1f} MP), repeat {args.repeat} (median)")
    small_ref, small_skin = downscale(disp, 768), downscale(masks["skin"], 768)
    rows = [
        ("clipped_fractions (full res)", lambda: clipped_fractions(warm)),
        ("sky_noise (full res)", lambda: sky_noise(warm, masks["sky"])),
        ("skin_delta_e (768 px)", lambda: skin_delta_e(downscale(warm, 768), small_ref, small_skin)),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("write_overlays (6 classes + 2 persons)", lambda: write_overlays(tmp, masks, persons)))
        report = StageReport()
        dumper = make_stage_dumper(Path(tmp) / "dump", report=report)
        frame = Frame(image=lin, masks={}, persons=[])
        rows.append(("stage dump, one stage (JPEG q92 full res)", lambda: dumper("tone", frame, 0.0)))
        seg = Frame(image=lin, masks=masks, persons=persons)
        rows.append(("stage dump after segment (image + 8 masks)", lambda: dumper("segment", seg, 0.0)))
        rows.append(("StageReport bookkeeping per stage", lambda: report("tone", frame, 0.0)))
        for name, fn in rows:
            t = timed(fn, args.repeat)
            print(f"  {name:<44} {t * 1e3:9.1f} ms   {t * 1e3 / (w * h / 1e6):7.2f} ms/MP")
    data = (lin.nbytes * 3 + sum(m.nbytes for m in masks.values())) / 2**20
    print(f"process resident-set peak {_ru_maxrss_mib():.0f} MiB (start {rss0:.0f} MiB; the linear image, two "
          f"display copies and the 6 masks alone are {data:.0f} MiB)")


if __name__ == "__main__":
    main()
