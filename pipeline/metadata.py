"""Read capture metadata (EXIF) from any input campipe reads, with exifread (TIFF-based RAWs such as DNG/NEF/CR2/ARW,
JPEG, HEIC, PNG, WebP) and tifffile (DNG colour tags: ColorMatrix1/2, CalibrationIlluminant1/2, AsShotNeutral,
NoiseProfile, BaselineExposure).

Returned values are plain Python types so they can go to JSON and to the output's EXIF.

References: EXIF 2.32 (CIPA DC-008), Adobe DNG Specification 1.6 (tags 50706-51041).
"""
from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("campipe")

# DNG tag ids
DNG_TAGS = {
    50706: "DNGVersion", 50708: "UniqueCameraModel", 50721: "ColorMatrix1", 50722: "ColorMatrix2",
    50778: "CalibrationIlluminant1", 50779: "CalibrationIlluminant2", 50728: "AsShotNeutral",
    50730: "BaselineExposure", 51041: "NoiseProfile", 50714: "BlackLevel", 50717: "WhiteLevel",
}
# EXIF LightSource codes used by CalibrationIlluminant
ILLUMINANTS = {17: "A", 18: "B", 19: "C", 20: "D55", 21: "D65", 22: "D75", 23: "D50", 24: "ISO Studio Tungsten",
               1: "Daylight", 2: "Fluorescent", 3: "Tungsten", 4: "Flash", 10: "Cloudy", 11: "Shade"}


def _ratio(v) -> float | None:
    try:
        if hasattr(v, "num") and hasattr(v, "den"):
            return float(v.num) / float(v.den) if v.den else None
        return float(Fraction(str(v)))
    except (ValueError, ZeroDivisionError, TypeError):
        return None


def _first(tag):
    vals = getattr(tag, "values", None)
    if isinstance(vals, (list, tuple)) and vals:
        return vals[0]
    return vals if vals is not None else str(tag)


def read_exif(path: str | Path) -> dict[str, Any]:
    """Capture metadata as a flat dict: camera_make, camera_model, lens, iso, exposure_time (s), f_number,
    focal_length (mm), focal_length_35mm, datetime_original, orientation (EXIF 1-8), software. Missing -> absent."""
    import exifread

    out: dict[str, Any] = {}
    try:
        with open(path, "rb") as f:
            tags = exifread.process_file(f, details=False, strict=False)
    except Exception as e:  # exifread raises many types on odd files; metadata is best-effort
        log.debug("exif read failed for %s: %s", path, e)
        return out

    def s(key):
        t = tags.get(key)
        return str(t).strip().strip("\x00") if t is not None and str(t).strip() else None

    for key, name in (("Image Make", "camera_make"), ("Image Model", "camera_model"),
                      ("EXIF LensModel", "lens"), ("EXIF DateTimeOriginal", "datetime_original"),
                      ("Image Software", "software")):
        v = s(key)
        if v:
            out[name] = v
    if out.get("datetime_original") is None and s("Image DateTime"):
        out["datetime_original"] = s("Image DateTime")
    for key, name in (("EXIF ExposureTime", "exposure_time"), ("EXIF FNumber", "f_number"),
                      ("EXIF FocalLength", "focal_length")):
        t = tags.get(key)
        if t is not None:
            v = _ratio(_first(t))
            if v is not None:
                out[name] = v
    for key in ("EXIF ISOSpeedRatings", "EXIF PhotographicSensitivity", "Image ISOSpeedRatings"):
        t = tags.get(key)
        if t is not None:
            try:
                out["iso"] = int(_first(t))
                break
            except (TypeError, ValueError):
                pass
    t = tags.get("EXIF FocalLengthIn35mmFilm")
    if t is not None:
        try:
            out["focal_length_35mm"] = float(_first(t))
        except (TypeError, ValueError):
            pass
    t = tags.get("Image Orientation")
    if t is not None:
        try:
            out["orientation"] = int(_first(t))
        except (TypeError, ValueError):
            pass
    return out


def read_dng_tags(path: str | Path) -> dict[str, Any]:
    """DNG colour/noise tags from IFD0 with tifffile (empty dict for non-TIFF files)."""
    import tifffile

    out: dict[str, Any] = {}
    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            for tag in page.tags.values():
                if tag.code in DNG_TAGS:
                    out[DNG_TAGS[tag.code]] = tag.value
    except Exception as e:  # not a TIFF, or broken: caller falls back to what LibRaw reports
        log.debug("no DNG tags from %s: %s", path, e)
        return {}
    res: dict[str, Any] = {}
    for k, v in out.items():
        if k in ("ColorMatrix1", "ColorMatrix2", "AsShotNeutral", "NoiseProfile", "BaselineExposure",
                 "BlackLevel", "WhiteLevel"):
            arr = np.asarray(v, dtype=np.float64).ravel()
            # tifffile returns rationals as (num, den) pairs for SRATIONAL/RATIONAL
            if k in ("ColorMatrix1", "ColorMatrix2", "AsShotNeutral", "BaselineExposure") and arr.size in (2, 6, 18, 24):
                arr = arr[0::2] / np.where(arr[1::2] == 0, 1, arr[1::2])
            res[k] = arr.tolist()
        else:
            res[k] = v if not isinstance(v, bytes) else v.decode("latin-1", "replace").strip("\x00")
    return res


def shutter_text(t: float | None) -> str | None:
    if not t:
        return None
    return f"1/{round(1 / t)} s" if t < 1 else f"{t:g} s"
