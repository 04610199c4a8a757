"""Benchmark: per-subject tone mapping on a synthetic backlit group shot (4 people at -2, -1, 0, +1 EV, bright sky).

Scene (linear working RGB, scene-referred): a bright sky gradient from 0.55 to 0.97 of the clipping level (the
exposure a camera picks to hold a backlit sky) with a clipped sun disc at 30, textured ground at 0.12, and four
people (head + torso silhouettes with exact anti-aliased coverage, a skin face, hair, clothes) whose lighting is
2^EV times a nominal level that puts the face at Y = 0.18 (EV = -2, -1, 0, +1: faces from Y 0.045 to 0.36).
Masks: per-person coverage, skin (faces), sky.

Renders: global only = the lead's global filmic tone curve (``campipe.isp.tone_map``, defaults) on the frame as is;
semantic = ``subject_tone`` (stage defaults: strength 1, face_target_L 55, contrast 0) and then the same curve.

Figures: per face the median L* of its skin pixels — (a) on the linear frame right after subject_tone, which is what
``face_target_L`` targets (criterion: within +-5 of the target), (b) after the tone curve (display-referred), where
the target is the curve's image of the target luminance; the spread (max - min) of the four faces for both
renders; the sky's clipped fraction after the curve (display value >= 0.999 in any channel) for both renders, and
the fraction of sky pixels that were not clipped in the linear input (max channel < 1) but are clipped in the output.

Run:  python benchmarks/bench_effects_subject_tone.py [--size 1600x900] [--target 60]
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from campipe.colour import luminance
from campipe.effects.subject_tone import lstar_to_y, subject_tone, y_to_lstar
from campipe.isp import tone_map

EVS = (-2.0, -1.0, 0.0, 1.0)
SKIN = np.array([0.48, 0.34, 0.26], np.float32)   # linear albedo (light skin), luminance ~0.36
HAIR = np.array([0.05, 0.035, 0.02], np.float32)
CLOTHES = [np.array(c, np.float32) for c in ([0.1, 0.2, 0.5], [0.5, 0.1, 0.1], [0.2, 0.4, 0.15], [0.4, 0.4, 0.4])]


def coverage(h, w, fn, ss=2):
    Y, X = np.mgrid[0:h * ss, 0:w * ss].astype(np.float32) / ss
    return fn(Y, X).astype(np.float32).reshape(h, ss, w, ss).mean(axis=(1, 3))


def make_scene(h: int, w: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon = int(0.45 * h)
    img = np.empty((h, w, 3), np.float32)
    t = (1.0 - yy / horizon)[..., None]
    img[:] = (0.55 + 0.42 * t) * np.array([0.80, 0.90, 1.0], np.float32)
    sun = ((yy - 0.12 * h) ** 2 + (xx - 0.85 * w) ** 2) <= (0.03 * h) ** 2
    img[sun] = 30.0
    tex = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 2.0)
    tex *= 0.15 / max(float(tex.std()), 1e-6)
    ground = 0.12 * (1 + tex)[..., None] * np.array([0.9, 1.0, 0.8], np.float32)
    img[horizon:] = ground[horizon:]
    sky = np.zeros((h, w), np.float32)
    sky[:horizon] = 1.0
    persons, skin = [], np.zeros((h, w), np.float32)
    nominal = 0.18 / float(luminance(SKIN[None, None])[0, 0])
    for k, ev in enumerate(EVS):
        cx = (k + 0.5) * w / len(EVS)
        hs = 0.10 * h  # head semi-height
        top = 0.30 * h + 0.04 * h * (k % 2)
        head = lambda Y, X, cx=cx, top=top, hs=hs: ((Y - top - hs) / hs) ** 2 + ((X - cx) / (0.75 * hs)) ** 2 <= 1
        torso = lambda Y, X, cx=cx, top=top, hs=hs: (Y >= top + 2.1 * hs) & (np.abs(X - cx) <= 1.8 * hs)
        neck = lambda Y, X, cx=cx, top=top, hs=hs: (Y >= top + 1.6 * hs) & (Y < top + 2.3 * hs) & \
            (np.abs(X - cx) <= 0.35 * hs)
        face = lambda Y, X, cx=cx, top=top, hs=hs: ((Y - top - 1.15 * hs) / (0.8 * hs)) ** 2 + \
            ((X - cx) / (0.6 * hs)) ** 2 <= 1
        c_head, c_torso, c_neck, c_face = (coverage(h, w, f) for f in (head, torso, neck, face))
        person = np.clip(c_head + c_torso + c_neck, 0, 1)
        light = nominal * 2.0 ** ev
        col = (HAIR * (c_head - c_face)[..., None] + SKIN * (c_face + c_neck)[..., None]
               + CLOTHES[k] * c_torso[..., None]) * light
        img = img * (1 - person[..., None]) + col * (1 + 0.3 * tex[..., None])
        sky *= 1 - person
        skin = np.maximum(skin, np.clip(c_face + c_neck, 0, 1))
        persons.append(person)
    return img.astype(np.float32), persons, skin, sky


def face_lstar(img, person, skin):
    f = (person > 0.5) & (skin > 0.5)
    return float(np.median(y_to_lstar(luminance(img)[f])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1600x900", help="WxH")
    ap.add_argument("--target", type=float, default=55.0, help="face_target_L (stage default 55)")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    img, persons, skin, sky = make_scene(h, w)
    t0 = time.perf_counter()
    sem_lin = subject_tone(img, persons, skin, sky, face_target_L=args.target)
    dt = time.perf_counter() - t0
    glob = tone_map(img)
    sem = tone_map(sem_lin)
    target_disp = float(y_to_lstar(luminance(tone_map(np.full((1, 1, 3), lstar_to_y(args.target), np.float32)))[0, 0]))
    print(f"backlit group {w}x{h}, faces lit at EV {EVS}; face_target_L {args.target} "
          f"(after the filmic curve: L* {target_disp:.1f}); subject_tone {dt:.2f} s")
    print(f"{'person':>6}{'EV':>6}{'global L* lin':>15}{'semantic L* lin':>17}{'global L* disp':>16}"
          f"{'semantic L* disp':>18}")
    rows = []
    for k, (ev, p) in enumerate(zip(EVS, persons)):
        r = (face_lstar(img, p, skin), face_lstar(sem_lin, p, skin), face_lstar(glob, p, skin),
             face_lstar(sem, p, skin))
        rows.append(r)
        print(f"{k:>6}{ev:>+6.0f}{r[0]:>15.1f}{r[1]:>17.1f}{r[2]:>16.1f}{r[3]:>18.1f}")
    r = np.asarray(rows)
    print(f"{'spread':>12}{np.ptp(r[:, 0]):>15.1f}{np.ptp(r[:, 1]):>17.1f}{np.ptp(r[:, 2]):>16.1f}"
          f"{np.ptp(r[:, 3]):>18.1f}")
    print(f"max |face L* - target| (linear): semantic {np.abs(r[:, 1] - args.target).max():.2f} "
          f"(global {np.abs(r[:, 0] - args.target).max():.1f}); criterion <= 5")
    print(f"max |face L* - curve(target)| (display): semantic {np.abs(r[:, 3] - target_disp).max():.2f} "
          f"(global {np.abs(r[:, 2] - target_disp).max():.1f})")
    # second baseline: one global exposure that puts the faces' geometric-mean luminance at the target (face AE)
    fy = [float(np.median(luminance(img)[(p > 0.5) & (skin > 0.5)])) for p in persons]
    ae = lstar_to_y(args.target) / float(np.exp(np.mean(np.log(fy))))
    glob_ae = tone_map(img * np.float32(ae))
    r_ae = np.asarray([face_lstar(img * np.float32(ae), p, skin) for p in persons])
    print(f"global face-AE baseline (x{ae:.2f}): face L* lin {np.round(r_ae, 1).tolist()}, spread {np.ptp(r_ae):.1f}, "
          f"max |L* - target| {np.abs(r_ae - args.target).max():.1f}")
    s = sky > 0.5
    clip_ae = float(np.mean(glob_ae[s].max(axis=1) >= 0.999))
    clip_g = float(np.mean(glob[s].max(axis=1) >= 0.999))
    clip_s = float(np.mean(sem[s].max(axis=1) >= 0.999))
    unclipped = s & (img.max(axis=2) < 1.0)
    newly = float(np.mean(sem[unclipped].max(axis=1) >= 0.999)) if unclipped.any() else 0.0
    print(f"sky clipped fraction after the curve: global {100 * clip_g:.2f} %, global face-AE {100 * clip_ae:.2f} %, "
          f"semantic {100 * clip_s:.2f} % "
          f"(criterion: semantic <= global); sky pixels unclipped in the input but clipped in the semantic "
          f"output: {100 * newly:.3f} %")


if __name__ == "__main__":
    main()
