"""Tests for campipe.effects.masks: missing masks are zeros, validation, union, grow and feather."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from campipe.effects.masks import bbox, check_mask, feather, grow, mask_or_zeros, union


def test_missing_mask_is_zeros_and_shape_is_checked():
    z = mask_or_zeros({}, "sky", (3, 4))
    assert z.shape == (3, 4) and z.dtype == np.float32 and not z.any()
    assert not mask_or_zeros(None, "sky", (2, 2)).any()
    with pytest.raises(ValueError, match="sky mask has shape"):
        mask_or_zeros({"sky": np.ones((2, 2), np.float32)}, "sky", (3, 4))
    np.testing.assert_allclose(check_mask(np.array([[-0.5, 2.0]]), (1, 2)), [[0.0, 1.0]], atol=0)


def test_union_and_bbox_exact():
    a = np.array([[0.2, 0.0], [0.0, 0.9]], np.float32)
    b = np.array([[0.5, 0.1], [0.0, 0.3]], np.float32)
    np.testing.assert_allclose(union(a, b), [[0.5, 0.1], [0.0, 0.9]], atol=0)
    assert bbox(a) == (1, 1, 2, 2)
    assert bbox(np.zeros((3, 3))) is None


def test_grow_exact_square():
    m = np.zeros((7, 7), np.float32)
    m[3, 3] = 0.8
    g = grow(m, 1)
    exp = np.zeros((7, 7), np.float32)
    exp[2:5, 2:5] = 0.8
    np.testing.assert_allclose(g, exp, atol=0)
    np.testing.assert_allclose(grow(m, 0), m, atol=0)
    assert not grow(np.zeros((5, 5), np.float32), 2).any()


@pytest.mark.parametrize("sigma,atol", [(2.0, 1e-6), (20.0, 0.01)])
def test_feather_matches_gaussian(sigma, atol):
    m = np.zeros((300, 400), np.float32)
    m[100:200, 150:260] = 1.0
    ref = cv2.GaussianBlur(m, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    np.testing.assert_allclose(feather(m, sigma), ref, atol=atol)
    np.testing.assert_allclose(feather(m, 0), m, atol=0)
    assert not feather(np.zeros((9, 9), np.float32), 3.0).any()
