"""Sensor simulator (campipe.simulate, campipe.cameras): exact values on tiny arrays, invariants, noise statistics."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from campipe.cameras import CAMERAS, get_camera
from campipe.simulate import (
    adaptation_matrix,
    add_noise,
    camera_neutral,
    cfa_indices,
    exposure_time_for,
    illuminant_xyz,
    linear_srgb_to_xyz,
    mosaic,
    quantise,
    simulate_raw,
    srgb_to_camera,
    srgb_to_linear,
)

CAM = get_camera("canon-5d4")


# ----------------------------------------------------------------------------------------------- CFA / mosaic
@pytest.mark.parametrize("pattern, expected", [
    ("RGGB", [[0, 1], [1, 2]]), ("BGGR", [[2, 1], [1, 0]]), ("GRBG", [[1, 0], [2, 1]]), ("GBRG", [[1, 2], [0, 1]]),
])
def test_cfa_indices(pattern, expected):
    np.testing.assert_array_equal(cfa_indices(pattern), expected)


@pytest.mark.parametrize("bad", ["RGB", "RRGB", "RGGX", "RGGBB"])
def test_cfa_indices_rejects_non_bayer(bad):
    with pytest.raises(ValueError, match="CFA pattern"):
        cfa_indices(bad)


@pytest.mark.parametrize("pattern", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_mosaic_picks_the_right_channel(pattern):
    h, w = 4, 6
    # value = 100*channel + 10*y + x: the mosaic value tells which channel and position it came from
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([100 * c + 10 * y + x for c in range(3)], axis=-1).astype(np.float32)
    m = mosaic(rgb, pattern)
    idx = cfa_indices(pattern)
    assert m.shape == (h, w) and m.dtype == np.float32
    for yy in range(h):
        for xx in range(w):
            assert m[yy, xx] == pytest.approx(100 * idx[yy % 2, xx % 2] + 10 * yy + xx)


# ----------------------------------------------------------------------------------------------- colour
def test_srgb_to_linear_exact_values():
    v = srgb_to_linear(np.array([[[0, 10, 255]]], dtype=np.uint8))
    np.testing.assert_allclose(v[0, 0], [0.0, (10 / 255) / 12.92, 1.0], rtol=1e-6, atol=1e-7)
    mid = srgb_to_linear(np.array([[[0.5, 0.5, 0.5]]], dtype=np.float32))
    np.testing.assert_allclose(mid, ((0.5 + 0.055) / 1.055) ** 2.4, rtol=1e-6)


def test_srgb_white_is_d65():
    xyz = linear_srgb_to_xyz(np.ones((1, 1, 3), np.float32))[0, 0]
    np.testing.assert_allclose(xyz, illuminant_xyz("D65"), rtol=1e-6)


def test_adaptation_identity_and_white_mapping():
    np.testing.assert_allclose(adaptation_matrix("D65", "D65"), np.eye(3), atol=1e-12)
    np.testing.assert_allclose(adaptation_matrix("D65", "A") @ illuminant_xyz("D65"), illuminant_xyz("A"), atol=1e-9)


def test_unknown_illuminant():
    with pytest.raises(ValueError, match="unknown illuminant 'XYZ'"):
        illuminant_xyz("XYZ")


def test_camera_neutral_is_matrix_response_green_one():
    n = camera_neutral(CAM.matrix, illuminant_xyz("D65"))
    raw = CAM.matrix @ illuminant_xyz("D65")
    np.testing.assert_allclose(n, raw / raw[1])
    assert n[1] == 1.0
    # tungsten is redder than daylight: relatively more red, less blue in camera space
    na = camera_neutral(CAM.matrix, illuminant_xyz("A"))
    assert na[0] > n[0] and na[2] < n[2]


@pytest.mark.parametrize("illum", ["D65", "A"])
def test_camera_matrix_round_trip(illum):
    """Undoing scale, ColorMatrix1 and the adaptation recovers the source XYZ exactly (in-gamut colours)."""
    rng = np.random.default_rng(0)
    srgb = rng.uniform(0.2, 0.8, (3, 5, 3)).astype(np.float32)
    wf = 0.7
    cam, neutral = srgb_to_camera(srgb, CAM, illum, white_fraction=wf)
    assert cam.min() > 0
    scale = wf / (CAM.matrix @ illuminant_xyz(illum)).max()
    xyz_scene = cam.reshape(-1, 3).astype(np.float64) @ np.linalg.inv(CAM.matrix * scale).T
    xyz_d65 = xyz_scene @ np.linalg.inv(adaptation_matrix("D65", illum)).T
    np.testing.assert_allclose(xyz_d65.reshape(cam.shape), linear_srgb_to_xyz(srgb_to_linear(srgb)),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("illum", ["D65", "A", "D50"])
def test_white_maps_to_neutral_at_white_fraction(illum):
    cam, neutral = srgb_to_camera(np.ones((2, 2, 3), np.float32), CAM, illum, white_fraction=0.8)
    px = cam[0, 0].astype(np.float64)
    assert px.max() == pytest.approx(0.8, rel=1e-4)
    np.testing.assert_allclose(px / px[1], neutral, rtol=1e-4)  # white in camera space = AsShotNeutral


def test_srgb_to_camera_rejects_bad_white_fraction():
    with pytest.raises(ValueError, match="white_fraction"):
        srgb_to_camera(np.ones((2, 2, 3), np.float32), CAM, "D65", white_fraction=0)


# ----------------------------------------------------------------------------------------------- ADC / noise
def test_quantise_exact():
    x = np.array([[-0.5, 0.0, 0.5, 1.0, 1.5]], np.float32)
    dn = quantise(x, black_level=512, white_level=16383)
    assert dn.dtype == np.uint16
    np.testing.assert_array_equal(dn, [[0, 512, 512 + 7936, 16383, 16383]])  # 0.5 * 15871 = 7935.5 -> 7936


def test_noise_profile_model():
    for cam in CAMERAS.values():
        s1, o1 = cam.noise_profile(cam.base_iso)
        s4, o4 = cam.noise_profile(4 * cam.base_iso)
        assert s1 == pytest.approx(1.0 / cam.full_well_e)
        assert s4 == pytest.approx(4 * s1)                     # shot-noise term scales with the gain
        assert o4 > o1 > 0                                     # input-referred read noise grows with gain
        assert o1 == pytest.approx((cam.read_e / cam.full_well_e) ** 2
                                   + (cam.read_dn / (cam.white_level - cam.black_level)) ** 2)
    with pytest.raises(ValueError, match="ISO"):
        CAM.noise_profile(0)


def test_add_noise_zero_model_is_identity():
    x = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose(add_noise(x, 0.0, 0.0, np.random.default_rng(0)), x)


@pytest.mark.parametrize("level", [0.05, 0.4])
def test_add_noise_statistics_match_model(level):
    s, o = CAM.noise_profile(3200)
    n = 256 * 256
    y = add_noise(np.full((256, 256), level, np.float32), s, o, np.random.default_rng(7))
    var = s * level + o
    assert abs(y.mean() - level) < 4 * np.sqrt(var / n)
    assert y.var() == pytest.approx(var, rel=4 * np.sqrt(2 / n))  # 4 sigma of the variance estimator


def test_simulated_flat_patch_dn_statistics():
    """Flat grey through the whole simulator: per-CFA-plane DN mean and variance match the model (+ 1/12 DN^2)."""
    cam = get_camera("sony-a7m3")
    grey = np.full((256, 256, 3), 0.5, np.float32)  # sRGB 0.5
    sim = simulate_raw(grey, cam, iso=1600, seed=3)
    expected_cam, _ = srgb_to_camera(grey[:2, :2], cam)
    s, o = sim.noise_profile
    rng_dn = cam.white_level - cam.black_level
    idx = cfa_indices(cam.cfa)
    for dy in range(2):
        for dx in range(2):
            plane = sim.cfa[dy::2, dx::2].astype(np.float64)
            x = float(expected_cam[0, 0, idx[dy, dx]])
            n = plane.size
            var_dn = (s * x + o) * rng_dn ** 2 + 1 / 12
            assert abs(plane.mean() - (cam.black_level + x * rng_dn)) < 4 * np.sqrt(var_dn / n) + 0.5
            assert plane.var() == pytest.approx(var_dn, rel=4 * np.sqrt(2 / n))


def test_simulate_raw_shapes_metadata_and_seed():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (11, 14, 3), dtype=np.uint8)
    a = simulate_raw(img, CAM, iso=400, seed=5)
    b = simulate_raw(img, CAM, iso=400, seed=5)
    c = simulate_raw(img, CAM, iso=400, seed=6)
    assert a.cfa.shape == (10, 14) and a.cfa.dtype == np.uint16  # odd height cropped to even
    np.testing.assert_array_equal(a.cfa, b.cfa)
    assert np.any(a.cfa != c.cfa)
    assert a.cfa.max() <= CAM.white_level
    assert a.baseline_exposure == pytest.approx(-np.log2(0.8))
    assert a.noise_profile == CAM.noise_profile(400)
    assert a.exif["light_source"] == 21


def test_simulate_raw_rejects_bad_input():
    with pytest.raises(ValueError, match="RGB"):
        simulate_raw(np.zeros((4, 4), np.uint8), CAM)


def test_higher_iso_is_noisier():
    grey = np.full((64, 64, 3), 0.4, np.float32)
    sd = [simulate_raw(grey, CAM, iso=iso, seed=1).cfa[0::2, 0::2].astype(np.float64).std() for iso in (100, 6400)]
    assert sd[1] > 3 * sd[0]


def test_exposure_time_is_a_standard_speed():
    assert exposure_time_for(100, 5.6) == pytest.approx(1 / 125)
    assert exposure_time_for(3200, 5.6) == pytest.approx(1 / 4000)


def test_get_camera_aliases_and_error():
    assert get_camera("Sony ILCE-7M3").key == "sony-a7m3"
    assert get_camera("NIKON D850").key == "nikon-d850"
    with pytest.raises(ValueError, match="choose one of"):
        get_camera("Leica M3")


def test_other_cfa_patterns_simulate():
    cam = dataclasses.replace(CAM, cfa="GBRG")
    img = np.zeros((4, 4, 3), np.float32)
    img[..., 2] = 1.0  # pure sRGB blue: blue photosites respond most
    sim = simulate_raw(img, cam, iso=100, seed=0)
    idx = cfa_indices("GBRG")
    blue_pos = np.argwhere(idx == 2)[0]
    red_pos = np.argwhere(idx == 0)[0]
    assert sim.cfa[blue_pos[0], blue_pos[1]] > sim.cfa[red_pos[0], red_pos[1]]
