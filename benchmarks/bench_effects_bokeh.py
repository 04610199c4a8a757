"""Benchmark: portrait blur on a synthetic scene with a known subject mask — halo and bokeh-disc figures, timing.

Scene (linear working RGB): a textured, graded background with point highlights (value 40, i.e. ~5 stops above
white, like street lights) and a person silhouette (head + shoulders/torso) with anti-aliased soft edges of a colour
far from the background's. The subject mask is the exact coverage (ground truth).

Figures:

* halo: in the 3-px band just outside the subject edge (coverage 0, within 3 px of coverage > 0), the fraction of
  subject colour carried by the rendered background, ``alpha = <out - ref, S - ref> / |S - ref|^2`` with ``ref`` the
  same background blurred without any subject, ``S`` the subject's mean colour. Criterion: <= 5 % (mean; the 95th
  percentile is printed too). The same figure for a naive render (blur everything, paste the sharp subject on top)
  shows what the normalised convolution prevents.
* bokeh discs: each highlight's width at half maximum along its row and column vs the thin-lens diameter the
  renderer planned; the flatness of the disc (min/max over its central half) distinguishes a disc from a Gaussian.
* time for a 12 MP frame (4000 x 3000) with grain.

Run:  python benchmarks/bench_effects_bokeh.py [--size 1500x1000] [--aperture 1.8] [--focal 26] [--no-12mp]
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from campipe.effects.bokeh import _blur_layer, aperture_kernel, plan_layers, portrait_blur
from campipe.effects.noise import NoiseModel

SUBJ = np.array([0.75, 0.25, 0.08], np.float32)


def make_scene(h: int, w: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([0.10 + 0.10 * xx / w, 0.25 + 0.10 * yy / h, 0.35 - 0.10 * xx / w], -1)
    tex = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 3.0)
    tex *= 0.05 / max(float(tex.std()), 1e-6)
    bg = np.clip(base * (1.0 + tex[..., None]), 0.0, None).astype(np.float32)
    # subject: head (ellipse) + torso (rounded), exact coverage by 4x supersampling
    ss = 4
    Y, X = np.mgrid[0:h * ss, 0:w * ss].astype(np.float32) / ss
    cx = 0.62 * w
    head = ((Y - 0.38 * h) / (0.13 * h)) ** 2 + ((X - cx) / (0.085 * h)) ** 2 <= 1.0
    torso = (Y >= 0.52 * h) & (((X - cx) / (0.22 * h)) ** 2 + ((Y - 1.05 * h) / (0.55 * h)) ** 2 <= 1.0)
    neck = (np.abs(X - cx) <= 0.04 * h) & (Y >= 0.45 * h) & (Y <= 0.56 * h)
    cov = (head | torso | neck).astype(np.float32).reshape(h, ss, w, ss).mean(axis=(1, 3))
    del Y, X
    subj = SUBJ * (1.0 + 0.5 * tex[..., None])
    img = (bg * (1.0 - cov[..., None]) + subj * cov[..., None]).astype(np.float32)
    lights = [(int(0.15 * h), int(0.12 * w)), (int(0.25 * h), int(0.30 * w)), (int(0.80 * h), int(0.15 * w)),
              (int(0.12 * h), int(0.90 * w))]
    for (y, x) in lights:
        img[y, x] = 40.0  # bg (the reference) stays without the highlights: out - ref isolates the discs
    return img, bg, cov, lights


def halo_alpha(out, ref, cov, band_px=3):
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band_px + 1, 2 * band_px + 1))
    band = (cv2.dilate((cov > 0).astype(np.uint8), k) > 0) & (cov == 0)
    d = SUBJ[None, :] - ref[band]
    a = np.sum((out[band] - ref[band]) * d, axis=1) / np.maximum(np.sum(d * d, axis=1), 1e-8)
    return float(np.mean(a)), float(np.percentile(a, 95)), int(band.sum())


def disc_widths(out, ref, y, x, dia):
    r = int(dia) + 4
    row = (out - ref)[y, max(0, x - r): x + r + 1, 1]
    col = (out - ref)[max(0, y - r): y + r + 1, x, 1]
    res = []
    for prof in (row, col):
        peak = float(np.median(prof[len(prof) // 2 - int(dia / 4): len(prof) // 2 + int(dia / 4) + 1]))
        res.append(int((prof > 0.5 * peak).sum()))
    centre = (out - ref)[y - int(dia / 4): y + int(dia / 4) + 1, x - int(dia / 4): x + int(dia / 4) + 1, 1]
    return res, float(centre.min() / max(centre.max(), 1e-9))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1500x1000", help="WxH of the measured scene")
    ap.add_argument("--aperture", type=float, nargs="+", default=[1.8, 1.4])
    ap.add_argument("--focal", type=float, nargs="+", default=[26.0, 52.0],
                    help="35 mm-equivalent focal lengths (mm), paired with --aperture")
    ap.add_argument("--blades", type=int, default=0)
    ap.add_argument("--no-12mp", action="store_true", help="skip the 12 MP timing")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    img, bg, cov, lights = make_scene(h, w)
    for aperture, focal in zip(args.aperture, args.focal):
        measure(img, bg, cov, lights, aperture, focal, args.blades)
    if not args.no_12mp:
        big, _, bcov, _ = make_scene(3000, 4000, seed=1)
        for aperture, focal in zip(args.aperture, args.focal):
            t0 = time.perf_counter()
            portrait_blur(big, [bcov], aperture=aperture, focal_length_35mm=focal, grain=True,
                          noise=NoiseModel(1e-4, 1e-6))
            print(f"12 MP (4000x3000) portrait_blur f/{aperture} {focal:g} mm with grain: "
                  f"{time.perf_counter() - t0:.2f} s")


def measure(img, bg, cov, lights, aperture, focal, blades):
    h, w = cov.shape
    layers, s_f = plan_layers([cov], 0, aperture=aperture, focal_length_35mm=focal, max_blur_frac=0.05)
    dia = [L.diameter_px for L in layers if L.index < 0][0]
    t0 = time.perf_counter()
    out = portrait_blur(img, [cov], aperture=aperture, focal_length_35mm=focal, grain=False,
                        polygon_blades=blades)
    t_meas = time.perf_counter() - t0
    ref, _ = _blur_layer(bg, np.ones(cov.shape, np.float32), dia, blades)
    # naive render: blur everything (subject included) with the same kernel, paste the sharp subject
    naive_bg = cv2.filter2D(img, -1, aperture_kernel(dia, blades), borderType=cv2.BORDER_REFLECT)
    naive = naive_bg * (1.0 - cov[..., None]) + img * cov[..., None]
    a_mean, a_p95, n_band = halo_alpha(out, ref, cov)
    n_mean, n_p95, _ = halo_alpha(naive, ref, cov)
    print(f"scene {w}x{h}, aperture f/{aperture}, {focal:g} mm eq.; estimated subject distance "
          f"{s_f:.2f} m; planned background disc diameter {dia:.1f} px; render {t_meas:.2f} s")
    print(f"halo (3-px band outside the subject, {n_band} px): subject-colour fraction mean {100 * a_mean:.2f} %, "
          f"p95 {100 * a_p95:.2f} %   [naive blur+paste: mean {100 * n_mean:.2f} %, p95 {100 * n_p95:.2f} %]"
          f"  criterion: <= 5 %")
    # the same with a segmentation-like soft mask: coverage at a 384-px network resolution, bilinear upsampling
    small = cv2.resize(cov, (384, max(1, round(384 * h / w))), interpolation=cv2.INTER_AREA)
    soft = np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), 0, 1)
    out_soft = portrait_blur(img, [soft], aperture=aperture, focal_length_35mm=focal, grain=False,
                             polygon_blades=blades)
    s_mean, s_p95, _ = halo_alpha(out_soft, ref, cov)
    print(f"   with a 384-px network-resolution soft mask instead of the exact one: mean {100 * s_mean:.2f} %, "
          f"p95 {100 * s_p95:.2f} %")
    subj_in = cov >= 1.0
    print(f"subject pixels (coverage 1) changed: max |diff| = {float(np.abs(out[subj_in] - img[subj_in]).max()):.2e}")
    print("bokeh discs (width at half maximum, px):")
    for (y, x) in lights:
        (wr, wc), flat = disc_widths(out, ref, y, x, dia)
        print(f"  highlight at ({x:4d},{y:4d}): row {wr:3d}  col {wc:3d}  expected {dia:5.1f}  "
              f"flatness (min/max of central half) {flat:.2f}")


if __name__ == "__main__":
    main()
