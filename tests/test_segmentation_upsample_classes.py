"""Per-class guided-filter windows (postprocess.CLASS_GUIDE): exact parameter lookup, each plane upsampled with its
class's window, the Segmenter and the evaluation's predict both doing so, and why teeth need a small window."""
import cv2
import numpy as np
import pytest

from campipe.segmentation.postprocess import (CLASS_GUIDE, DEFAULT_GUIDE_EPS, DEFAULT_GUIDE_RADIUS, guide_params,
                                              upsample_classes, upsample_masks)
from test_segmentation_helpers import SoftRampModel, tiny_checkpoint

CLASSES = ("sky", "person", "hair", "skin", "teeth", "glasses")


def test_guide_params_exact():
    assert CLASS_GUIDE == {"teeth": (1, 1e-2), "hair": (6, 1e-3)}
    assert guide_params("teeth") == (1, 1e-2)
    assert guide_params("hair") == (6, 1e-3)
    for c in ("sky", "person", "skin", "glasses", "anything"):
        assert guide_params(c) == (DEFAULT_GUIDE_RADIUS, DEFAULT_GUIDE_EPS) == (2, 1e-3)
    assert guide_params("teeth", radius=3) == (3, 1e-2)          # explicit values win
    assert guide_params("teeth", eps=0.5) == (1, 0.5)
    assert guide_params("sky", 4, 1e-4) == (4, 1e-4)


def test_upsample_classes_gives_each_plane_its_class_window():
    rng = np.random.default_rng(1)
    lo = rng.random((8, 12, 16), dtype=np.float32)
    guide = rng.random((36, 48), dtype=np.float32)
    names = list(CLASSES) + ["person", "person"]
    planes = upsample_classes(lo, names, (36, 48), guide)
    assert len(planes) == 8 and all(p.shape == (36, 48) and p.dtype == np.float32 for p in planes)
    for i, n in enumerate(names):
        r, e = guide_params(n)
        np.testing.assert_array_equal(planes[i], upsample_masks(lo[i:i + 1], (36, 48), guide, r, e)[0])
    # the windows really differ: teeth with the default window is another mask
    assert np.abs(planes[4] - upsample_masks(lo[4:5], (36, 48), guide)[0]).max() > 1e-3
    same = upsample_classes(lo, names, (36, 48), guide, radius=2, eps=1e-3)  # explicit: one window for all
    np.testing.assert_array_equal(np.stack(same), upsample_masks(lo, (36, 48), guide))
    bil = upsample_classes(lo, names, (36, 48), None)                       # no guide: bilinear for all
    np.testing.assert_array_equal(np.stack(bil), upsample_masks(lo, (36, 48)))
    assert upsample_classes(lo[:0], [], (36, 48), guide) == []
    with pytest.raises(ValueError, match="names"):
        upsample_classes(lo, names[:-1], (36, 48), guide)


def test_small_window_keeps_a_mouth_of_bright_teeth_and_dark_tongue():
    """Why teeth get radius 1: the inner mouth (label 1) is bright teeth above a dark tongue, framed by mid-gray lips
    and skin (label 0). One linear model of the luminance per 5 x 5 window (radius 2) cannot say "bright and dark
    yes, mid-gray no" and loses the mouth; 3 x 3 windows keep more of it. Pooled IoU at 0.5 against the label."""
    s = 4                                                      # upsampling factor
    lab_lo = np.zeros((16, 16), np.float32)
    lab_lo[6:10, 5:11] = 1.0                                   # mouth, 4 x 6 low-resolution pixels
    lo = np.clip(cv2.GaussianBlur(lab_lo, (3, 3), 0.8), 0, 1)  # the network's soft version of it
    guide = np.full((64, 64), 0.55, np.float32)                # skin
    guide[20:44, 16:48] = 0.45                                 # lips around the mouth
    guide[24:32, 20:44] = 0.95                                 # teeth
    guide[32:40, 20:44] = 0.08                                 # tongue
    gt = np.kron(lab_lo, np.ones((s, s), np.float32)) > 0.5

    def iou(r):
        m = upsample_masks(lo[None], (64, 64), guide, r, 1e-2)[0] >= 0.5
        return (m & gt).sum() / (m | gt).sum()

    assert iou(1) > iou(2) + 0.05


@pytest.fixture
def ckpt(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMPIPE_CACHE", str(tmp_path / "cache"))
    return tiny_checkpoint(tmp_path / "tiny.pt")


@pytest.mark.parametrize("out_size", [None, (90, 130)])
def test_segmenter_upsamples_each_class_with_its_window(ckpt, out_size):
    """Default Segmenter == one explicit window per class: teeth as with radius 1 / eps 1e-2 everywhere, hair as with
    radius 6, the other classes as with the default window (colour refinements are deterministic, so they agree
    too), at the photo's size and at another output size (refined channels upsampled on their own)."""
    from campipe.segmentation.inference import Segmenter

    img = (np.random.default_rng(5).random((45, 65, 3)) * 255).astype(np.uint8)
    img[10:30, 20:40] = (250, 240, 230)                        # some structure for the guide
    res = Segmenter(ckpt, runtime="torch")(img, out_size=out_size)
    for c, (r, e) in {"teeth": (1, 1e-2), "hair": (6, 1e-3), "sky": (2, 1e-3), "skin": (2, 1e-3),
                      "glasses": (2, 1e-3), "person": (2, 1e-3)}.items():
        ref = Segmenter(ckpt, runtime="torch", guide_radius=r, guide_eps=e)(img, out_size=out_size)
        np.testing.assert_allclose(res.masks[c], ref.masks[c], atol=1e-6, err_msg=c)


def test_predict_upsamples_each_class_with_its_window():
    """The evaluation's predict upsamples as campipe does: teeth with CLASS_GUIDE's window, skin with the default."""
    from campipe.segmentation.inference import gray_guide
    from campipe.segmentation.training.evaluate import predict

    img = (np.random.default_rng(2).random((64, 64, 3)) * 255).astype(np.uint8)
    probs, _, _ = predict(SoftRampModel(), img, (32, 32), (0.0,) * 3, (1.0,) * 3, CLASSES, 2, max_persons=0,
                          sky_refine=False, person_refine=False, hair_refine=False)
    raw = 1 / (1 + np.exp(-np.linspace(-3, 3, 16, dtype=np.float32)))
    stack = np.tile(raw, (16, 1))[None]
    g = gray_guide(img / np.float32(255))
    np.testing.assert_allclose(probs["teeth"], upsample_masks(stack, (64, 64), g, 1, 1e-2)[0], atol=1e-5)
    np.testing.assert_allclose(probs["skin"], upsample_masks(stack, (64, 64), g, 2, 1e-3)[0], atol=1e-5)
    assert np.abs(probs["teeth"] - probs["skin"]).max() > 1e-3


def test_colour_guide_equals_gray_guide_with_a_third_of_eps_on_gray_photos():
    """The colour-guide filter (benchmarks/seg_diagnostics.py upsample, measured and not adopted) is He et al.'s: on
    a gray photo (R = G = B) Sigma + eps U has the gray variance 3 times along (1, 1, 1), so it equals the gray filter
    with eps / 3; on a colour photo it follows an edge of equal luminance that the gray guide cannot see."""
    from campipe.segmentation.guided_filter import guided_upsample_colour_khw, guided_upsample_khw

    rng = np.random.default_rng(0)
    gray = rng.random((40, 60, 1), dtype=np.float32)
    lo = rng.random((3, 20, 30), dtype=np.float32)
    np.testing.assert_allclose(guided_upsample_colour_khw(lo, np.repeat(gray, 3, 2), 2, 3e-3),
                               guided_upsample_khw(lo, gray[..., 0], 2, 1e-3), atol=1e-5)
    rgb = np.zeros((40, 60, 3), np.float32)
    rgb[:, :30] = (0.6, 0.2, 0.2)                              # red | green of nearly the same luma
    rgb[:, 30:] = (0.2, 0.3, 0.2)
    lum = rgb @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    mask = np.zeros((1, 20, 30), np.float32)
    mask[:, :, :15] = 1.0
    mask = cv2.GaussianBlur(mask[0], (7, 7), 2.0)[None]
    edge_c = guided_upsample_colour_khw(mask, rgb, 2, 1e-4)[0]
    edge_g = guided_upsample_khw(mask, lum, 2, 1e-4)[0]
    step = lambda m: m[20, 31] - m[20, 28]  # noqa: E731
    assert step(edge_c) < step(edge_g) - 0.2                   # sharper drop across the colour edge
    with pytest.raises(ValueError, match="colour guide"):
        guided_upsample_colour_khw(lo, gray, 2, 1e-3)


def test_guided_upsample_khw_with_one_window_per_plane():
    """Per-plane windows (one pass for the planes sharing a window, one thread pool for all) == each plane alone."""
    from campipe.segmentation.guided_filter import guided_upsample_khw

    rng = np.random.default_rng(3)
    lo = rng.random((5, 10, 14), dtype=np.float32)
    guide = rng.random((30, 42), dtype=np.float32)
    rs, es = [1, 2, 6, 2, 1], [1e-2, 1e-3, 1e-3, 1e-3, 1e-2]
    out = guided_upsample_khw(lo, guide, rs, es)
    assert out.shape == (5, 30, 42) and out.flags.c_contiguous
    for i in range(5):
        np.testing.assert_array_equal(out[i], guided_upsample_khw(lo[i:i + 1], guide, rs[i], es[i])[0])
    with pytest.raises(ValueError):
        guided_upsample_khw(lo, guide, [1, 2], 1e-3)                  # not one window per plane


def test_segmenter_reports_its_upsampling_windows(ckpt):
    """segments.json's model block says how the masks were upsampled: the per-class windows, or bilinear."""
    from campipe.segmentation.inference import Segmenter

    info = Segmenter(ckpt, runtime="torch").info
    assert info["upsampling"] == "guided"
    assert info["guide_windows"]["teeth"] == [1, 1e-2] and info["guide_windows"]["hair"] == [6, 1e-3]
    assert info["guide_windows"]["skin"] == [2, 1e-3]
    forced = Segmenter(ckpt, runtime="torch", guide_radius=3, guide_eps=1e-4).info["guide_windows"]
    assert set(map(tuple, forced.values())) == {(3, 1e-4)}
    bil = Segmenter(ckpt, runtime="torch", refine="bilinear").info
    assert bil["upsampling"] == "bilinear" and bil["guide_windows"] is None
