"""Rebuild the sample DNGs in samples/ with campipe's sensor simulator (fixed seeds: reproducible), and print the
round-trip quality of each: PSNR (dB, 8-bit sRGB, against the source photo) of

* simulate -> rawpy/LibRaw linear (camera WB, no auto-bright, adjust_maximum_thr=0, sRGB primaries, linear)
  -> x 2**BaselineExposure -> sRGB encode, and
* simulate -> ``campipe.process(path, style="standard")`` (when campipe's decode/process exist), which includes the
  standard preset's tone curve, so it is a rendering difference, not only a decode error.

Usage::

    python samples/make_samples.py            # write samples/*.dng (refuses to overwrite without --overwrite)
    python samples/make_samples.py --check    # only print the round-trip figures of the existing files

Sources: scikit-image's bundled public-domain photos (see samples/README.md for provenance and licences).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

#: name -> (scikit-image data function, camera key, ISO, scene illuminant, seed)
SAMPLES = {
    "astronaut_5d4_iso200.dng": ("astronaut", "canon-5d4", 200, "D65", 1),
    "rocket_a7m3_iso800.dng": ("rocket", "sony-a7m3", 800, "D65", 2),
    "astronaut_d850_iso3200_tungsten.dng": ("astronaut", "nikon-d850", 3200, "A", 3),
}
DATETIME = "2026:01:01 12:00:00"


def source_image(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two float images in [0, 1]."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def rawpy_roundtrip(path: Path, baseline_exposure: float) -> np.ndarray:
    """DNG -> LibRaw linear sRGB (camera WB, no auto-bright) -> exposure-compensated -> sRGB-encoded float [0, 1]."""
    import rawpy

    from campipe.colour import srgb_encode

    with rawpy.imread(str(path)) as r:
        rgb = r.postprocess(use_camera_wb=True, no_auto_bright=True, adjust_maximum_thr=0.0, gamma=(1, 1),
                            output_bps=16, user_flip=0, output_color=rawpy.ColorSpace.sRGB)
    return srgb_encode(rgb.astype(np.float32) / 65535.0 * np.float32(2.0 ** baseline_exposure))


def campipe_roundtrip(path: Path) -> np.ndarray | None:
    try:
        import campipe

        res = campipe.process(str(path), style="standard")
    except Exception as e:  # process not written yet / still in progress: report, keep making samples
        print(f"  campipe.process failed: {type(e).__name__}: {e}")
        return None
    return np.asarray(res.image, dtype=np.float32)


def check(path: Path, src_name: str) -> None:
    import tifffile

    src = source_image(src_name).astype(np.float32) / 255.0
    with tifffile.TiffFile(path) as tf:
        be_tag = tf.pages[0].tags.get(50730)
        num, den = be_tag.value if be_tag is not None else (0, 1)
    h, w = (src.shape[0] // 2 * 2, src.shape[1] // 2 * 2)
    src = src[:h, :w]
    out = rawpy_roundtrip(path, num / den)
    print(f"  PSNR simulate->rawpy linear->sRGB: {psnr(out, src):.2f} dB")
    proc = campipe_roundtrip(path)
    if proc is not None:
        if proc.shape != src.shape:
            print(f"  campipe.process output shape {proc.shape} != source {src.shape}")
        else:
            print(f"  PSNR simulate->campipe.process(standard): {psnr(proc, src):.2f} dB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only measure the existing files")
    ap.add_argument("--overwrite", action="store_true", help="replace existing samples")
    ap.add_argument("--out", type=Path, default=HERE, help="output folder (default: samples/)")
    args = ap.parse_args(argv)

    from campipe.cameras import get_camera
    from campipe.dng import write_dng
    from campipe.simulate import simulate_raw

    for fname, (src_name, cam, iso, ill, seed) in SAMPLES.items():
        path = args.out / fname
        if not args.check:
            sim = simulate_raw(source_image(src_name), get_camera(cam), iso=iso, illuminant=ill, seed=seed,
                               datetime=DATETIME)
            write_dng(path, sim, overwrite=args.overwrite)
        size = path.stat().st_size
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        print(f"{fname}: {src_name}, {cam}, ISO {iso}, {ill}, seed {seed}; {size / 1e6:.2f} MB, sha256 {digest}")
        check(path, src_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
