"""Tests for portrait blur (campipe.effects.bokeh) and Stage Light (campipe.effects.stage_light)."""
from __future__ import annotations

import numpy as np
import pytest

from campipe.effects.bokeh import aperture_kernel, choose_focus, coc_px, plan_layers, portrait_blur
from campipe.effects.noise import NoiseModel
from campipe.effects.stage_light import stage_light

BG = np.array([0.1, 0.3, 0.2], np.float32)
SUBJ = np.array([0.9, 0.2, 0.05], np.float32)


def scene(h=200, w=300, cy=120, cx=150, ry=70, rx=40):
    """Uniform background, one elliptic 'person' of a distinct colour; returns (img, mask)."""
    yy, xx = np.mgrid[0:h, 0:w]
    m = ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1.0).astype(np.float32)
    img = np.where(m[..., None] > 0, SUBJ, BG).astype(np.float32)
    return img, m


def test_aperture_kernel_is_normalised_disc():
    k = aperture_kernel(15.0)
    assert k.shape == (15, 15)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(k, k.T, atol=1e-7)
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-7)
    # area of the support ~ pi r^2 (anti-aliased edge)
    assert (k / k.max()).sum() == pytest.approx(np.pi * 7.5 ** 2, rel=0.03)
    hexk = aperture_kernel(15.0, blades=6)
    assert float(hexk.sum()) == pytest.approx(1.0, abs=1e-6)
    assert (hexk / hexk.max()).sum() < (k / k.max()).sum()  # a hexagon inscribed in the disc


def test_coc_thin_lens_exact():
    # f = 50 mm, N = 2, focus at 2 m, background at infinity: c = 50^2 / (2 * 1950) mm on a 36 mm long side
    c = coc_px(float("inf"), 2.0, aperture=2.0, focal_length_35mm=50.0, long_side_px=3600, max_px=1e9)
    assert c == pytest.approx(2500.0 / 3900.0 / 36.0 * 3600, rel=1e-9)
    assert coc_px(2.0, 2.0, aperture=2.0, focal_length_35mm=50.0, long_side_px=3600, max_px=1e9) == 0.0
    assert coc_px(4.0, 2.0, aperture=2.0, focal_length_35mm=50.0, long_side_px=3600, max_px=1e9) == \
        pytest.approx(c / 2, rel=1e-9)


def test_no_person_raises_clear_error():
    img, m = scene()
    with pytest.raises(ValueError, match="needs a detected person; none found"):
        portrait_blur(img, [])
    with pytest.raises(ValueError, match="needs a detected person; none found"):
        portrait_blur(img, [np.zeros_like(m)])


def test_bad_focus_index_and_params():
    img, m = scene()
    with pytest.raises(ValueError, match="focus person 3 does not exist"):
        portrait_blur(img, [m], focus=3)
    with pytest.raises(ValueError, match="aperture"):
        portrait_blur(img, [m], aperture=0)
    with pytest.raises(ValueError, match="polygon_blades"):
        portrait_blur(img, [m], polygon_blades=2)


def test_tiny_aperture_blur_is_identity():
    img, m = scene()
    out = portrait_blur(img, [m], aperture=1e6, grain=True, noise=NoiseModel(1e-3, 1e-5))
    np.testing.assert_allclose(out, img, rtol=0, atol=0)


def test_subject_stays_sharp_and_background_has_no_halo():
    img, m = scene()
    out = portrait_blur(img, [m], aperture=1.0, focal_length_35mm=50.0, grain=False, max_blur_frac=0.1)
    inner = m > 0.5
    np.testing.assert_allclose(out[inner], img[inner], atol=1e-6)
    # 3-px band just outside the subject: fraction of subject colour, projected on (SUBJ - BG)
    import cv2
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    band = (cv2.dilate(m, k) > 0.5) & ~inner
    d = SUBJ - BG
    alpha = ((out[band] - BG) @ d) / float(d @ d)
    assert float(np.abs(alpha).max()) < 0.05


def test_highlight_becomes_disc_of_expected_diameter():
    img, m = scene(h=240, w=360, cx=260)
    img[60, 80] = 400.0  # a point highlight far from the subject
    layers, s_f = plan_layers([m], 0, aperture=1.4, focal_length_35mm=135.0, max_blur_frac=0.2)
    dia = [L.diameter_px for L in layers if L.index < 0][0]
    assert 12 < dia < 40
    out = portrait_blur(img, [m], aperture=1.4, focal_length_35mm=135.0, grain=False, max_blur_frac=0.2)
    row = out[60, :, 1] - BG[1]
    plateau = float(row[80])
    width = int((row > 0.5 * plateau).sum())
    assert abs(width - dia) <= 2.0
    # flat top (a disc, not a Gaussian): the inner half of the disc within 10 % of the peak
    inner = row[80 - int(dia / 4): 80 + int(dia / 4) + 1]
    assert float(inner.min()) > 0.9 * float(inner.max())
    # energy conserved (normalised kernel)
    total = float((out[..., 1] - BG[1])[20:100, 40:120].sum())
    assert total == pytest.approx(400.0 - BG[1], rel=0.05)


def test_focus_choice_and_depth_proxy():
    h, w = 200, 300
    big = np.zeros((h, w), np.float32)
    big[60:200, 120:180] = 1
    small = np.zeros((h, w), np.float32)
    small[120:170, 20:45] = 1
    same = np.zeros((h, w), np.float32)
    same[60:200, 200:260] = 1
    assert choose_focus([small, big]) == 1
    layers, _ = plan_layers([small, big, same], 1, aperture=2.0, focal_length_35mm=26.0, max_blur_frac=0.1)
    dia = {L.index: L.diameter_px for L in layers}
    assert dia[1] == 0.0 and dia[2] == pytest.approx(0.0, abs=1e-6)  # same size = same plane
    assert 0.0 < dia[0] < dia[-1]  # smaller person farther, background the most


def test_other_person_gets_blurred_focus_person_sharp():
    h, w = 200, 300
    img = np.tile(BG, (h, w, 1)).astype(np.float32)
    big = np.zeros((h, w), np.float32)
    big[60:200, 120:180] = 1
    small = np.zeros((h, w), np.float32)
    small[120:160, 20:40] = 1
    img[120:160, 20:40] = [0.8, 0.8, 0.8]
    img[120:160, 30:40] = [0.05, 0.05, 0.05]  # an edge inside the small person
    img[60:200, 120:180] = SUBJ
    img[100:140, 140:150] = [0.0, 0.9, 0.9]
    out = portrait_blur(img, [big, small], focus=0, aperture=1.0, focal_length_35mm=50.0, grain=False,
                        max_blur_frac=0.1)
    np.testing.assert_allclose(out[60:200, 120:180], img[60:200, 120:180], atol=1e-6)
    step_in = abs(float(img[140, 29, 0] - img[140, 30, 0]))
    step_out = abs(float(out[140, 29, 0] - out[140, 30, 0]))
    assert step_out < 0.5 * step_in


def test_grain_matches_noise_model_in_blurred_areas():
    img, m = scene()
    model = NoiseModel(0.0, 1e-4)  # sigma = 0.01 everywhere
    out = portrait_blur(img, [m], aperture=1.0, focal_length_35mm=50.0, grain=True, noise=model, seed=3,
                        max_blur_frac=0.1)
    patch = out[5:40, 5:60, 1]
    assert float(patch.std()) == pytest.approx(0.01, rel=0.15)
    assert float(patch.mean()) == pytest.approx(BG[1], abs=0.003)
    np.testing.assert_allclose(out[m > 0.5], img[m > 0.5], atol=1e-6)  # the sharp subject keeps its own grain


# ---------------------------------------------------------------------------------------------- stage light --

def test_stage_light_requires_person_and_strength_zero_is_identity():
    img, m = scene()
    with pytest.raises(ValueError, match="needs a detected person"):
        stage_light(img, [np.zeros_like(m)])
    np.testing.assert_allclose(stage_light(img, [m], strength=0.0), img, atol=0)


def test_stage_light_black_background_lit_subject():
    img, m = scene()
    out = stage_light(img, [m], falloff=0.0, edge_softness=0.0)
    np.testing.assert_allclose(out[m == 0], 0.0, atol=0)
    np.testing.assert_allclose(out[m > 0.5], img[m > 0.5], atol=1e-6)
    soft = stage_light(img, [m], falloff=0.5, edge_softness=0.02)
    col = soft[:, 150, 0]
    assert col[60] > col[170] > col[189]  # fades towards the bottom of the subject
    assert float(col[:49].max()) == 0.0


def test_stage_light_mono_is_neutral():
    img, m = scene()
    out = stage_light(img, [m], mono=True, falloff=0.0, edge_softness=0.0, mono_contrast=0.0)
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-6)
    np.testing.assert_allclose(out[..., 1], out[..., 2], atol=1e-6)
    from campipe.colour import luminance
    np.testing.assert_allclose(luminance(out)[m > 0.5], luminance(img)[m > 0.5], rtol=1e-4)


def test_stage_light_focus_lights_one_person():
    img, m = scene()
    other = np.zeros_like(m)
    other[10:60, 10:40] = 1.0
    both = stage_light(img, [m, other], falloff=0.0, edge_softness=0.0)
    only = stage_light(img, [m, other], focus=0, falloff=0.0, edge_softness=0.0)
    assert float(both[30, 20].sum()) > 0.0
    np.testing.assert_allclose(only[30, 20], 0.0, atol=0)
    np.testing.assert_allclose(only[m > 0.5], img[m > 0.5], atol=1e-6)
    with pytest.raises(ValueError, match="focus person 5 does not exist"):
        stage_light(img, [m, other], focus=5)
