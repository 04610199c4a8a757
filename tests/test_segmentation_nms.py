"""Instance selection: duplicates (several queries on the same person) suppressed by mask IoU; instance score =
person probability x mask quality (MaskFormer); empty masks never reported."""
import numpy as np
import pytest

from campipe.segmentation.postprocess import suppress_duplicates


def test_suppress_duplicates_keeps_distinct_people_in_score_order():
    m = np.full((4, 8, 8), -5.0, np.float32)
    m[0, :, :4] = 5      # person A
    m[1, :, :4] = 5      # the same person again (IoU 1.0)
    m[1, 0, 4] = 5       # ...with one extra pixel (IoU 32/33 > 0.8)
    m[2, :, 4:] = 5      # person B
    m[3, :4, :] = 5      # overlaps both by half (IoU 1/3 with each): kept
    assert suppress_duplicates(m, [0, 1, 2, 3]) == [0, 2, 3]
    assert suppress_duplicates(m, [1, 0, 2]) == [1, 2]     # the higher-scoring of the pair survives
    assert suppress_duplicates(m, [0, 1], iou_threshold=0.99) == [0, 1]
    assert suppress_duplicates(m, []) == []


def test_decode_outputs_dedup_option():
    from campipe.segmentation.postprocess import decode_outputs, letterbox

    sem = np.zeros((1, 6, 4, 4), np.float32)
    logits = np.array([[[3.0, 0.0], [2.0, 0.0], [1.0, 0.0]]], np.float32)
    masks = np.full((1, 3, 4, 4), -5.0, np.float32)
    masks[0, 0, :, :2] = 5
    masks[0, 1, :, :2] = 5   # duplicate of query 0
    masks[0, 2, :, 2:] = 5
    _, box = letterbox(np.zeros((4, 4, 3), np.float32), (4, 4), (0, 0, 0))
    out = {"sem_logits": sem, "pred_logits": logits, "pred_masks": masks}
    assert decode_outputs(out, box, list("abcdef"), score_threshold=0.5, dedup_iou=None).scores.shape == (3,)
    assert decode_outputs(out, box, list("abcdef"), score_threshold=0.5, dedup_iou=1.0).scores.shape == (3,)
    assert decode_outputs(out, box, list("abcdef"), score_threshold=0.5).scores.shape == (2,)  # on by default


def test_segmenter_rejects_bad_dedup_iou(tmp_path):
    from campipe.segmentation.inference import Segmenter

    with pytest.raises(ValueError, match="dedup_iou"):
        Segmenter(tmp_path / "unused.pt", dedup_iou=1.5)


def test_guided_upsample_khw_equals_guided_upsample():
    from campipe.segmentation.guided_filter import guided_upsample, guided_upsample_khw

    rng = np.random.default_rng(0)
    lo = rng.random((5, 12, 16), dtype=np.float32)
    guide = rng.random((48, 64), dtype=np.float32)
    ref = guided_upsample(np.ascontiguousarray(lo.transpose(1, 2, 0)), guide, 2, 1e-3).transpose(2, 0, 1)
    np.testing.assert_allclose(guided_upsample_khw(lo, guide, 2, 1e-3), ref, atol=1e-5)
    one = guided_upsample_khw(lo[:1], guide, 2, 1e-3)
    np.testing.assert_allclose(one[0], guided_upsample(lo[0], guide, 2, 1e-3), atol=1e-5)


def test_mask_quality_exact():
    from campipe.segmentation.postprocess import mask_quality

    m = np.full((3, 2, 2), -1.0, np.float32)
    m[0] = [[2.0, 0.5], [-1.0, -3.0]]      # two pixels in: mean(sigmoid(2), sigmoid(0.5))
    m[2] = 4.0                             # all in
    q, a = mask_quality(m)
    sig = lambda x: 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(q, [(sig(2.0) + sig(0.5)) / 2, 0.0, sig(4.0)], atol=1e-6)  # empty mask -> 0
    np.testing.assert_allclose(a, [0.5, 0.0, 1.0], atol=1e-7)


def test_decode_outputs_scores_with_mask_quality_and_drops_empty_masks():
    from campipe.segmentation.postprocess import decode_outputs, letterbox

    sig = lambda x: 1 / (1 + np.exp(-x))
    sem = np.zeros((1, 6, 4, 4), np.float32)
    logits = np.array([[[4.0, 0.0], [1.0, 0.0], [2.0, 0.0]]], np.float32)
    masks = np.full((1, 3, 4, 4), -5.0, np.float32)          # query 0: empty mask, the highest class score
    masks[0, 1, :, :2] = 0.2                                 # query 1: faint mask (quality sigmoid(0.2) = 0.55)
    masks[0, 2, :, 2:] = 6.0                                 # query 2: crisp mask
    _, box = letterbox(np.zeros((4, 4, 3), np.float32), (4, 4), (0, 0, 0))
    out = {"sem_logits": sem, "pred_logits": logits, "pred_masks": masks}
    raw = decode_outputs(out, box, list("abcdef"), score_threshold=0.5, dedup_iou=None)
    assert raw.scores.shape == (1,)                          # empty dropped; faint 0.73 x 0.55 < 0.5 dropped
    np.testing.assert_allclose(raw.scores[0], sig(2.0) * sig(6.0), atol=1e-6)
    assert raw.instances[0, :, 2:].min() > 0.99 and raw.instances[0, :, :2].max() < 0.01
    # a lower threshold keeps the faint one, ranked by the product (0.40 < 0.88 x 1.0)
    raw = decode_outputs(out, box, list("abcdef"), score_threshold=0.3, dedup_iou=None)
    np.testing.assert_allclose(raw.scores, [sig(2.0) * sig(6.0), sig(1.0) * sig(0.2)], atol=1e-6)
    # the class score alone (the old behaviour) reports the empty mask first
    raw = decode_outputs(out, box, list("abcdef"), score_threshold=0.5, dedup_iou=None, mask_score=False,
                         min_area=0.0)
    np.testing.assert_allclose(raw.scores, sig(np.array([4.0, 2.0, 1.0])), atol=1e-6)
    # min_area alone drops the empty mask but keeps the class scores
    raw = decode_outputs(out, box, list("abcdef"), score_threshold=0.5, dedup_iou=None, mask_score=False)
    np.testing.assert_allclose(raw.scores, sig(np.array([2.0, 1.0])), atol=1e-6)
