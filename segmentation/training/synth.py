"""Copy-paste multi-person scenes with exact instance and part labels.

The shared sets hold few group shots, so training also sees synthetic scenes: 1-4 person cutouts (CelebAMask
head-and-shoulders crops with all part labels, Penn-Fudan pedestrian instances with derived skin) pasted onto CamVid
street backgrounds, in random occlusion order (later pastes occlude earlier ones; the occluded instance's label is
overwritten, so instance ids stay exact), at random scales, with a mild colour harmonisation (the cutout's mean
CIELAB colour is pulled part-way towards the background's) and a 1-pixel feathered alpha edge for the image only.

CelebAMask crops end at the bottom of the 512x512 frame (cut shoulders), so they are anchored to the bottom edge of
the canvas, where the cut is invisible. Pedestrians already visible in the CamVid background keep their semantic
person label but get the instance-ignore bit: they are people without an instance label.

Inputs/outputs: :class:`~.datasets.Record` (uint8 sRGB image + packed lab); the result is a Record with
``set_name == "synth"`` and ``inst_known = True``.

:func:`swap_background` is the single-portrait counterpart: a CelebAMask portrait keeps its framing, its person and
all its part labels, and its background is replaced by a crop of a street photo (CamVid; its pedestrians become
unknown), often defocused, darkened or recoloured like a studio or night backdrop, or by a plain gradient. Why: the
shipped v6 model calls 19-23 % of the portraits' own background person (86-91 % of its CelebAMask person errors;
``benchmarks/seg_diagnostics.py person-errors``), mostly dark, defocused or hair-textured backdrops. Tried in
``segmentation/configs/hyperdetr_cpu17.toml`` (conv decoder only) without effect on those false alarms.

Reference: G. Ghiasi et al., "Simple Copy-Paste is a Strong Data Augmentation Method for Instance Segmentation",
CVPR 2021; D. Dwibedi et al., "Cut, Paste and Learn", ICCV 2017.
"""
from __future__ import annotations

import cv2
import numpy as np

from .datasets import ALL_KNOWN, INST_IGNORE_BIT, PERSON, SKY, VALID_BIT, Record


def person_cutouts(records: list[Record], min_pixels: int = 400) -> list[tuple[Record, int]]:
    """(record, instance id) pairs usable as cutouts: CelebAMask persons and Penn-Fudan instances."""
    out = []
    for r in records:
        if r.set_name not in ("celebamask", "pennfudan"):
            continue
        ids, counts = np.unique(r.lab[..., 2], return_counts=True)
        out.extend((r, int(i)) for i, c in zip(ids, counts) if i > 0 and c >= min_pixels)
    return out


def _harmonise(cut: np.ndarray, bg_mean_lab: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    lab = cv2.cvtColor(cut.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    m = lab[mask].mean(0)
    a_l, a_ab = rng.uniform(0.0, 0.35), rng.uniform(0.0, 0.25)
    lab = lab + np.array([a_l, a_ab, a_ab], np.float32) * (bg_mean_lab - m)
    rgb = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _feathered(front: np.ndarray, back: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 ``front`` over ``back`` where ``mask`` (bool), with a 1-pixel feathered (3x3 Gaussian) alpha edge."""
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0)[..., None]
    return (alpha * front + (1 - alpha) * back.astype(np.float32) + 0.5).astype(np.uint8)


def synth_scene(background: Record, cutouts: list[tuple[Record, int]], rng: np.random.Generator,
                n_people: int | None = None) -> Record:
    """One synthetic scene on ``background`` with ``n_people`` (default 1-4, uniform) pasted cutouts."""
    if not cutouts:
        raise ValueError("synth_scene needs at least one person cutout")
    img = background.image.copy()
    lab = background.lab.copy()
    H, W = img.shape[:2]
    bg_person = ((lab[..., 0] >> PERSON) & 1).astype(bool)
    lab[..., 1] |= np.where(bg_person, np.uint8(1 << INST_IGNORE_BIT), np.uint8(0))
    lab[..., 2] = 0
    bg_mean_lab = cv2.cvtColor(img.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab).reshape(-1, 3).mean(0)
    n = int(n_people if n_people is not None else rng.integers(1, 5))
    for k in range(n):
        rec, iid = cutouts[int(rng.integers(len(cutouts)))]
        mask = rec.lab[..., 2] == iid
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        c_img, c_lab, c_mask = rec.image[y0:y1, x0:x1], rec.lab[y0:y1, x0:x1], mask[y0:y1, x0:x1]
        face = rec.set_name == "celebamask"
        th = rng.uniform(0.35, 0.95) * H if face else rng.uniform(0.3, 0.9) * H
        s = th / c_mask.shape[0]
        nh, nw = max(8, round(c_mask.shape[0] * s)), max(4, round(c_mask.shape[1] * s))
        if nw > 1.2 * W:  # keep it on the canvas
            f = 1.2 * W / nw
            nh, nw = max(8, round(nh * f)), max(4, round(nw * f))
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        c_img = cv2.resize(c_img, (nw, nh), interpolation=interp)
        c_lab = cv2.resize(c_lab, (nw, nh), interpolation=cv2.INTER_NEAREST)
        c_mask = cv2.resize(c_mask.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST).astype(bool)
        if not c_mask.any():
            continue
        if rng.random() < 0.5:
            c_img, c_lab, c_mask = c_img[:, ::-1], c_lab[:, ::-1], c_mask[:, ::-1]
        c_img = _harmonise(c_img, bg_mean_lab, c_mask, rng)
        px = int(rng.integers(-nw // 5, max(-nw // 5 + 1, W - nw + nw // 5)))
        if face:
            py = H - nh  # cut shoulders sit on the bottom edge
        else:
            py = int(rng.integers(min(H - nh, int(0.15 * H)), max(min(H - nh, int(0.15 * H)) + 1, H - int(0.8 * nh))))
        # clip the paste rectangle to the canvas
        cy0, cx0 = max(0, py), max(0, px)
        cy1, cx1 = min(H, py + nh), min(W, px + nw)
        if cy1 <= cy0 or cx1 <= cx0:
            continue
        sy, sx = slice(cy0 - py, cy1 - py), slice(cx0 - px, cx1 - px)
        m = c_mask[sy, sx]
        img[cy0:cy1, cx0:cx1] = _feathered(c_img[sy, sx], img[cy0:cy1, cx0:cx1], m)
        dst = lab[cy0:cy1, cx0:cx1]
        src = c_lab[sy, sx]
        dst[..., 0] = np.where(m, src[..., 0], dst[..., 0])
        known = (src[..., 1] & np.uint8(~(1 << INST_IGNORE_BIT) & 0xFF)) | np.uint8(1 << VALID_BIT)
        dst[..., 1] = np.where(m, known, dst[..., 1])
        dst[..., 2] = np.where(m, np.uint8(k + 1), dst[..., 2])
    return Record("synth", f"{background.stem}+{n}", img, lab, True)


def _backdrop(bg: Record, shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A portrait backdrop of ``shape``: (uint8 RGB image, bool mask of pixels that may show a person).

    A random crop of ``bg`` resized to cover the canvas, defocused (p 0.6), darkened or brightened (gain 0.12-1.3)
    and tinted (p 0.5), or (p 0.2) a plain two-colour gradient. The mask covers the crop's pedestrians, bicyclists
    and unlabelled pixels, widened by the defocus.
    """
    H, W = shape
    if rng.random() < 0.2:
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        vertical = rng.random() < 0.5
        t = np.linspace(0.0, 1.0, H if vertical else W, dtype=np.float32)
        ramp = c0 + t[:, None] * (c1 - c0)
        out = np.broadcast_to(ramp[:, None] if vertical else ramp[None], (H, W, 3))
        out = out + rng.normal(0.0, rng.uniform(0.0, 6.0), (H, W, 1))  # a little grain
        return np.clip(out + 0.5, 0, 255).astype(np.uint8), np.zeros((H, W), bool)
    bh, bw = bg.image.shape[:2]
    aspect = W / H
    ch = max(2, int(min(bh, bw / aspect) * rng.uniform(0.45, 1.0)))
    cw = max(2, min(bw, int(round(ch * aspect))))
    y0, x0 = int(rng.integers(0, bh - ch + 1)), int(rng.integers(0, bw - cw + 1))
    crop = (slice(y0, y0 + ch), slice(x0, x0 + cw))
    out = cv2.resize(bg.image[crop], (W, H), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    lab = bg.lab[crop]
    people = (((lab[..., 0] >> PERSON) & 1) | (1 - ((lab[..., 1] >> PERSON) & 1))).astype(np.uint8)
    people = cv2.resize(people, (W, H), interpolation=cv2.INTER_NEAREST)
    grow = 1
    if rng.random() < 0.6:
        sigma = rng.uniform(0.01, 0.05) * max(H, W)
        out = cv2.GaussianBlur(out, (0, 0), sigma)
        grow = int(np.ceil(2 * sigma))
    people = cv2.dilate(people, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)).astype(bool)
    out *= rng.uniform(0.12, 1.3)
    if rng.random() < 0.5:
        out *= rng.uniform(0.7, 1.3, 3).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), people


def swap_background(portrait: Record, background: Record, rng: np.random.Generator) -> Record:
    """``portrait`` (a CelebAMask record: one person, every part labelled) with its background replaced.

    The person's pixels and labels are kept exactly (a 1-pixel feathered alpha edge for the image only); the new
    background (from ``background``, a street frame) is labelled as CelebAMask labels its own, no person, hair,
    skin, teeth or glasses and sky unknown, except where the backdrop may show somebody (its pedestrians and
    bicyclists, defocused): there every class is unknown and the instance loss ignores the pixel.
    """
    if portrait.set_name != "celebamask":
        raise ValueError(f"swap_background needs a CelebAMask portrait, got a {portrait.set_name} record")
    lab = portrait.lab.copy()
    person = ((lab[..., 0] >> PERSON) & 1).astype(bool)
    H, W = person.shape
    new, people = _backdrop(background, (H, W), rng)
    img = _feathered(portrait.image, new, person)
    bg = ~person & (((lab[..., 1] >> VALID_BIT) & 1).astype(bool))
    known_bg = np.where(people, np.uint8((1 << INST_IGNORE_BIT) | (1 << VALID_BIT)),
                        np.uint8((ALL_KNOWN & ~(1 << SKY)) | (1 << VALID_BIT)))
    lab[..., 0] = np.where(bg, np.uint8(0), lab[..., 0])
    lab[..., 1] = np.where(bg, known_bg, lab[..., 1])
    lab[..., 2] = np.where(bg, np.uint8(0), lab[..., 2])
    return Record("celebamask", f"{portrait.stem}/bg:{background.stem}", img, lab, True)
