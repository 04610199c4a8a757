"""The banded/in-place fast paths of the non-semantic pipeline agree with straightforward NumPy references.

Covers: the fused camera -> working conversion at decode (image, clipped fraction, highlight weight, pixel checks),
the uint16-index tone LUT, the in-place output transform and ``process(keep_linear=False)``, the banded finiteness
check, the partial-sort percentile and the lazy stage-module loading of the ``basic`` style.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from campipe import colour as cc
from campipe.bands import BAND_ROWS, all_finite
from campipe.decode import _camera_to_working, _percentile
from campipe.errors import DecodeError
from campipe.isp import _tone_lut, apply_lut
from campipe.output import output_transform

CAM = np.array([[1.7, -0.5, -0.2], [-0.2, 1.4, -0.2], [0.05, -0.4, 1.35]], np.float32)


def _camera_rgb(h=5 * BAND_ROWS + 7, w=83, seed=3):
    rng = np.random.default_rng(seed)
    return (rng.random((h, w, 3)) ** 0.2 * 65535).astype(np.uint16)  # many pixels near clipping


def test_camera_to_working_matches_reference():
    rgb16 = _camera_rgb()
    img, clip_fraction, (idx, w) = _camera_to_working("x", rgb16, CAM)
    m = CAM * np.float32(1.0 / 65535.0)
    ref = np.maximum(np.einsum("ij,hwj->hwi", m.astype(np.float64), rgb16.astype(np.float64)), 0)
    np.testing.assert_allclose(img, ref, rtol=1e-5, atol=1e-6)
    assert img.dtype == np.float32 and img.min() >= 0
    cmax = rgb16.max(axis=2)
    assert clip_fraction == np.count_nonzero(cmax >= np.uint16(0.999 * 65535)) / cmax.size
    ref_idx = np.flatnonzero(cmax >= np.uint16(0.9 * 65535))
    np.testing.assert_array_equal(idx, ref_idx)  # flat indices across bands, in order
    np.testing.assert_allclose(w, np.clip(cmax.ravel()[ref_idx] / 65535.0 * 10 - 9, 0, 1), atol=1e-5)


def test_camera_to_working_rejects_zero_and_non_finite():
    with pytest.raises(DecodeError, match="all zero"):
        _camera_to_working("x", np.zeros((300, 20, 3), np.uint16), CAM)
    with pytest.raises(DecodeError, match="NaN or infinite"):
        _camera_to_working("x", _camera_rgb(), CAM * np.float32(np.inf))
    dark = np.zeros((300, 20, 3), np.uint16)
    dark[150, 3] = 10  # one non-zero pixel is content; no pixel near clipping gives no weight
    img, frac, weight = _camera_to_working("x", dark, np.eye(3, dtype=np.float32))
    assert img.any() and frac == 0.0 and weight is None


@pytest.mark.parametrize("contrast", [1.0, 1.3])
def test_tone_lut_fast_path_matches_gather(contrast):
    rng = np.random.default_rng(5)
    img = (rng.random((3 * BAND_ROWS + 5, 41, 3), dtype=np.float32) * 1.4 - 0.1).astype(np.float32)
    lut = _tone_lut(1.0, 2.0, contrast)
    n = lut.shape[0] - 1
    ref = lut[np.floor(np.clip(img * np.float32(n), 0, n) + np.float32(0.5)).astype(np.int64)]
    got = apply_lut(img, lut, 1.0)
    # the same entry except where x * n is within float32 rounding of a .5 tie (OpenCV rounds the product in
    # double precision, half to even): there the neighbouring entry, one LUT step away
    step = np.abs(np.diff(lut)).max()
    assert np.abs(got - ref).max() <= step
    pos = np.clip(img.astype(np.float64) * n, 0, n)
    near_tie = np.abs(pos - np.floor(pos) - 0.5) < 4e-3
    assert not np.any((got != ref) & ~near_tie)
    inplace = img.copy()
    assert apply_lut(inplace, lut, 1.0, out=inplace) is inplace
    np.testing.assert_array_equal(inplace, got)


@pytest.mark.parametrize("space", ["srgb", "display-p3"])
def test_output_transform_in_place_equals_new_buffer(space):
    rng = np.random.default_rng(6)
    img = (rng.random((3 * BAND_ROWS + 9, 37, 3), dtype=np.float32) * 1.2 - 0.05).astype(np.float32)
    ref = cc.srgb_encode(cc.apply_matrix(img, cc.working_to_output(space)))
    new = output_transform(img, space)
    np.testing.assert_allclose(new, ref, atol=2e-6)
    buf = img.copy()
    assert output_transform(buf, space, out=buf) is buf
    np.testing.assert_array_equal(buf, new)


def test_process_keep_linear_false_reuses_the_buffer(linear_image):
    import campipe

    keep = campipe.process(linear_image, style="basic")
    assert keep.frame.image is not keep.image and not keep.frame.meta.get("linear_released")
    rel = campipe.process(linear_image, style="basic", keep_linear=False)
    np.testing.assert_array_equal(rel.image, keep.image)
    assert rel.frame.image is rel.image and rel.frame.meta["linear_released"]
    assert "_output_in_place" not in rel.frame.meta


def test_all_finite_banded():
    a = np.zeros((5 * BAND_ROWS + 3, 7, 3), np.float32)
    assert all_finite(a)
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[4 * BAND_ROWS + 1, 2, 1] = bad
        assert not all_finite(b)
    assert not all_finite(np.array([[np.nan]], np.float32))


def test_percentile_matches_numpy():
    rng = np.random.default_rng(7)
    for n in (1, 2, 9, 1000, 4097):
        a = rng.random(n).astype(np.float32)
        for q in (0, 50, 99.9, 100):
            assert _percentile(a, q) == pytest.approx(float(np.percentile(a, q)), rel=1e-6, abs=1e-7)


def test_basic_style_imports_no_semantic_modules():
    code = ("import sys; from campipe.api import build; build('basic'); "
            "print(sorted(m for m in sys.modules if m.startswith(('campipe.effects', 'campipe.segment', 'torch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("quality", [92, 75])
@pytest.mark.parametrize("space", ["srgb", "display-p3"])
def test_jpeg_through_opencv_is_byte_identical_to_pillow(monkeypatch, quality, space):
    from campipe import encode

    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "imencodeWithMetadata"):
        pytest.skip("OpenCV without imencodeWithMetadata (< 4.12): Pillow is used")
    rng = np.random.default_rng(8)
    y, x = np.mgrid[0:150, 0:211].astype(np.float32)
    disp = np.clip(np.stack([x / 211, y / 150, 0.5 + 0.3 * np.sin(x / 7)], -1)
                   + rng.normal(0, 0.02, (150, 211, 3)), 0, 1).astype(np.float32)
    meta = {"camera_make": "Sony", "camera_model": "ILCE-7M3", "iso": 800, "exposure_time": 1 / 125,
            "f_number": 2.8, "focal_length": 35.0, "lens": "FE 35mm", "datetime_original": "2026:01:01 12:00:00"}
    fast = encode.encode_bytes(disp, "jpeg", quality, meta, space, 1.0)
    monkeypatch.setattr(encode, "_jpeg_opencv", lambda *a, **k: None)  # force the Pillow path
    ref = encode.encode_bytes(disp, "jpeg", quality, meta, space, 1.0)
    assert fast == ref


def test_quantize_bgr_is_channel_reversed():
    from campipe.output import quantize

    disp = np.random.default_rng(9).random((3 * BAND_ROWS + 1, 29, 3), dtype=np.float32)
    for dither in (0.0, 1.0):
        np.testing.assert_array_equal(quantize(disp, 8, dither, bgr=True), quantize(disp, 8, dither)[..., ::-1])


def test_decode_side_work_returns_exif_or_raises_its_error(monkeypatch, tmp_path):
    """The EXIF read overlapped with LibRaw's demosaic gives exactly read_exif's result, or re-raises its error."""
    import campipe.decode as dec

    monkeypatch.setattr(dec, "read_exif", lambda p: {"make": "X", "path": str(p)})
    assert dec._SideWork(tmp_path / "a.dng").exif() == {"make": "X", "path": str(tmp_path / "a.dng")}

    def boom(p):
        raise OSError("unreadable")

    monkeypatch.setattr(dec, "read_exif", boom)
    with pytest.raises(OSError, match="unreadable"):
        dec._SideWork(tmp_path / "b.dng").exif()
