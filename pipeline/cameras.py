"""Camera models for the sensor simulator: colour matrices, CFA layout, black/white levels and an ISO noise model.

Colour matrices are the XYZ -> camera matrices that Adobe's DNG Converter writes as the D65 ``ColorMatrix`` of each
camera, as published (x 10000) in dcraw's ``adobe_coeff`` table and LibRaw's ``colordata.cpp``; they are
*un-normalised*: the camera response to a neutral is not (1, 1, 1) (that ratio is what AsShotNeutral records).
Only the D65 matrix is published in that table, so each camera has one matrix with CalibrationIlluminant1 = 21
(D65); a DNG with a single ColorMatrix is valid (the reader uses it for every illuminant).

Noise model (normalised units: signal ``x`` in [0, 1] = (DN - black) / (white - black)), per pixel::

    variance(x) = S * x + O,     S = g / full_well_e,
    O = (read_e * g / full_well_e) ** 2 + (read_dn / (white - black)) ** 2,     g = ISO / base_ISO

i.e. Poisson shot noise of ``full_well_e / g`` electrons at full scale, read noise before the ISO gain (electrons)
and after it (ADC, DN). This is exactly the DNG ``NoiseProfile`` (tag 51041) form ``variance = S*x + O``.
The sensor figures (full well, read noise, black/white levels) are *approximate*, in the range of published
measurements (photonstophotos.net, sensorgen.info, LibRaw black/white levels); they give realistic noise levels, not
a calibration of any particular body. Dual-gain sensors (D850 above ISO 400, A7 III above ISO 640) are modelled
with a single read-noise pair.

References: Adobe DNG Specification 1.4/1.6 (ColorMatrix1, CalibrationIlluminant1, NoiseProfile); dcraw
``adobe_coeff``; LibRaw ``colordata.cpp``; Foi et al., "Practical Poissonian-Gaussian noise modeling and fitting for
single-image raw-data", IEEE TIP 2008.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: EXIF LightSource / DNG CalibrationIlluminant codes (EXIF 2.3 table, DNG spec).
LIGHT_SOURCE_CODES = {
    "D65": 21, "D50": 23, "D55": 20, "D75": 22, "A": 17, "B": 18, "C": 19,
    "FL2": 14,  # cool white fluorescent (F2)
    "FL11": 15,  # white fluorescent (F11 is the narrow-band one; closest EXIF code)
}


@dataclass(frozen=True)
class Camera:
    """A sensor model.

    Attributes:
        key: short CLI name (``--camera``).
        make, model: EXIF Make / Model; ``unique_model`` is DNG UniqueCameraModel.
        color_matrix: (3, 3) XYZ -> camera native RGB under ``calibration_illuminant`` (DNG ColorMatrix1).
        calibration_illuminant: EXIF LightSource code of that matrix (21 = D65).
        cfa: 2x2 Bayer pattern, row-major, e.g. ``"RGGB"``.
        bits: ADC bit depth; ``black_level`` / ``white_level`` in DN.
        base_iso, full_well_e: electrons at full scale (white - black) at base ISO.
        read_e: read noise before the ISO gain (electrons rms); read_dn: read noise after it (DN rms).
    """

    key: str
    make: str
    model: str
    unique_model: str
    color_matrix: tuple[float, ...]
    calibration_illuminant: int
    cfa: str
    bits: int
    black_level: int
    white_level: int
    base_iso: int
    full_well_e: float
    read_e: float
    read_dn: float

    @property
    def matrix(self) -> np.ndarray:
        """ColorMatrix1 as a float64 (3, 3) array (XYZ -> camera)."""
        return np.asarray(self.color_matrix, dtype=np.float64).reshape(3, 3)

    def noise_profile(self, iso: float) -> tuple[float, float]:
        """(S, O) of ``variance = S*x + O`` in normalised units at ``iso``."""
        if iso <= 0:
            raise ValueError(f"ISO must be positive, got {iso}")
        g = float(iso) / self.base_iso
        s = g / self.full_well_e
        o = (self.read_e * g / self.full_well_e) ** 2 + (self.read_dn / (self.white_level - self.black_level)) ** 2
        return s, o


def _m(*v: int) -> tuple[float, ...]:
    return tuple(x / 10000.0 for x in v)


CAMERAS: dict[str, Camera] = {
    c.key: c
    for c in (
        Camera(
            key="canon-5d4", make="Canon", model="Canon EOS 5D Mark IV", unique_model="Canon EOS 5D Mark IV",
            color_matrix=_m(6446, -366, -864, -4436, 12204, 2513, -952, 2496, 6348),
            calibration_illuminant=21, cfa="RGGB", bits=14, black_level=512, white_level=16383,
            base_iso=100, full_well_e=68000.0, read_e=2.5, read_dn=2.5,
        ),
        Camera(
            key="nikon-d850", make="NIKON CORPORATION", model="NIKON D850", unique_model="Nikon D850",
            color_matrix=_m(10405, -3755, -1270, -5461, 13787, 1793, -1040, 2015, 6785),
            calibration_illuminant=21, cfa="RGGB", bits=14, black_level=400, white_level=15520,
            base_iso=64, full_well_e=56000.0, read_e=1.5, read_dn=0.8,
        ),
        Camera(
            key="sony-a7m3", make="SONY", model="ILCE-7M3", unique_model="Sony ILCE-7M3",
            color_matrix=_m(7374, -2389, -551, -5435, 13162, 2519, -1006, 1795, 6552),
            calibration_illuminant=21, cfa="RGGB", bits=14, black_level=512, white_level=16383,
            base_iso=100, full_well_e=50000.0, read_e=1.5, read_dn=1.65,
        ),
    )
}

#: Aliases accepted by :func:`get_camera` (case-insensitive): full model names.
_ALIASES = {c.unique_model.lower(): k for k, c in CAMERAS.items()} | {c.model.lower(): k for k, c in CAMERAS.items()}


def get_camera(name: str) -> Camera:
    """Look a camera up by key (``sony-a7m3``) or model name (``"Sony ILCE-7M3"``); ValueError names the choices."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in CAMERAS:
        raise ValueError(f"unknown camera {name!r}; choose one of: {', '.join(CAMERAS)}")
    return CAMERAS[key]
