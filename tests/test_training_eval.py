"""Evaluation: pooled IoU and panoptic quality on hand-made arrays, and the eval pipeline on a tiny hand-made set."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from campipe.segmentation.config import HyperDETRConfig
from campipe.segmentation.training.evaluate import (IoUAccumulator, PQAccumulator, evaluate_model, format_table,
                                                    panoptic_segments)
from test_segmentation_helpers import SoftRampModel


def test_pooled_iou_is_not_mean_of_ious():
    acc = IoUAccumulator()
    a = np.zeros((4, 4), bool)
    a[:2] = True                      # 8 px
    acc.update(a, a)                  # I 8, U 8
    b = np.zeros((4, 4), bool)
    b[0, 0] = True
    acc.update(b, np.zeros((4, 4), bool))  # I 0, U 1
    assert acc.iou == pytest.approx(8 / 9)  # mean of per-image IoUs would be 0.5


def test_iou_ignore_region():
    acc = IoUAccumulator()
    p = np.array([[1, 1, 0, 0]], bool)
    g = np.array([[1, 0, 0, 1]], bool)
    ign = np.array([[0, 0, 0, 1]], bool)
    acc.update(p, g, ign)
    assert acc.iou == pytest.approx(1 / 2)


def test_panoptic_quality_hand_made():
    gt = np.zeros((2, 4, 8), bool)
    gt[0, :, :4] = True
    gt[1, :, 4:] = True
    pred = np.zeros((2, 4, 8), bool)
    pred[0, :, :3] = True   # IoU 12/16 = 0.75 with gt0
    pred[1, :1, 6:] = True  # IoU 2/16 with gt1: no match
    pq = PQAccumulator()
    pq.update(pred, gt)
    assert (pq.tp, pq.fp, pq.fn) == (1, 1, 1)
    assert pq.sq == pytest.approx(0.75)
    assert pq.rq == pytest.approx(1 / 2)
    assert pq.pq == pytest.approx(0.75 / 2)


def test_panoptic_segments_resolve_overlap():
    probs = np.zeros((2, 2, 2), np.float32)
    probs[0] = [[0.9, 0.9], [0.2, 0.6]]
    probs[1] = [[0.8, 0.1], [0.1, 0.9]]
    seg = panoptic_segments(probs, np.array([0.9, 0.8], np.float32))
    assert not (seg[0] & seg[1]).any()
    assert seg[0].tolist() == [[True, True], [False, False]]
    assert seg[1].tolist() == [[False, False], [False, True]]


class _RedIsEverything(torch.nn.Module):
    """Fake model: every class and one person query = 'red channel is bright' (known, hand-checkable output)."""

    def __init__(self):
        super().__init__()
        self.cfg = HyperDETRConfig(input_size=(64, 64), mask_stride=1)
        self.num_dec_layers = 2

    def forward(self, x, scene_only=False):
        red = (x[:, :1] > 0.5).float() * 20 - 10
        out = {"sem_logits": red.repeat(1, 6, 1, 1)}
        if not scene_only:
            out["pred_logits"] = torch.tensor([[[4.0, -4.0], [-4.0, 4.0]]]).repeat(x.shape[0], 1, 1)
            out["pred_masks"] = torch.cat([red, red * 0 - 10], 1)
        return out


def _write(d: Path, set_name: str, stem: str, img: np.ndarray, raw: np.ndarray) -> None:
    (d / set_name / "images").mkdir(parents=True, exist_ok=True)
    (d / set_name / "masks").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(d / set_name / "images" / f"{stem}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(d / set_name / "masks" / f"{stem}.png"), raw)


def test_evaluate_model_on_tiny_hand_made_set(tmp_path):
    # two 64x64 "Penn-Fudan" images; red (predicted person) rows vs labelled rows
    red_rows = [(0, 32), (0, 16)]
    gt_rows = [(16, 48), (0, 16)]
    for i, ((r0, r1), (g0, g1)) in enumerate(zip(red_rows, gt_rows)):
        img = np.zeros((64, 64, 3), np.uint8)
        img[r0:r1] = (255, 0, 0)
        raw = np.zeros((64, 64), np.uint8)
        raw[g0:g1] = 1
        _write(tmp_path, "pennfudan", f"p{i}", img, raw)
    res = evaluate_model(_RedIsEverything(), tmp_path, sets=["pennfudan"], split="all")
    r = res["pennfudan"]
    # image 0: I = 16 rows, U = 48 rows; image 1: I = U = 16 rows -> pooled (16+16)/(48+16)
    assert r["iou_person"] == pytest.approx(32 / 64)
    assert r["iou_person_channel"] == pytest.approx(32 / 64)   # the instance is the same red band here
    # PQ: image 0 IoU 1/3 (no match: FP + FN), image 1 IoU 1 (TP)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1)
    assert r["pq"] == pytest.approx(1.0 / 2)
    assert r["n_images"] == 2


def test_eval_table_rows():
    rep = {"results": {"a": {"camvid": {"iou_sky": 0.5, "n_images": 3}}, "b": {"camvid": {"iou_sky": 0.25}}}}
    rows = format_table(rep)
    assert rows[0] == ["set", "metric", "target", "a", "b"]
    assert rows[1] == ["camvid", "iou_sky", "0.92", "0.500", "0.250"]
    json.dumps(rep)


def test_eval_command_table_and_json(tmp_path):
    """`campipe eval` end to end on a tiny set with a tiny random checkpoint: exit 0, table, JSON with IoUs."""
    from typer.testing import CliRunner

    from campipe.cli import app
    from campipe.segmentation.checkpoint import save_checkpoint
    from campipe.segmentation.model import build_model

    torch.manual_seed(0)
    cfg = HyperDETRConfig(width_mult=0.35, hidden_dim=32, nheads=2, dim_feedforward=64, enc_layers=1, dec_layers=2,
                          mask_dim=8, input_size=(64, 64), mask_stride=2, decoder_dims=(16, 16, 16, 16))
    ck = save_checkpoint(tmp_path / "tiny.pt", build_model(cfg).eval(), cfg)
    img = np.zeros((40, 50, 3), np.uint8)
    raw = np.zeros((40, 50), np.uint8)
    raw[10:30, 10:20] = 1
    _write(tmp_path / "data", "pennfudan", "a", img, raw)
    out_json = tmp_path / "r.json"
    r = CliRunner().invoke(app, ["eval", str(tmp_path / "data"), "--set", "pennfudan", "--split", "all",
                                 "--weights", str(ck), "--int8-of-float", "--json", str(out_json)])
    assert r.exit_code == 0, r.output
    rep = json.loads(out_json.read_text())
    assert set(rep["results"]) == {"weights", "weights-int8-l2"}
    iou = rep["results"]["weights"]["pennfudan"]["iou_person"]
    assert 0.0 <= iou <= 1.0
    assert rep["models"]["weights-int8-l2"]["dec_layers"] == 2
    assert rep["refine"] == "guided"                     # campipe's own upsampling by default
    assert rep["tta"] is False
    r4 = CliRunner().invoke(app, ["eval", str(tmp_path / "data"), "--set", "pennfudan", "--split", "all",
                                  "--weights", str(ck), "--tta", "--json", str(out_json)])
    assert r4.exit_code == 0, r4.output
    assert json.loads(out_json.read_text())["tta"] is True
    # no --set: every set the folder holds, naming the ones it lacks; none at all is an error
    r5 = CliRunner().invoke(app, ["eval", str(tmp_path / "data"), "--split", "all", "--weights", str(ck),
                                  "--json", str(out_json)])
    assert r5.exit_code == 0, r5.output
    assert "no celebamask, figaro1k, lfw_hair, camvid under" in r5.output and "evaluating pennfudan" in r5.output
    assert set(json.loads(out_json.read_text())["results"]["weights"]) == {"pennfudan"}
    (tmp_path / "empty").mkdir()
    r6 = CliRunner().invoke(app, ["eval", str(tmp_path / "empty"), "--weights", str(ck)])
    assert r6.exit_code == 1 and "no data set under" in r6.output
    r7 = CliRunner().invoke(app, ["eval", str(tmp_path / "data"), "--set", "camvid", "--weights", str(ck)])
    assert r7.exit_code == 1 and "'camvid' not found" in r7.output
    r2 = CliRunner().invoke(app, ["eval", str(tmp_path / "data"), "--set", "nope", "--weights", str(ck)])
    assert r2.exit_code == 2
    r3 = CliRunner().invoke(app, ["eval", str(tmp_path / "data"), "--weights", str(ck), "--refine", "nearest"])
    assert r3.exit_code == 2 and "--refine" in r3.output


def test_predict_upsampling_is_the_products():
    """Eval's "guided" masks are exactly what campipe's Segmenter upsampling gives for the same network output;
    "bilinear" is plain resizing; the two differ where the photo has an edge inside a blurry mask."""
    from campipe.segmentation.inference import gray_guide
    from campipe.segmentation.postprocess import upsample_masks
    from campipe.segmentation.training.evaluate import predict

    img = np.zeros((64, 64, 3), np.uint8)
    img[:, 40:] = 255                                   # an edge right of the mask's 0.5 crossing
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    g, _, _ = predict(SoftRampModel(), img, (32, 32), mean, std, tuple("abcdef"), 2, max_persons=0)
    b, _, _ = predict(SoftRampModel(), img, (32, 32), mean, std, tuple("abcdef"), 2, max_persons=0, refine="bilinear")
    raw = 1 / (1 + np.exp(-np.linspace(-3, 3, 16, dtype=np.float32)))
    stack = np.repeat(np.tile(raw, (16, 1))[None], 6, 0)
    np.testing.assert_allclose(g["a"], upsample_masks(stack, (64, 64), gray_guide(img / np.float32(255)))[0],
                               atol=1e-6)
    np.testing.assert_allclose(b["a"], upsample_masks(stack, (64, 64))[0], atol=1e-6)
    assert np.abs(g["a"] - b["a"]).max() > 0.01
    with pytest.raises(ValueError, match="refine"):
        predict(SoftRampModel(), img, (32, 32), mean, std, tuple("abcdef"), 2, refine="nearest")


def test_eval_person_is_channel_or_instances(tmp_path):
    """`person` is campipe's person mask (channel max instances); `person_channel` the static channel alone."""

    class _InstanceOnly(_RedIsEverything):
        def forward(self, x, scene_only=False):
            out = super().forward(x, scene_only)
            out["sem_logits"] = out["sem_logits"] * 0 - 10        # the channel finds nothing
            return out

    img = np.zeros((64, 64, 3), np.uint8)
    img[:32] = (255, 0, 0)
    raw = np.zeros((64, 64), np.uint8)
    raw[:32] = 1
    _write(tmp_path, "pennfudan", "p0", img, raw)
    r = evaluate_model(_InstanceOnly(), tmp_path, sets=["pennfudan"], split="all")["pennfudan"]
    assert r["iou_person_channel"] == 0.0
    assert r["iou_person"] == pytest.approx(1.0, abs=0.02)


def test_predict_tta_averages_mirrored_logits():
    """A fake network whose static logits depend only on the canvas column (+10 on the left half, -10 on the right):
    flip TTA averages each column with its mirror, 0 -> probability exactly 0.5 everywhere; without TTA the halves
    keep their own values."""
    from campipe.segmentation.training.evaluate import predict

    class _LeftRight(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cfg = HyperDETRConfig(input_size=(32, 64), mask_stride=2)

        def forward(self, x, scene_only=False):
            col = torch.where(torch.arange(32) < 16, 10.0, -10.0).view(1, 1, 1, 32)
            return {"sem_logits": col.expand(x.shape[0], 6, 16, 32).clone()}

    img = (np.random.default_rng(0).random((32, 64, 3)) * 255).astype(np.uint8)
    args = (img, (32, 64), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), tuple("abcdef"), 2)
    plain, _, _ = predict(_LeftRight(), *args, max_persons=0, refine="bilinear")
    tta, _, _ = predict(_LeftRight(), *args, max_persons=0, refine="bilinear", tta=True)
    assert plain["a"][:, :28].min() > 0.99 and plain["a"][:, -28:].max() < 0.01
    np.testing.assert_allclose(tta["a"], 0.5, atol=1e-6)
