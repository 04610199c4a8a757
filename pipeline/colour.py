"""Colour spaces used by campipe, with matrices computed by colour-science and applied with numpy.

Working space: **linear Rec.2020 primaries, D65 white** ("linear Rec.2020"). Chosen over ProPhoto because it is
D65-native (no chromatic adaptation to the sRGB/P3 output spaces, which are D65 too), wide enough for camera gamuts
of real scenes, and its primaries are real colours (ProPhoto's blue and green are imaginary, which makes per-channel
operations such as tone curves produce odd hues).

Output spaces: sRGB (IEC 61966-2-1) and Display P3 (P3 primaries, D65, sRGB transfer function).

All functions take/return float32 arrays of shape (..., 3); linear values are scene- or display-linear, encoded
values are in [0, 1] after clipping.

References: colour-science (RGB_COLOURSPACES, matrix_RGB_to_RGB), IEC 61966-2-1, ITU-R BT.2020, SMPTE EG 432-1.
"""
from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

from . import _matrices as M

WORKING_SPACE = "ITU-R BT.2020"
OUTPUT_SPACES = {"srgb": "sRGB", "display-p3": "Display P3"}


def __getattr__(name):
    """``campipe.colour.colour`` is colour-science, imported on first use (it costs ~0.6 s at start-up)."""
    if name == "colour":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # colour-science warns about matplotlib at import
            import colour
        return colour
    raise AttributeError(name)


@lru_cache(maxsize=None)
def _rgb_space(name: str):
    return __getattr__("colour").RGB_COLOURSPACES[name]


# The fixed matrices below were computed by colour-science (campipe.gen_matrices writes _matrices.py; a test
# recomputes them and checks they are identical), so that start-up does not pay colour-science's import.

@lru_cache(maxsize=None)
def xyz_to_working() -> np.ndarray:
    """3x3 matrix XYZ (D65) -> linear working RGB."""
    return np.asarray(M.XYZ_TO_WORKING, dtype=np.float64)


@lru_cache(maxsize=None)
def working_to_xyz() -> np.ndarray:
    """3x3 matrix linear working RGB -> XYZ (D65)."""
    return np.asarray(M.WORKING_TO_XYZ, dtype=np.float64)


@lru_cache(maxsize=None)
def working_to_output(space: str) -> np.ndarray:
    """3x3 matrix linear working RGB -> linear output RGB ('srgb' or 'display-p3'); both D65, so no adaptation."""
    if space not in OUTPUT_SPACES:
        raise ValueError(f"unknown output space {space!r}; choose one of {', '.join(OUTPUT_SPACES)}")
    return np.asarray(M.WORKING_TO_SRGB if space == "srgb" else M.WORKING_TO_DISPLAY_P3, dtype=np.float64)


def rgb_to_xyz(space: str) -> np.ndarray:
    """3x3 matrix linear output-space RGB ('srgb' / 'display-p3') -> XYZ (D65)."""
    return np.asarray(M.SRGB_TO_XYZ if space == "srgb" else M.DISPLAY_P3_TO_XYZ, dtype=np.float64)


@lru_cache(maxsize=None)
def output_to_working(space: str) -> np.ndarray:
    return np.linalg.inv(working_to_output(space))


#: Luminance weights (Y row of working->XYZ).
def luminance_weights() -> np.ndarray:
    return working_to_xyz()[1].astype(np.float32)


def apply_matrix(img: np.ndarray, m: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Apply a 3x3 matrix to (..., 3) float32 pixels; ``out`` may alias ``img``.

    (H, W, 3) float32 images go through ``cv2.transform`` (multi-threaded SIMD, ~6x numpy's matmul here)."""
    m = np.asarray(m, dtype=np.float32)
    if img.ndim == 3 and img.dtype == np.float32 and img.flags.c_contiguous and img.shape[0] * img.shape[1] < 2**31:
        import cv2

        res = cv2.transform(img, m)
        if out is None:
            return res
        out[...] = res
        return out
    flat = np.asarray(img, dtype=np.float32).reshape(-1, 3)
    res = flat @ m.T
    if out is None:
        return res.reshape(img.shape).astype(np.float32, copy=False)
    out.reshape(-1, 3)[...] = res
    return out


def luminance(img: np.ndarray) -> np.ndarray:
    """Relative luminance Y of linear working RGB, float32 (H, W)."""
    return img @ luminance_weights()


_SRGB_T = 0.0031308


def srgb_encode_fast(lin: np.ndarray, out: np.ndarray | None = None, scratch: np.ndarray | None = None) -> np.ndarray:
    """Exact sRGB encoding of float32 (H, W, 3) with in-place SIMD passes (no LUT, no branch):
    y = P(max(x, t)) + 12.92 * min(x, t) - P(t), where P is the power segment and t the breakpoint; for x >= t this
    is P(x), for x < t it is 12.92 x. Input clipped to [0, 1].

    ``out`` may be ``lin`` (in place); ``scratch`` (float32, same shape, optional) holds min(x, t) so that nothing is
    allocated (callers working in bands pass one per band)."""
    import cv2

    x = np.asarray(lin, dtype=np.float32)
    if out is None:
        out = np.empty_like(x)
    t = np.float32(_SRGB_T)
    np.clip(x, 0.0, 1.0, out=out)
    lo = np.minimum(out, t, out=scratch)
    np.maximum(out, t, out=out)
    cv2.pow(out, 1.0 / 2.4, dst=out)
    return cv2.addWeighted(out, 1.055, lo, 12.92, -0.055 - 12.92 * _SRGB_T, dst=out)


def srgb_encode(lin: np.ndarray) -> np.ndarray:
    """sRGB transfer function (OETF as used for display encoding); input clipped to [0, 1]."""
    x = np.clip(lin, 0.0, 1.0).astype(np.float32, copy=False)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4, dtype=np.float32) - 0.055).astype(np.float32)


def srgb_decode(enc: np.ndarray) -> np.ndarray:
    """Inverse sRGB transfer function; input in [0, 1]."""
    x = np.clip(enc, 0.0, 1.0).astype(np.float32, copy=False)
    return np.where(x <= 0.04045, x / 12.92, np.power((x + 0.055) / 1.055, 2.4, dtype=np.float32)).astype(np.float32)


def working_to_display(img: np.ndarray, space: str = "srgb") -> np.ndarray:
    """Linear working RGB (display-referred, 1.0 = white) -> encoded output RGB in [0, 1]."""
    return srgb_encode(apply_matrix(img, working_to_output(space)))


def display_to_working(enc: np.ndarray, space: str = "srgb") -> np.ndarray:
    """Encoded sRGB / Display P3 in [0, 1] -> linear working RGB."""
    return apply_matrix(srgb_decode(enc), output_to_working(space))


def working_to_lab(img: np.ndarray) -> np.ndarray:
    """Linear working RGB -> CIE L*a*b* (D65 reference white), float32 (..., 3)."""
    xyz = apply_matrix(np.maximum(img, 0), working_to_xyz())
    colour = __getattr__("colour")
    return np.asarray(colour.XYZ_to_Lab(xyz, np.asarray(M.D65_XY)), dtype=np.float32)


def delta_e_2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference between two L*a*b* arrays (..., 3)."""
    return np.asarray(__getattr__("colour").delta_E(lab1, lab2, method="CIE 2000"), dtype=np.float32)
