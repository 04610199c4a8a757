"""Tests for campipe.effects.styles: exact values on tiny arrays, identities, skin protection, errors."""
from __future__ import annotations

import numpy as np
import pytest

from campipe.colour import luminance, luminance_weights
from campipe.effects.styles import MID_GREY, apply_style, tone_gain, warmth_gains


def test_all_zero_style_is_identity(linear_image):
    out = apply_style(linear_image, None)
    np.testing.assert_allclose(out, linear_image, rtol=0, atol=0)
    assert out is not linear_image


def test_warmth_gains_exact_properties():
    np.testing.assert_allclose(warmth_gains(0.0), [1, 1, 1], rtol=0, atol=0)
    g = warmth_gains(0.5)
    # a neutral keeps its luminance, and gets warmer (more red, less blue)
    assert float(luminance_weights() @ g) == pytest.approx(1.0, abs=1e-5)
    assert g[0] > 1.0 > g[2]
    gc = warmth_gains(-0.5)
    assert gc[2] > 1.0 > gc[0]


def test_warmth_on_one_pixel_is_the_gain():
    px = np.full((1, 1, 3), 0.3, np.float32)
    out = apply_style(px, None, warmth=0.5)
    np.testing.assert_allclose(out[0, 0], 0.3 * warmth_gains(0.5), rtol=1e-6)


def test_tone_curve_exact_values():
    # mid grey is the pivot: unchanged for any tone
    assert float(tone_gain(np.array([MID_GREY], np.float32), 1.0)[0]) == pytest.approx(1.0, abs=1e-6)
    # 3 stops above mid grey at tone = 1: gain = 2 ** (0.5 * 3 * tanh(1))
    y = np.array([MID_GREY * 8.0], np.float32)
    assert float(tone_gain(y, 1.0)[0]) == pytest.approx(2.0 ** (1.5 * np.tanh(1.0)), rel=1e-5)
    assert float(tone_gain(y, -1.0)[0]) == pytest.approx(2.0 ** (-1.5 * np.tanh(1.0)), rel=1e-5)


def test_tone_increases_contrast_and_keeps_ratios():
    img = np.array([[[0.02, 0.03, 0.04], [0.6, 0.5, 0.4]]], np.float32)
    out = apply_style(img, None, tone=0.5)
    y0, y1 = luminance(img)[0], luminance(out)[0]
    assert y1[0] < y0[0] and y1[1] > y0[1]
    np.testing.assert_allclose(out / out[..., 1:2], img / img[..., 1:2], rtol=1e-5)


def test_colour_keeps_greys_and_boosts_chroma():
    img = np.array([[[0.2, 0.2, 0.2], [0.4, 0.2, 0.1]]], np.float32)
    out = apply_style(img, None, colour=0.5)
    np.testing.assert_allclose(out[0, 0], img[0, 0], atol=1e-6)
    c_in = img[0, 1] - luminance(img)[0, 1]
    c_out = out[0, 1] - luminance(out)[0, 1]
    assert np.abs(c_out).sum() > np.abs(c_in).sum() * 1.2
    assert luminance(out)[0, 1] == pytest.approx(luminance(img)[0, 1], rel=1e-5)
    grey = apply_style(img, None, colour=-1.0)
    np.testing.assert_allclose(grey[0, 1], np.full(3, luminance(img)[0, 1]), atol=1e-6)


def test_skin_keeps_standard_render_rest_takes_style(linear_image):
    h, w = linear_image.shape[:2]
    skin = np.zeros((h, w), np.float32)
    skin[10:30, 10:30] = 1.0
    out = apply_style(linear_image, skin, warmth=0.5, tone=0.3)
    np.testing.assert_allclose(out[10:30, 10:30], linear_image[10:30, 10:30], atol=1e-6)
    far = (slice(0, 48), slice(50, 64))
    assert np.abs(out[far] - linear_image[far]).mean() > 0.01


def test_zero_skin_mask_equals_no_mask_and_protect_zero_ignores_mask(linear_image):
    z = np.zeros(linear_image.shape[:2], np.float32)
    a = apply_style(linear_image, None, warmth=-0.4, colour=0.2)
    np.testing.assert_allclose(apply_style(linear_image, z, warmth=-0.4, colour=0.2), a, atol=0)
    ones = np.ones_like(z)
    np.testing.assert_allclose(apply_style(linear_image, ones, warmth=-0.4, colour=0.2, skin_protect=0.0), a, atol=0)


def test_partial_protection_is_a_blend(linear_image):
    ones = np.ones(linear_image.shape[:2], np.float32)
    full = apply_style(linear_image, None, warmth=0.5)
    half = apply_style(linear_image, ones, warmth=0.5, skin_protect=0.5)
    np.testing.assert_allclose(half, 0.5 * (full + linear_image), atol=1e-6)


@pytest.mark.parametrize("kw", [{"tone": 1.5}, {"warmth": -2.0}, {"colour": 3.0}, {"skin_protect": 1.2}])
def test_out_of_range_parameters_raise(linear_image, kw):
    with pytest.raises(ValueError, match="style."):
        apply_style(linear_image, None, **kw)


def test_mask_size_mismatch_is_a_clear_error(linear_image):
    with pytest.raises(ValueError, match="skin mask has shape"):
        apply_style(linear_image, np.ones((3, 3), np.float32), warmth=0.2)


@pytest.mark.shared_data
def test_real_portraits_skin_kept_rest_styled(shared_data):
    """Issue 5 criterion on 4 CelebAMask portraits (means over images): skin dE2000 <= 1.5, non-skin >= 4 for warm
    and cool (the benchmark measures 100)."""
    import cv2

    from campipe.colour import delta_e_2000, display_to_working, working_to_lab

    root = shared_data / "celebamask"
    stems = sorted(p.stem for p in (root / "images").glob("*.jpg"))[:4]
    assert stems, f"no portraits under {root}"
    figures = {0.5: ([], []), -0.5: ([], [])}
    for stem in stems:
        rgb = cv2.cvtColor(cv2.imread(str(root / "images" / f"{stem}.jpg")), cv2.COLOR_BGR2RGB)
        rgb = cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_AREA)
        ids = cv2.resize(cv2.imread(str(root / "masks" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE), (256, 256),
                         interpolation=cv2.INTER_NEAREST)
        skin = np.isin(ids, (1, 2, 8, 9, 17))
        lin = display_to_working(rgb.astype(np.float32) / 255.0)
        lab0 = working_to_lab(np.clip(lin, 0, 1))
        for warmth in (0.5, -0.5):
            out = apply_style(lin, skin.astype(np.float32), warmth=warmth)
            de = delta_e_2000(lab0, working_to_lab(np.clip(out, 0, 1)))
            figures[warmth][0].append(float(de[skin].mean()))
            figures[warmth][1].append(float(de[~skin].mean()))
    for warmth, (on_skin, rest) in figures.items():
        assert np.mean(on_skin) <= 1.5, (warmth, on_skin)
        assert np.mean(rest) >= 4.0, (warmth, rest)
