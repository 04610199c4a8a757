"""Framing-aware person threshold (:class:`campipe.segmentation.postprocess.PersonFraming`): exact offsets on tiny
arrays, the identity on small subjects and with the rule off, and only the person channel and instances move."""
import numpy as np
import pytest

from campipe.segmentation.postprocess import (DEFAULT_PERSON_FRAMING, PersonFraming, decode_outputs, letterbox,
                                              sigmoid)

CLASSES = ("sky", "person", "hair", "skin", "teeth", "glasses")


def _prob_with_area(frac: float, n: int = 100) -> np.ndarray:
    p = np.full((10, n // 10), 0.2, np.float32)
    p.flat[:int(round(frac * n))] = 0.9
    return p


@pytest.mark.parametrize("frac, expected", [(0.0, 0.0), (0.35, 0.0), (0.45, 0.75), (0.55, 1.5), (1.0, 1.5)])
def test_offset_ramps_with_the_subject_share_of_the_frame(frac, expected):
    assert PersonFraming(0.35, 0.55, 1.5)(_prob_with_area(frac)) == pytest.approx(expected, abs=1e-9)


def test_offset_counts_pixels_at_or_above_one_half():
    p = np.array([[0.5, 0.49999], [1.0, 0.0]], np.float32)  # share 0.5
    assert PersonFraming(0.0, 1.0, 2.0)(p) == pytest.approx(1.0)


@pytest.mark.parametrize("low, high", [(0.5, 0.5), (0.6, 0.4), (-0.1, 0.5), (0.2, 1.1)])
def test_bad_ramp_is_rejected(low, high):
    with pytest.raises(ValueError, match="low"):
        PersonFraming(low, high, 1.0)


def _outputs(person_logit: np.ndarray) -> dict[str, np.ndarray]:
    h, w = person_logit.shape
    rng = np.random.default_rng(0)
    sem = rng.normal(0.0, 2.0, (1, len(CLASSES), h, w)).astype(np.float32)
    sem[0, 1] = person_logit
    masks = np.stack([person_logit + 0.5, np.full((h, w), -6.0, np.float32)])[None].astype(np.float32)
    logits = np.array([[[4.0, 0.0], [-4.0, 0.0]]], np.float32)  # query 0 is a person, query 1 is not
    return {"sem_logits": sem, "pred_logits": logits, "pred_masks": masks}


def test_close_up_gets_the_offset_on_person_channel_and_instances_only():
    logit = np.full((8, 8), -1.0, np.float32)
    logit[:, :6] = 1.0  # person on 75 % of the frame: full offset with the default ramp (0.35-0.55)
    out = _outputs(logit)
    _, box = letterbox(np.zeros((8, 8, 3), np.float32), (8, 8), (0, 0, 0))
    on = decode_outputs(out, box, CLASSES)
    off = decode_outputs(out, box, CLASSES, person_framing=None)
    d = DEFAULT_PERSON_FRAMING.offset
    np.testing.assert_allclose(on.semantic[1], sigmoid(logit - d), atol=1e-6)
    np.testing.assert_allclose(off.semantic[1], sigmoid(logit), atol=1e-6)
    others = [i for i in range(len(CLASSES)) if i != 1]
    np.testing.assert_array_equal(on.semantic[others], off.semantic[others])
    assert on.instances.shape == off.instances.shape == (1, 8, 8)  # the same selection ...
    np.testing.assert_array_equal(on.scores, off.scores)           # ... with the same scores
    np.testing.assert_allclose(on.instances[0], sigmoid(logit + 0.5 - d), atol=1e-6)
    # the stricter threshold removes the uncertain ring: at logit 1 - 1.5 < 0 the person is gone at 0.5
    assert (on.semantic[1] >= 0.5).sum() == 0 and (off.semantic[1] >= 0.5).sum() == 48


def test_small_subject_is_left_exactly_as_the_network_gave_it():
    logit = np.full((8, 8), -3.0, np.float32)
    logit[2:5, 3:5] = 2.0  # 6 of 64 pixels: below the ramp
    out = _outputs(logit)
    _, box = letterbox(np.zeros((8, 8, 3), np.float32), (8, 8), (0, 0, 0))
    on, off = decode_outputs(out, box, CLASSES), decode_outputs(out, box, CLASSES, person_framing=None)
    np.testing.assert_array_equal(on.semantic, off.semantic)
    np.testing.assert_array_equal(on.instances, off.instances)


def test_framing_reads_the_cropped_content_not_the_letterbox_bands():
    # a 4 x 8 photo on an 8 x 8 canvas: bands of 2 rows above and below, where the network says "not person"
    _, box = letterbox(np.zeros((4, 8, 3), np.float32), (8, 8), (0, 0, 0))
    logit = np.full((8, 8), -4.0, np.float32)
    logit[2:6, :] = 1.0  # the whole photo is person: share 1.0 of the content, 0.5 of the canvas
    on = decode_outputs(_outputs(logit), box, CLASSES)
    np.testing.assert_allclose(on.semantic[1], sigmoid(np.full((4, 8), 1.0 - 1.5, np.float32)), atol=1e-6)


def test_segmenter_and_stage_apply_the_rule_to_person_only(tmp_path, monkeypatch, linear_image):
    """The option reaches the network's post-processing through ``Segmenter`` and the pipeline's segment stage; with
    a constant offset (a ramp starting at 0) every photo is a "close-up": person masks shrink, nothing else moves."""
    import campipe.segment_stage as st
    import campipe.segmentation.inference as inf
    from campipe.frame import Frame
    from campipe.registry import get_stage

    from test_segmentation_helpers import tiny_checkpoint

    monkeypatch.setenv("CAMPIPE_CACHE", str(tmp_path / "cache"))
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    monkeypatch.setattr(inf, "DEFAULT_PERSON_FRAMING", PersonFraming(0.0, 1e-6, 3.0))
    assert get_stage("segment").params["person_framing"] is True
    monkeypatch.setenv("CAMPIPE_WEIGHTS", str(ckpt))
    kw = dict(max_persons=4, score_threshold=0.0, max_side=32, refine=False, runtime="torch", weights="",
              dedup_iou=1.0)
    on = st.segment_stage(Frame(linear_image.copy(), meta={"scene_referred": True}), **kw)
    off = st.segment_stage(Frame(linear_image.copy(), meta={"scene_referred": True}), **kw, person_framing=False)
    assert on.meta["segmentation"]["model"]["person_framing"] is True
    assert off.meta["segmentation"]["model"]["person_framing"] is False
    for k in ("sky", "hair", "skin", "teeth", "glasses"):
        np.testing.assert_array_equal(on.masks[k], off.masks[k])
    assert on.masks["person"].mean() < off.masks["person"].mean() - 1e-3
    assert len(on.persons) == len(off.persons) >= 1
    assert on.persons[0].mask.mean() < off.persons[0].mask.mean()
