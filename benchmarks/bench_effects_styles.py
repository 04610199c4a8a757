"""Benchmark: photographic styles keep skin while the rest of the scene takes the style (issue 5).

Real portraits from the shared data (CelebAMask-HQ subset: 512x512 sRGB JPEGs with labelled skin). Each JPEG is
treated as a display-referred standard render and linearised with ``campipe.colour.display_to_working``; the style
is applied with the labelled skin (ids 1 nose 2 ears 8 9 neck 17) as the skin mask; both renders are re-encoded
for display (clip to [0, 1]) and compared in CIE L*a*b* with CIEDE2000.

Prints per style: mean dE2000 over labelled skin pixels (criterion <= 1.5) and mean dE2000 over non-skin pixels
(celebamask has no sky, so non-skin = non-skin, non-sky; criterion >= 4 for warm and cool), plus the per-image
worst skin figure.

Run:  python benchmarks/bench_effects_styles.py [--n 100] [--data /work/shared/data]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np

from campipe.colour import delta_e_2000, display_to_working, working_to_lab
from campipe.effects.styles import apply_style

STYLES = {  # values recommended for the preset files (style stage parameters)
    "warm": dict(tone=0.0, warmth=0.5, colour=0.0),
    "cool": dict(tone=0.0, warmth=-0.5, colour=0.0),
    "vibrant": dict(tone=0.1, warmth=0.0, colour=0.5),
    "rich-contrast": dict(tone=0.5, warmth=0.0, colour=0.15),
}
SKIN_IDS = (1, 2, 8, 9, 17)


def soft_mask(hard: np.ndarray, net_res: int = 128, sigma: float = 2.0) -> np.ndarray:
    """Emulate a segmentation network's soft mask: the label at ``net_res`` px, bilinear upsampling, blur."""
    h, w = hard.shape
    small = cv2.resize(hard.astype(np.float32), (net_res, net_res), interpolation=cv2.INTER_AREA)
    up = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(cv2.GaussianBlur(up, (0, 0), sigma), 0, 1).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("CAMPIPE_SHARED_DATA", "/work/shared/data"))
    ap.add_argument("--n", type=int, default=100, help="number of portraits (sorted by name)")
    args = ap.parse_args()
    root = Path(args.data) / "celebamask"
    stems = sorted(p.stem for p in (root / "images").glob("*.jpg"))[: args.n]
    if not stems:
        raise SystemExit(f"no celebamask images under {root}")
    acc = {k: {"skin": [], "rest": [], "skin_soft": [], "rest_soft": []} for k in STYLES}
    t0 = time.perf_counter()
    for stem in stems:
        rgb = cv2.cvtColor(cv2.imread(str(root / "images" / f"{stem}.jpg")), cv2.COLOR_BGR2RGB)
        lab_ids = cv2.imread(str(root / "masks" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
        if lab_ids.shape != rgb.shape[:2]:
            lab_ids = cv2.resize(lab_ids, rgb.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        skin = np.isin(lab_ids, SKIN_IDS)
        if skin.sum() < 100:
            continue
        lin = display_to_working(rgb.astype(np.float32) / 255.0)
        lab0 = working_to_lab(np.clip(lin, 0, 1))
        soft = soft_mask(skin)
        for name, p in STYLES.items():
            for tag, m in (("", skin.astype(np.float32)), ("_soft", soft)):
                out = apply_style(lin, m, **p)
                de = delta_e_2000(lab0, working_to_lab(np.clip(out, 0, 1)))
                acc[name]["skin" + tag].append(float(de[skin].mean()))
                acc[name]["rest" + tag].append(float(de[~skin].mean()))
    dt = time.perf_counter() - t0
    n = len(acc["warm"]["skin"])
    print(f"styles on {n} CelebAMask portraits ({dt:.1f} s); dE2000 standard render vs styled render")
    for tag, what in (("", "labelled (hard) skin mask"),
                      ("_soft", "soft skin mask emulating a 128 px network output (bilinear up, blur 2 px)")):
        print(f"-- style applied with the {what}; figures measured over the labelled skin / non-skin pixels")
        print(f"{'style':<15}{'params':<42}{'skin mean':>10}{'skin worst img':>15}{'non-skin mean':>14}")
        for name, p in STYLES.items():
            a = acc[name]
            ps = ", ".join(f"{k}={v:+.2f}" for k, v in p.items())
            print(f"{name:<15}{ps:<42}{np.mean(a['skin' + tag]):>10.3f}{np.max(a['skin' + tag]):>15.3f}"
                  f"{np.mean(a['rest' + tag]):>14.2f}")
    print("criteria: skin mean <= 1.5 for every style; non-skin mean >= 4 for warm and cool")


if __name__ == "__main__":
    main()
