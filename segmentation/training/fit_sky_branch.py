"""Fit the residual sky branch (:class:`campipe.segmentation.model.SkyBranch`) on a frozen model.

``python -m campipe.segmentation.training.fit_sky_branch --float FLOAT.pt --data ../shared/data --out OUT.pt
[--hidden 16] [--stride 1|2] [--steps 2000] [--neg-limit 250] [--holdout 25] [--camvid-share P]``

Everything but the branch is frozen, and the branch writes the sky logit only, so every other output of ``OUT.pt``
equals ``FLOAT.pt``'s bit for bit. The frozen model's inputs to the branch (the decoder's stride-2 features, the mask
features and the sky logit, :meth:`~campipe.segmentation.model.ConvDecoder.sky_branch_input`) are computed once per
training photo (letterboxed as campipe runs the network, cropped to the photo) and cached as float16, with the sky
label and its known mask area-resampled to the same grid (:func:`.datasets.map_labels`, so a set that does not label
the sky only teaches "not sky" where it knows it: the people of CelebAMask, Figaro1k and Penn-Fudan).

* photos: CamVid's training split minus ``--holdout`` % (``refit_rows.is_holdout``, the photos the shipping rule
  scores the branch on), and ``--neg-limit`` evenly spaced training photos each of CelebAMask, Figaro1k and
  Penn-Fudan; every photo is drawn with the same probability, or CamVid's with ``--camvid-share`` in all;
* the branch's fixed input normalisation (``in_mean`` / ``in_std``) is the mean over the CamVid photos of each
  channel's per-photo mean and standard deviation;
* ``--steps`` AdamW steps (lr 2e-3 one-cycle, weight decay 1e-4) on ``--batch`` random ``--patch`` x ``--patch``
  crops of the cached grids (mirrored half the time), BCE with the soft labels over the known cells; seed 0;
* printed at the end: pooled sky IoU at 0.5 on the held-out CamVid photos at the feature resolution, the frozen
  model's and the branch's (information; the shipping rule uses campipe's whole protocol, MODEL_CARD.md).

``OUT.pt`` is a float checkpoint (``extra["sky_branch"]`` records the arguments, photo counts and the held-out
figures); ``ship.py`` makes the int8 file from it. The cache takes ~2 GB of memory.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

NEG_SETS = ("celebamask", "figaro1k", "pennfudan")


def _grid(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(a.astype(np.float32), (hw[1], hw[0]), interpolation=cv2.INTER_AREA)


def cache_inputs(model, data: Path, set_name: str, stems: list[str], mean, std):
    """[(branch input float16 (cin, h, w), sky label float32 (h, w), known bool (h, w))] for ``stems``."""
    import torch

    from ..postprocess import letterbox, normalize
    from .datasets import SKY, map_labels, read_pair, unpack

    dec, s = model.decoder, model.cfg.mask_stride
    grab: dict = {}
    hooks = [dec.up2.register_forward_hook(lambda m, i, o: grab.__setitem__("d2", o)),
             (dec.out_proj if s == 2 else dec.up1).register_forward_hook(lambda m, i, o: grab.__setitem__("mf", o))]
    out = []
    try:
        with torch.inference_mode():
            for stem in stems:
                img, raw = read_pair(data, set_name, stem)
                canvas, box = letterbox(img.astype(np.float32) / 255.0, tuple(model.cfg.input_size), tuple(mean))
                o = model(torch.from_numpy(normalize(canvas, mean, std)), scene_only=True)
                (t, left), (ch, cw) = box.offset, box.content_hw
                f = dec.sky_branch_input(o["sem_logits"], grab["d2"], grab["mf"])[0]
                f = f[:, t // s:(t + ch) // s, left // s:(left + cw) // s]
                u = unpack(map_labels(set_name, raw, img if set_name == "pennfudan" else None)[0])
                hw = tuple(f.shape[1:])
                out.append((f.half(), _grid(u["sem"][SKY], hw), _grid(u["known"][SKY], hw) >= 0.5))
    finally:
        for h in hooks:
            h.remove()
    return out


def _spaced(stems: list[str], limit: int | None) -> list[str]:
    if limit is None or limit >= len(stems):
        return stems
    return [stems[i] for i in np.linspace(0, len(stems) - 1, limit).astype(int)]


def pooled_iou(samples, fn) -> float:
    """Pooled IoU at logit 0 of ``fn(input (1, cin, h, w)) -> logit (1, 1, h, w)`` over known cells."""
    import torch

    from .evaluate import IoUAccumulator

    acc = IoUAccumulator()
    with torch.inference_mode():
        for f, y, k in samples:
            acc.update(fn(f[None].float())[0, 0].numpy() > 0, y >= 0.5, ~k)
    return acc.iou if acc.union > 0 else 0.0


def fit(model, pool, fit_cv, steps: int, batch: int, patch: int, seed: int = 0, log=print,
        camvid_share: float | None = None) -> list[float]:
    """Train ``model.decoder.sky_branch`` on ``pool`` (cached samples, the CamVid ones ``fit_cv`` first); returns the
    loss every 100 steps. ``camvid_share``: the probability of drawing a CamVid photo (default: every photo of the
    pool equally likely)."""
    import torch
    from torch.nn import functional as F

    br = model.decoder.sky_branch
    with torch.no_grad():
        br.in_mean.copy_(torch.stack([f.float().mean((1, 2)) for f, _, _ in fit_cv]).mean(0))
        br.in_std.copy_(torch.stack([f.float().std((1, 2)) for f, _, _ in fit_cv]).mean(0) + 1e-3)
    is_cv = [i < len(fit_cv) for i in range(len(pool))]
    keep = [i for i, p in enumerate(pool) if min(p[1].shape) >= patch]
    pool, is_cv = [pool[i] for i in keep], np.array([is_cv[i] for i in keep])
    prob = None
    if camvid_share is not None:
        if not 0 < camvid_share <= 1 or (camvid_share < 1 and is_cv.all()):
            raise ValueError(f"camvid_share must be in (0, 1] with other photos in the pool, got {camvid_share}")
        prob = np.where(is_cv, camvid_share / is_cv.sum(), (1 - camvid_share) / max(1, (~is_cv).sum()))
        prob = prob / prob.sum()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = list(br.body.parameters())
    opt = torch.optim.AdamW(params, 2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    losses, t0 = [], time.time()
    br.train()
    for it in range(steps):
        xb, yb, kb = [], [], []
        # uniform draws keep rng.integers: the random stream the first fits (c0, c2) were made with
        for j in (rng.integers(0, len(pool), batch) if camvid_share is None else rng.choice(len(pool), batch, p=prob)):
            f, y, k = pool[j]
            h, w = y.shape
            a, b = rng.integers(0, h - patch + 1), rng.integers(0, w - patch + 1)
            a, b = a - a % br.stride, b - b % br.stride  # the pooling grid of the whole image
            ff, yy, kk = f[:, a:a + patch, b:b + patch], y[a:a + patch, b:b + patch], k[a:a + patch, b:b + patch]
            if rng.random() < 0.5:
                ff, yy, kk = ff.flip(-1), yy[:, ::-1], kk[:, ::-1]
            xb.append(ff)
            yb.append(torch.from_numpy(np.ascontiguousarray(yy)))
            kb.append(torch.from_numpy(np.ascontiguousarray(kk)))
        x = torch.stack(xb).float()
        y, k = torch.stack(yb)[:, None], torch.stack(kb)[:, None].float()
        logit = x[:, -1:] + br(x)  # the branch input's last channel is the frozen sky logit
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--float", dest="float_ckpt", required=True, type=Path)
    ap.add_argument("--data", default=Path("../shared/data"), type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--stride", type=int, default=1, choices=(1, 2), help="model.sky_head_stride")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--neg-limit", type=int, default=250)
    ap.add_argument("--holdout", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--camvid-share", type=float, default=None,
                    help="probability of drawing a CamVid photo (default: all photos equally likely)")
    a = ap.parse_args(argv)

    import torch

    from ..checkpoint import load_checkpoint, save_checkpoint
    from ..config import HyperDETRConfig
    from ..model import build_model
    from .datasets import list_stems
    from .refit_rows import is_holdout

    if not (a.data / "camvid").is_dir():
        raise SystemExit(f"no CamVid under {a.data} (the shared data directory)")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    base, meta = load_checkpoint(a.float_ckpt)
    if base.cfg.sky_head_hidden:
        raise SystemExit(f"{a.float_ckpt} already has a sky branch")
    cfg = HyperDETRConfig.from_dict({**base.cfg.to_dict(), "sky_head_hidden": a.hidden, "sky_head_stride": a.stride})
    model = build_model(cfg).eval()
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    if unexpected or any(not k.startswith("decoder.sky_branch.") for k in missing):
        raise SystemExit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.decoder.sky_branch.body.parameters():
        p.requires_grad_(True)
    mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]

    t0 = time.time()
    cv_stems = list_stems(a.data, "camvid", "train")
    fit_stems = [s for s in cv_stems if not is_holdout(s, a.holdout, "camvid")]
    hold_stems = [s for s in cv_stems if is_holdout(s, a.holdout, "camvid")]
    fit_cv = cache_inputs(model, a.data, "camvid", fit_stems, mean, std)
    hold = cache_inputs(model, a.data, "camvid", hold_stems, mean, std)
    pool = list(fit_cv)
    counts = {"camvid": len(fit_cv), "camvid_holdout": len(hold)}
    for s in NEG_SETS:
        if (a.data / s).is_dir():
            c = cache_inputs(model, a.data, s, _spaced(list_stems(a.data, s, "train"), a.neg_limit), mean, std)
            pool += c
            counts[s] = len(c)
    print(f"cached {counts} in {time.time() - t0:.0f} s", flush=True)
    losses = fit(model, pool, fit_cv, a.steps, a.batch, a.patch, a.seed, log=lambda m: print(m, flush=True),
                 camvid_share=a.camvid_share)
    br = model.decoder.sky_branch
    own = pooled_iou(hold, lambda x: x[:, -1:])
    new = pooled_iou(hold, lambda x: x[:, -1:] + br(x))
    print(f"held-out CamVid training photos ({len(hold)}), sky IoU at the feature resolution: "
          f"frozen model {own:.4f}, with the branch {new:.4f}")
    extra = dict(meta.get("extra") or {})
    extra["sky_branch"] = {"from": str(a.float_ckpt), "hidden": a.hidden, "stride": a.stride, "steps": a.steps,
                           "batch": a.batch,
                           "patch": a.patch, "neg_limit": a.neg_limit, "holdout": a.holdout, "seed": a.seed,
                           "camvid_share": a.camvid_share,
                           "photos": counts, "losses": losses,
                           "holdout_sky_iou_feature_res": {"frozen": own, "branch": new}}
    save_checkpoint(a.out, model, model.cfg, mean=mean, std=std, metrics=meta.get("metrics"), extra=extra)
    print(f"wrote {a.out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
