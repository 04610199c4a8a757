"""Tests for campipe.effects.subject_tone: identities, faces reaching the target, sky and background untouched."""
from __future__ import annotations

import numpy as np
import pytest

from campipe.colour import luminance
from campipe.effects.subject_tone import face_region, lstar_to_y, subject_tone, y_to_lstar


def group(h=120, w=200):
    """Two people (rectangles) with a skin 'face' patch each, darker/brighter than target, bright sky on top."""
    img = np.full((h, w, 3), 0.3, np.float32)
    img[:30] = [2.0, 2.2, 2.6]  # bright sky (above 1: scene-referred highlight)
    persons, skin = [], np.zeros((h, w), np.float32)
    for x0, level in ((20, 0.1), (120, 0.6)):
        m = np.zeros((h, w), np.float32)
        m[40:120, x0:x0 + 50] = 1.0
        img[40:120, x0:x0 + 50] = level * np.array([1.0, 0.8, 0.7], np.float32)
        skin[45:65, x0 + 15:x0 + 35] = 1.0
        persons.append(m)
    sky = np.zeros((h, w), np.float32)
    sky[:30] = 1.0
    return img, persons, skin, sky


def test_lstar_conversions_exact():
    assert lstar_to_y(100.0) == pytest.approx(1.0)
    assert lstar_to_y(50.0) == pytest.approx(0.184187, rel=1e-5)
    assert float(y_to_lstar(np.float32(0.184187))) == pytest.approx(50.0, abs=1e-3)
    assert lstar_to_y(4.0) == pytest.approx(4.0 / 903.2963)


def test_identities(linear_image):
    img, persons, skin, sky = group()
    np.testing.assert_allclose(subject_tone(img, persons, skin, sky, strength=0.0), img, atol=0)
    np.testing.assert_allclose(subject_tone(img, [], skin, sky), img, atol=0)
    z = np.zeros(img.shape[:2], np.float32)
    np.testing.assert_allclose(subject_tone(img, [z, z], skin, sky), img, atol=0)


def test_faces_reach_target_and_sky_background_untouched():
    img, persons, skin, sky = group()
    out = subject_tone(img, persons, skin, sky, face_target_L=60.0)
    for m in persons:
        f = face_region(m, skin)
        lstar = float(np.median(y_to_lstar(luminance(out)[f])))
        assert lstar == pytest.approx(60.0, abs=0.5)
    np.testing.assert_allclose(out[:30], img[:30], atol=0)  # sky exactly unchanged
    np.testing.assert_allclose(out[35:, 90:110], img[35:, 90:110], rtol=1e-6)  # background between people


def test_exposure_ev_shifts_the_target():
    img, persons, skin, sky = group()
    out = subject_tone(img, persons, skin, sky, face_target_L=60.0, exposure_ev=1.0)
    f = face_region(persons[1], skin)
    y = float(np.median(luminance(out)[f]))
    assert y * 2.0 == pytest.approx(lstar_to_y(60.0), rel=1e-3)  # the face reaches the target after +1 EV


def test_partial_strength_is_proportional_in_stops():
    img, persons, skin, sky = group()
    full = subject_tone(img, persons, skin, sky, strength=1.0)
    half = subject_tone(img, persons, skin, sky, strength=0.5)
    p = (80, 45)  # inside person 0, away from its edges
    ev_full = np.log2(full[p][1] / img[p][1])
    ev_half = np.log2(half[p][1] / img[p][1])
    assert ev_half == pytest.approx(ev_full / 2, rel=1e-4)


def test_max_ev_clamps_and_hue_preserved():
    img, persons, skin, sky = group()
    out = subject_tone(img, persons, skin, sky, max_ev=1.0)
    p = (80, 45)
    assert out[p][1] / img[p][1] == pytest.approx(2.0, rel=1e-4)
    np.testing.assert_allclose(out[p] / out[p][1], img[p] / img[p][1], rtol=1e-5)


def test_head_proxy_without_skin():
    img, persons, _, sky = group()
    out = subject_tone(img, persons, None, sky)
    assert not np.allclose(out[80, 45], img[80, 45])


def test_bad_parameters():
    img, persons, skin, sky = group()
    for kw in ({"strength": 2.0}, {"face_target_L": 0.0}, {"contrast": 2.0}, {"max_ev": -1.0}):
        with pytest.raises(ValueError, match="subject_tone."):
            subject_tone(img, persons, skin, sky, **kw)
