"""Tests for the noise model, class-aware denoise and masked sharpening (campipe.effects.noise/denoise/sharpen)."""
from __future__ import annotations

import numpy as np
import pytest

from campipe.colour import luminance_weights
from campipe.effects.denoise import (MIN_FACTOR, class_strength, denoise, flatness, guided_filter,
                                    joint_guided_filter, strength_map)
from campipe.effects.noise import NoiseModel, add_grain, estimate_noise_model, noise_model_from_meta
from campipe.effects.sharpen import sharpen

MODEL = NoiseModel(2e-3, 1e-5)


def noisy_pair(seed=0, h=96, w=128):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    clean = np.stack([0.2 + 0.3 * xx / w, 0.3 + 0.1 * yy / h, 0.4 + 0 * xx], -1).astype(np.float32)
    clean[:, w // 2:] *= 0.4  # a vertical step edge
    noisy = clean + rng.standard_normal(clean.shape).astype(np.float32) * MODEL.sigma(clean)
    return clean, np.maximum(noisy, 0).astype(np.float32)


def psnr(a, b):
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


# ------------------------------------------------------------------------------------------------ noise model --

def test_noise_model_from_meta_keys_and_dng_profile():
    assert noise_model_from_meta({"noise": {"a": 1e-3, "b": 2e-6}}) == NoiseModel(1e-3, 2e-6, "metadata")
    m = noise_model_from_meta({"noise": {"iso": 800, "profile": [3e-4, 4e-6, 3e-4, 4e-6]}})
    assert (m.a, m.b) == (3e-4, 4e-6)
    with pytest.raises(ValueError, match="invalid noise model"):
        noise_model_from_meta({"noise": {"a": -1.0, "b": 0.0}})
    with pytest.raises(ValueError, match="no noise model"):
        noise_model_from_meta({"noise": {"iso": 100}})


def test_estimated_noise_model_recovers_parameters():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:384, 0:384] / 384.0
    clean = np.stack([x * 0.9, x * 0.8, x * 0.7], -1).astype(np.float32) + 0.02
    noisy = clean + rng.standard_normal(clean.shape).astype(np.float32) * MODEL.sigma(clean)
    est = estimate_noise_model(noisy)
    assert est.source.startswith("estimated")
    assert est.a == pytest.approx(MODEL.a, rel=0.25)
    assert est.variance(np.float32(0.5)) == pytest.approx(float(MODEL.variance(np.float32(0.5))), rel=0.2)


def test_add_grain_statistics_and_zero_weight():
    img = np.full((200, 200, 3), 0.25, np.float32)
    out = add_grain(img, MODEL, np.ones((200, 200), np.float32), seed=1)
    assert float(out.std()) == pytest.approx(float(MODEL.sigma(np.float32(0.25))), rel=0.05)
    np.testing.assert_allclose(add_grain(img, MODEL, np.zeros((200, 200), np.float32)), img, atol=0)


# ---------------------------------------------------------------------------------------------------- denoise --

def test_guided_filter_exact_on_constant_and_identity_with_zero_eps():
    c = np.full((10, 12), 0.7, np.float32)
    np.testing.assert_allclose(guided_filter(c, c, 2, 1e-2), c, atol=1e-6)
    rng = np.random.default_rng(0)
    r = rng.random((16, 16)).astype(np.float32)
    np.testing.assert_allclose(guided_filter(r, r, 1, 1e-12), r, atol=1e-3)


def test_joint_guided_filter_constant_and_chroma_edge():
    c = np.full((12, 14), 0.3, np.float32)
    g = np.full((12, 14), 0.5, np.float32)
    np.testing.assert_allclose(joint_guided_filter(g, c, 2, 1e-3, 1e-3), c, atol=1e-6)
    # a chroma step with no luminance step: luminance-guided filtering blurs it, the two-channel guide keeps it
    rng = np.random.default_rng(0)
    y = np.full((40, 40), 0.4, np.float32) + rng.standard_normal((40, 40)).astype(np.float32) * 0.002
    cr = np.where(np.arange(40)[None, :] < 20, -0.1, 0.1).astype(np.float32) * np.ones((40, 1), np.float32)
    eps = 1e-4
    joint = joint_guided_filter(y, cr, 3, eps, 2 * eps)
    luma_only = guided_filter(y, cr, 3, 2 * eps)
    assert float(np.abs(joint - cr).mean()) < 0.2 * float(np.abs(luma_only - cr).mean())


def test_strength_map_exact():
    sky = np.array([[1.0, 0.0], [0.5, 0.0]], np.float32)
    skin = np.array([[0.0, 1.0], [0.0, 0.0]], np.float32)
    s = strength_map((2, 2), 2.0, sky, skin, 1.0, 0.5)
    np.testing.assert_allclose(s, [[4.0, 3.0], [3.0, 2.0]], atol=1e-6)
    flat = np.array([[0.5, 1.0], [0.0, 1.0]], np.float32)
    # strength * (1 + beta * ((1 + p) * flat - p)), beta = [[1, .5], [.5, 0]], p = 0.5
    s = strength_map((2, 2), 2.0, sky, skin, 1.0, 0.5, flat, protect=0.5)
    np.testing.assert_allclose(s, [[2.5, 3.0], [1.5, 2.0]], atol=1e-6)
    s = strength_map((2, 2), 2.0, sky, skin, 1.0, 0.5, flat, protect=0.0)  # boost only, no protection
    np.testing.assert_allclose(s, [[3.0, 3.0], [2.0, 2.0]], atol=1e-6)
    s = strength_map((2, 2), 2.0, sky * 10, None, 1.0, 0.0, np.zeros((2, 2), np.float32), protect=0.5)
    np.testing.assert_allclose(s, [[2.0 * MIN_FACTOR, 2.0], [2.0 * MIN_FACTOR, 2.0]], atol=1e-6)  # floor


def test_flatness_is_one_on_noise_and_zero_on_edges():
    rng = np.random.default_rng(0)
    y = np.full((64, 64), 0.3, np.float32) + rng.standard_normal((64, 64)).astype(np.float32) * \
        float(MODEL.sigma(np.float32(0.3)))
    f = flatness(y, MODEL, 2)
    assert float(f[8:56, 8:56].mean()) > 0.85
    y[:, 32:] += 0.5  # a strong edge
    f = flatness(y, MODEL, 2)
    assert float(f[:, 31:33].max()) < 0.25  # the gate (box-smoothed by the same window) is mostly off


def test_class_strength_boosts_flat_class_pixels_only():
    clean, noisy = noisy_pair()
    sky = np.ones(noisy.shape[:2], np.float32)
    s = class_strength(noisy, MODEL, sky, None, strength=1.0, sky_boost=0.4)
    w = noisy.shape[1] // 2
    assert float(s[:, 10:40].mean()) > 1.3  # flat gradient: boosted
    assert float(s[:, w - 1:w + 1].max()) < 1.0  # the step edge is protected: below the base strength
    assert float(s.min()) >= 1.0 - 0.4 * 0.5 - 1e-6  # at most p * boost below it
    np.testing.assert_allclose(class_strength(noisy, MODEL, None, None, strength=0.7), 0.7, atol=0)


def test_denoise_identity_and_zero_masks():
    clean, noisy = noisy_pair()
    np.testing.assert_allclose(denoise(noisy, MODEL, strength=0.0), noisy, atol=0)
    z = np.zeros(noisy.shape[:2], np.float32)
    np.testing.assert_allclose(denoise(noisy, MODEL, z, z), denoise(noisy, MODEL), atol=0)


def test_denoise_improves_psnr_and_keeps_edge():
    clean, noisy = noisy_pair()
    out = denoise(noisy, MODEL, strength=1.0)
    assert psnr(out, clean) > psnr(noisy, clean) + 6.0
    w = clean.shape[1] // 2
    step_clean = float(clean[:, w - 3, 0].mean() - clean[:, w + 2, 0].mean())
    step_out = float(out[:, w - 3, 0].mean() - out[:, w + 2, 0].mean())
    assert step_out == pytest.approx(step_clean, rel=0.1)


def test_sky_boost_smooths_sky_more():
    clean, noisy = noisy_pair()
    sky = np.zeros(noisy.shape[:2], np.float32)
    sky[:40] = 1.0
    plain = denoise(noisy, MODEL, strength=0.5)
    boosted = denoise(noisy, MODEL, sky, strength=0.5, sky_boost=2.0)
    region = (slice(5, 35), slice(5, 55))
    assert psnr(boosted[region], clean[region]) > psnr(plain[region], clean[region]) + 1.0
    far = (slice(60, 96), slice(5, 55))
    np.testing.assert_allclose(boosted[far], plain[far], atol=1e-5)


def test_denoise_bad_parameters():
    _, noisy = noisy_pair()
    with pytest.raises(ValueError, match="denoise.strength"):
        denoise(noisy, MODEL, strength=-1.0)
    with pytest.raises(ValueError, match="denoise.radius"):
        denoise(noisy, MODEL, radius=-2)


# ---------------------------------------------------------------------------------------------------- sharpen --

def test_sharpen_identity_constant_and_masks():
    clean, _ = noisy_pair()
    np.testing.assert_allclose(sharpen(clean, amount=0.0), clean, atol=0)
    const = np.full((8, 8, 3), 0.4, np.float32)
    np.testing.assert_allclose(sharpen(const, amount=2.0), const, atol=1e-6)
    ones = np.ones(clean.shape[:2], np.float32)
    z = np.zeros_like(ones)
    for key in ("sky", "skin", "teeth"):
        np.testing.assert_allclose(sharpen(clean, **{key: ones}, amount=1.0), clean, atol=1e-7)
    np.testing.assert_allclose(sharpen(clean, z, z, z, amount=1.0), sharpen(clean, amount=1.0), atol=0)


def test_sharpen_exact_on_impulse():
    import cv2
    img = np.zeros((9, 9, 3), np.float32)
    img[4, 4] = 1.0
    out = sharpen(img, amount=0.5, radius=1.0)
    y = img @ luminance_weights()
    blur = cv2.GaussianBlur(np.ascontiguousarray(y), (0, 0), 1.0, borderType=cv2.BORDER_REFLECT)
    expected = np.maximum(img + 0.5 * (y - blur)[..., None], 0)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_sharpen_increases_edge_contrast_and_coring_spares_noise():
    clean, noisy = noisy_pair()
    w = clean.shape[1] // 2
    out = sharpen(clean, amount=1.0, radius=1.5)
    assert float(out[:, w - 1, 1].mean()) > float(clean[:, w - 1, 1].mean())
    flat = (slice(10, 80), slice(5, 50))
    no_core = sharpen(noisy, amount=1.0)
    cored = sharpen(noisy, amount=1.0, noise=MODEL, noise_floor=2.0)
    assert float(cored[flat].std()) < float(no_core[flat].std())


def test_sharpen_bad_parameters():
    clean, _ = noisy_pair()
    with pytest.raises(ValueError, match="sharpen.amount"):
        sharpen(clean, amount=-0.5)
    with pytest.raises(ValueError, match="sharpen.radius"):
        sharpen(clean, radius=0)


# ------------------------------------------------------------------------------------ denoise: fast paths --

def reference_denoise(x, noise, sky, skin, r, **kw):
    """The whole-image algorithm from the public helpers (full-resolution chroma, no bands): the behaviour the
    banded three-pass implementation must reproduce with ``chroma_scale=1``."""
    s = class_strength(x, noise, sky, skin, radius=r, **kw)
    w = luminance_weights()
    y = x @ w
    eps = (np.float32(2.1) * s) ** 2 * noise.variance(y)
    yd = guided_filter(y, y, r, eps)
    crd = joint_guided_filter(yd, x[..., 0] - y, 2 * r, eps, 2 * eps)
    cbd = joint_guided_filter(yd, x[..., 2] - y, 2 * r, eps, 2 * eps)
    out = np.empty_like(x)
    out[..., 0] = yd + crd
    out[..., 2] = yd + cbd
    out[..., 1] = (yd - w[0] * out[..., 0] - w[2] * out[..., 2]) / w[1]
    return np.maximum(out, 0)


def test_denoise_full_res_chroma_matches_whole_image_reference():
    clean, noisy = noisy_pair(h=90, w=131)
    sky = np.zeros(noisy.shape[:2], np.float32)
    sky[:40] = 1.0
    skin = np.zeros_like(sky)
    skin[50:80, 20:60] = 0.7
    for r in (2, 3):
        got = denoise(noisy, MODEL, sky, skin, radius=r, chroma_scale=1)
        exp = reference_denoise(noisy, MODEL, sky, skin, r)
        np.testing.assert_allclose(got, exp, atol=2e-5)


@pytest.mark.parametrize("chroma_scale", [1, 2])
def test_denoise_banded_equals_unbanded(monkeypatch, chroma_scale):
    import campipe.effects.denoise as dn

    clean, noisy = noisy_pair(h=203, w=77)  # odd sizes: block padding at the bottom/right
    sky = np.zeros(noisy.shape[:2], np.float32)
    sky[:90] = 1.0
    monkeypatch.setattr(dn, "BAND_ROWS", 1 << 20)
    whole = denoise(noisy, MODEL, sky, None, chroma_scale=chroma_scale)
    for rows in (8, 14, 64):  # bands much smaller than the 3 r + chroma halo
        monkeypatch.setattr(dn, "BAND_ROWS", rows)
        np.testing.assert_allclose(denoise(noisy, MODEL, sky, None, chroma_scale=chroma_scale), whole, atol=1e-5)
    monkeypatch.setattr(dn, "MAX_THREADS", 1)  # the same bands run inline
    np.testing.assert_allclose(denoise(noisy, MODEL, sky, None, chroma_scale=chroma_scale), whole, atol=1e-5)


def test_block_upsampling_of_a_band_equals_the_whole_image_rows():
    import campipe.effects.denoise as dn

    rng = np.random.default_rng(1)
    blocks = rng.random((13, 9, 2)).astype(np.float32)
    full = dn._up(blocks, 2, 0, 25, 17)
    assert full.shape == (25, 17, 2)
    for r0, r1 in ((0, 4), (4, 10), (10, 25), (6, 7)):
        np.testing.assert_allclose(dn._up(blocks, 2, r0, r1, 17), full[r0:r1], atol=0)
    x = rng.random((25, 17)).astype(np.float32)
    d = dn._down(x, 2)
    assert d.shape == (13, 9)
    np.testing.assert_allclose(d[0, 0], x[:2, :2].mean(), atol=1e-7)
    np.testing.assert_allclose(d[12, 8], x[24, 16], atol=1e-7)  # reflect padding repeats the last row/column


def test_fast_joint_guided_filter_close_to_full_resolution_on_smooth_image():
    yy, xx = np.mgrid[0:96, 0:128].astype(np.float32)
    g = 0.3 + 0.1 * np.sin(xx / 17.0) * np.cos(yy / 23.0)
    c = 0.05 * np.cos(xx / 19.0 + yy / 29.0)
    rng = np.random.default_rng(0)
    gn = (g + rng.standard_normal(g.shape).astype(np.float32) * 0.003).astype(np.float32)
    cn = (c + rng.standard_normal(c.shape).astype(np.float32) * 0.003).astype(np.float32)
    eps = np.full(g.shape, 1e-5, np.float32)
    # noise-free: block statistics + bilinear coefficients stay within 0.5 % of the chroma range (0.1) everywhere
    full = joint_guided_filter(g, c, 4, eps, 2 * eps)
    fast = joint_guided_filter(g, c, 4, eps, 2 * eps, scale=2)
    assert float(np.abs(fast - full).max()) < 5e-4
    assert float(np.abs(fast - full).mean()) < 1e-4
    # noisy: as close to the clean signal as the full-resolution filter (measured 0.93x its mean error)
    full = joint_guided_filter(gn, cn, 4, eps, 2 * eps)
    fast = joint_guided_filter(gn, cn, 4, eps, 2 * eps, scale=2)
    assert float(np.abs(fast - c).mean()) < 1.05 * float(np.abs(full - c).mean())
    # constants are reproduced exactly; several sources in one call = one call per source
    k = np.full(g.shape, 0.2, np.float32)
    np.testing.assert_allclose(joint_guided_filter(gn, k, 4, eps, eps, scale=2), k, atol=1e-6)
    both = joint_guided_filter(gn, np.stack([cn, 0.5 * cn + 0.1], -1), 4, eps, 2 * eps, scale=2)
    np.testing.assert_allclose(both[..., 0], fast, atol=1e-6)
    np.testing.assert_allclose(both[..., 1], joint_guided_filter(gn, 0.5 * cn + 0.1, 4, eps, 2 * eps, scale=2),
                               atol=1e-6)


def test_denoise_automatic_chroma_scale(monkeypatch):
    import campipe.effects.denoise as dn

    clean, noisy = noisy_pair(h=64, w=80)
    full, fast = (denoise(noisy, MODEL, chroma_scale=k) for k in (1, 2))
    np.testing.assert_allclose(denoise(noisy, MODEL), full, atol=0)  # below FAST_CHROMA_MIN_PIXELS
    monkeypatch.setattr(dn, "FAST_CHROMA_MIN_PIXELS", 64 * 80)
    np.testing.assert_allclose(denoise(noisy, MODEL), fast, atol=0)
    assert psnr(fast, clean) > psnr(noisy, clean) + 6.0
    assert psnr(fast, clean) > psnr(full, clean) - 0.1  # smooth colours: block chroma loses nothing (+0.6 dB here)
    with pytest.raises(ValueError, match="chroma_scale"):
        denoise(noisy, MODEL, chroma_scale=-1)
