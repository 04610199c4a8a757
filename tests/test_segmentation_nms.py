"""Duplicate person instances (several queries on the same person) are suppressed by mask IoU."""
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
