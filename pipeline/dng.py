"""Write a simulated Bayer raw as a valid DNG 1.4 file with tifffile (plus a small EXIF IFD).

Layout: a little-endian classic TIFF whose IFD0 is the raw image itself (NewSubFileType 0, PhotometricInterpretation
32803 = CFA, uncompressed 16-bit), carrying the DNG tags (DNGVersion 1.4.0.0, DNGBackwardVersion 1.1.0.0,
UniqueCameraModel, CFARepeatPatternDim, CFAPattern, CFAPlaneColor, CFALayout, BlackLevelRepeatDim, BlackLevel,
WhiteLevel, DefaultCropOrigin/Size, ColorMatrix1, CalibrationIlluminant1, AsShotNeutral, BaselineExposure,
NoiseProfile) and TIFF Make/Model/Orientation/DateTime. The EXIF IFD (ExposureTime, FNumber, ISOSpeedRatings,
SensitivityType, ExifVersion, DateTimeOriginal, LightSource, FocalLength) is appended after tifffile has written the
file, because tifffile does not write ExifTag (34665) pointers itself: a placeholder private tag is written in the
same sorted position and patched into ExifTag pointing at the appended IFD.

The write is atomic (temporary file in the destination folder, then ``os.replace``).

References: Adobe DNG Specification 1.4.0.0 (chapters 4-6), TIFF 6.0 (IFD structure), EXIF 2.32 (tag numbers),
TIFF/EP ISO 12234-2 (CFA tags).
"""
from __future__ import annotations

import os
import struct
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import tifffile

from .simulate import SimulatedRaw, cfa_indices

#: Placeholder tag code written by tifffile and patched into ExifTag (34665); sorts at the same IFD position.
_EXIF_PLACEHOLDER = 34666
_EXIF_TAG = 34665

# TIFF field types
_BYTE, _ASCII, _SHORT, _LONG, _RATIONAL, _UNDEFINED, _SRATIONAL, _DOUBLE = 1, 2, 3, 4, 5, 7, 10, 12


def _rational(v: float, denom: int = 1_000_000) -> tuple[int, int]:
    f = Fraction(float(v)).limit_denominator(denom)
    return f.numerator, f.denominator


def _srationals(values, denom: int = 10000) -> tuple[int, ...]:
    out: list[int] = []
    for v in values:
        f = Fraction(float(v)).limit_denominator(denom)
        out += [f.numerator, f.denominator]
    return tuple(out)


def _rationals(values, denom: int = 1_000_000) -> tuple[int, ...]:
    out: list[int] = []
    for v in values:
        out += list(_rational(v, denom))
    return tuple(out)


def dng_tags(sim: SimulatedRaw, orientation: int = 1) -> list[tuple]:
    """The IFD0 extratags (tifffile tuples: code, dtype, count, value, writeonce) for ``sim``."""
    cam = sim.camera
    h, w = sim.cfa.shape
    s, o = sim.noise_profile
    cfa = tuple(int(v) for v in cfa_indices(cam.cfa).ravel())
    ascii_ = lambda text: (_ASCII, 0, text, True)  # noqa: E731  (tifffile computes the count)
    return [
        (271, *ascii_(cam.make)),                                   # Make
        (272, *ascii_(cam.model)),                                  # Model
        (274, _SHORT, 1, int(orientation), True),                   # Orientation
        (306, *ascii_(sim.exif.get("datetime", "2026:01:01 12:00:00"))),  # DateTime
        (33421, _SHORT, 2, (2, 2), True),                           # CFARepeatPatternDim
        (33422, _BYTE, 4, cfa, True),                               # CFAPattern
        (_EXIF_PLACEHOLDER, _LONG, 1, 0, True),                     # -> ExifTag, patched after writing
        (50706, _BYTE, 4, (1, 4, 0, 0), True),                      # DNGVersion
        (50707, _BYTE, 4, (1, 1, 0, 0), True),                      # DNGBackwardVersion
        (50708, *ascii_(cam.unique_model)),                         # UniqueCameraModel
        (50710, _BYTE, 3, (0, 1, 2), True),                         # CFAPlaneColor
        (50711, _SHORT, 1, 1, True),                                # CFALayout: rectangular
        (50713, _SHORT, 2, (2, 2), True),                           # BlackLevelRepeatDim
        (50714, _LONG, 4, (cam.black_level,) * 4, True),            # BlackLevel
        (50717, _LONG, 1, cam.white_level, True),                   # WhiteLevel
        (50719, _LONG, 2, (0, 0), True),                            # DefaultCropOrigin
        (50720, _LONG, 2, (w, h), True),                            # DefaultCropSize
        (50721, _SRATIONAL, 9, _srationals(cam.color_matrix), True),  # ColorMatrix1
        (50728, _RATIONAL, 3, _rationals(sim.as_shot_neutral), True),  # AsShotNeutral
        (50730, _SRATIONAL, 1, _srationals([sim.baseline_exposure], 1_000_000), True),  # BaselineExposure
        (50778, _SHORT, 1, cam.calibration_illuminant, True),       # CalibrationIlluminant1
        (51041, _DOUBLE, 6, (s, o) * 3, True),                      # NoiseProfile: (S, O) per CFA plane
    ]


def _exif_entries(sim: SimulatedRaw) -> list[tuple[int, int, int, bytes]]:
    """EXIF IFD entries (code, type, count, little-endian payload bytes), sorted by code."""
    e = sim.exif
    r = lambda v: struct.pack("<2I", *_rational(v, 100000))  # noqa: E731
    dt = (e.get("datetime", "2026:01:01 12:00:00") + "\0").encode("ascii")
    iso = min(int(sim.iso), 65535)
    return [
        (33434, _RATIONAL, 1, r(e["exposure_time"])),             # ExposureTime
        (33437, _RATIONAL, 1, r(e["f_number"])),                  # FNumber
        (34855, _SHORT, 1, struct.pack("<H", iso)),               # ISOSpeedRatings (PhotographicSensitivity)
        (34864, _SHORT, 1, struct.pack("<H", 3)),                 # SensitivityType: ISO speed
        (36864, _UNDEFINED, 4, b"0232"),                          # ExifVersion
        (36867, _ASCII, len(dt), dt),                             # DateTimeOriginal
        (37384, _SHORT, 1, struct.pack("<H", int(e.get("light_source", 0)))),  # LightSource
        (37386, _RATIONAL, 1, r(e["focal_length"])),              # FocalLength
    ]


def _build_ifd(entries: list[tuple[int, int, int, bytes]], at: int) -> bytes:
    """Serialise a little-endian IFD placed at file offset ``at`` (word aligned), out-of-line values after it."""
    n = len(entries)
    data_at = at + 2 + 12 * n + 4
    head = [struct.pack("<H", n)]
    tail = b""
    for code, typ, count, payload in entries:
        if len(payload) <= 4:
            head.append(struct.pack("<HHI", code, typ, count) + payload.ljust(4, b"\0"))
        else:
            head.append(struct.pack("<HHII", code, typ, count, data_at + len(tail)))
            tail += payload + (b"\0" if len(payload) % 2 else b"")
    head.append(struct.pack("<I", 0))
    return b"".join(head) + tail


def _patch_exif(path: Path, sim: SimulatedRaw) -> None:
    with tifffile.TiffFile(path) as tf:
        tag = tf.pages[0].tags[_EXIF_PLACEHOLDER]
        entry_offset = tag.offset
        if tf.byteorder != "<" or tf.is_bigtiff:
            raise RuntimeError("expected a little-endian classic TIFF from tifffile")
    with open(path, "r+b") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        pad = (-end) % 4
        f.write(b"\0" * pad)
        at = end + pad
        f.write(_build_ifd(_exif_entries(sim), at))
        f.seek(entry_offset)
        code, typ, count = struct.unpack("<HHI", f.read(8))
        if code != _EXIF_PLACEHOLDER or typ != _LONG or count != 1:
            raise RuntimeError(f"unexpected placeholder entry at {entry_offset}: {code} {typ} {count}")
        f.seek(entry_offset)
        f.write(struct.pack("<HHII", _EXIF_TAG, _LONG, 1, at))


def write_dng(path: str | os.PathLike, sim: SimulatedRaw, orientation: int = 1, overwrite: bool = False) -> Path:
    """Write ``sim`` to ``path`` as a DNG (atomic). Raises FileExistsError unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass overwrite=True / --overwrite to replace it)")
    raw = np.ascontiguousarray(sim.cfa, dtype=np.uint16)
    if raw.ndim != 2:
        raise ValueError(f"raw must be (H, W), got {raw.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".dng.tmp", dir=path.parent)
    os.close(fd)
    try:
        with tifffile.TiffWriter(tmp, bigtiff=False, byteorder="<") as tw:
            tw.write(raw, photometric=32803, subfiletype=0, software="campipe simulate", metadata=None,
                     resolution=None, extratags=dng_tags(sim, orientation))
        _patch_exif(Path(tmp), sim)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
