"""Benchmark: cost of showing the difference at camera resolution (compare numbers, overlays, stage dumps, report).

Synthetic display/linear images of ``--mp`` megapixels (3:2) with a sky band, a skin ellipse and person masks, so the
figures do not depend on the segmentation weights being installed. Timed pieces (median of ``--repeat`` runs):

* ``compare_metrics``: clipped fractions (full res), sky noise (full res), skin ΔE (at the 768 px working size);
* ``write_overlays``: RGBA overlay PNGs for the 6 semantic classes + 2 persons (downscaled to 2048 px);
* stage dump of one stage (linear -> sRGB view + JPEG q92, full resolution) and of the masks after segmentation;
* ``StageReport`` bookkeeping per stage (reading /proc/self/status and resetting the peak).

Also the resident-set peak above the start, to size the memory the compare command adds on top of a render.

Second part (``--sky-data``, default ``../shared/data/camvid``; skipped when absent): does the page's "sky noise"
number track real noise on real skies? For CamVid frames whose labelled sky (class 0) covers >= 5 % of the frame,
Gaussian grey noise of sigma = 1, 2, 4 8-bit codes is added to the JPEG; the estimate on the noisy frame is compared
with sqrt(baseline^2 + sigma^2), the baseline being the estimate on the untouched frame (JPEG noise + cloud texture).
Printed: median baseline, and per sigma the median estimate and median relative error.

Run:  python benchmarks/bench_compare.py [--mp 24] [--repeat 3] [--sky-data DIR] [--n 60]
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


def sky_noise_accuracy(folder: Path, n: int, rng: np.random.Generator) -> None:
    from PIL import Image

    imgs = sorted((folder / "images").glob("*.jpg"))
    rows = []
    for p in imgs:
        lab = np.asarray(Image.open(folder / "masks" / (p.stem + ".png")))
        sky = (lab == 0).astype(np.float32)
        if sky.mean() < 0.05:
            continue
        disp = np.asarray(Image.open(p).convert("RGB"), np.float32) / 255.0
        base = sky_noise(disp, sky)
        if base is None:
            continue
        ests = []
        for sigma in (1.0, 2.0, 4.0):
            noisy = np.clip(disp + rng.normal(0, sigma / 255.0, disp.shape[:2] + (1,)).astype(np.float32), 0, 1)
            ests.append(sky_noise(noisy, sky))
        rows.append((base, ests))
        if len(rows) >= n:
            break
    if not rows:
        print(f"no CamVid frame with >= 5 % sky under {folder}")
        return
    base = np.array([r[0] for r in rows])
    print(f"sky noise on {len(rows)} CamVid frames (sky >= 5 %): baseline (JPEG + texture) median {np.median(base):.2f}"
          f" codes")
    for i, sigma in enumerate((1.0, 2.0, 4.0)):
        est = np.array([r[1][i] for r in rows])
        expect = np.sqrt(base ** 2 + sigma ** 2)
        rel = (est - expect) / expect
        print(f"  added sigma {sigma:.0f}: median estimate {np.median(est):.2f}, expected sqrt(base^2+sigma^2) "
              f"median {np.median(expect):.2f}, median relative error {100 * np.median(rel):+.1f} % "
              f"(IQR {100 * np.percentile(rel, 25):+.1f} .. {100 * np.percentile(rel, 75):+.1f} %)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mp", type=float, default=24.0, help="megapixels of the synthetic image")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sky-data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid")
    ap.add_argument("--n", type=int, default=60, help="CamVid frames for the sky-noise check")
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
    del lin, disp, warm, masks, persons
    if args.sky_data.is_dir():
        sky_noise_accuracy(args.sky_data, args.n, rng)
    else:
        print(f"(sky-noise check skipped: {args.sky_data} not found)")


if __name__ == "__main__":
    main()
