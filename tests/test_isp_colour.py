"""Colour maths, ISP stages (wb, highlights, tone), output transform and quantisation."""
from __future__ import annotations

import io

import numpy as np
import pytest

from campipe import colour as cc
from campipe.frame import Frame
from campipe.icc import icc_profile
from campipe.isp import filmic_curve, reconstruct_highlights, tone_map, white_balance, wb_stage
from campipe.output import output_transform, quantize


def test_srgb_transfer_exact_values():
    x = np.array([0.0, 0.0031308, 0.18, 1.0], np.float32)
    np.testing.assert_allclose(cc.srgb_encode(x), [0.0, 0.04045, 0.46135, 1.0], atol=2e-5)
    np.testing.assert_allclose(cc.srgb_decode(cc.srgb_encode(x)), x, atol=1e-6)
    img = np.random.default_rng(0).random((7, 9, 3), dtype=np.float32)
    np.testing.assert_allclose(cc.srgb_encode_fast(img), cc.srgb_encode(img), atol=1e-6)


def test_working_space_white_and_roundtrip():
    white = np.ones((1, 1, 3), np.float32)
    xyz = cc.apply_matrix(white, cc.working_to_xyz())
    np.testing.assert_allclose(xyz.ravel(), [0.95047, 1.0, 1.08883], atol=2e-3)  # D65
    for space in ("srgb", "display-p3"):
        enc = np.random.default_rng(1).random((5, 6, 3), dtype=np.float32)
        np.testing.assert_allclose(cc.working_to_display(cc.display_to_working(enc, space), space), enc, atol=1e-5)
        np.testing.assert_allclose(output_transform(cc.display_to_working(enc, space), space), enc, atol=1e-5)


def test_apply_matrix_paths_agree():
    img = np.random.default_rng(2).random((4, 5, 3), dtype=np.float32)
    m = np.array([[1, 0.2, 0], [0, 1, 0], [0.1, 0, 0.9]], np.float32)
    np.testing.assert_allclose(cc.apply_matrix(img, m), np.einsum("ij,hwj->hwi", m, img), atol=1e-6)
    np.testing.assert_allclose(cc.apply_matrix(img.reshape(-1, 3), m).reshape(img.shape),
                               np.einsum("ij,hwj->hwi", m, img), atol=1e-6)


def test_lab_and_delta_e():
    grey = np.full((1, 1, 3), 0.18, np.float32)
    lab = cc.working_to_lab(grey)
    assert abs(lab[0, 0, 0] - 49.5) < 0.5 and np.abs(lab[0, 0, 1:]).max() < 0.5
    assert float(cc.delta_e_2000(lab, lab).max()) == pytest.approx(0.0, abs=1e-6)


def test_icc_profiles_load_in_littlecms_and_match_our_maths():
    from PIL import Image, ImageCms

    p3 = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile("display-p3")))
    srgb = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile("srgb")))
    assert "Display P3" in ImageCms.getProfileDescription(p3)
    arr = (np.random.default_rng(3).random((8, 8, 3)) * 0.6 + 0.2).astype(np.float32)
    im = Image.fromarray((arr * 255 + 0.5).astype(np.uint8))
    conv = np.asarray(ImageCms.profileToProfile(im, p3, srgb, outputMode="RGB", renderingIntent=1), np.float32) / 255
    ours = cc.working_to_display(cc.display_to_working(np.asarray(im, np.float32) / 255, "display-p3"), "srgb")
    assert np.abs(conv - ours).max() * 255 < 1.5  # within rounding of 8-bit LittleCMS


def test_wb_identity_and_exposure(linear_image):
    assert white_balance(linear_image, {}) is linear_image
    np.testing.assert_allclose(white_balance(linear_image, {}, ev=1.0), linear_image * 2, rtol=1e-5)
    f = wb_stage(Frame(image=linear_image.copy()), 0.0, 0.0, 0.0)
    np.testing.assert_array_equal(f.image, linear_image)


def test_wb_temperature_direction():
    grey = np.full((2, 2, 3), 0.2, np.float32)
    warm_light = white_balance(grey, {}, temperature=3200.0)  # compensating tungsten light -> bluer image
    cool_light = white_balance(grey, {}, temperature=10000.0)
    assert warm_light[0, 0, 2] > warm_light[0, 0, 0]
    assert cool_light[0, 0, 0] > cool_light[0, 0, 2]
    d65 = white_balance(grey, {}, temperature=6504.0, tint=3.2)  # D65 sits at 6504 K, Duv +0.0032
    np.testing.assert_allclose(d65, grey, atol=1e-3)
    with pytest.raises(ValueError, match="1500..25000"):
        white_balance(grey, {}, temperature=100.0)


def test_wb_raw_camera_space_matches_as_shot_at_same_illuminant():
    # a camera whose as-shot neutral is that of D65: re-balancing for ~6504 K is (almost) the identity
    m = np.array([[0.7374, -0.2389, -0.0551], [-0.5435, 1.3162, 0.2519], [-0.1006, 0.1795, 0.6552]])
    from campipe.decode import camera_to_xyz_matrix

    n = m @ np.array([0.95047, 1.0, 1.08883])
    meta = {"xyz_to_cam": m.tolist(), "as_shot_neutral": (n / n[1]).tolist(),
            "cam_to_working": (cc.xyz_to_working() @ camera_to_xyz_matrix(m)).tolist()}
    grey = np.full((2, 2, 3), 0.2, np.float32)
    np.testing.assert_allclose(white_balance(grey, meta, temperature=6504.0, tint=3.2), grey, atol=1e-3)


def test_camera_matrix_maps_neutral_to_d65():
    from campipe.decode import camera_to_xyz_matrix

    m = np.array([[0.6722, -0.0635, -0.0963], [-0.4287, 1.246, 0.2028], [-0.0908, 0.2162, 0.5668]])
    np.testing.assert_allclose(camera_to_xyz_matrix(m) @ np.ones(3), [0.95047, 1.0, 1.08883], atol=1e-9)


def test_highlights_identity_and_neutralisation():
    img = np.array([[[1.0, 0.6, 0.9], [0.2, 0.3, 0.4]]], np.float32)
    assert reconstruct_highlights(img.copy(), None) is not None
    np.testing.assert_array_equal(reconstruct_highlights(img.copy(), None), img)
    w = np.array([[1.0, 0.0]], np.float32)
    out = reconstruct_highlights(img.copy(), w)
    y = cc.luminance(img)
    np.testing.assert_allclose(out[0, 0], [y[0, 0]] * 3, atol=1e-6)  # fully clipped -> neutral, same luminance
    np.testing.assert_allclose(out[0, 1], img[0, 1], atol=1e-7)      # untouched where weight is 0


def test_filmic_curve_properties():
    x = np.linspace(0, 1, 1001)
    y = filmic_curve(x)
    assert y[0] == pytest.approx(0, abs=1e-6) and y[-1] == pytest.approx(1.0, abs=1e-6)
    assert np.all(np.diff(y) > 0)
    assert 0.2 < filmic_curve(np.array([0.18]))[0] < 0.35  # mid grey lands in the mid-tones
    img = np.random.default_rng(4).random((6, 7, 3), dtype=np.float32) * 1.3
    np.testing.assert_allclose(tone_map(img), np.clip(filmic_curve(img), 0, 1), atol=5e-5)
    # display-referred input with neutral parameters: identity on [0, 1]
    d = np.clip(img, 0, 1)
    np.testing.assert_allclose(tone_map(d, base_curve=False), d, atol=0)


def test_quantize_exact_and_dither_is_mean_preserving():
    x = np.array([[[0.0, 0.5, 1.0], [0.25, 0.75, 0.999]]], np.float32)
    np.testing.assert_array_equal(quantize(x, 8), np.round(x * 255).astype(np.uint8))
    np.testing.assert_array_equal(quantize(x, 16), np.round(x * 65535).astype(np.uint16))
    flat = np.full((256, 256, 3), 100.3 / 255, np.float32)
    q = quantize(flat, 8, dither=1.0)
    assert abs(q.mean() - 100.3) < 0.05  # dithered mean tracks the true value...
    assert abs(quantize(flat, 8).mean() - 100.3) > 0.25  # ...which plain rounding cannot


def test_dither_breaks_banding_in_a_smooth_gradient():
    ramp = np.linspace(0.30, 0.32, 1024, dtype=np.float32)[None, :, None].repeat(64, 0).repeat(3, 2)
    plain = quantize(ramp, 8).astype(np.float32).mean(axis=0)[:, 0]
    dith = quantize(ramp, 8, dither=1.0).astype(np.float32).mean(axis=0)[:, 0]
    target = ramp[0, :, 0] * 255
    assert np.abs(dith - target).mean() < 0.5 * np.abs(plain - target).mean()


def test_stored_matrices_equal_colour_science():
    """pipeline/_matrices.py (read at start-up instead of importing colour-science) is what colour-science computes."""
    from campipe import _matrices
    from campipe.gen_matrices import compute

    for k, v in compute().items():
        np.testing.assert_allclose(np.asarray(getattr(_matrices, k)), np.asarray(v), rtol=0, atol=1e-15, err_msg=k)
