"""Sensor simulator: an sRGB photo -> the Bayer raw a real camera would have recorded (pure functions on arrays).

Steps (:func:`simulate_raw`):

1. undo the output transform: 8-bit / float sRGB -> linear sRGB (IEC 61966-2-1) -> CIE XYZ (D65 white);
2. scene illuminant: the photo is a white-balanced rendering, so its XYZ are adapted (Bradford) from D65 to the
   chosen scene illuminant (a white object now has the illuminant's XYZ);
3. camera response: ``cam = ColorMatrix1 @ XYZ`` with the camera's *un-normalised* XYZ -> camera matrix, scaled by
   one exposure factor so that the illuminant's neutral reaches ``white_fraction`` of full scale in its largest
   channel (headroom above diffuse white; recorded as DNG BaselineExposure = -log2(white_fraction));
   AsShotNeutral = camera response to the illuminant white, normalised to green = 1;
4. mosaic to the Bayer pattern (one channel per photosite);
5. noise for the ISO: Poisson shot noise + Gaussian read noise with variance ``S*x + O`` (see
   :mod:`campipe.cameras`), in normalised units x = (DN - black) / (white - black);
6. quantise to the sensor's bit depth with its black level, clipped to [0, white_level].

Arrays: sRGB input uint8 (H, W, 3) or float in [0, 1]; linear/XYZ/camera arrays float32 (H, W, 3); the mosaic
float32 (H, W) in normalised units; the raw uint16 (H, W) in DN.

References: IEC 61966-2-1 (sRGB); Adobe DNG Specification 1.4 ("Mapping Camera Color Space to CIE XYZ Space");
Brooks et al., "Unprocessing Images for Learned Raw Denoising", CVPR 2019 (the same inversion idea);
Foi et al., IEEE TIP 2008 (Poissonian-Gaussian raw noise).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .cameras import LIGHT_SOURCE_CODES, Camera

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import colour  # noqa: E402

_OBSERVER = "CIE 1931 2 Degree Standard Observer"

#: Colour index of each CFA letter (DNG CFAPattern / CFAPlaneColor convention: 0 red, 1 green, 2 blue).
_CFA_INDEX = {"R": 0, "G": 1, "B": 2}


# ----------------------------------------------------------------------------------------------- colour helpers
@lru_cache(maxsize=None)
def _srgb_to_xyz_matrix() -> np.ndarray:
    # Derived from the sRGB primaries and the D65 chromaticity (not the 4-decimal IEC matrix), so that sRGB white
    # maps exactly to the D65 white used for the illuminant adaptation and AsShotNeutral.
    cs = colour.RGB_COLOURSPACES["sRGB"]
    return np.asarray(colour.normalised_primary_matrix(cs.primaries, cs.whitepoint), dtype=np.float64)


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    """Inverse sRGB transfer function. uint8 input is divided by 255; float input must be in [0, 1]."""
    x = np.asarray(srgb)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else np.clip(x.astype(np.float32), 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_srgb_to_xyz(lin: np.ndarray) -> np.ndarray:
    """Linear sRGB (D65) -> CIE XYZ (D65 white, Y of white = 1), float32 (..., 3)."""
    return (lin.astype(np.float32) @ _srgb_to_xyz_matrix().T.astype(np.float32)).astype(np.float32)


def illuminant_xyz(name: str) -> np.ndarray:
    """XYZ (Y = 1) of a CIE standard illuminant (``"D65"``, ``"A"``, ``"D50"``, ``"FL2"``...), float64 (3,)."""
    ccs = colour.CCS_ILLUMINANTS[_OBSERVER]
    key = name.strip().upper()
    if key not in ccs or key not in LIGHT_SOURCE_CODES:
        raise ValueError(f"unknown illuminant {name!r}; choose one of: {', '.join(LIGHT_SOURCE_CODES)}")
    return np.asarray(colour.xy_to_XYZ(ccs[key]), dtype=np.float64)


def adaptation_matrix(src: str, dst: str) -> np.ndarray:
    """3x3 Bradford chromatic adaptation XYZ(src white) -> XYZ(dst white); identity when src == dst."""
    return np.asarray(
        colour.adaptation.matrix_chromatic_adaptation_VonKries(
            illuminant_xyz(src), illuminant_xyz(dst), transform="Bradford"), dtype=np.float64)


def camera_neutral(color_matrix: np.ndarray, white_xyz: np.ndarray) -> np.ndarray:
    """Camera response to a white of XYZ ``white_xyz``, normalised to green = 1 (the DNG AsShotNeutral)."""
    n = np.asarray(color_matrix, dtype=np.float64) @ np.asarray(white_xyz, dtype=np.float64)
    if np.any(n <= 0):
        raise ValueError(f"camera response to the illuminant is not positive: {n}")
    return n / n[1]


# ----------------------------------------------------------------------------------------------- CFA
def cfa_indices(pattern: str) -> np.ndarray:
    """2x2 array of colour indices (0 R, 1 G, 2 B) for a Bayer pattern string such as ``"RGGB"``."""
    p = pattern.strip().upper()
    if sorted(p) != ["B", "G", "G", "R"]:  # a Bayer 2x2: one red, two greens, one blue
        raise ValueError(f"unsupported CFA pattern {pattern!r}; expected a 2x2 Bayer pattern such as RGGB, BGGR, GRBG")
    return np.array([_CFA_INDEX[c] for c in p], dtype=np.uint8).reshape(2, 2)


def mosaic(rgb: np.ndarray, pattern: str = "RGGB") -> np.ndarray:
    """Sample (H, W, 3) to a (H, W) Bayer mosaic: photosite (y, x) keeps channel ``cfa[y % 2, x % 2]``."""
    idx = cfa_indices(pattern)
    h, w = rgb.shape[:2]
    out = np.empty((h, w), dtype=rgb.dtype)
    for dy in range(2):
        for dx in range(2):
            out[dy::2, dx::2] = rgb[dy::2, dx::2, idx[dy, dx]]
    return out


# ----------------------------------------------------------------------------------------------- noise, ADC
def add_noise(x: np.ndarray, s: float, o: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson-Gaussian noise of variance ``s*x + o`` on a normalised signal ``x >= 0`` (float32 in, float32 out).

    Shot noise: ``Poisson(x / s) * s`` (mean x, variance s*x); read noise: ``Normal(0, sqrt(o))``.
    """
    x = np.maximum(x, 0.0)
    if s > 0:
        y = rng.poisson(x.astype(np.float64) / s).astype(np.float32) * np.float32(s)
    else:
        y = x.astype(np.float32, copy=True)
    if o > 0:
        y += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(np.sqrt(o))
    return y


def quantise(x: np.ndarray, black_level: int, white_level: int) -> np.ndarray:
    """Normalised signal -> uint16 DN: ``round(black + x * (white - black))`` clipped to [0, white_level]."""
    dn = np.rint(np.float32(black_level) + x * np.float32(white_level - black_level))
    return np.clip(dn, 0, white_level).astype(np.uint16)


#: Standard 1/3-stop shutter speeds (s), used to make the metadata's exposure time look like a camera's.
_SHUTTER_SPEEDS = tuple(1.0 / d for d in (8000, 6400, 5000, 4000, 3200, 2500, 2000, 1600, 1250, 1000, 800, 640, 500,
                                         400, 320, 250, 200, 160, 125, 100, 80, 60, 50, 40, 30, 25, 20, 15, 13, 10,
                                         8, 6, 5, 4, 3)) + (0.4, 0.5, 0.6, 0.8, 1.0, 1.3, 1.6, 2.0, 2.5, 3.2, 4.0)


def exposure_time_for(iso: float, f_number: float, ev100: float = 12.0) -> float:
    """A plausible shutter time (s) for the metadata: ``N^2 * 100 / (ISO * 2^EV100)``, snapped (in log scale)
    to the nearest standard 1/3-stop shutter speed."""
    t = f_number ** 2 * 100.0 / (iso * 2.0 ** ev100)
    return min(_SHUTTER_SPEEDS, key=lambda v: abs(np.log2(v / t)))


# ----------------------------------------------------------------------------------------------- the simulator
@dataclass
class SimulatedRaw:
    """What a DNG needs: the Bayer raw plus its colour and noise metadata.

    Attributes:
        cfa: uint16 (H, W) raw DN (black level included).
        camera: the :class:`~campipe.cameras.Camera` model.
        iso: ISO speed; noise_profile: (S, O) of variance = S*x + O, normalised units.
        as_shot_neutral: float64 (3,) camera neutral of the scene illuminant (green = 1).
        baseline_exposure: EV to add so that the source's diffuse white maps to 1.0 after white balance.
        illuminant: scene illuminant name; exif: EXIF values (exposure_time, f_number, focal_length, datetime).
    """

    cfa: np.ndarray
    camera: Camera
    iso: int
    noise_profile: tuple[float, float]
    as_shot_neutral: np.ndarray
    baseline_exposure: float
    illuminant: str
    exif: dict = field(default_factory=dict)


def srgb_to_camera(srgb: np.ndarray, camera: Camera, illuminant: str = "D65",
                   white_fraction: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free camera RGB (float32 (H, W, 3), normalised units) and AsShotNeutral for an sRGB image.

    The scale makes the illuminant's white (sRGB 1.0) reach ``white_fraction`` in the largest camera channel.
    Negative responses (colours outside the camera's gamut under this matrix) are clipped to 0: light is >= 0.
    """
    if not 0 < white_fraction <= 1:
        raise ValueError(f"white_fraction must be in (0, 1], got {white_fraction}")
    cm = camera.matrix
    m = cm @ adaptation_matrix("D65", illuminant) @ _srgb_to_xyz_matrix()  # linear sRGB -> camera
    white_cam = cm @ illuminant_xyz(illuminant)
    scale = white_fraction / float(white_cam.max())
    lin = srgb_to_linear(srgb)
    cam = lin @ (m * scale).T.astype(np.float32)
    np.maximum(cam, 0.0, out=cam)
    return cam.astype(np.float32, copy=False), camera_neutral(cm, illuminant_xyz(illuminant))


def simulate_raw(srgb: np.ndarray, camera: Camera, iso: int = 800, illuminant: str = "D65", seed: int | None = 0,
                 white_fraction: float = 0.8, f_number: float = 5.6, focal_length: float = 50.0,
                 exposure_time: float | None = None, datetime: str = "2026:01:01 12:00:00") -> SimulatedRaw:
    """Simulate the raw capture of an sRGB image (uint8 or float [0, 1], (H, W, 3)) by ``camera`` at ``iso``.

    Odd heights/widths are cropped by one pixel so the Bayer pattern tiles the frame. ``seed`` fixes the noise.
    """
    img = np.asarray(srgb)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    if h < 2 or w < 2:
        raise ValueError(f"image too small to mosaic: {img.shape}")
    img = img[:h, :w]
    cam, neutral = srgb_to_camera(img, camera, illuminant, white_fraction)
    x = mosaic(cam, camera.cfa)
    del cam
    s, o = camera.noise_profile(iso)
    rng = np.random.default_rng(seed)
    raw = quantise(add_noise(x, s, o, rng), camera.black_level, camera.white_level)
    exif = {
        "exposure_time": exposure_time if exposure_time else exposure_time_for(iso, f_number),
        "f_number": f_number, "focal_length": focal_length, "datetime": datetime,
        "light_source": LIGHT_SOURCE_CODES[illuminant.strip().upper()],
    }
    return SimulatedRaw(cfa=raw, camera=camera, iso=int(iso), noise_profile=(s, o), as_shot_neutral=neutral,
                        baseline_exposure=float(-np.log2(white_fraction)), illuminant=illuminant.strip().upper(),
                        exif=exif)
