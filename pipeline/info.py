"""``campipe info``: what a file is, without rendering it: camera, lens, ISO, exposure, white balance, CFA pattern,
black/white levels, colour matrices, dimensions (after orientation).

RAW files are opened and unpacked by LibRaw (no demosaic); encoded images are opened lazily by Pillow.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from .decode import DEFAULT_MAX_MEGAPIXELS, _pil_open, _raw_open, sniff
from .errors import DecodeError, UnsupportedFormatError
from .metadata import ILLUMINANTS, read_dng_tags, read_exif, shutter_text


def describe(path: str | Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> dict[str, Any]:
    """Metadata of ``path`` as a JSON-friendly dict."""
    p = Path(path)
    if not p.is_file():
        raise DecodeError(f"{path}: no such file")
    if p.stat().st_size == 0:
        raise DecodeError(f"{path}: empty file (0 bytes)")
    kind = sniff(p)
    info: dict[str, Any] = {"file": str(p), "bytes": p.stat().st_size}
    info.update(read_exif(p))
    if kind in ("raw", "tiff"):
        try:
            return _describe_raw(p, info, max_megapixels)
        except UnsupportedFormatError:
            if kind == "raw":
                raise
    return _describe_image(p, info, kind, max_megapixels)


def _describe_raw(p: Path, info: dict, max_megapixels: float) -> dict:
    import rawpy

    raw = _raw_open(p, max_megapixels)
    with raw:
        try:
            raw.unpack()
        except (rawpy.LibRawError, OSError) as e:
            raise DecodeError(f"{p}: RAW data is truncated or corrupt ({type(e).__name__}: {e})") from None
        s = raw.sizes
        flip = int(s.flip)
        w, h = int(s.width), int(s.height)
        if flip in (5, 6):
            w, h = h, w
        info.update({
            "format": "raw", "raw_type": str(raw.raw_type).split(".")[-1],
            "width": w, "height": h, "raw_width": int(s.raw_width), "raw_height": int(s.raw_height),
            "flip": flip,
            "cfa_pattern": ("".join(chr(raw.color_desc[i]) for i in np.asarray(raw.raw_pattern).ravel())
                            if raw.raw_pattern is not None else None),
            "black_level": [int(x) for x in raw.black_level_per_channel],
            "white_level": int(raw.white_level),
            "camera_wb": [round(float(x), 5) for x in raw.camera_whitebalance],
            "daylight_wb": [round(float(x), 5) for x in raw.daylight_whitebalance],
            "xyz_to_cam": np.round(np.asarray(raw.rgb_xyz_matrix)[:3], 5).tolist(),
        })
    dng = read_dng_tags(p) if sniff(p) == "tiff" else {}
    if "DNGVersion" in dng:
        v = dng["DNGVersion"]
        v = list(v.encode("latin-1")) if isinstance(v, str) else list(v)
        info["dng_version"] = ".".join(str(int(x)) for x in v)
    if "UniqueCameraModel" in dng:
        info["unique_camera_model"] = str(dng["UniqueCameraModel"])
    for i in (1, 2):
        if f"ColorMatrix{i}" in dng:
            info[f"color_matrix_{i}"] = np.round(np.asarray(dng[f"ColorMatrix{i}"]).reshape(3, 3), 5).tolist()
            ill = int(dng.get(f"CalibrationIlluminant{i}", 0) or 0)
            info[f"calibration_illuminant_{i}"] = ILLUMINANTS.get(ill, str(ill))
    if "AsShotNeutral" in dng:
        info["as_shot_neutral"] = [round(x, 5) for x in dng["AsShotNeutral"]]
    if "NoiseProfile" in dng:
        info["noise_profile"] = dng["NoiseProfile"]
    return info


def _describe_image(p: Path, info: dict, kind: str, max_megapixels: float) -> dict:
    from PIL import ImageCms, ImageOps

    im = _pil_open(p, max_megapixels)
    w, h = im.size
    if info.get("orientation") in (5, 6, 7, 8):
        w, h = h, w
    info.update({"format": (im.format or kind).lower(), "width": w, "height": h, "mode": im.mode})
    icc = im.info.get("icc_profile")
    if icc:
        try:
            info["icc_profile"] = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip()
        except Exception:
            info["icc_profile"] = "(unreadable)"
    return info


LABELS = [
    ("file", "File"), ("format", "Format"), ("camera_make", "Make"), ("camera_model", "Model"), ("lens", "Lens"),
    ("iso", "ISO"), ("exposure_time", "Exposure"), ("f_number", "Aperture"), ("focal_length", "Focal length"),
    ("datetime_original", "Date"), ("width", "Width"), ("height", "Height"), ("orientation", "Orientation"),
    ("cfa_pattern", "CFA pattern"), ("black_level", "Black level"), ("white_level", "White level"),
    ("camera_wb", "WB multipliers"), ("as_shot_neutral", "AsShotNeutral"), ("xyz_to_cam", "XYZ->camera"),
    ("color_matrix_1", "ColorMatrix1"), ("calibration_illuminant_1", "Illuminant 1"),
    ("color_matrix_2", "ColorMatrix2"), ("calibration_illuminant_2", "Illuminant 2"),
    ("noise_profile", "NoiseProfile"), ("icc_profile", "ICC profile"), ("dng_version", "DNG version"),
]


def format_value(key: str, v: Any) -> str:
    if key == "exposure_time":
        return shutter_text(v) or str(v)
    if key == "f_number":
        return f"f/{v:g}"
    if key == "focal_length":
        return f"{v:g} mm"
    if isinstance(v, list) and v and isinstance(v[0], list):
        return "\n".join("  ".join(f"{x:8.4f}" for x in row) for row in v)
    if isinstance(v, list):
        return ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
    return str(v)
