"""Fit the residual sky branch (:class:`campipe.segmentation.model.SkyBranch`) on a frozen model.

``python -m campipe.segmentation.training.fit_sky_branch --float FLOAT.pt --data ../shared/data --out OUT.pt
[--classes sky[,skin...]] [--hidden 16] [--stride 1|2|4] [--steps 2000] [--neg-limit 250] [--holdout 25]
[--share SET=P ...] [--camvid-share P] [--synth N] [--hair-below FRAC] [--twilight K] [--scored-limit N]
[--bare-skin-unknown] [--portrait-bg-not-sky] [--refit | --extra] [--lower-only]``

With ``--extra`` it fits a further branch for ``--classes`` (``model.class_branches``, sky not needed; classes not
refined yet, or with ``--lower-only`` not by a lower-only branch yet) on a model that may already have its branches,
which stay as they are; otherwise the sky branch. ``FLOAT.pt`` may be the shipped int8 file: it loads dequantised, and
``ship.py`` quantises those weights back to the same int8 values bit for bit (checked on v10, sixteenth session).
``--lower-only`` makes that further branch one of mode "lower" (residual ``min(r, 0)``): it can take its classes off
pixels and never put them on new ones (why: hair branches that could add hair painted dark clothes, helmets and steel
lattices as hair, while most of what they gained came from the hair they removed; MODEL_CARD.md, fifteenth
session). The branch is *fitted* both ways and switched to "lower" afterwards: fitted with the clamp it died after
its first step (the pixels asking for more hair pushed the residual above zero everywhere, where the clamp passes no
gradient; rule 22); the held-out figures are printed for both.

Everything but the branch is frozen, and the branch writes the logits of ``--classes`` only (``model.
sky_head_classes``, sky first), so every other output of ``OUT.pt`` equals ``FLOAT.pt``'s bit for bit. The frozen
model's inputs to the branch (the decoder's stride-2 features, the mask features and the refined classes' logits,
:meth:`~campipe.segmentation.model.ConvDecoder.sky_branch_input`) are computed once per training photo (letterboxed
as campipe runs the network, cropped to the photo) and cached as float16, already average-pooled by the branch's
stride (:class:`Cached`: the refined logits unpooled, the normalisation statistics of the unpooled input), with
each class's label and known mask
area-resampled to the same grid (:func:`.datasets.map_labels`, so a set that does not label a class only teaches
"not that class" where it knows it, e.g. the people of CelebAMask, Figaro1k and Penn-Fudan are "not sky", CamVid's
street "not skin").

* photos: the *scored* sets of the classes (those that ``evaluate.EVAL_SPEC`` scores them on: CamVid for sky,
  CelebAMask for skin) contribute their training split minus ``--holdout`` % (``refit_rows.is_holdout``, the photos
  the shipping rule scores the branch on); every other set of CelebAMask, Figaro1k and Penn-Fudan contributes
  ``--neg-limit`` evenly spaced training photos. Every photo is drawn with the same probability, or the photos of
  each ``--share SET=P`` set with P in all (``--camvid-share P`` = ``--share camvid=P``), the rest sharing 1 - sum P;
* ``--synth N`` adds N copy-paste scenes (:func:`synth_records`): training people, faces included, at other sizes
  and places than CelebAMask's aligned close-ups, on training street frames, with exact labels (why: a skin branch
  fitted on those close-ups alone took the astronaut sample's smaller face off skin, MODEL_CARD.md, twelfth
  session); set name ``synth`` for ``--share``;
* ``--hair-below FRAC`` marks hair known absent on Penn-Fudan's people (its photos and the pasted ones) below the
  top FRAC of each person's height (:func:`.datasets.hair_absent_below_head`; why: a hair branch fitted without it
  took dark clothes for hair, MODEL_CARD.md, thirteenth session);
* ``--bare-skin-unknown`` makes the fit's person and skin classes unknown on CelebAMask's probable bare body skin
  next to the labelled person (on every CelebAMask photo of the fit but the held-out ones;
  :func:`.datasets.unknown_on_bare_skin`): its labels call bare shoulders and chest background, which neither a
  person nor a skin branch should learn;
* ``--portrait-bg-not-sky`` marks sky known absent on CelebAMask's whole frames
  (:func:`.datasets.sky_absent_on_portraits`): with dusk frames alone a sky branch took dark-blue backdrops for sky;
* ``--twilight K`` adds K CamVid training frames (not held out) re-lit as dusk (:func:`twilight_records`, labels
  unchanged; set name ``twilight`` for ``--share``): dusk sky for a sky branch (the rocket sample's dusk sky gets no
  sky: rule 16, MODEL_CARD.md, fourteenth session), and dark streets, trees and fences that are not hair or skin for
  a further branch; with the sky branch the held-out frames re-lit the same way give a held-out dusk figure;
* ``--scored-limit N`` keeps N evenly spaced training photos of each scored set (N // 3 of its held-out ones), for
  the memory of the cache (~4-5 MB a photo; LFW has 1,719 training photos);
* ``--refit`` fits a new branch in place of the one ``FLOAT.pt`` has on ``--classes`` (the old one is dropped, not
  continued): the sky branch, or the further branch of that mode (``--lower-only`` for one of mode "lower"), kept at
  its place in ``model.class_branches``; the other branches stay as they are, and the record of the one replaced is
  overwritten (why: branches fitted on one trunk are refitted on a retrained one, MODEL_CARD.md, eighteenth session);
* the branch's fixed input normalisation (``in_mean`` / ``in_std``) is the mean over the scored sets' photos of each
  channel's per-photo mean and standard deviation;
* ``--steps`` AdamW steps (lr 2e-3 one-cycle, weight decay 1e-4) on ``--batch`` random ``--patch`` x ``--patch``
  crops of the cached grids (mirrored half the time), BCE with the soft labels over the known cells, every refined
  class weighing the same per known cell; seed 0;
* printed at the end: per class, pooled IoU at 0.5 on the held-out photos of its scored sets at the feature
  resolution, the frozen model's and the branch's (information; the shipping rule uses campipe's whole protocol,
  MODEL_CARD.md).

With ``--classes sky`` (the default) this is the fit that made recipe v7's and v8's branches (same photos, order,
normalisation and random stream; identical weights on small generated data, but not bit for bit from run to run
over thousands of steps: the 2-thread CPU backward differs in its last bits and the difference grows, MODEL_CARD.md,
twelfth session).

``OUT.pt`` is a float checkpoint (``extra["sky_branch"]`` records the arguments, photo counts and the held-out
figures); ``ship.py`` makes the int8 file from it. The cache takes ~0.6 MB a photo at stride 4 (~5 MB unpooled,
before the fourteenth session).
"""
from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..config import branch_mode

NEG_SETS = ("celebamask", "figaro1k", "pennfudan")


class Cached(NamedTuple):
    """One cached photo of a branch fit, at the mask grid (h, w) of the photo's letterboxed content.

    ``pooled``: the branch input (:meth:`~campipe.segmentation.model.ConvDecoder.branch_parts`, cin channels)
    average-pooled ``stride`` x ``stride`` as the branch pools it, float16 (cin, h // stride, w // stride);
    ``logits``: the frozen model's output logits of the refined classes unpooled, float16 (n, h, w), to which the
    branch's output is added (the input's last n channels, the logits before any branch, unless another branch
    refines the class too: then they include that branch's residual); ``labels`` float32 (n, h, w) in [0, 1];
    ``known`` bool (n, h, w); ``stats``: per-channel mean and standard deviation of the unpooled input, float32
    (2, cin), from which the branch's fixed normalisation is set. Pooled once here instead of at every step: ~0.6 MB
    a photo at stride 4 instead of ~5 MB (a hair fit's cache outgrew the machine's 24 GB, MODEL_CARD.md, thirteenth
    session)."""

    pooled: object
    logits: object
    labels: np.ndarray
    known: np.ndarray
    stats: object


def cached_entry(f, labels: np.ndarray, known: np.ndarray, stride: int, logits=None) -> Cached:
    """A :class:`Cached` entry from the unpooled branch input ``f`` (cin, h, w) (tensor or array; its last n
    channels are the logits of the n refined classes as the branches read them, one plane each in ``labels`` and
    ``known``). ``logits`` (n, h, w): the frozen model's output logits of those classes, to which the branch's
    residual is added (default: ``f``'s last n channels; they differ where another branch refines the class)."""
    import torch
    from torch.nn import functional as F

    f = torch.as_tensor(f, dtype=torch.float32)
    pooled = F.avg_pool2d(f[None], stride)[0] if stride > 1 else f
    stats = torch.stack([f.mean((1, 2)), f.std((1, 2))])
    out = f[-len(labels):] if logits is None else torch.as_tensor(logits, dtype=torch.float32)
    return Cached(pooled.half(), out.half(), labels, known, stats)


def _grid(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(a.astype(np.float32), (hw[1], hw[0]), interpolation=cv2.INTER_AREA)


def cache_inputs(model, data: Path, set_name: str, stems: list[str], mean, std, classes=None, relabel=None,
                 stride: int = 1):
    """[:class:`Cached`] for ``stems``, one label plane per class of ``classes`` (default ``model.cfg.
    sky_head_classes``), the input being what a branch refining ``classes`` reads (:meth:`~campipe.segmentation.
    model.ConvDecoder.branch_parts`), pooled by the branch's ``stride``; ``relabel``: optional function
    ``(packed label map, uint8 RGB photo) -> packed label map`` applied before caching (e.g. one calling
    :func:`.datasets.hair_absent_below_head`)."""
    from .datasets import map_labels, read_pair

    def pairs():
        for stem in stems:
            img, raw = read_pair(data, set_name, stem)
            lab = map_labels(set_name, raw, img if set_name == "pennfudan" else None)[0]
            yield img, (relabel(lab, img) if relabel else lab)

    return _cache(model, pairs(), mean, std, classes, stride)


def cache_records(model, records, mean, std, classes=None, relabel=None, stride: int = 1):
    """:func:`cache_inputs` for in-memory :class:`~.datasets.Record` samples (e.g. :func:`.synth.synth_scene`'s)."""
    return _cache(model, ((r.image, relabel(r.lab, r.image) if relabel else r.lab) for r in records), mean, std,
                  classes, stride)


def _cache(model, pairs, mean, std, classes=None, stride: int = 1):
    """The cache entries of (uint8 RGB image, packed label map) ``pairs`` (see :func:`cache_inputs`)."""
    import torch

    from ..postprocess import letterbox, normalize
    from .datasets import CLASSES, unpack

    dec, s = model.decoder, model.cfg.mask_stride
    classes = list(classes or model.cfg.sky_head_classes)
    idx = [CLASSES.index(c) for c in classes]
    sem_idx = [list(model.cfg.semantic_classes).index(c) for c in classes]
    grab: dict = {}
    hooks = [dec.up2.register_forward_hook(lambda m, i, o: grab.__setitem__("d2", o)),
             (dec.out_proj if s == 2 else dec.up1).register_forward_hook(lambda m, i, o: grab.__setitem__("mf", o))]
    out = []
    try:
        with torch.inference_mode():
            for img, lab in pairs:
                canvas, box = letterbox(img.astype(np.float32) / 255.0, tuple(model.cfg.input_size), tuple(mean))
                o = model(torch.from_numpy(normalize(canvas, mean, std)), scene_only=True)
                (t, left), (ch, cw) = box.offset, box.content_hw
                d2, mf = grab["d2"], grab["mf"]  # the input: the logits before the branches, as every branch reads
                crop = (slice(None), slice(t // s, (t + ch) // s), slice(left // s, (left + cw) // s))
                f = torch.cat(dec.branch_parts(dec.static_logits(d2, mf), d2, mf, sem_idx), 1)[0][crop]
                u = unpack(lab)
                hw = tuple(f.shape[1:])
                out.append(cached_entry(f, np.stack([_grid(u["sem"][i], hw) for i in idx]),
                                        np.stack([_grid(u["known"][i], hw) >= 0.5 for i in idx]), stride,
                                        o["sem_logits"][0][sem_idx][crop]))
    finally:
        for h in hooks:
            h.remove()
    return out


def synth_records(data: Path, n: int, holdout: int, seed: int, max_side: int = 512, n_faces: int = 200,
                  n_backgrounds: int = 150) -> list:
    """``n`` copy-paste scenes (:func:`.synth.synth_scene`: 1-4 CelebAMask / Penn-Fudan person cutouts, faces at
    35-95 % of the frame height, on CamVid street frames) from training photos only, none of them held out
    (``refit_rows.is_holdout``): ``n_faces`` evenly spaced CelebAMask faces, every Penn-Fudan training photo,
    ``n_backgrounds`` evenly spaced CamVid frames, each at most ``max_side`` pixels on its long side."""
    from .datasets import _load_record
    from .synth import person_cutouts, synth_scene

    def stems(set_name, limit):
        return _spaced(_training_split(data, set_name, holdout)[0], limit)

    people = [_load_record(data, "celebamask", t, max_side) for t in stems("celebamask", n_faces)]
    people += [_load_record(data, "pennfudan", t, max_side) for t in stems("pennfudan", None)]
    backgrounds = [_load_record(data, "camvid", t, max_side) for t in stems("camvid", n_backgrounds)]
    cutouts = person_cutouts(people)
    rng = np.random.default_rng(seed)
    return [synth_scene(backgrounds[int(rng.integers(len(backgrounds)))], cutouts, rng) for _ in range(n)]


def _training_split(data: Path, set_name: str, holdout: int) -> tuple[list[str], list[str]]:
    """The training photos of ``set_name`` outside the held-out ``holdout`` % (``refit_rows.is_holdout``, kept out
    of every branch fit), and the held-out ones."""
    from .datasets import list_stems
    from .refit_rows import is_holdout

    stems = list_stems(data, set_name, "train")
    return ([t for t in stems if not is_holdout(t, holdout, set_name)],
            [t for t in stems if is_holdout(t, holdout, set_name)])


def _ignore_image(fn):
    """A ``relabel`` (``(lab, image) -> lab``) from a function of the label map alone."""
    return lambda lab, image: fn(lab)


def _chain(relabels: list):
    """One ``relabel`` applying each of ``relabels`` in turn (None for none)."""
    if not relabels:
        return None
    return lambda lab, image: functools.reduce(lambda acc, f: f(acc, image), relabels, lab)


def twilight_records(data: Path, stems: list[str], seed: int) -> list:
    """CamVid frames ``stems`` re-lit as dusk (:func:`.twilight.twilight`, one seeded stream), labels unchanged:
    the only sky labels are daytime streets, and the rocket sample's dusk sky gets no sky (MODEL_CARD.md)."""
    from .datasets import Record, map_labels, read_pair
    from .twilight import twilight

    rng = np.random.default_rng(seed)
    out = []
    for stem in stems:
        img, raw = read_pair(data, "camvid", stem)
        lab, inst_known = map_labels("camvid", raw, None)
        out.append(Record("twilight", stem, twilight(img, lab, rng), lab, inst_known))
    return out


def _spaced(stems: list[str], limit: int | None) -> list[str]:
    if limit is None or limit >= len(stems):
        return stems
    return [stems[i] for i in np.linspace(0, len(stems) - 1, limit).astype(int)]


def pooled_iou(samples: list[Cached], branch=None, j: int = 0) -> float:
    """Pooled IoU at logit 0 of refined class ``j`` over its known cells: of the frozen logits, or with ``branch``'s
    residual added (the branch these entries were pooled for)."""
    import torch

    from .evaluate import IoUAccumulator

    acc = IoUAccumulator()
    with torch.inference_mode():
        for e in samples:
            logit = e.logits[None].float()
            if branch is not None:
                logit = logit + branch.from_pooled(e.pooled[None].float(), tuple(logit.shape[-2:]))
            acc.update(logit[0, j].numpy() > 0, e.labels[j] >= 0.5, ~e.known[j])
    return acc.iou if acc.union > 0 else 0.0


def fit(model, pool, norm_pool, steps: int, batch: int, patch: int, seed: int = 0, log=print,
        groups: list[str] | None = None, shares: dict[str, float] | None = None, branch=None) -> list[float]:
    """Train ``branch`` (default ``model.decoder.sky_branch``) on ``pool`` (:class:`Cached` entries pooled by the
    branch's stride; ``patch`` a multiple of it); returns the loss every 100 steps.

    ``norm_pool``: the samples the input normalisation is measured on. ``groups``: each sample's set name;
    ``shares``: the probability of drawing a photo of each named set (default: every photo of the pool equally
    likely; the photos of sets without a share split what the shares leave)."""
    import torch
    from torch.nn import functional as F

    br = branch if branch is not None else model.decoder.sky_branch
    s = br.stride
    if patch % s:
        raise ValueError(f"patch {patch} must be a multiple of the branch's stride {s}")
    with torch.no_grad():
        br.in_mean.copy_(torch.stack([e.stats[0] for e in norm_pool]).mean(0))
        br.in_std.copy_(torch.stack([e.stats[1] for e in norm_pool]).mean(0) + 1e-3)
    keep = [i for i, e in enumerate(pool) if min(e.labels.shape[-2:]) >= patch]
    prob = None
    if shares:
        if groups is None or len(groups) != len(pool):
            raise ValueError("shares need the set name of every pool sample (groups)")
        g = np.array([groups[i] for i in keep])
        named = np.isin(g, list(shares))
        total = sum(shares.values())
        if any(not 0 < p <= 1 for p in shares.values()) or total > 1 + 1e-9 or (total < 1 and named.all()):
            raise ValueError(f"shares must be in (0, 1], sum to <= 1, and leave photos for what they do not "
                             f"cover (< 1); got {shares}")
        prob = np.zeros(len(keep))
        for name, p in shares.items():
            sel = g == name
            if not sel.any():
                raise ValueError(f"a share for {name!r}, but no photo of that set in the pool")
            prob = np.where(sel, p / sel.sum(), prob)
        prob = np.where(named, prob, (1 - total) / max(1, (~named).sum()))
        prob = prob / prob.sum()
    pool = [pool[i] for i in keep]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = list(br.body.parameters())
    opt = torch.optim.AdamW(params, 2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    losses, t0 = [], time.time()
    br.train()
    for it in range(steps):
        xb, lb, yb, kb = [], [], [], []
        # uniform draws keep rng.integers: the random stream the first fits (c0, c2) were made with
        for j in (rng.integers(0, len(pool), batch) if prob is None else rng.choice(len(pool), batch, p=prob)):
            e = pool[j]
            h, w = e.labels.shape[-2:]
            a, b = rng.integers(0, h - patch + 1), rng.integers(0, w - patch + 1)
            a, b = a - a % s, b - b % s  # the pooling grid of the whole image
            ff = e.pooled[:, a // s:(a + patch) // s, b // s:(b + patch) // s]
            ll = e.logits[:, a:a + patch, b:b + patch]
            yy, kk = e.labels[:, a:a + patch, b:b + patch], e.known[:, a:a + patch, b:b + patch]
            if rng.random() < 0.5:  # mirroring commutes with the pooling: the crop's width is a multiple of s
                ff, ll, yy, kk = ff.flip(-1), ll.flip(-1), yy[..., ::-1], kk[..., ::-1]
            xb.append(ff)
            lb.append(ll)
            yb.append(torch.from_numpy(np.ascontiguousarray(yy)))
            kb.append(torch.from_numpy(np.ascontiguousarray(kk)))
        y, k = torch.stack(yb), torch.stack(kb).float()
        logit = torch.stack(lb).float() + br.from_pooled(torch.stack(xb).float(), (patch, patch))
        loss = (F.binary_cross_entropy_with_logits(logit, y, reduction="none") * k).sum() / k.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if it % 100 == 0 or it == steps - 1:
            losses.append(round(float(loss.detach()), 5))
            if it % 500 == 0 or it == steps - 1:
                log(f"step {it + 1}/{steps} loss {losses[-1]:.4f} ({time.time() - t0:.0f} s)")
    br.eval()
    return losses


def _refit_target(cfg, classes: tuple, lower_only: bool, src) -> int | None:
    """What ``--refit`` replaces: ``None`` for the sky branch (when ``classes`` are the sky branch's and not
    ``lower_only``), else the index in ``cfg.class_branches`` of the further branch of that mode on exactly
    ``classes``; a model without such a branch is an error (``--extra`` fits one)."""
    if not lower_only and cfg.sky_head_hidden and tuple(cfg.sky_head_classes) == classes:
        return None
    mode = "lower" if lower_only else "both"
    for i, e in enumerate(cfg.class_branches):
        if tuple(e[0]) == classes and branch_mode(e) == mode:
            return i
    raise SystemExit(f"{src} has no branch of mode {mode!r} on {', '.join(classes)} to refit (--extra fits one)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--float", dest="float_ckpt", required=True, type=Path)
    ap.add_argument("--data", default=Path("../shared/data"), type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--stride", type=int, default=1, choices=(1, 2, 4), help="model.sky_head_stride")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--neg-limit", type=int, default=250)
    ap.add_argument("--holdout", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", default="sky", help="comma-separated classes the branch refines, sky first "
                    "(model.sky_head_classes)")
    ap.add_argument("--share", action="append", default=[], metavar="SET=P",
                    help="probability of drawing a photo of SET (repeatable; default: all photos equally likely)")
    ap.add_argument("--camvid-share", type=float, default=None, help="the same as --share camvid=P")
    ap.add_argument("--synth", type=int, default=0, metavar="N",
                    help="add N copy-paste scenes of training people on training street frames (set name 'synth' "
                         "for --share); none of their photos is held out")
    ap.add_argument("--hair-below", type=float, default=None, metavar="FRAC",
                    help="hair known absent on Penn-Fudan people (photos and pasted ones) below the top FRAC of "
                         "each person's height (datasets.hair_absent_below_head; e.g. 0.35); needs hair in --classes")
    ap.add_argument("--twilight", type=int, default=0, metavar="K",
                    help="add K copies of CamVid training frames re-lit as dusk (.twilight, labels unchanged: dusk "
                         "sky, and dark streets that are not hair or skin; set name 'twilight' for --share); with sky "
                         "in --classes the held-out frames re-lit the same way give a held-out dusk figure")
    ap.add_argument("--scored-limit", type=int, default=None, metavar="N",
                    help="at most N evenly spaced training photos of each scored set, and N // 3 of its held-out "
                         "ones (default: all; the cache takes ~4-5 MB a photo, LFW has 1,719 training photos)")
    ap.add_argument("--refit", action="store_true",
                    help="fit a new branch in place of the one FLOAT already has on --classes (the sky branch, or the "
                         "further branch of that mode; everything else frozen)")
    ap.add_argument("--bare-skin-unknown", action="store_true",
                    help="person and skin (those of --classes) unknown on CelebAMask's bare skin next to the "
                         "labelled person (its labels call bare shoulders and chest background; datasets."
                         "unknown_on_bare_skin); needs person or skin in --classes")
    ap.add_argument("--portrait-bg-not-sky", action="store_true",
                    help="sky known absent on the whole frame of CelebAMask's face close-ups (datasets."
                         "sky_absent_on_portraits; their backgrounds are unlabelled, mostly backdrops and rooms); "
                         "needs sky in --classes")
    ap.add_argument("--lower-only", action="store_true",
                    help="with --extra or --refit: a branch that can only lower its classes' logits (mode 'lower' of "
                         "model.class_branches: residual min(r, 0)), so it can take a class off pixels but never put "
                         "it on new ones")
    ap.add_argument("--extra", action="store_true",
                    help="fit a further branch for --classes (model.class_branches) on a model that may already "
                         "have its sky branch, instead of the sky branch")
    a = ap.parse_args(argv)
    if a.synth < 0 or a.twilight < 0 or (a.scored_limit is not None and a.scored_limit < 3):
        raise SystemExit("--synth and --twilight take a number of samples >= 0, --scored-limit one >= 3")
    if a.patch % a.stride:
        raise SystemExit(f"--patch {a.patch} must be a multiple of --stride {a.stride}")
    if a.refit and a.extra:
        raise SystemExit("--refit replaces a branch the model has; --extra fits a further branch: choose one")
    if a.lower_only and not (a.extra or a.refit):
        raise SystemExit("--lower-only is a mode of the further branches (--extra, --refit), not of the sky branch")
    if a.hair_below is not None and not 0.0 < a.hair_below <= 1.0:
        raise SystemExit("--hair-below takes a fraction of the person's height in (0, 1]")

    import torch

    from ..checkpoint import load_checkpoint, save_checkpoint
    from ..config import HyperDETRConfig
    from ..model import build_model
    from .datasets import list_stems
    from .evaluate import EVAL_SPEC

    classes = tuple(c.strip() for c in a.classes.split(",") if c.strip())
    if a.portrait_bg_not_sky and "sky" not in classes:
        raise SystemExit("--portrait-bg-not-sky changes sky labels only; it needs sky in --classes")
    bare_classes = tuple(c for c in ("person", "skin") if c in classes)
    if a.bare_skin_unknown and not bare_classes:
        raise SystemExit("--bare-skin-unknown changes person and skin labels only; it needs one of them in --classes")
    if a.hair_below is not None and "hair" not in classes:
        raise SystemExit("--hair-below changes hair labels only; it needs hair in --classes")
    relabel = None
    if a.hair_below is not None:
        from .datasets import hair_absent_below_head

        relabel = _ignore_image(functools.partial(hair_absent_below_head, frac=a.hair_below))
    celeba = []
    if a.bare_skin_unknown:
        from .datasets import unknown_on_bare_skin

        celeba.append(functools.partial(unknown_on_bare_skin, classes=bare_classes))
    if a.portrait_bg_not_sky:
        from .datasets import sky_absent_on_portraits

        celeba.append(sky_absent_on_portraits)
    celeba_relabel = _chain(celeba)
    shares = {}
    for item in a.share + ([f"camvid={a.camvid_share}"] if a.camvid_share is not None else []):
        name, _, val = item.partition("=")
        try:
            shares[name.strip()] = float(val)
        except ValueError:
            raise SystemExit(f"--share takes SET=P (e.g. camvid=0.4), got {item!r}") from None
    scored = {c: [s for s in EVAL_SPEC if c in EVAL_SPEC[s]] for c in classes}
    sets = list(dict.fromkeys(["camvid", *NEG_SETS, *(s for v in scored.values() for s in v)]))
    missing_sets = sorted({s for v in scored.values() for s in v if not (a.data / s).is_dir()})
    if missing_sets:
        raise SystemExit(f"no {', '.join(missing_sets)} under {a.data} (the shared data directory)")
    unknown = sorted(set(shares) - set(sets) - ({"synth"} if a.synth else set())
                     - ({"twilight"} if a.twilight else set()))
    if unknown:
        raise SystemExit(f"--share for {unknown}: the fit's sets are {sets}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    base, meta = load_checkpoint(a.float_ckpt)
    if base.cfg.sky_head_hidden and not (a.extra or a.refit):
        raise SystemExit(f"{a.float_ckpt} already has a sky branch (--extra fits a further one, --refit replaces it)")
    target = _refit_target(base.cfg, classes, a.lower_only, a.float_ckpt) if a.refit else None
    entry = [list(classes), a.hidden, a.stride, *(["lower"] if a.lower_only else [])]
    branches = base.cfg.to_dict()["class_branches"]
    if a.extra:
        update = {"class_branches": [*branches, entry]}
    elif target is not None:  # --refit of a further branch: same place in the list, --hidden/--stride as given
        update = {"class_branches": [entry if i == target else e for i, e in enumerate(branches)]}
    else:
        update = {"sky_head_hidden": a.hidden, "sky_head_stride": a.stride, "sky_head_classes": classes}
    try:
        cfg = HyperDETRConfig.from_dict({**base.cfg.to_dict(), **update})
    except ValueError as e:
        raise SystemExit(str(e)) from None
    model = build_model(cfg).eval()
    index = len(cfg.class_branches) - 1 if a.extra else target
    prefix = "decoder.sky_branch." if index is None else f"decoder.class_branches.{index}."
    state = {k: v for k, v in base.state_dict().items() if a.extra or not k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(prefix) for k in missing):
        raise SystemExit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    br = model.decoder.sky_branch if index is None else model.decoder.class_branches[index]
    br.lower_only = False  # --lower-only: fitted both ways (the clamp passes no gradient), switched after the fit
    for p in model.parameters():
        p.requires_grad_(False)
    for p in br.body.parameters():
        p.requires_grad_(True)
    mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]

    stride = br.stride  # the cache holds the branch's inputs pooled as it pools them (Cached)
    t0 = time.time()
    pool, groups, norm_pool, hold, counts = [], [], [], {}, {}
    for s in sets:
        if not (a.data / s).is_dir():
            continue
        if any(s in v for v in scored.values()):  # scored: all training photos but the held-out ones
            lim = a.scored_limit
            train, held = _training_split(a.data, s, a.holdout)
            c = cache_inputs(model, a.data, s, _spaced(train, lim), mean, std, classes,
                             celeba_relabel if s == "celebamask" else None, stride)
            hold[s] = cache_inputs(model, a.data, s, _spaced(held, lim and lim // 3), mean, std, classes,
                                   stride=stride)
            norm_pool += c
            counts[f"{s}_holdout"] = len(hold[s])
        else:
            c = cache_inputs(model, a.data, s, _spaced(list_stems(a.data, s, "train"), a.neg_limit), mean, std,
                             classes, {"pennfudan": relabel, "celebamask": celeba_relabel}.get(s), stride)
        pool += c
        groups += [s] * len(c)
        counts[s] = len(c)
    if a.synth:
        c = cache_records(model, synth_records(a.data, a.synth, a.holdout, a.seed + 1), mean, std, classes, relabel,
                          stride)
        pool += c
        groups += ["synth"] * len(c)
        counts["synth"] = len(c)
    if a.twilight:
        train, held = _training_split(a.data, "camvid", a.holdout)
        c = cache_records(model, twilight_records(a.data, _spaced(train, a.twilight), a.seed + 2), mean, std, classes,
                          stride=stride)
        pool += c
        groups += ["twilight"] * len(c)
        counts["twilight"] = len(c)
        if classes[0] == "sky" and not a.extra:
            hold["twilight"] = cache_records(model, twilight_records(a.data, held, a.seed + 3), mean, std, classes,
                                             stride=stride)
    print(f"cached {counts} in {time.time() - t0:.0f} s", flush=True)
    losses = fit(model, pool, norm_pool, a.steps, a.batch, a.patch, a.seed, log=lambda m: print(m, flush=True),
                 groups=groups, shares=shares or None, branch=br)
    held_iou = {}
    held_of = {c: [x for s in scored[c] for x in hold.get(s, [])] for c in classes}
    for j, c in enumerate(classes):
        own = pooled_iou(held_of[c], None, j)
        new = pooled_iou(held_of[c], br, j)
        held_iou[c] = {"frozen": own, "branch": new}
        print(f"held-out training photos of {'/'.join(scored[c])} ({len(held_of[c])}), {c} IoU at the feature "
              f"resolution: frozen model {own:.4f}, with the branch {new:.4f}")
    if a.lower_only:  # fitted both ways; from here on (figures and file) the branch of mode "lower", as model.cfg
        br.lower_only = True
        for j, c in enumerate(classes):
            held_iou[c]["branch_lowered"] = low = pooled_iou(held_of[c], br, j)
            print(f"{c}, the branch switched to 'lower' (its residual min(r, 0)): {low:.4f}")
    if "twilight" in hold:
        own = pooled_iou(hold["twilight"])
        new = pooled_iou(hold["twilight"], br)
        held_iou["sky_twilight"] = {"frozen": own, "branch": new}
        print(f"held-out CamVid training frames re-lit as dusk ({len(hold['twilight'])}), sky IoU at the feature "
              f"resolution: frozen model {own:.4f}, with the branch {new:.4f}")
    extra = dict(meta.get("extra") or {})
    if index is None:
        key = "sky_branch"
    else:  # a lower-only branch beside one of mode "both" on the same classes has its own record, "...:lower"
        beside = any(tuple(e[0]) == classes and branch_mode(e) == "both" for e in cfg.class_branches)
        key = "class_branch:" + "+".join(classes) + (":lower" if a.lower_only and beside else "")
    extra[key] = {"from": str(a.float_ckpt), "classes": list(classes), "hidden": a.hidden, "stride": a.stride,
                  "steps": a.steps, "batch": a.batch, "patch": a.patch, "neg_limit": a.neg_limit,
                  "holdout": a.holdout, "seed": a.seed, "shares": shares, "synth": a.synth, "hair_below": a.hair_below,
                  "twilight": a.twilight, "refit": a.refit, "scored_limit": a.scored_limit,
                  "bare_skin_unknown": a.bare_skin_unknown, "portrait_bg_not_sky": a.portrait_bg_not_sky,
                  "lower_only": a.lower_only,
                  "photos": counts, "losses": losses, "holdout_iou_feature_res": held_iou}
    save_checkpoint(a.out, model, model.cfg, mean=mean, std=std, metrics=meta.get("metrics"), extra=extra)
    print(f"wrote {a.out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
