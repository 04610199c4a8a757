"""Threshold calibration of the static channels: exact histograms and IoU curves on tiny arrays, the bias offset
moves the 0.5 decision exactly to the fitted threshold, and the fit on a tiny hand-made training set."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from campipe.segmentation.config import HyperDETRConfig
from campipe.segmentation.model import build_model
from campipe.segmentation.training.calibrate import (BINS, MAX_OFFSET, apply_offsets, best_threshold,
                                                     collect_histograms, fit_offsets, iou_curve, offset_for,
                                                     probability_histograms)


def test_histograms_and_iou_curve_exact():
    prob = np.array([[0.9, 0.7], [0.3, 0.1]], np.float32)
    gt = np.array([[True, True], [False, True]])
    ign = np.array([[False, False], [False, True]])     # the 0.1 positive is ignored
    pos, neg = probability_histograms(prob, gt, ign)
    assert pos.sum() == 2 and neg.sum() == 1
    assert pos[900] == 1 and pos[700] == 1 and neg[300] == 1
    curve = iou_curve(pos, neg)
    assert curve[0] == pytest.approx(2 / 3)        # everything positive: TP 2, FP 1
    assert curve[500] == pytest.approx(1.0)        # >= 0.5: both positives, no negative
    assert curve[800] == pytest.approx(1 / 2)      # >= 0.8: one positive found, one missed
    assert curve[950] == 0.0
    t, iou_t, iou_05 = best_threshold(pos, neg)
    assert iou_t == 1.0 and iou_05 == 1.0 and t == 0.5   # ties go to the threshold closest to 0.5


def test_best_threshold_moves_when_negatives_score_high():
    # positives at 0.8-0.9, negatives at 0.6: the best cut is above 0.6, and IoU at 0.5 is worse
    pos = np.zeros(BINS, np.int64)
    neg = np.zeros(BINS, np.int64)
    pos[850] = 10
    neg[600] = 5
    t, iou_t, iou_05 = best_threshold(pos, neg)
    assert 0.6 < t <= 0.85 and iou_t == 1.0 and iou_05 == pytest.approx(10 / 15)


def test_offset_moves_decision_to_threshold():
    assert offset_for(0.5) == 0.0
    t = 0.7
    off = offset_for(t)
    z = np.linspace(-4, 4, 801)
    before = 1 / (1 + np.exp(-z)) >= t
    after = 1 / (1 + np.exp(-(z + off))) >= 0.5
    assert (before == after).mean() > 0.995          # equal except at the grid point on the boundary
    assert offset_for(0.0) == MAX_OFFSET and offset_for(1.0) == -MAX_OFFSET
    assert offset_for(0.2) == pytest.approx(math.log(4))


def test_apply_offsets_shifts_only_that_class():
    torch.manual_seed(0)
    model = build_model(HyperDETRConfig(input_size=(64, 64), width_mult=0.5, hidden_dim=32, nheads=2, enc_layers=1,
                                        dec_layers=2, dim_feedforward=64)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x, scene_only=True)["sem_logits"].clone()
        apply_offsets(model, {"skin": -1.25, "sky": 0.5})
        after = model(x, scene_only=True)["sem_logits"]
    classes = list(model.cfg.semantic_classes)
    delta = (after - before).mean(dim=(0, 2, 3))
    for i, c in enumerate(classes):
        want = {"skin": -1.25, "sky": 0.5}.get(c, 0.0)
        assert float(delta[i]) == pytest.approx(want, abs=1e-5)
        assert float((after - before)[0, i].std()) < 1e-5
    with pytest.raises(KeyError, match="unknown class"):
        apply_offsets(model, {"cat": 1.0})


class _Fixed(torch.nn.Module):
    """Fake model: static logit +1 where the red channel is bright, -1 elsewhere (probabilities 0.73 / 0.27)."""

    def __init__(self):
        super().__init__()
        self.cfg = HyperDETRConfig(input_size=(64, 64), mask_stride=1)

    def forward(self, x, scene_only=False):
        z = (x[:, :1] > 0.5).float() * 2 - 1
        return {"sem_logits": z.repeat(1, 6, 1, 1)}


def test_fit_on_tiny_training_set(tmp_path: Path):
    # Penn-Fudan "training" images: red marks rows 0-31, the person is labelled on rows 0-15 only.
    # At 0.5 the red rows are called person (IoU 16/32); no threshold separates them better, and
    # a threshold above 0.73 calls nothing (IoU 0): the best threshold keeps IoU 0.5.
    from campipe.segmentation.training.datasets import is_val

    d = tmp_path / "pennfudan"
    (d / "images").mkdir(parents=True)
    (d / "masks").mkdir(parents=True)
    n = 0
    for i in range(40):
        stem = f"p{i}"
        if is_val("pennfudan", stem):
            continue
        img = np.zeros((64, 64, 3), np.uint8)
        img[:32] = (255, 0, 0)
        raw = np.zeros((64, 64), np.uint8)
        raw[:16] = 1
        cv2.imwrite(str(d / "images" / f"{stem}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(d / "masks" / f"{stem}.png"), raw)
        n += 1
    hists = collect_histograms(_Fixed(), tmp_path, sets=["pennfudan"], split="train", limit=None)
    assert set(hists) == {"person"} and hists["person"]["n_images"] == n
    fit = fit_offsets(hists)["person"]
    assert fit["iou_at_0.5"] == pytest.approx(0.5, abs=0.02)   # bilinear edge of the red band
    assert fit["iou_at_threshold"] >= fit["iou_at_0.5"]
    assert fit["sets"] == ["pennfudan"]


def test_threshold_objective_is_the_mean_over_sets():
    # set A (large masks) prefers a cut above 0.6, set B (small masks) one below 0.55: pooling the pixels would let
    # A decide and zero B; the mean of the sets' IoUs keeps both
    pos = np.zeros((2, BINS), np.int64)
    neg = np.zeros((2, BINS), np.int64)
    pos[0, 700], neg[0, 600] = 1000, 100
    pos[1, 550], neg[1, 300] = 10, 5
    t, iou_t, iou_05 = best_threshold(pos, neg)
    assert t <= 0.55 and iou_t == pytest.approx((1000 / 1100 + 1.0) / 2)
    t_pooled, _, _ = best_threshold(pos.sum(0), neg.sum(0))
    assert t_pooled > 0.6
    fit = fit_offsets({"person": {"pos": pos, "neg": neg, "sets": ["a", "b"], "n_images": 2}})["person"]
    assert fit["per_set"]["b"]["iou_at_threshold"] == 1.0 and fit["threshold"] == t


def test_merge_heads_takes_exactly_the_chosen_channels(tmp_path: Path):
    """Two models with one trunk and different static heads: the merged model's channels equal, exactly, the
    channel of the model each was taken from; a plain 1x1 source contributes a zero branch row; models that differ
    outside the head are refused."""
    import subprocess
    import sys

    from campipe.segmentation.checkpoint import load_checkpoint, save_checkpoint
    from campipe.segmentation.training.merge_heads import merge_heads
    from test_segmentation_helpers import calibrated_model, tiny_config

    plain = calibrated_model(tiny_config(mask_stride=2))
    branch = build_model(tiny_config(mask_stride=2, sem_head_hidden=8)).eval()
    branch.load_state_dict(plain.state_dict(), strict=False)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in list(branch.decoder.sem_branch.parameters()) + list(branch.decoder.sem_head.parameters()):
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a, b = plain(x)["sem_logits"], branch(x)["sem_logits"]
    names = list(plain.cfg.semantic_classes)
    take = ["skin", "teeth"]
    pb = save_checkpoint(tmp_path / "branch.pt", branch)
    pp = save_checkpoint(tmp_path / "plain.pt", plain)
    out = tmp_path / "merged.pt"
    r = subprocess.run([sys.executable, "-m", "campipe.segmentation.training.merge_heads", "--base", str(pb),
                        "--from", str(pp), "--classes", ",".join(take), "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    merged, meta = load_checkpoint(out)
    assert meta["extra"]["merged_heads"]["classes"] == take
    with torch.no_grad():
        m = merged(x)["sem_logits"]
    for i, c in enumerate(names):
        assert torch.allclose(m[0, i], (a if c in take else b)[0, i], atol=1e-5), c
    assert not torch.allclose(a, b, atol=1e-3)  # the two heads really differ
    other = calibrated_model(tiny_config(mask_stride=2), seed=1)  # another trunk
    with pytest.raises(ValueError, match="differ outside the static head"):
        merge_heads(build_model(tiny_config(mask_stride=2)).eval(), other, take)
    with pytest.raises(ValueError, match="unknown classes"):
        merge_heads(branch, plain, ["fur"])


def test_refit_rows_reads_out_exactly_and_fits_only_the_chosen_rows():
    """The read-out features times the rows reproduce the model's logits; a fit on a separable synthetic problem
    raises IoU; writing the rows changes those channels only."""
    from campipe.segmentation.training.refit_rows import (current_rows, fit_rows, pooled_ious, readout_features,
                                                           set_rows)
    from test_segmentation_helpers import calibrated_model, tiny_config

    m = calibrated_model(tiny_config(mask_stride=2, sem_head_hidden=8))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.decoder.sem_branch[2].parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    x = torch.randn(1, 3, 64, 96, generator=g)
    classes = ["skin", "teeth"]
    names = list(m.cfg.semantic_classes)
    f = readout_features(m, x)
    assert f.shape == (1, 8 + m.cfg.mask_dim, 32, 48)
    w0, b0 = current_rows(m, classes)
    with torch.no_grad():
        ref = m(x, scene_only=True)["sem_logits"][0]
    lin = torch.einsum("kc,chw->khw", w0, f[0]) + b0[:, None, None]
    for k, c in enumerate(classes):
        assert torch.allclose(lin[k], ref[names.index(c)], atol=1e-4)
    # labels that a linear read-out of these very features can reach; the fit must move towards them
    target_w = torch.randn(w0.shape, generator=g)
    xs = [f[0]]
    ys = [(torch.einsum("kc,chw->khw", target_w, f[0]) > 0).float()]
    before = pooled_ious(w0, b0, xs, ys)
    w, b = fit_rows(w0, b0, xs, ys, epochs=150, lr=5e-2, batch=1)
    after = pooled_ious(w, b, xs, ys)
    assert all(a > bf + 0.05 for a, bf in zip(after, before)), (before, after)
    set_rows(m, classes, w, b)
    with torch.no_grad():
        new = m(x, scene_only=True)["sem_logits"][0]
    for i, c in enumerate(names):
        if c in classes:
            k = classes.index(c)
            assert torch.allclose(new[i], torch.einsum("c,chw->hw", w[k], f[0]) + b[k], atol=1e-4)
        else:
            assert torch.equal(new[i], ref[i]), c
    with pytest.raises(ValueError, match="no static branch"):
        readout_features(calibrated_model(tiny_config(mask_stride=2)), x)


def test_refit_holdout_choice_keeps_only_classes_that_improve_and_calibrates_them():
    """On held-out features, a read-out matching the labels wins over the current one and is kept, a worse one is
    not; the offset moves the kept read-out's 0.5 decision to its best threshold (IoU at logit 0 after the shift =
    the best IoU found); the held-out split is deterministic and near its percentage."""
    from campipe.segmentation.training.refit_rows import holdout_choice, is_holdout, pooled_ious

    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(6, 20, 24, generator=g) for _ in range(4)]
    good = torch.randn(2, 6, generator=g)
    ys = [(torch.einsum("kc,chw->khw", good, x) > 1.0).float() for x in xs]  # needs bias -1: off at 0.5
    w0, b0 = torch.randn(2, 6, generator=g), torch.zeros(2)
    w = torch.stack([good[0], -good[1]])  # class 0 refit right (up to its bias), class 1 refit wrong
    b = torch.zeros(2)
    r = holdout_choice(w0, b0, w, b, xs, ys, ["skin", "teeth"])
    assert r["skin"]["keep"] and not r["teeth"]["keep"]
    assert r["skin"]["refit"]["iou"] > 0.95 > r["skin"]["refit"]["iou_at_0.5"]
    assert r["teeth"]["refit"]["iou"] <= r["teeth"]["current"]["iou"]  # both can only call everything teeth
    shifted = pooled_ious(w[:1], b[:1] + r["skin"]["offset"], xs, [y[:1] for y in ys])[0]
    assert abs(shifted - r["skin"]["refit"]["iou"]) < 0.01
    stems = [f"{i:05d}" for i in range(2000)]
    held = [s for s in stems if is_holdout(s, 25)]
    assert held == [s for s in stems if is_holdout(s, 25)]
    assert 0.22 < len(held) / len(stems) < 0.28
    assert not any(is_holdout(s, 0) for s in stems)


def test_merge_query_path_keeps_the_static_channels_and_takes_the_person_path(tmp_path: Path):
    """``merge_heads --query-path``: the merged model's static channels equal the base's exactly, its transformer,
    queries and instance head equal the other model's (an int8 file, dequantised), and person paths of another
    depth are refused."""
    import subprocess
    import sys

    from campipe.segmentation.checkpoint import load_checkpoint, save_checkpoint
    from campipe.segmentation.training.merge_heads import QUERY_PATH_PREFIXES, merge_query_path
    from test_segmentation_helpers import calibrated_model, tiny_config

    base = calibrated_model(tiny_config(mask_stride=2), seed=0)
    other = calibrated_model(tiny_config(mask_stride=2), seed=1)
    pb = save_checkpoint(tmp_path / "base.pt", base)
    po = save_checkpoint(tmp_path / "other_int8.pt", other, quantize=True)
    out = tmp_path / "merged.pt"
    r = subprocess.run([sys.executable, "-m", "campipe.segmentation.training.merge_heads", "--base", str(pb),
                        "--from", str(po), "--query-path", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    merged, meta = load_checkpoint(out)
    assert meta["extra"]["merged_query_path"]["from_quantized"] is True
    other_q, _ = load_checkpoint(po)
    sm, sb, so = merged.state_dict(), base.state_dict(), other_q.state_dict()
    n_taken = 0
    for k in sm:
        src = so if k.startswith(QUERY_PATH_PREFIXES) else sb
        n_taken += k.startswith(QUERY_PATH_PREFIXES)
        assert torch.equal(sm[k], src[k]), k
    assert n_taken > 0
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ym, yb = merged(x), base(x)
    assert torch.allclose(ym["sem_logits"], yb["sem_logits"], atol=1e-6)
    assert not torch.allclose(ym["pred_masks"], yb["pred_masks"], atol=1e-3)  # the person path really changed
    # an int8 base is refused (the merged file would carry dequantised weights as if trained in float)
    r = subprocess.run([sys.executable, "-m", "campipe.segmentation.training.merge_heads", "--base", str(po),
                        "--from", str(pb), "--query-path", "--out", str(tmp_path / "x.pt")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "float checkpoints" in r.stderr
    deeper = calibrated_model(tiny_config(mask_stride=2, dec_layers=3), seed=2)
    with pytest.raises(ValueError, match="differ in architecture"):
        merge_query_path(calibrated_model(tiny_config(mask_stride=2)), deeper)


def test_recalibration_applies_only_the_named_classes_and_keeps_the_first_report(tmp_path: Path):
    """``--again`` (a file calibrated before, here the int8 form) and ``--classes hair``: every class is fitted and
    reported, only hair's offset is applied (exactly that, on the head's bias; every other tensor as dequantised),
    the first calibration report stays and the new one is appended; without ``--again`` both are refused."""
    from campipe.segmentation.checkpoint import load_checkpoint, save_checkpoint
    from campipe.segmentation.training.calibrate import calibrate_checkpoint, main
    from test_segmentation_helpers import calibrated_model, tiny_config, write_tiny_data

    data = write_tiny_data(tmp_path / "data")
    m = calibrated_model(tiny_config(keep_dec_layers=2))
    first = {"split": "train", "classes": {}}
    f = save_checkpoint(tmp_path / "cal.pt", m, extra={"calibration": first})
    q = save_checkpoint(tmp_path / "q.pt", m, extra={"calibration": first}, quantize=True)
    with pytest.raises(ValueError, match="already calibrated"):
        calibrate_checkpoint(f, data, tmp_path / "x.pt", limit=None)
    with pytest.raises(ValueError, match="int8"):
        calibrate_checkpoint(q, data, tmp_path / "x.pt", limit=None)
    with pytest.raises(SystemExit, match="unknown classes"):
        main(["--float", str(q), "--data", str(data), "--out", str(tmp_path / "x.pt"), "--again",
              "--classes", "hair,beard"])
    rep = calibrate_checkpoint(q, data, tmp_path / "r.pt", limit=None, sets=["celebamask", "camvid", "pennfudan"],
                               classes=["hair"], again=True)
    assert rep["applied"] == ["hair"] and {"hair", "skin", "person"} <= set(rep["classes"])
    deq, _ = load_checkpoint(q)
    out, meta = load_checkpoint(tmp_path / "r.pt")
    assert not meta.get("quantized")
    assert meta["extra"]["calibration"] == first and meta["extra"]["recalibration"] == [rep]
    k = list(m.cfg.semantic_classes).index("hair")
    a, b = deq.state_dict(), out.state_dict()
    for name in a:
        if name != "decoder.sem_head.bias":
            assert torch.equal(a[name], b[name]), name
    d = b["decoder.sem_head.bias"] - a["decoder.sem_head.bias"]
    assert float(d[k]) == pytest.approx(rep["classes"]["hair"]["offset"], abs=1e-6)
    assert torch.count_nonzero(d) == 1  # the fitted hair offset is not zero on these photos
