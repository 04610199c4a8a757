"""Linear ISP stages on the working-space frame: white balance / exposure override, highlight handling, global tone.

* ``wb``: exposure (EV) and white-balance override by correlated colour temperature (K) and tint (Duv x 1000).
  For RAW inputs the override is a per-channel gain in camera space (as-shot neutral -> neutral of the new
  illuminant), moved into the working space with the frame's camera matrix; for encoded inputs (no camera matrix)
  it is a CAT02 adaptation from the given illuminant to D65. Identity at defaults (no pass over the image).
* ``highlights``: pixels whose most-exposed camera channel is near clipping are blended toward their luminance
  (removes the magenta/cyan casts of partially clipped channels). Identity where nothing is near clipping.
* ``tone``: the global filmic base curve (Hable/Uncharted-2 shape, normalised so that ``white`` maps to 1.0) plus
  exposure and a mid-grey-anchored contrast, applied per channel through a 64k-entry LUT. Scene-referred frames
  only; display-referred inputs (JPEG/PNG/...) get exposure and contrast but not the base curve a second time.

References: Hable, "Filmic Tonemapping Operators" (2010); Ohno 2013 (CCT/Duv to xy); CIECAM02 CAT02.
"""
from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np

from . import colour as cc
from .frame import Frame
from .bands import for_each_band
from .registry import register_stage

log = logging.getLogger("campipe")

# ------------------------------------------------------------------------------------------------- white balance --


def illuminant_xy(temperature: float, tint: float = 0.0) -> np.ndarray:
    """CIE xy of a Planckian/daylight-like illuminant at ``temperature`` K with ``tint`` (Duv x 1000, + = green)."""
    if not 1500 <= temperature <= 25000:
        raise ValueError(f"wb.temperature must be within 1500..25000 K, got {temperature}")
    uv = cc.colour.temperature.CCT_to_uv_Ohno2013(np.array([temperature, tint / 1000.0]))
    return np.asarray(cc.colour.UCS_uv_to_xy(uv), dtype=np.float64)


def _xy_to_XYZ(xy) -> np.ndarray:
    return np.asarray(cc.colour.xy_to_XYZ(xy), dtype=np.float64)


def wb_matrix(meta: dict, temperature: float, tint: float) -> np.ndarray:
    """3x3 working-space matrix that re-balances the frame for an illuminant of ``temperature`` K and ``tint``."""
    target = _xy_to_XYZ(illuminant_xy(temperature, tint))
    if "xyz_to_cam" in meta and "as_shot_neutral" in meta and "cam_to_working" in meta:
        m = np.asarray(meta["xyz_to_cam"], dtype=np.float64)
        n_as = np.asarray(meta["as_shot_neutral"], dtype=np.float64)
        n_t = m @ target
        n_t = n_t / n_t[1]
        gains = (n_as / n_as[1]) / n_t  # camera-space gains relative to the as-shot balance
        c = np.asarray(meta["cam_to_working"], dtype=np.float64)
        return c @ np.diag(gains / gains[1]) @ np.linalg.inv(c)
    d65 = _xy_to_XYZ(cc.colour.CCS_ILLUMINANTS["CIE 1931 2 Degree Standard Observer"]["D65"])
    cat = np.asarray(cc.colour.adaptation.matrix_chromatic_adaptation_VonKries(target, d65, transform="CAT02"))
    return cc.xyz_to_working() @ cat @ cc.working_to_xyz()


def white_balance(image: np.ndarray, meta: dict, temperature: float = 0.0, tint: float = 0.0,
                  ev: float = 0.0) -> np.ndarray:
    """Pure function: float32 linear working RGB (H, W, 3) -> same, re-balanced and exposed by ``ev`` stops.

    ``temperature`` 0 keeps the as-shot balance (then ``tint`` must be 0 too). Returns the input object when all
    parameters are neutral.
    """
    if temperature == 0 and tint == 0 and ev == 0:
        return image
    m = np.eye(3)
    if temperature or tint:
        m = wb_matrix(meta, temperature or 6504.0, tint)
    m = m * (2.0 ** ev)
    out = cc.apply_matrix(image, m)
    return np.maximum(out, 0.0, out=out)


@register_stage("wb", requires=("linear",), params={"temperature": 0.0, "tint": 0.0, "ev": 0.0})
def wb_stage(frame: Frame, temperature: float, tint: float, ev: float) -> Frame:
    """White balance override (K, tint) and exposure compensation (EV)."""
    if not -20 <= ev <= 20:
        raise ValueError(f"wb.ev must be within -20..20 stops, got {ev}")
    frame.image = white_balance(frame.image, frame.meta, temperature, tint, ev)
    if temperature or tint:
        frame.meta["wb_override"] = {"temperature": temperature, "tint": tint}
    return frame


# ---------------------------------------------------------------------------------------------------- highlights --


def reconstruct_highlights(image: np.ndarray, weight, strength: float = 1.0) -> np.ndarray:
    """Blend near-clipped pixels toward neutral at their own luminance (in place).

    Args:
        image: float32 (H, W, 3) linear working RGB.
        weight: float32 (H, W) in [0, 1] (1 where the camera clipped), or a sparse pair (flat pixel indices,
            weights) as produced by decode, or None (nothing near clipping: identity).
        strength: 0..1, 0 = identity.
    """
    if weight is None or strength <= 0:
        return image
    flat = image.reshape(-1, 3)
    if isinstance(weight, tuple):
        idx, w = weight
    else:
        idx = np.flatnonzero(weight)
        w = np.asarray(weight, np.float32).ravel()[idx]
    if idx.size == 0:
        return image
    px = flat[idx]
    y = px @ cc.luminance_weights()
    px -= (px - y[:, None]) * (w * np.float32(strength))[:, None]
    flat[idx] = px
    return image


@register_stage("highlights", requires=("linear",), params={"strength": 1.0})
def highlights_stage(frame: Frame, strength: float) -> Frame:
    """Desaturate partially clipped highlights toward neutral (removes colour casts at clipping)."""
    weight = frame.meta.pop("_highlight_weight", None)
    frame.image = reconstruct_highlights(frame.image, weight, strength)
    return frame


# ---------------------------------------------------------------------------------------------------------- tone --

_HA, _HB, _HC, _HD, _HE, _HF = 0.15, 0.50, 0.10, 0.20, 0.02, 0.30
LUT_SIZE = 1 << 16


def _hable(x: np.ndarray) -> np.ndarray:
    return ((x * (_HA * x + _HC * _HB) + _HD * _HE) / (x * (_HA * x + _HB) + _HD * _HF)) - _HE / _HF


def filmic_curve(x: np.ndarray, white: float = 1.0, strength: float = 2.0, contrast: float = 1.0) -> np.ndarray:
    """Scene-linear -> display-linear in [0, 1]: contrast about mid grey (0.18), then Hable's shape scaled by
    ``strength`` and normalised so that ``white`` -> 1.0. Monotonic; f(0) = 0."""
    x = np.maximum(np.asarray(x, dtype=np.float64), 0.0)
    if contrast != 1.0:
        x = 0.18 * np.power(x / 0.18, contrast)
    y = _hable(x / white * strength) / _hable(strength)
    return np.clip(y, 0.0, 1.0)


@lru_cache(maxsize=16)
def _tone_lut(white: float, strength: float, contrast: float) -> np.ndarray:
    """The filmic curve sampled over [0, white] (inputs above ``white`` map to the last entry, 1.0)."""
    x = np.linspace(0.0, white, LUT_SIZE)
    return filmic_curve(x, white, strength, contrast).astype(np.float32)


def apply_lut(image: np.ndarray, lut: np.ndarray, xmax: float, out: np.ndarray | None = None) -> np.ndarray:
    """Per-channel 1-D LUT over [0, xmax] (values above xmax take the last entry, below 0 the first), nearest entry.

    float32 (H, W, 3) images are processed in bands (campipe.bands) into ``out`` (a new array if None; may be
    ``image`` itself for an in-place update); other shapes in one go."""
    n = lut.shape[0] - 1
    scale = np.float32(n / xmax)

    def gather(x: np.ndarray) -> np.ndarray:
        idx = x * scale
        np.clip(idx, 0, n, out=idx)
        idx += np.float32(0.5)
        return lut[idx.astype(np.int32)]

    if image.ndim != 3 or image.dtype != np.float32:
        res = gather(np.asarray(image, np.float32))
        if out is not None:
            out[...] = res
            return out
        return res
    if out is None:
        out = np.empty_like(image)
    if n + 1 <= 65536 and out.dtype == np.float32 and out.flags.c_contiguous and image.flags.c_contiguous:
        import cv2

        # index = round(x * scale), saturated to [0, 65535] by OpenCV's conversion to uint16 in the same pass,
        # gathered with np.take straight into the output band (mode="clip": indices past the LUT take its last entry)
        w3 = image.shape[1] * image.shape[2]

        def band(r0: int, r1: int) -> None:
            idx = cv2.multiply(image[r0:r1].reshape(r1 - r0, w3), float(scale), dtype=cv2.CV_16U)
            np.take(lut, idx, out=out[r0:r1].reshape(r1 - r0, w3), mode="clip")
    else:
        def band(r0: int, r1: int) -> None:
            out[r0:r1] = gather(image[r0:r1])

    for_each_band(image.shape[0], band)
    return out


def tone_map(image: np.ndarray, ev: float = 0.0, white: float = 1.0, strength: float = 2.0,
             contrast: float = 1.0, base_curve: bool = True, out: np.ndarray | None = None) -> np.ndarray:
    """Pure function: float32 scene-linear working RGB -> float32 display-linear working RGB in [0, 1].

    ``ev`` exposure in stops; ``white`` the scene value mapped to display white (default 1.0 = sensor clip);
    ``strength`` > 0 scales Hable's curve (higher = brighter mid-tones, more highlight compression);
    ``contrast`` gamma about mid grey (1 = none); ``base_curve=False`` skips the filmic shape (display-referred
    inputs) so that only ``ev``/``contrast`` act, and with defaults the function is then the identity on [0, 1].
    ``out`` (optional, may be ``image``) receives the result to avoid allocating a new 3-channel frame.
    """
    if not base_curve:
        out = image * np.float32(2.0 ** ev) if ev else image.copy()
        if contrast != 1.0:
            np.maximum(out, 0.0, out=out)
            out /= np.float32(0.18)
            np.power(out, np.float32(contrast), out=out)
            out *= np.float32(0.18)
        return np.clip(out, 0.0, 1.0, out=out)
    white_s = white / (2.0 ** ev)
    lut = _tone_lut(float(white_s), float(strength), float(contrast))
    return apply_lut(image, lut, white_s, out=out)


@register_stage("tone", requires=("linear",), params={"ev": 0.0, "white": 1.0, "strength": 2.0, "contrast": 1.0,
                                                      "curve": "filmic", "baseline_exposure": True})
def tone_stage(frame: Frame, ev: float, white: float, strength: float, contrast: float, curve: str,
               baseline_exposure: bool) -> Frame:
    """Global filmic tone curve: scene-linear -> display-linear (working primaries)."""
    if curve not in ("filmic", "linear"):
        raise ValueError(f"tone.curve must be 'filmic' or 'linear', got {curve!r}")
    if white <= 0 or strength <= 0 or contrast <= 0:
        raise ValueError("tone.white, tone.strength and tone.contrast must be > 0")
    if not -20 <= ev <= 20:
        raise ValueError(f"tone.ev must be within -20..20 stops, got {ev}")
    total_ev = ev + (frame.meta.get("baseline_exposure", 0.0) if baseline_exposure else 0.0)
    scene = frame.meta.get("scene_referred", True) and curve == "filmic"
    # the stage owns its frame: tone-map in place (no new 144 MB buffer at 12 MP)
    frame.image = tone_map(frame.image, total_ev, white, strength, contrast, base_curve=scene, out=frame.image)
    frame.meta["display_linear"] = True
    return frame
