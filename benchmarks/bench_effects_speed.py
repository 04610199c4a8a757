"""Benchmark: wall time and peak numpy memory of every effect on a 12 MP frame (4000 x 3000, float32 linear RGB).

The frame is a smooth synthetic scene with noise, one person (soft ellipse mask), sky (top third), skin (the
person's face) and hair masks. Each effect function is run with the stage defaults.
Peak memory is numpy's allocations traced by tracemalloc (OpenCV's internal buffers are not included), reported
in multiples of one frame (144 MB for 12 MP x 3 x float32).

Process CPU time (all threads of the process) is printed beside the wall time, since the machine may be shared.

Run:  python benchmarks/bench_effects_speed.py [--size 4000x3000] [--threads 2] [--only denoise] [--repeat 1]
"""
from __future__ import annotations

import argparse
import time
import tracemalloc

import cv2
import numpy as np

from campipe.effects.bokeh import portrait_blur
from campipe.effects.denoise import denoise
from campipe.effects.noise import NoiseModel, estimate_noise_model
from campipe.effects.sharpen import sharpen
from campipe.effects.stage_light import stage_light
from campipe.effects.styles import apply_style
from campipe.effects.subject_tone import subject_tone


def make_frame(h: int, w: int, model: NoiseModel):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.2 + 0.3 * xx / w, 0.3 + 0.2 * yy / h, 0.4 - 0.2 * xx / w], -1).astype(np.float32)
    img += rng.standard_normal(img.shape, dtype=np.float32) * model.sigma(img)
    np.maximum(img, 0, out=img)
    person = np.clip(1.5 - np.hypot((yy - 0.65 * h) / (0.35 * h), (xx - 0.5 * w) / (0.18 * w)) * 1.5, 0, 1)
    sky = np.zeros((h, w), np.float32)
    sky[: h // 3] = 1.0
    sky *= 1 - person
    skin = (np.hypot((yy - 0.45 * h) / (0.08 * h), (xx - 0.5 * w) / (0.06 * w)) <= 1).astype(np.float32)
    hair = (np.hypot((yy - 0.36 * h) / (0.06 * h), (xx - 0.5 * w) / (0.07 * w)) <= 1).astype(np.float32)
    return img, person.astype(np.float32), sky, skin, hair


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="4000x3000")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="run only the effects whose name contains this text (e.g. denoise)")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per effect; the fastest wall time is shown")
    ap.add_argument("--no-memory", action="store_true", help="skip the traced-memory run")
    args = ap.parse_args()
    cv2.setNumThreads(args.threads)
    w, h = (int(v) for v in args.size.lower().split("x"))
    model = NoiseModel(6e-4, 1e-6)
    img, person, sky, skin, hair = make_frame(h, w, model)
    frame_mb = img.nbytes / 1e6
    cases = {
        "style (warm)": lambda: apply_style(img, skin, warmth=0.5),
        "style (rich-contrast)": lambda: apply_style(img, skin, tone=0.5, colour=0.15),
        "denoise (defaults)": lambda: denoise(img, model, sky, skin),
        "noise estimate (no metadata)": lambda: estimate_noise_model(img),
        "sharpen (defaults, coring)": lambda: sharpen(img, sky, skin, None, noise=model),
        "subject_tone (defaults)": lambda: subject_tone(img, [person], skin, sky),
        "portrait f/1.8 26 mm + grain": lambda: portrait_blur(img, [person], aperture=1.8, hair=hair, noise=model),
        "portrait f/1.4 52 mm + grain": lambda: portrait_blur(img, [person], aperture=1.4, focal_length_35mm=52.0,
                                                              hair=hair, noise=model),
        "stage_light": lambda: stage_light(img, [person], hair),
        "stage_light mono": lambda: stage_light(img, [person], hair, mono=True),
    }
    print(f"{w}x{h} ({w * h / 1e6:.1f} MP), cv2 threads {args.threads}; one frame = {frame_mb:.0f} MB")
    if args.only:
        cases = {k: v for k, v in cases.items() if args.only in k}
    print(f"{'effect':<32}{'time s':>8}{'CPU s':>8}{'peak numpy MB':>15}{'x frame':>9}")
    apply_style(img[:64, :64], skin[:64, :64], warmth=0.5)  # warm-up: colour-science import, cached gains
    for name, fn in cases.items():
        dt, cpu = float("inf"), float("inf")
        for _ in range(max(1, args.repeat)):
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            t1, c1 = time.perf_counter(), time.process_time()
            del out
            if t1 - t0 < dt:
                dt, cpu = t1 - t0, c1 - c0
        if args.no_memory:
            print(f"{name:<32}{dt:>8.2f}{cpu:>8.2f}{'-':>15}{'-':>9}")
            continue
        tracemalloc.start()  # second run for memory (tracing slows numpy's allocations down)
        out = fn()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del out
        print(f"{name:<32}{dt:>8.2f}{cpu:>8.2f}{peak / 1e6:>15.0f}{peak / img.nbytes:>9.1f}")


if __name__ == "__main__":
    main()
