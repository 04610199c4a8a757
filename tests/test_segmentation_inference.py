"""Inference API, pre/post-processing, guided filter and the `segment` pipeline stage."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from campipe.frame import Frame
from campipe.segmentation import NoWeightsError, weights_path
from campipe.segmentation.guided_filter import guided_filter, guided_upsample
from campipe.segmentation.inference import Segmenter, segment
from campipe.segmentation.postprocess import decode_outputs, letterbox, upsample_masks
from test_segmentation_helpers import tiny_checkpoint

KEYS = {"sky", "person", "hair", "skin", "teeth", "glasses"}


@pytest.fixture
def ckpt(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMPIPE_CACHE", str(tmp_path / "cache"))
    return tiny_checkpoint(tmp_path / "tiny.pt")


# ---------------------------------------------------------------------------------------------- no weights ---

def test_no_weights_error_is_clear(tmp_path, monkeypatch):
    missing = tmp_path / "nothing.pt"
    monkeypatch.setenv("CAMPIPE_WEIGHTS", str(missing))
    with pytest.raises(NoWeightsError) as ei:
        weights_path()
    msg = str(ei.value)
    assert "no trained HyperDETR weights are installed at" in msg and str(missing) in msg
    assert "campipe train" in msg
    with pytest.raises(NoWeightsError, match="no trained HyperDETR weights"):
        segment(np.zeros((8, 8, 3), np.uint8))
    assert weights_path(must_exist=False) == missing


def test_stage_without_weights_warns_once_and_leaves_masks_empty(tmp_path, monkeypatch, caplog, linear_image):
    import campipe.segment_stage as st

    monkeypatch.setenv("CAMPIPE_WEIGHTS", str(tmp_path / "none.pt"))
    monkeypatch.setattr(st, "_warned_no_weights", False)
    params = {"max_persons": 4, "score_threshold": 0.5, "max_side": 1024, "refine": True, "runtime": "torch",
              "weights": ""}
    before = linear_image.copy()
    with caplog.at_level(logging.WARNING, logger="campipe"):
        f = st.segment_stage(Frame(linear_image.copy()), **params)
        f = st.segment_stage(f, **params)
    msgs = [r.getMessage() for r in caplog.records if "HyperDETR" in r.getMessage()]
    assert len(msgs) == 1
    assert "no trained HyperDETR weights installed" in msgs[0] and "semantic effects are disabled" in msgs[0]
    assert f.masks == {} and f.persons == []
    assert np.array_equal(f.image, before)


def test_stage_with_explicit_missing_weights_is_an_error(tmp_path, linear_image):
    import campipe.segment_stage as st

    with pytest.raises(NoWeightsError, match="given path"):
        st.segment_stage(Frame(linear_image), max_persons=4, score_threshold=0.5, max_side=1024, refine=True,
                         runtime="torch", weights=str(tmp_path / "x.pt"))


# ------------------------------------------------------------------------------------------- pre / post ---

def test_letterbox_exact_placement_and_crop():
    img = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3) / 24.0
    canvas, box = letterbox(img, (4, 4), (0.5, 0.5, 0.5))
    assert box.content_hw == (2, 4) and box.offset == (1, 0)
    np.testing.assert_allclose(canvas[1:3], img, atol=1e-6)
    np.testing.assert_allclose(canvas[0], 0.5)
    np.testing.assert_allclose(canvas[3], 0.5)
    crop = box.crop(canvas.transpose(2, 0, 1))
    np.testing.assert_allclose(crop.transpose(1, 2, 0), img, atol=1e-6)
    assert box.crop(np.zeros((3, 2, 2)), stride=2).shape == (3, 2, 2)  # rows 0.5..1.5 -> 0..2 (outwards)


def test_decode_outputs_selects_sorted_instances():
    sem = np.zeros((1, 6, 4, 4), np.float32)
    logits = np.array([[[0.0, 3.0], [2.0, 0.0], [4.0, 0.0], [1.0, 0.0], [0.5, 0.0]]], np.float32)
    masks = np.stack([np.full((4, 4), i, np.float32) for i in range(5)])[None]
    _, box = letterbox(np.zeros((4, 4, 3), np.float32), (4, 4), (0, 0, 0))
    raw = decode_outputs({"sem_logits": sem, "pred_logits": logits, "pred_masks": masks}, box, list("abcdef"),
                         score_threshold=0.6, max_persons=2, dedup_iou=None,  # constant masks: all "duplicates"
                         mask_score=False, min_area=0.0)  # ranking by the class score alone
    assert raw.scores.shape == (2,) and raw.scores[0] >= raw.scores[1] >= 0.6
    # query 2 (logit 4) then query 1 (logit 2); mask logits i -> sigmoid(i)
    np.testing.assert_allclose(raw.instances[:, 0, 0], 1 / (1 + np.exp(-np.array([2.0, 1.0]))), atol=1e-6)
    np.testing.assert_allclose(raw.semantic, 0.5, atol=1e-7)


def test_guided_filter_invariants():
    rng = np.random.default_rng(0)
    guide = rng.random((20, 30)).astype(np.float32)
    const = np.full((20, 30), 0.3, np.float32)
    np.testing.assert_allclose(guided_filter(guide, const, 2, 1e-3), 0.3, atol=1e-5)
    # guide == source and tiny eps: the filter reproduces the source
    np.testing.assert_allclose(guided_filter(guide, guide, 2, 1e-8), guide, atol=2e-3)
    up = guided_upsample(np.full((5, 8, 3), 0.7, np.float32), guide, 1, 1e-3)
    assert up.shape == (20, 30, 3) and up.dtype == np.float32
    np.testing.assert_allclose(up, 0.7, atol=1e-5)
    many = guided_upsample(rng.random((5, 8, 9)).astype(np.float32), guide)  # > 4 channels
    assert many.shape == (20, 30, 9) and many.min() >= 0 and many.max() <= 1


def test_guided_upsampling_follows_photo_edges_better_than_bilinear():
    """A sharp edge in the full-res photo, a blurry low-res mask: guided upsampling is closer to the true edge."""
    H, W = 128, 192
    x = np.arange(W)
    truth = np.repeat((x >= 101).astype(np.float32)[None], H, axis=0)  # edge not on the 8x grid
    photo = 0.2 + 0.6 * truth
    import cv2

    low = cv2.resize(truth, (W // 8, H // 8), interpolation=cv2.INTER_AREA)
    low = cv2.GaussianBlur(low, (3, 3), 0.8)
    bil = upsample_masks(low[None], (H, W), None)[0]
    gui = upsample_masks(low[None], (H, W), photo, radius=2, eps=1e-3)[0]
    err_b, err_g = np.abs(bil - truth).mean(), np.abs(gui - truth).mean()
    assert err_g < 0.5 * err_b, (err_g, err_b)


# ------------------------------------------------------------------------------------------------ segment ---

def _check_result(res, h, w, max_persons=4):
    assert set(res.masks) == KEYS
    for m in res.masks.values():
        assert m.shape == (h, w) and m.dtype == np.float32
        assert m.min() >= 0.0 and m.max() <= 1.0
    assert len(res.persons) <= max_persons
    scores = [p.score for p in res.persons]
    assert scores == sorted(scores, reverse=True)
    for p in res.persons:
        assert p.mask.shape == (h, w) and 0.0 <= p.score <= 1.0
        assert np.all(res.masks["person"] >= p.mask - 1e-6)  # union


@pytest.mark.parametrize("shape", [(70, 50), (37, 121), (64, 96)])
def test_segment_uint8_any_size(ckpt, shape):
    img = (np.random.default_rng(1).random(shape + (3,)) * 255).astype(np.uint8)
    res = segment(img, weights=ckpt, runtime="torch", score_threshold=0.0, dedup_iou=1.0)
    _check_result(res, *shape)
    assert len(res.persons) == 4  # threshold 0 and no duplicate suppression keep every query up to max_persons
    assert res.model["name"] == "HyperDETR" and len(res.model["sha256"]) == 64
    assert set(res.timings) >= {"preprocess", "network", "upsample"}


def test_segment_float_and_uint8_agree(ckpt):
    img = (np.random.default_rng(2).random((40, 60, 3)) * 255).astype(np.uint8)
    a = segment(img, weights=ckpt, runtime="torch", score_threshold=0.0)
    b = segment(img.astype(np.float32) / 255.0, weights=ckpt, runtime="torch", score_threshold=0.0)
    for k in KEYS:
        np.testing.assert_allclose(a.masks[k], b.masks[k], atol=1e-5)


def test_segment_path_applies_exif_orientation(ckpt, tmp_path):
    piexif = pytest.importorskip("piexif")
    img = (np.random.default_rng(3).random((30, 50, 3)) * 255).astype(np.uint8)
    p = tmp_path / "rot.jpg"
    exif = piexif.dump({"0th": {piexif.ImageIFD.Orientation: 6}})
    Image.fromarray(img).save(p, exif=exif, quality=95)
    res = segment(p, weights=ckpt, runtime="torch")
    _check_result(res, 50, 30)  # rotated 90 degrees: width and height swap


def test_segment_max_persons_scene_only_and_out_size(ckpt):
    img = (np.random.default_rng(4).random((40, 60, 3)) * 255).astype(np.uint8)
    seg = Segmenter(ckpt, runtime="torch", max_persons=2, score_threshold=0.0, refine="bilinear", dedup_iou=1.0)
    res = seg(img)
    _check_result(res, 40, 60, max_persons=2)
    assert len(res.persons) == 2
    res = seg(img, scene_only=True)
    assert res.persons == []
    _check_result(res, 40, 60)
    res = seg(img, out_size=(80, 120))
    _check_result(res, 80, 120, max_persons=2)


def test_segment_bad_inputs_raise_clear_errors(ckpt):
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        segment(np.zeros((4, 4, 5), np.uint8), weights=ckpt, runtime="torch")
    with pytest.raises(ValueError, match="dtype"):
        segment(np.zeros((4, 4, 3), np.int64), weights=ckpt, runtime="torch")
    with pytest.raises(ValueError, match="refine"):
        Segmenter(ckpt, refine="nearest")
    with pytest.raises(ValueError, match="unknown runtime"):
        Segmenter(ckpt, runtime="tpu")


def test_stage_fills_masks_at_frame_resolution(ckpt, monkeypatch, linear_image):
    import campipe.segment_stage as st

    monkeypatch.setenv("CAMPIPE_WEIGHTS", str(ckpt))
    frame = Frame(linear_image.copy(), meta={"scene_referred": True})
    out = st.segment_stage(frame, max_persons=4, score_threshold=0.0, max_side=32, refine=True, runtime="torch",
                           weights="", dedup_iou=1.0)
    assert np.array_equal(out.image, linear_image)  # frame.image is not modified
    assert set(out.masks) == KEYS and len(out.persons) == 4
    for m in out.masks.values():
        assert m.shape == linear_image.shape[:2] and m.min() >= 0 and m.max() <= 1
    assert out.meta["segmentation"]["model"]["name"] == "HyperDETR"


def test_stage_is_registered_with_contract():
    from campipe.registry import get_stage

    spec = get_stage("segment")
    assert spec.provides == ("masks", "persons") and "linear" in spec.requires
    assert spec.params["max_persons"] == 4


def test_display_render_exposure_normalisation(linear_image):
    from campipe.segment_stage import display_render, exposure_gain

    dark = linear_image * 0.01
    g = exposure_gain(dark)
    assert g > 1.0
    r = display_render(dark, scene_referred=True, max_side=32)
    assert r.shape == (24, 32, 3) and r.dtype == np.float32 and 0 <= r.min() and r.max() <= 1
    assert r.mean() > display_render(dark, scene_referred=False, max_side=32).mean()


def test_exposure_gain_keeps_the_frames_own_exposure_inside_the_training_range():
    """A frame whose log-average luminance (times 2^BaselineExposure) lies in KEY_RANGE keeps its exposure; one below
    or above is brought exactly to the nearest end; the correction is clipped to GAIN_RANGE; display-referred frames
    are not touched."""
    from campipe.frame import Frame
    from campipe.segment_stage import GAIN_RANGE, KEY_RANGE, exposure_gain, frame_gain, log_average

    grey = lambda v: np.full((40, 60, 3), v, np.float32)  # noqa: E731  luminance v (weights sum to 1)
    assert abs(log_average(grey(0.1)) - 0.1) < 2e-4
    assert exposure_gain(grey(0.1)) == 1.0
    assert abs(exposure_gain(grey(0.1), baseline_ev=0.5) - 2 ** 0.5) < 1e-9
    g = exposure_gain(grey(0.004))
    assert g > 1 and abs(g * log_average(grey(0.004)) - KEY_RANGE[0]) < 1e-6
    g = exposure_gain(grey(0.5), baseline_ev=1.0)  # 1.0 after the baseline: too bright
    assert g < 2 and abs(g * log_average(grey(0.5)) - KEY_RANGE[1]) < 1e-6
    assert exposure_gain(grey(1.0), baseline_ev=3.0) == 8 * GAIN_RANGE[0]  # at most 8x darker than its own
    assert exposure_gain(grey(0.0)) == GAIN_RANGE[1]  # a black frame: at most 16x
    scene = Frame(image=grey(0.004), meta={"scene_referred": True, "baseline_exposure": 1.0})
    assert abs(frame_gain(scene) - exposure_gain(grey(0.004), 1.0)) < 1e-12
    assert frame_gain(Frame(image=grey(0.004), meta={"scene_referred": False})) == 1.0


# ------------------------------------------------------------------------------------ flip test-time aug. ---

def test_merge_flip_exact_values():
    from campipe.segmentation.postprocess import flip_canvas, merge_flip

    a = np.arange(2 * 1 * 2 * 3, dtype=np.float32).reshape(2, 1, 2, 3)
    b = np.array([[[[1, 2, 3], [4, 5, 6]]], [[[0, 0, 8], [0, 0, 0]]]], np.float32)
    inst = {"pred_logits": np.ones((2, 4, 2), np.float32), "pred_masks": np.zeros((2, 4, 2, 3), np.float32)}
    out = merge_flip({"sem_logits": a, **inst}, {"sem_logits": b, "pred_masks": np.full((2, 4, 2, 3), 9.0)})
    # column j of the result = (a[j] + b[W-1-j]) / 2
    assert out["sem_logits"][0, 0].tolist() == [[1.5, 1.5, 1.5], [4.5, 4.5, 4.5]]
    assert out["sem_logits"][1, 0].tolist() == [[7.0, 3.5, 4.0], [4.5, 5.0, 5.5]]
    assert out["pred_masks"] is inst["pred_masks"] and out["pred_logits"] is inst["pred_logits"]  # unflipped run's
    assert out["sem_logits"].dtype == np.float32
    x = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
    assert flip_canvas(x)[0, 0].tolist() == [[2, 1, 0], [5, 4, 3]] and flip_canvas(x).flags.c_contiguous
    with pytest.raises(ValueError, match="shapes differ"):
        merge_flip({"sem_logits": a}, {"sem_logits": a[:1]})


@pytest.mark.parametrize("refine", ["bilinear", "guided"])
def test_segment_tta_makes_static_masks_mirror_symmetric(ckpt, refine):
    """With flip TTA the static masks of a mirrored photo are the mirrored masks (exactly, up to float rounding);
    the network alone is not mirror-symmetric (so the check can fail). The photo fills the network canvas (64x96),
    so the letterbox adds no padding."""
    img = (np.random.default_rng(7).random((64, 96, 3)) * 255).astype(np.uint8)
    mirror = np.ascontiguousarray(img[:, ::-1])
    static = KEYS - {"person"}  # person also takes the instances, which TTA leaves alone
    gaps = {}
    for tta in (False, True):
        seg = Segmenter(ckpt, runtime="torch", refine=refine, tta=tta)
        a, b = seg(img), seg(mirror)
        _check_result(a, 64, 96)
        assert a.model["tta"] is tta
        gaps[tta] = max(float(np.abs(a.masks[k][:, ::-1] - b.masks[k]).max()) for k in static)
    assert gaps[True] < 1e-5
    assert gaps[False] > 1e-3


def test_stage_passes_tta(ckpt, monkeypatch, linear_image):
    import campipe.segment_stage as st
    from campipe.registry import get_stage

    assert get_stage("segment").params["tta"] is False
    monkeypatch.setenv("CAMPIPE_WEIGHTS", str(ckpt))
    # person_framing off: its offset reads the (flip-averaged) person channel and would move the instances too
    kw = dict(max_persons=4, score_threshold=0.0, max_side=32, refine=False, runtime="torch", weights="",
              dedup_iou=1.0, person_framing=False)
    plain = st.segment_stage(Frame(linear_image.copy(), meta={"scene_referred": True}), **kw)
    flip = st.segment_stage(Frame(linear_image.copy(), meta={"scene_referred": True}), **kw, tta=True)
    assert plain.meta["segmentation"]["model"]["tta"] is False and flip.meta["segmentation"]["model"]["tta"] is True
    assert np.abs(plain.masks["sky"] - flip.masks["sky"]).max() > 1e-4
    np.testing.assert_array_equal(plain.persons[0].mask, flip.persons[0].mask)  # instances: the photo alone
