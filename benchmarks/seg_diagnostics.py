"""HyperDETR diagnostics on the validation split: where the face-skin / teeth errors are, and what horizontal-flip
test-time augmentation would change.

* ``parts``: on the CelebAMask validation faces, the skin (ids 1, 2, 8, 9, 17) and teeth (id 10) errors broken down
  by the CelebAMask part each wrong pixel belongs to (misses on skin parts, false alarms on the others), with the
  fraction of that part's pixels; campipe's protocol (guided upsampling, threshold 0.5).
* ``person-errors``: on CelebAMask photos (``--split``, default the training split, evenly spaced ``--limit``),
  campipe's person mask (the refined person channel united with the kept instances, threshold 0.5, guided
  upsampling) against every non-zero id: pooled IoU, the errors broken down by part (background called person,
  missed cloth, hair, ...), the share of the background called person, the errors in the bottom fifth of the frame,
  and the photos with the most background called person. CelebAMask labels no skin below the neck (bare shoulders,
  chests and arms are background, id 0), so it also counts the background called person that is probably bare
  skin: pixels whose colour fits the photo's own face-skin model (:mod:`campipe.segmentation.training.skin`,
  d^2 <= 4, not too dark) in connected regions touching the labelled person, and the IoU with those pixels left
  out of the score (a measure of the label convention, not campipe's figure).
* ``flip-tta``: ``campipe eval``'s figures for the weights, and for the same weights with the static channels'
  logits averaged over the photo and its mirror image (instances from the photo alone).
* ``class-scores``: how much the person-query class scores (softmax p(person) of each of the N queries, last kept
  decoder layer, photo letterboxed as campipe does) depend on the photo: their mean and spread over the validation
  photos of each set, split by how many people are labelled (CamVid: with / without pedestrians), and on flat
  black / grey / noise images. A class head that sees the image gives different scores for 0 and 3 people. Also,
  on the Penn-Fudan validation photos, per kept decoder layer: how much the cross-attention output varies across
  photos (std over photos, mean over channels and queries) against its size (rms), and how peaked the attention is.
* ``instance-oracle``: how far the person masks could go with the mask features as they are: for each labelled
  Penn-Fudan validation person, the best dynamic 1x1 conv (16 weights + bias, logistic regression fitted on that very
  photo's instance mask at the feature resolution) against the best of the model's own query masks (IoU at 0.5);
  also the same fit with the 5 coordinate channels of ``model.mask_coords`` appended (x, y, x^2, y^2, xy).
* ``static-head``: whether the static channels are limited by their head (one 1x1 conv of the 16 mask features) or
  by the features: on the CelebAMask faces, decoder features of the frozen model (the 32-channel stride-2 stage and
  the 16 mask features, cropped to the photo) are cached, and new heads fitted on the training faces (BCE + Dice,
  Adam, 6 epochs, mirror augmentation) are scored on the validation faces (pooled IoU at 0.5 at the mask-feature
  resolution) for person, hair, skin, teeth: the model's own head, a 3x3 conv head on the same 48 channels, and the
  same with the photo's pixels (2x2 space-to-depth, 12 channels) and the backbone's stride-2 features added.
* ``twilight``: CamVid validation sky IoU (threshold 0.5, bilinear upsampling) of the photos as they are and re-lit
  as dusk by the training augmentation (:mod:`campipe.segmentation.training.twilight`, seeded), with the mean
  person probability on the re-lit sky.

* ``photo-keys``: the log-average luminance (Reinhard's key, of the linearised sRGB photo) of every training photo
  of the five sets: percentiles per set and over all; the 15th and 85th percentiles over all are the segment stage's
  ``KEY_RANGE`` (``pipeline/segment_stage.py``).
* ``exposure``: how the segment stage's exposure policy for raw (scene-referred) frames changes the masks. Photos of
  CelebAMask, CamVid and Penn-Fudan (``--split``, default the validation split) are linearised, multiplied by 2^EV
  (EV -4 ... +2: a raw file exposed that much darker or brighter than the photo) and rendered for the network by
  (a) the policy used until 2026-12-05, a gain to a log-average luminance of 0.18, and (b) the current one, the
  frame's own exposure unless its log-average leaves ``KEY_RANGE`` (or, with ``--ranges 5-95,15-85,25-75``, each
  candidate range given as percentiles of the training photos' keys: how ``KEY_RANGE`` was chosen, on the training
  split); pooled IoU per class with campipe's protocol (guided upsampling, sky refined), and their mean. At EV 0,
  (b) renders the photo exactly as it was taken whenever its key lies in the range.

* ``upsample``: how the masks are brought from the network's grid to the photo: on ``--split`` photos of every
  set (default the training split, where the choice is made), the network runs once per photo and its masks are then
  upsampled bilinearly, as campipe does (each class with its own window, ``postprocess.CLASS_GUIDE``) and
  with the guided filter for a grid of window radii and regularisations (``--grid R:EPS,...``; ``cR:EPS`` a colour
  guide), each class followed by its colour refinement as campipe runs it; pooled IoU at 0.5 per set and class
  (person: the refined person channel united with the kept instances, upsampled the same way).

* ``thresholds``: where the best threshold of each class lies *after* campipe's whole post-processing (guided
  upsampling with the class windows, colour refinements), which the calibration (fitted on the network's own
  outputs) does not see: pooled IoU per set and class at thresholds 0.05 ... 0.95 on ``--split`` photos (default
  the training split), and per class the best threshold for the mean over the sets labelling it.

* ``framing``: how the framing-aware person offset (``postprocess.PersonFraming``) was chosen: on ``--split``
  photos (default the training split) of CelebAMask, Penn-Fudan and CamVid, the share of the frame whose person
  channel is >= 0.5 (percentiles per set: the framings the rule tells apart), and the pooled person IoU (campipe's
  person mask, as ``campipe eval`` scores it) without the offset, with a constant offset, and with ramps of several
  positions, widths and heights (the network runs once per photo). ``pennfudan-crops`` are half-length framings cut
  from the same Penn-Fudan photos (per person at least 120 px tall, a 3:4 crop from above the head to 60 % down the
  body), the framing between the labelled sets' close-ups and full bodies.

* ``branch-rule``: the figures the shipping rules of the residual branch (``model.sky_head_classes``, MODEL_CARD.md,
  tenth and eleventh sessions) compare, for ``--weights`` against ``--against`` (default: the shipped file), both
  with campipe's whole protocol: per class of ``--classes`` (default ``sky``), the pooled IoU on the held-out 25 % of
  the training photos of each set that scores it (``refit_rows.is_holdout``, kept out of the branch fits; CelebAMask
  skin also with its probable bare body skin left out of the score, ``datasets.bare_skin``: the labels call bare
  shoulders and chest background, the skin channel calls them skin); the share
  of the frame called that class on ``--limit`` (default 120) evenly spaced training photos of each set among
  CamVid, CelebAMask, Figaro1k and Penn-Fudan that does not score it; and on the three raw samples, the largest
  difference of every network output but those classes' logits. IoUs are printed to 6 decimals and shares to 5, so a
  rule's bound is never decided by rounding (rule 18 read 0.6916 against a bound of 0.6916; unrounded it failed by
  0.0001, MODEL_CARD.md, fourteenth session).

Usage: ``python benchmarks/seg_diagnostics.py parts|person-errors|flip-tta|class-scores|instance-oracle|static-head|
twilight|photo-keys|exposure|upsample|thresholds|framing|branch-rule [--weights CKPT] [--data ../shared/data]
[--limit K] [--split train|val] [--ranges P-Q,...] [--grid R:EPS,...] [--against CKPT] [--classes C,...]``. Not a
test; needs the shared data.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from campipe.segmentation.checkpoint import IMAGENET_MEAN, IMAGENET_STD, load_checkpoint
from campipe.segmentation.postprocess import letterbox, normalize
from campipe.segmentation.training.datasets import CAMVID_PED, CELEBA_SKIN_IDS, bare_skin, list_stems, read_pair
from campipe.segmentation.training.evaluate import evaluate_model, predict
from campipe.segmentation.training.skin import apply_skin_model, fit_skin_model

HERE = Path(__file__).resolve().parent
PARTS = ("background", "skin", "nose", "eyeglasses", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth",
         "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")


def parts(model, data: Path, limit: int | None) -> None:
    cfg = model.cfg
    for cls, ids in (("skin", tuple(CELEBA_SKIN_IDS)), ("teeth", (10,))):
        err, tot, tp = np.zeros(len(PARTS)), np.zeros(len(PARTS)), 0
        stems = list_stems(data, "celebamask", "val")[:limit]
        for stem in stems:
            img, raw = read_pair(data, "celebamask", stem)
            probs, _, _ = predict(model, img, cfg.input_size, IMAGENET_MEAN, IMAGENET_STD,
                                  tuple(cfg.semantic_classes), cfg.mask_stride)
            pred, gt = probs[cls] >= 0.5, np.isin(raw, ids)
            tp += int((pred & gt).sum())
            _tally_parts(err, tot, raw, pred != gt)
        print(f"\n{cls}: pooled IoU {tp / (tp + err.sum()):.3f} on {len(stems)} faces; errors by part")
        _print_parts(err, tot, ids)


def _tally_parts(err: np.ndarray, tot: np.ndarray, raw: np.ndarray, wrong: np.ndarray) -> None:
    """Add one face's wrong pixels (bool) and all its pixels, counted by CelebAMask part, to ``err`` and ``tot``."""
    err += np.bincount(raw[wrong].ravel(), minlength=len(PARTS))[:len(PARTS)]
    tot += np.bincount(raw.ravel(), minlength=len(PARTS))[:len(PARTS)]


def _print_parts(err: np.ndarray, tot: np.ndarray, ids) -> None:
    """The per-part errors, largest first: misses on the parts in ``ids`` (the class), false alarms elsewhere."""
    for i in np.argsort(-err):
        if err[i]:
            kind = "missed" if i in ids else "false "
            print(f"  {PARTS[i]:11s} {kind} {int(err[i]):9d} px  ({err[i] / err.sum():5.1%} of the errors, "
                  f"{err[i] / tot[i]:5.1%} of the part)")


def person_errors(model, data: Path, limit: int | None, split: str = "train") -> None:
    cfg = model.cfg
    stems = _spaced(list_stems(data, "celebamask", split), limit)
    err, tot = np.zeros(len(PARTS)), np.zeros(len(PARTS))
    tp = bottom = bare = 0
    worst = []
    for stem in stems:
        img, raw = read_pair(data, "celebamask", stem)
        probs, inst, _ = predict(model, img, cfg.input_size, IMAGENET_MEAN, IMAGENET_STD,
                                 tuple(cfg.semantic_classes), cfg.mask_stride)
        pred = probs["person"] >= 0.5
        if len(inst):
            pred |= inst.max(0) >= 0.5
        gt = raw > 0
        tp += int((pred & gt).sum())
        wrong = pred != gt
        _tally_parts(err, tot, raw, wrong)
        bottom += int(wrong[int(0.8 * raw.shape[0]):].sum())
        fp = pred & ~gt
        skin = apply_skin_model(img, fit_skin_model(img, raw == 1), fp) == 1
        if skin.any():
            near = cv2.dilate(gt.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            _, comp = cv2.connectedComponents(skin.astype(np.uint8), connectivity=8)
            touching = np.unique(comp[skin & near])
            bare += int(np.isin(comp, touching[touching > 0]).sum())
        worst.append((float(fp.sum() / max(1, (~gt).sum())), stem))
    print(f"person on {len(stems)} CelebAMask {split} photos: pooled IoU {tp / (tp + err.sum()):.3f}; "
          f"{err[0] / tot[0]:.1%} of the background called person; {bottom / err.sum():.1%} of the errors in the "
          f"bottom fifth of the frame; {bare / err[0]:.1%} of the background called person is probably bare skin "
          f"(IoU {tp / (tp + err.sum() - bare):.3f} without it); errors by part:")
    _print_parts(err, tot, range(1, len(PARTS)))
    worst.sort(reverse=True)
    print("most background called person:", ", ".join(f"{s} {f:.0%}" for f, s in worst[:8]))


def _net_input(model, img: np.ndarray):
    """uint8 sRGB photo -> (normalised network input (1, 3, H, W), its Letterbox), as campipe's inference does."""
    canvas, box = letterbox(img.astype(np.float32) / 255.0, tuple(model.cfg.input_size), tuple(IMAGENET_MEAN))
    return torch.from_numpy(normalize(canvas, IMAGENET_MEAN, IMAGENET_STD)), box


def _person_probs(model, img: np.ndarray) -> np.ndarray:
    """p(person) of each query (N,) for one uint8 sRGB photo, letterboxed like campipe's inference."""
    with torch.inference_mode():
        logits = model(_net_input(model, img)[0])["pred_logits"]
    return logits.softmax(-1)[0, :, 0].numpy()


def class_scores(model, data: Path, limit: int | None) -> None:
    groups: dict[str, list[np.ndarray]] = {}
    for set_name in ("celebamask", "figaro1k", "lfw_hair", "camvid", "pennfudan"):
        for stem in list_stems(data, set_name, "val")[:limit]:
            img, raw = read_pair(data, set_name, stem)
            if set_name == "camvid":
                key = "camvid, pedestrians" if (raw == CAMVID_PED).any() else "camvid, nobody"
            elif set_name == "pennfudan":
                n = len(np.unique(raw)) - 1  # instance ids 1..n
                key = f"pennfudan, {n} people" if n < 3 else "pennfudan, 3+ people"
            else:
                key = set_name
            groups.setdefault(key, []).append(_person_probs(model, img))
    rng = np.random.default_rng(0)
    for name, img in (("flat black", np.zeros((384, 512, 3), np.uint8)), ("flat grey", np.full((384, 512, 3), 128,
                      np.uint8)), ("uniform noise", rng.integers(0, 256, (384, 512, 3)).astype(np.uint8))):
        groups[name] = [_person_probs(model, img)]
    print(f"{'photos':22s} {'n':>4s}  p(person) per query: mean (std over photos)")
    for key, ps in groups.items():
        a = np.stack(ps)
        cols = "  ".join(f"{m:.3f} ({s:.3f})" for m, s in zip(a.mean(0), a.std(0)))
        print(f"{key:22s} {len(ps):4d}  {cols}")
    cross_attention(model, data, limit)


@torch.inference_mode()
def cross_attention(model, data: Path, limit: int | None) -> None:
    """Across-photo variation of each decoder layer's cross-attention output on the Penn-Fudan validation photos."""
    x = torch.cat([_net_input(model, read_pair(data, "pennfudan", stem)[0])[0]
                   for stem in list_stems(data, "pennfudan", "val")[:limit]])
    p32 = model.input_proj(model.backbone(x)["s32"])
    pos = model.position(p32).flatten(2).permute(2, 0, 1)
    t = model.transformer
    memory = p32.flatten(2).permute(2, 0, 1)
    for layer in t.encoder:
        memory = layer(memory, pos)
    query_pos = model.query_embed.weight.unsqueeze(1).expand(-1, x.shape[0], -1)
    tgt = torch.zeros_like(query_pos)
    print(f"\ncross-attention on {x.shape[0]} Penn-Fudan photos ({memory.shape[0]} tokens): encoder memory std over "
          f"photos {memory.std(1).mean():.3f} (overall {memory.std():.3f})")
    for i, layer in enumerate(t.decoder):
        q = k = tgt + query_pos
        a = layer.norm1(tgt + layer.self_attn(q, k, tgt, need_weights=False)[0])
        out, w = layer.cross_attn(a + query_pos, memory + pos, memory, need_weights=True)
        print(f"  decoder layer {i}: output std over photos {out.std(1).mean():.4f}, "
              f"rms {out.pow(2).mean().sqrt():.3f}; largest attention weight {w.max(-1).values.mean():.3f}, "
              f"top-5 tokens hold {w.topk(5, -1).values.sum(-1).mean():.3f}")
        tgt = layer(tgt, memory, pos, query_pos)


def _fit_iou(f: torch.Tensor, y: torch.Tensor) -> float:
    """IoU at 0.5 of the best logistic-regression mask ``f @ wb`` (f: (HW, K) features incl. a ones column)."""
    wb = torch.zeros(f.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([wb], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(f @ wb, y, pos_weight=torch.tensor(3.0))
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        p, g = (f @ wb) > 0, y > 0.5
    return float((p & g).sum() / max(1, int((p | g).sum())))


def instance_oracle(model, data: Path, limit: int | None) -> None:
    import cv2

    from campipe.segmentation.hyperdetr_head import coord_channels

    ours, oracle, multi, with_xy = [], [], [], []
    stems = list_stems(data, "pennfudan", "val")[:limit]
    for stem in stems:
        img, raw = read_pair(data, "pennfudan", stem)
        x, box = _net_input(model, img)
        with torch.inference_mode():
            fb = model.backbone(x)
            feats = model.decoder(model.input_proj(fb["s32"]), fb, x)[0][0]
            queries = model(x)["pred_masks"][0].flatten(1) > 0
        d = feats.shape[0]
        f = torch.cat([feats.reshape(d, -1).T, torch.ones(feats[0].numel(), 1)], 1)  # (HW, D + 1)
        f_xy = torch.cat([f, coord_channels(*feats.shape[1:], feats).reshape(5, -1).T], 1)
        s = model.cfg.mask_stride
        lab = np.zeros(tuple(model.cfg.input_size), np.int32)
        (y0, x0), (h, w) = box.offset, box.content_hw
        lab[y0:y0 + h, x0:x0 + w] = cv2.resize(raw, (w, h), interpolation=cv2.INTER_NEAREST)
        lab = lab[s // 2::s, s // 2::s].reshape(-1)
        ids = [i for i in np.unique(lab) if i > 0]
        for i in ids:
            y = torch.from_numpy((lab == i).astype(np.float32))
            g = y > 0.5
            oracle.append(_fit_iou(f, y))
            with_xy.append(_fit_iou(f_xy, y))
            ours.append(max(float((q & g).sum() / max(1, int((q | g).sum()))) for q in queries))
            if len(ids) > 1:
                multi.append(oracle[-1])
    print(f"Penn-Fudan val: {len(ours)} persons in {len(stems)} photos (mask-feature resolution, IoU at 0.5)")
    print(f"  best of the model's query masks per person: mean IoU {np.mean(ours):.3f}")
    print(f"  best dynamic 1x1 conv fitted per person:    mean IoU {np.mean(oracle):.3f} "
          f"({np.mean(multi):.3f} on the {len(multi)} persons of multi-person photos)")
    print(f"  the same with 5 coordinate channels:      mean IoU {np.mean(with_xy):.3f}")


STATIC = ("person", "hair", "skin", "teeth")


def _celeba_static_labels(raw: np.ndarray) -> np.ndarray:
    return np.stack([raw > 0, raw == 13, np.isin(raw, CELEBA_SKIN_IDS), raw == 10]).astype(np.float32)


@torch.inference_mode()
def _static_features(model, data: Path, split: str, limit: int | None):
    """(features (n, 32 + D + 12 + C2, h, w) float16, labels (n, 4, h, w), own logits (n, 4, h, w)) on CelebAMask,
    cropped to the photo at the mask-feature resolution."""
    import cv2
    from torch.nn import functional as F

    cfg, s = model.cfg, model.cfg.mask_stride
    grab = {}
    hooks = [model.decoder.up2.register_forward_hook(lambda m, i, o: grab.__setitem__("d2", o)),
             model.decoder.out_proj.register_forward_hook(lambda m, i, o: grab.__setitem__("mf", o))]
    cls = [cfg.semantic_classes.index(c) for c in STATIC]
    xs, ys, own = [], [], []
    try:
        for stem in list_stems(data, "celebamask", split)[:limit]:
            img, raw = read_pair(data, "celebamask", stem)
            x, box = _net_input(model, img)
            out = model(x, scene_only=True)
            (t, left), (ch, cw) = box.offset, box.content_hw
            crop = (slice(None), slice(t // s, (t + ch) // s), slice(left // s, (left + cw) // s))
            s2 = model.backbone(x)["s2"][0]
            pix = F.pixel_unshuffle(x, 2)[0]
            xs.append(torch.cat([grab["d2"][0], grab["mf"][0], pix, s2])[crop].half())
            own.append(out["sem_logits"][0, cls][crop])
            h, w = xs[-1].shape[1:]
            ys.append(torch.from_numpy(np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_AREA)
                                                 for c in _celeba_static_labels(raw)])))
    finally:
        for hk in hooks:
            hk.remove()
    return torch.stack(xs), torch.stack(ys), torch.stack(own)


def _pooled_ious(logits: torch.Tensor, y: torch.Tensor) -> list[float]:
    p, g = logits > 0, y >= 0.5
    return ((p & g).sum((0, 2, 3)).float() / (p | g).sum((0, 2, 3)).float()).tolist()


def _fit_static_head(x: torch.Tensor, y: torch.Tensor, cin: int, epochs: int = 6, bs: int = 16) -> torch.nn.Module:
    from torch.nn import functional as F

    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Conv2d(cin, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 4, 1))
    steps = epochs * (len(x) // bs)
    opt = torch.optim.Adam(head.parameters(), 2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(len(x) // bs):
            idx = perm[i * bs:(i + 1) * bs]
            xb, yb = x[idx, :cin].float(), y[idx]
            if torch.rand(1) < 0.5:
                xb, yb = xb.flip(-1), yb.flip(-1)
            lg = head(xb)
            pr = lg.sigmoid()
            dice = 1 - (2 * (pr * yb).sum((2, 3)) + 1) / (pr.sum((2, 3)) + yb.sum((2, 3)) + 1)
            loss = F.binary_cross_entropy_with_logits(lg, yb) + dice.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


def static_head(model, data: Path, limit: int | None) -> None:
    xv, yv, own = _static_features(model, data, "val", limit)
    xt, yt, _ = _static_features(model, data, "train", limit)
    d = model.cfg.mask_dim
    print(f"CelebAMask: {len(xt)} training / {len(xv)} validation faces, features at {tuple(xv.shape[2:])}; "
          f"pooled IoU at 0.5 ({', '.join(STATIC)})")
    print(f"  the model's own head (1x1 conv of {d} mask features): "
          + " ".join(f"{v:.3f}" for v in _pooled_ious(own, yv)))
    for name, cin in ((f"3x3 conv head on the decoder's 32 + {d} channels", 32 + d),
                      ("  + the photo's pixels (12)", 32 + d + 12),
                      ("  + the backbone's stride-2 features", xt.shape[1])):
        head = _fit_static_head(xt, yt, cin)
        with torch.inference_mode():
            lv = torch.cat([head(xv[i:i + 16, :cin].float()) for i in range(0, len(xv), 16)])
        print(f"  {name}: " + " ".join(f"{v:.3f}" for v in _pooled_ious(lv, yv)), flush=True)


@torch.inference_mode()
def twilight_sky(model, data: Path, limit: int | None) -> None:
    from campipe.segmentation.training.datasets import CAMVID_SKY, CAMVID_UNLABELLED, map_labels
    from campipe.segmentation.training.twilight import twilight

    cfg, rng = model.cfg, np.random.default_rng(5)
    counts = {"as photographed": np.zeros(3), "re-lit as dusk": np.zeros(3)}  # tp, fp, fn
    person_on_sky = []
    stems = list_stems(data, "camvid", "val")[:limit]
    for stem in stems:
        img, raw = read_pair(data, "camvid", stem)
        lab, _ = map_labels("camvid", raw)
        gt, valid = raw == CAMVID_SKY, raw != CAMVID_UNLABELLED
        for key, im in (("as photographed", img), ("re-lit as dusk", twilight(img, lab, rng))):
            probs, _, _ = predict(model, im, cfg.input_size, IMAGENET_MEAN, IMAGENET_STD, tuple(cfg.semantic_classes),
                                  cfg.mask_stride, refine="bilinear", sky_refine=False)  # the network alone
            pred = (probs["sky"] >= 0.5) & valid
            counts[key] += [(pred & gt).sum(), (pred & ~gt).sum(), (~pred & gt & valid).sum()]
            if key == "re-lit as dusk" and gt.any():
                person_on_sky.append(float(probs["person"][gt].mean()))
    for key, (tp, fp, fn) in counts.items():
        print(f"CamVid val ({len(stems)} photos) {key:16s} sky IoU {tp / max(1, tp + fp + fn):.3f}")
    print(f"person probability on the re-lit sky: {np.mean(person_on_sky):.3f}")


def _key(img: np.ndarray) -> float:
    from campipe import colour as cc
    from campipe.segment_stage import log_average

    return log_average(cc.display_to_working(img.astype(np.float32) / 255.0, "srgb"))


PCTS = (5, 15, 25, 50, 75, 85, 95)
PCTS_FRAMING = (0, 5, 25, 50, 75, 95, 100)


def training_keys(data: Path, limit: int | None = None) -> dict[str, list[float]]:
    """set -> log-average luminance of its training photos (``limit`` evenly spaced per set, default all)."""
    out = {}
    for s in ("celebamask", "figaro1k", "lfw_hair", "camvid", "pennfudan"):
        stems = _spaced(list_stems(data, s, "train"), limit)
        out[s] = [_key(read_pair(data, s, st)[0]) for st in stems]
    return out


def _truth(spec, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positive pixels, scored pixels) of one ``EVAL_SPEC`` entry on a raw label map."""
    pos_fn, ign_fn, _ = spec
    gt = pos_fn(lab)
    return gt, (~ign_fn(lab) if ign_fn is not None else np.ones_like(gt))


def _tally(counts: dict, key, pred: np.ndarray, gt: np.ndarray, ok: np.ndarray) -> None:
    """Add one photo's (TP, FP, FN) of ``pred`` (bool) to ``counts[key]`` (pooled IoU, ignored pixels left out)."""
    p = pred & ok
    counts.setdefault(key, np.zeros(3))[:] += [(p & gt).sum(), (p & ~gt).sum(), (~p & gt & ok).sum()]


def _pooled_iou(a: np.ndarray) -> float:
    return float(a[0] / max(1.0, a.sum()))


def _spaced(stems: list[str], limit: int | None) -> list[str]:
    if limit and limit < len(stems):
        return [stems[i] for i in np.linspace(0, len(stems) - 1, limit).round().astype(int)]
    return stems


def photo_keys(model, data: Path, limit: int | None, **_) -> None:
    keys = training_keys(data, limit)
    print(f"{'set':11s} {'photos':>6s}  log-average luminance percentiles " + " / ".join(map(str, PCTS)))
    for s, ks in list(keys.items()) + [("all", [k for ks in keys.values() for k in ks])]:
        print(f"{s:11s} {len(ks):6d}  " + " / ".join(f"{v:.3f}" for v in np.percentile(ks, PCTS)))


def exposure(model, data: Path, limit: int | None, split: str = "val", ranges: str | None = None) -> None:
    from campipe import colour as cc
    from campipe.segment_stage import GAIN_RANGE, display_render, exposure_gain, log_average
    from campipe.segmentation.training.evaluate import EVAL_SPEC

    cfg = model.cfg
    evs = (-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0)
    policies = {"key 0.18 (before)": lambda lin: 0.18 / max(log_average(lin), 1e-6)}
    if ranges:  # candidate KEY_RANGEs: percentiles of the training photos' keys, e.g. "5-95,15-85,25-75"
        allk = [k for ks in training_keys(data).values() for k in ks]
        for r in ranges.split(","):
            lo, hi = (float(np.percentile(allk, float(v))) for v in r.split("-"))

            def gain(lin, lo=lo, hi=hi):
                key = log_average(lin)
                return float(np.clip(min(max(key, lo), hi) / max(key, 1e-6), *GAIN_RANGE))
            policies[f"range p{r} ({lo:.3f}-{hi:.3f})"] = gain
    else:
        policies["own exposure in KEY_RANGE (now)"] = exposure_gain
    counts: dict = {}
    for s, classes in (("celebamask", ("person", "skin", "hair", "teeth")), ("camvid", ("sky",)),
                       ("pennfudan", ("person",))):
        stems = _spaced(list_stems(data, s, split), limit)
        for stem in stems:
            img, raw = read_pair(data, s, stem)
            lin0 = cc.display_to_working(img.astype(np.float32) / 255.0, "srgb")
            for ev in evs:
                lin = lin0 * np.float32(2.0 ** ev)
                seen: dict = {}
                for pol, gain in policies.items():
                    g = round(gain(lin), 6)
                    if g not in seen:  # policies giving the same gain share one network run
                        rgb = display_render(lin, scene_referred=True, gain=g)
                        u8 = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
                        seen[g] = predict(model, u8, cfg.input_size, IMAGENET_MEAN, IMAGENET_STD,
                                          tuple(cfg.semantic_classes), cfg.mask_stride)[0]
                    probs = seen[g]
                    for c in classes:
                        _tally(counts, (s, c, pol, ev), probs[c] >= 0.5, *_truth(EVAL_SPEC[s][c], raw))
        print(f"  {s}: {len(stems)} {split} photos", flush=True)
    pairs = sorted({(k[0], k[1]) for k in counts})
    iou = lambda s, c, pol, ev: _pooled_iou(counts[(s, c, pol, ev)])  # noqa: E731
    print(f"\n{'set/class':18s} {'policy':34s} " + " ".join(f"EV {ev:+.0f}".rjust(6) for ev in evs))
    for s, c in pairs:
        for pol in policies:
            print(f"{s + '/' + c:18s} {pol:34s} " + " ".join(f"{iou(s, c, pol, ev):6.3f}" for ev in evs))
    for pol in policies:
        mean = [float(np.mean([iou(s, c, pol, ev) for s, c in pairs])) for ev in evs]
        print(f"{'mean of the above':18s} {pol:34s} " + " ".join(f"{u:6.3f}" for u in mean)
              + f"   all EVs {np.mean(mean):.4f}, EV -2..+1 {np.mean(mean[2:6]):.4f}")


DEFAULT_GRID = "1:1e-3,2:1e-4,2:3e-4,2:1e-3,2:3e-3,2:1e-2,3:1e-3,4:1e-4,4:1e-3,4:1e-2"


def upsample(model, data: Path, limit: int | None, split: str = "train", grid: str | None = None) -> None:
    from campipe.segmentation.guided_filter import guided_upsample_colour_khw
    from campipe.segmentation.inference import gray_guide
    from campipe.segmentation.postprocess import decode_outputs, upsample_classes, upsample_masks
    from campipe.segmentation.sky_refine import refiners
    from campipe.segmentation.training.evaluate import EVAL_SPEC

    cfg = model.cfg
    classes = tuple(cfg.semantic_classes)
    refine = dict(refiners())
    # (row name, kind, radius, eps); kind: "bilinear", "campipe" (CLASS_GUIDE), "guided" (gray), "colour"
    variants: list[tuple[str, str, int, float]] = [("bilinear", "bilinear", 0, 0.0),
                                                   ("campipe (CLASS_GUIDE)", "campipe", 0, 0.0)]
    for item in (grid or DEFAULT_GRID).split(","):  # "R:EPS" gray guide, "cR:EPS" colour guide
        r, e = item.split(":")
        kind = "colour" if r.startswith("c") else "guided"
        variants.append((f"{kind} r{int(r.lstrip('c'))} eps{float(e):g}", kind, int(r.lstrip("c")), float(e)))
    k = len(classes)
    counts: dict = {}
    for s, specs in EVAL_SPEC.items():
        stems = _spaced(list_stems(data, s, split), limit)
        for stem in stems:
            u8, lab = read_pair(data, s, stem)
            img = u8.astype(np.float32) / 255.0
            x, box = _net_input(model, u8)
            with torch.no_grad():
                out = {k: v.float().numpy() for k, v in model(x).items()
                       if isinstance(v, torch.Tensor)}
            raw = decode_outputs(out, box, classes, mask_stride=cfg.mask_stride)
            H, W = u8.shape[:2]
            guide = gray_guide(img)
            stack = np.concatenate([raw.semantic, raw.instances], axis=0)
            for name, kind, r, e in variants:
                if kind == "campipe":  # each class with its own window, as campipe runs it
                    up = np.stack(upsample_classes(stack, list(classes) + ["person"] * len(raw.instances), (H, W),
                                                   guide))
                elif kind == "colour":
                    up = guided_upsample_colour_khw(stack, img, r, e)
                else:
                    up = upsample_masks(stack, (H, W), guide if kind == "guided" else None, r, e)
                for c, spec in specs.items():
                    if spec[2] is not None and not spec[2](lab):
                        continue
                    p = up[classes.index(c)]
                    if c in refine:
                        p = refine[c](p, img)
                    if c == "person" and up.shape[0] > k:
                        p = np.maximum(p, up[k:].max(0))
                    _tally(counts, (s, c, name), p >= 0.5, *_truth(spec, lab))
        print(f"  {s}: {len(stems)} {split} photos", flush=True)
    pairs = sorted({(k[0], k[1]) for k in counts}, key=lambda sc: (sc[1], sc[0]))
    print(f"\n{'variant':24s} " + " ".join(f"{s[:6]}/{c[:6]}".rjust(14) for s, c in pairs))
    for name, *_ in variants:
        print(f"{name:24s} " + " ".join(f"{_pooled_iou(counts[(s, c, name)]):14.4f}" for s, c in pairs),
              flush=True)


def thresholds(model, data: Path, limit: int | None, split: str = "train") -> None:
    from campipe.segmentation.training.evaluate import EVAL_SPEC

    cfg = model.cfg
    edges = np.linspace(0.0, 1.0, 101)
    hist: dict = {}
    for s, specs in EVAL_SPEC.items():
        stems = _spaced(list_stems(data, s, split), limit)
        for stem in stems:
            u8, lab = read_pair(data, s, stem)
            probs, inst, _ = predict(model, u8, cfg.input_size, IMAGENET_MEAN, IMAGENET_STD,
                                     tuple(cfg.semantic_classes), cfg.mask_stride)
            if "person" in probs and len(inst):
                probs["person"] = np.maximum(probs["person"], inst.max(0))
            for c, spec in specs.items():
                if spec[2] is not None and not spec[2](lab):
                    continue
                gt, ok = _truth(spec, lab)
                h = hist.setdefault((s, c), np.zeros((2, 100)))
                h[0] += np.histogram(probs[c][gt & ok], edges)[0]
                h[1] += np.histogram(probs[c][~gt & ok], edges)[0]
        print(f"  {s}: {len(stems)} {split} photos", flush=True)
    ts = np.arange(5, 100, 5)

    def iou(h, t):  # predicted positive: probability >= t / 100
        tp, fn, fp = h[0, t:].sum(), h[0, :t].sum(), h[1, t:].sum()
        return tp / max(1.0, tp + fn + fp)
    print(f"\n{'set/class':20s} " + " ".join(f"{t / 100:5.2f}" for t in ts))
    for (s, c), h in sorted(hist.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"{s + '/' + c:20s} " + " ".join(f"{iou(h, t):5.3f}" for t in ts))
    print("\nper class, mean over its sets: IoU at 0.50 -> best threshold (IoU)")
    for c in sorted({c for _, c in hist}):
        hs = [h for (s, cc), h in hist.items() if cc == c]
        curve = {t: float(np.mean([iou(h, t) for h in hs])) for t in range(5, 96)}
        best = max(curve, key=curve.get)
        print(f"  {c:8s} {curve[50]:.4f} -> {best / 100:.2f} ({curve[best]:.4f}, {curve[best] - curve[50]:+.4f})")


def framing(model, data: Path, limit: int | None, split: str = "train") -> None:
    from campipe.segmentation.postprocess import DEFAULT_PERSON_FRAMING, PersonFraming, decode_outputs
    from campipe.segmentation.training.evaluate import EVAL_SPEC, network_outputs, postprocess_outputs

    cfg = model.cfg
    classes = tuple(cfg.semantic_classes)
    variants: list[tuple[str, PersonFraming | None]] = [("none", None)]
    variants += [(f"constant {d:g}", PersonFraming(0.0, 1e-6, d)) for d in (0.5, 1.0, 1.5)]
    variants += [(f"ramp {lo:g}-{hi:g} x{d:g}", PersonFraming(lo, hi, d))
                 for lo, hi in ((0.2, 0.4), (0.35, 0.55), (0.5, 0.7)) for d in (1.0, 1.5, 2.0)]
    variants.append((f"campipe default ({DEFAULT_PERSON_FRAMING.low:g}-{DEFAULT_PERSON_FRAMING.high:g} "
                     f"x{DEFAULT_PERSON_FRAMING.offset:g})", DEFAULT_PERSON_FRAMING))
    counts: dict = {}
    sets = ("celebamask", "pennfudan", "camvid", "pennfudan-crops")
    for s in sets:
        base = s.split("-")[0]  # "pennfudan-crops": crops of the Penn-Fudan photos
        stems = _spaced(list_stems(data, base, split), limit)
        areas = []
        pairs = ((u8, lab) for stem in stems for u8, lab in
                 (_half_length_crops(*read_pair(data, "pennfudan", stem)) if s == "pennfudan-crops"
                  else [read_pair(data, s, stem)]))
        n = 0
        for u8, lab in pairs:
            n += 1
            out, box = network_outputs(model, u8, cfg.input_size, IMAGENET_MEAN, IMAGENET_STD)
            ch = decode_outputs(out, box, classes, mask_stride=cfg.mask_stride, person_framing=None).semantic
            areas.append(PersonFraming.share(ch[classes.index("person")]))
            gt, ok = _truth(EVAL_SPEC[base]["person"], lab)
            for name, rule in variants:
                probs, inst, _ = postprocess_outputs(out, box, u8, classes, cfg.mask_stride, person_framing=rule)
                p = np.maximum(probs["person"], inst.max(0)) if len(inst) else probs["person"]
                _tally(counts, (s, name), p >= 0.5, gt, ok)
        print(f"  {s}: {n} {split} photos; share of the frame with person channel >= 0.5, percentiles "
              f"0/5/25/50/75/95/100: " + " / ".join(f"{v:.2f}" for v in np.percentile(areas, PCTS_FRAMING)),
              flush=True)
    print(f"\n{'person offset':34s} " + " ".join(f"{s:>15s}" for s in sets) + "  mean(celebamask, pennfudan)")
    for name, _ in variants:
        v = [_pooled_iou(counts[(s, name)]) for s in sets]
        print(f"{name:34s} " + " ".join(f"{x:15.4f}" for x in v) + f"  {(v[0] + v[1]) / 2:.4f}", flush=True)


def _half_length_crops(u8: np.ndarray, lab: np.ndarray, min_height: int = 120):
    """Half-length framings cut from a Penn-Fudan photo: per labelled person at least ``min_height`` px tall, a 3:4
    (w:h) crop from a little above the head to 60 % down the body, centred on the person; every labelled person in
    it keeps its label. Returns a list of (uint8 crop, label crop)."""
    out = []
    H, W = lab.shape
    for i in np.unique(lab[lab > 0]):
        ys, xs = np.nonzero(lab == i)
        h = int(ys.max() - ys.min() + 1)
        if h < min_height:
            continue
        top = max(0, int(ys.min() - 0.1 * h))
        bot = min(H, int(ys.min() + 0.6 * h))
        cw = int(round(0.75 * (bot - top)))
        left = int(np.clip(round(xs.mean() - cw / 2), 0, max(0, W - cw)))
        window = (slice(top, bot), slice(left, left + cw))
        out.append((np.ascontiguousarray(u8[window]), np.ascontiguousarray(lab[window])))
    return out


RULE_SETS = ("camvid", "celebamask", "figaro1k", "pennfudan")
RAW_SAMPLES = ("astronaut_5d4_iso200.dng", "astronaut_d850_iso3200_tungsten.dng", "rocket_a7m3_iso800.dng")


def branch_rule(model, data: Path, limit: int | None, against: str, classes: str, holdout: int = 25) -> dict:
    """See the module docstring (``branch-rule``); prints and returns the figures."""
    from campipe.decode import decode_file
    from campipe.segment_stage import frame_render
    from campipe.sidebyside import to_uint8
    from campipe.segmentation.training.evaluate import EVAL_SPEC, network_outputs
    from campipe.segmentation.training.fit_sky_branch import _spaced as spaced_floor  # the rules' photos
    from campipe.segmentation.training.refit_rows import is_holdout

    base, _ = load_checkpoint(against)
    models = {"against": base.eval(), "weights": model}
    cls = [c.strip() for c in classes.split(",") if c.strip()]
    names = list(model.cfg.semantic_classes)
    if any(c not in names for c in cls) or list(base.cfg.semantic_classes) != names:
        raise SystemExit(f"--classes must be among {names}, and both weights must have those classes")

    def masks(m, img):
        c = m.cfg
        return predict(m, img, c.input_size, IMAGENET_MEAN, IMAGENET_STD, tuple(c.semantic_classes),
                       c.mask_stride)[0]

    res: dict = {}
    for s in RULE_SETS:
        scored = [c for c in cls if c in EVAL_SPEC.get(s, {})]
        shares = [c for c in cls if c not in scored]
        stems = list_stems(data, s, "train")
        if scored:
            counts: dict = {}
            held = [t for t in stems if is_holdout(t, holdout, s)]
            for t in held:
                img, raw = read_pair(data, s, t)
                p = {n: masks(m, img) for n, m in models.items()}
                for c in scored:
                    gt, ok = _truth(EVAL_SPEC[s][c], raw)
                    for n in models:
                        _tally(counts, (c, n), p[n][c] >= 0.5, gt, ok)
                    if (s, c) == ("celebamask", "skin"):  # the same, bare body skin left out of the score
                        ok = ok & ~bare_skin(img, raw > 0, np.isin(raw, CELEBA_SKIN_IDS))
                        for n in models:
                            _tally(counts, (c + " bare", n), p[n][c] >= 0.5, gt, ok)
            for c in [k[0] for k in counts if k[1] == "against"]:
                what = f"{c[:-5]} IoU with bare body skin left out" if c.endswith(" bare") else f"{c} IoU"
                res[f"held-out {s} {what} ({len(held)} photos)"] = {n: round(_pooled_iou(counts[(c, n)]), 6)
                                                                    for n in models}
        if shares:
            frac: dict = {(c, n): [] for c in shares for n in models}
            picked = spaced_floor(stems, limit or 120)
            for t in picked:
                img, _ = read_pair(data, s, t)
                for n, m in models.items():
                    p = masks(m, img)
                    for c in shares:
                        frac[(c, n)].append(float((p[c] >= 0.5).mean()))
            for c in shares:
                res[f"{s} share of the frame called {c} ({len(picked)} photos, %)"] = {
                    n: round(100 * float(np.mean(frac[(c, n)])), 5) for n in models}
        for k in [k for k in res if k.startswith(("held-out " + s, s + " "))]:
            print(k, res[k], flush=True)
    keep = [i for i, c in enumerate(names) if c not in cls]
    for name in RAW_SAMPLES:
        u8 = to_uint8(frame_render(decode_file(HERE.parent / "samples" / name))[0])
        o = {n: network_outputs(m, u8, m.cfg.input_size, IMAGENET_MEAN, IMAGENET_STD)[0] for n, m in models.items()}
        diff = max(float(np.abs(o["weights"][k] - o["against"][k]).max()) for k in ("pred_masks", "pred_logits"))
        diff = max(diff, float(np.abs(o["weights"]["sem_logits"][:, keep] - o["against"]["sem_logits"][:, keep]).max()))
        res[f"{name}: largest difference of the other outputs"] = diff
        print(f"{name}: largest difference of the other outputs {diff:.3g}", flush=True)
    return res

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("parts", "person-errors", "flip-tta", "class-scores", "instance-oracle",
                                     "static-head", "twilight", "photo-keys", "exposure", "upsample",
                                     "thresholds", "framing", "branch-rule"))
    ap.add_argument("--weights", default=str(HERE.parent / "segmentation" / "weights" / "hyperdetr.pt"))
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--split", default=None, choices=("train", "val"),
                    help="exposure (default val) / person-errors, upsample, thresholds, framing (default train): "
                         "photos of this split")
    ap.add_argument("--grid", default=None, help=f"upsample: guided-filter R:EPS pairs (default {DEFAULT_GRID})")
    ap.add_argument("--ranges", default=None,
                    help="exposure: compare KEY_RANGE candidates, percentile pairs of the training photos' keys "
                         "(e.g. 5-95,15-85,25-75) instead of the current range")
    ap.add_argument("--against", default=str(HERE.parent / "segmentation" / "weights" / "hyperdetr.pt"),
                    help="branch-rule: the weights to compare with (default: the shipped file)")
    ap.add_argument("--classes", default="sky", help="branch-rule: the classes the branch refines")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, _ = load_checkpoint(a.weights)
    model.eval()
    run = {"parts": parts, "class-scores": class_scores, "instance-oracle": instance_oracle,
           "static-head": static_head, "twilight": twilight_sky, "photo-keys": photo_keys,
           "exposure": exposure}.get(a.what)
    if run is exposure:
        exposure(model, a.data, a.limit, a.split or "val", a.ranges)
        return 0
    if a.what == "upsample":
        upsample(model, a.data, a.limit, a.split or "train", a.grid)
        return 0
    if a.what == "person-errors":
        person_errors(model, a.data, a.limit, a.split or "train")
        return 0
    if a.what == "thresholds":
        thresholds(model, a.data, a.limit, a.split or "train")
        return 0
    if a.what == "framing":
        framing(model, a.data, a.limit, a.split or "train")
        return 0
    if a.what == "branch-rule":
        branch_rule(model, a.data, a.limit, a.against, a.classes)
        return 0
    if run is not None:
        run(model, a.data, a.limit)
        return 0
    for name, tta in (("weights", False), ("flip-tta", True)):  # tta as `segment(..., tta=True)` runs it
        r = evaluate_model(model, a.data, limit=a.limit, tta=tta)
        print(name, json.dumps({s: {k: round(v, 3) for k, v in d.items() if k.startswith("iou") or k == "pq"}
                                for s, d in r.items()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
