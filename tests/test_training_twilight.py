"""Twilight (dusk re-lighting) augmentation: exact transfer functions, labels untouched, the sky becomes a dark
blue-to-horizon gradient, the scene darker, and the sampler applies it only when asked."""
from __future__ import annotations

import numpy as np
import pytest

from campipe.segmentation.training import datasets as D
from campipe.segmentation.training.batches import Sampler, SamplerConfig
from campipe.colour import srgb_decode, srgb_encode
from campipe.segmentation.training.twilight import TwilightConfig, sky_mask, twilight


def _street(h=48, w=64):
    """A daytime 'street': white-grey sky (rows < 20, with a cloud texture), grey road + a red car below."""
    rng = np.random.default_rng(0)
    img = np.full((h, w, 3), 110, np.uint8)
    img[:20] = (210 + rng.integers(-25, 25, (20, w, 1))).astype(np.uint8)
    img[30:40, 10:30] = (200, 30, 30)
    raw = np.full((h, w), 3, np.uint8)  # CamVid "road"-like id: known non-sky
    raw[:20] = D.CAMVID_SKY
    lab, _ = D.map_labels("camvid", raw)
    return img, lab


def test_srgb_transfer_exact_values_and_round_trip():
    x = np.array([0.0, 0.04045, 0.5, 1.0], np.float32)
    lin = srgb_decode(x)  # the transfer functions twilight works with
    np.testing.assert_allclose(lin, [0.0, 0.04045 / 12.92, ((0.5 + 0.055) / 1.055) ** 2.4, 1.0], rtol=1e-6)
    np.testing.assert_allclose(srgb_encode(lin), x, atol=1e-6)


def test_sky_mask_reads_present_and_known_sky():
    img, lab = _street()
    m = sky_mask(lab)
    assert m.dtype == np.float32
    np.testing.assert_array_equal(m[:20], 1.0)
    np.testing.assert_array_equal(m[20:], 0.0)


def test_twilight_darkens_scene_and_makes_a_blue_gradient_sky():
    img, lab = _street()
    before = img.copy()
    out = twilight(img, lab, np.random.default_rng(3), TwilightConfig(p_afterglow=0.0))
    np.testing.assert_array_equal(img, before)  # input untouched
    assert out.shape == img.shape and out.dtype == np.uint8
    sky_in, sky_out = img[:20].astype(float), out[:20].astype(float)
    # the sky is darker and blue-dominant, brighter towards the horizon (lower rows)
    assert sky_out.mean() < sky_in.mean() - 40
    assert (sky_out[..., 2] > sky_out[..., 0]).mean() > 0.95
    assert out[2:5, :, :].astype(float).mean() < out[14:18].astype(float).mean()
    # the scene below is darker everywhere (away from the feathered seam)
    assert (out[24:].astype(int).sum(-1) < img[24:].astype(int).sum(-1)).all()


def test_twilight_leaves_images_without_sky_unchanged():
    img = np.full((16, 16, 3), 90, np.uint8)
    lab, _ = D.map_labels("camvid", np.full((16, 16), 3, np.uint8))
    assert twilight(img, lab, np.random.default_rng(0)) is img
    # CelebAMask: sky is never present, only known-negative
    lab2, _ = D.map_labels("celebamask", np.ones((16, 16), np.uint8))
    assert twilight(img, lab2, np.random.default_rng(0)) is img


def test_twilight_is_deterministic_given_the_generator():
    img, lab = _street()
    a = twilight(img, lab, np.random.default_rng(11))
    b = twilight(img, lab, np.random.default_rng(11))
    c = twilight(img, lab, np.random.default_rng(12))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).max() > 0


def _records():
    img, lab = _street()
    return {"camvid": [D.Record("camvid", "s0", img, lab, False)]}


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_sampler_applies_twilight_only_when_asked(p):
    recs = _records()
    cfg = SamplerConfig(set_weights={"camvid": 1.0}, synth_fraction=0.0, p_twilight=p)
    from campipe.segmentation.training.augment import AugmentConfig

    aug = AugmentConfig(p_rot90=0, p_rot180=0, p_flip=0, p_small_rot=0, brightness=0, contrast=0, saturation=0,
                        hue_deg=0, p_blur_resize=0, p_letterbox=0, min_area=1.0, aspect_jitter=1.0)
    b = Sampler(recs, cfg, aug).batch(np.random.default_rng(0), 1, (48, 64), (0, 0, 0), (1, 1, 1))
    sky_level = float(b["image"][0, :, :16].mean()) * 255  # normalised with mean 0, std 1 -> [0, 1] * 255
    if p == 0.0:
        assert sky_level > 170  # the daytime sky
    else:
        assert sky_level < 120  # re-lit as dusk
    # labels are the same either way
    assert b["sem"][0, D.SKY, :16].float().mean() > 0.99
