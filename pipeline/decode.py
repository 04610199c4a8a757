"""Decode: any supported file -> :class:`~campipe.frame.Frame` (float32 linear Rec.2020, HWC).

RAW (DNG and every format LibRaw reads) goes through rawpy with the as-shot white balance, no auto-brightening,
linear 16-bit output **in camera RGB** (``output_color=raw``), demosaiced (AHD by default) and oriented; campipe then
applies its own camera RGB -> XYZ (D65) -> working-space matrix, computed from the camera's XYZ->camera matrix
(LibRaw's ``rgb_xyz_matrix``, or the DNG ``ColorMatrix1/2`` tags read with tifffile where LibRaw leaves it empty).

Encoded images (JPEG, PNG, TIFF 8/16-bit, HEIC/HEIF, AVIF, WebP) are linearised from their embedded ICC profile
(via Pillow ImageCms, to sRGB first) or assumed sRGB, oriented by EXIF, and converted to the working space. They are
display-referred: ``meta['scene_referred'] = False`` tells the tone stage not to apply the filmic base curve again.

Safety: the pixel count is checked against ``max_megapixels`` from the header, before any decoding, and images
smaller than ``MIN_SIDE`` pixels on a side are refused; Pillow's decompression-bomb warning is an error here;
NaN/inf (also checked in floating-point DNG data before LibRaw converts it) or all-zero data is rejected; an
almost entirely black or clipped result is decoded with a warning. Only regular files are read (a FIFO or device
would block or never end), always read-only. LibRaw's own messages on stderr are captured and folded into the
one-line error instead of leaking to the terminal.

Layouts: Bayer CFAs of any 2x2 order; X-Trans and other non-2x2 CFAs when LibRaw demosaics them (falling back to
LibRaw's LINEAR interpolation, with a warning, when the requested algorithm fails on them); linear (demosaiced) DNGs;
monochrome DNGs (grey, replicated to R = G = B, no colour matrix needed). Other layouts (e.g. 2 or 4 output colours)
are refused with a clear error.

References: LibRaw docs (output_color, use_camera_wb, no_auto_bright), dcraw ``convert_to_rgb`` (row-normalised
camera matrices), Adobe DNG Specification 1.6 chapter 6 (mapping camera to XYZ).
"""
from __future__ import annotations

import io
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from . import colour as cc
from .errors import DecodeError, UnsupportedFormatError
from .bands import for_each_band
from .frame import Frame
from .metadata import ILLUMINANTS, read_dng_tags, read_exif

log = logging.getLogger("campipe")

DEFAULT_MAX_MEGAPIXELS = 200.0
#: Smallest accepted width/height in pixels (smaller "images" are refused: no stage is meant for them).
MIN_SIDE = 8
#: Result warnings: a 99.9th-percentile brightest channel below this is "almost entirely black" ...
BLACK_WARN_LEVEL = 1.0 / 1024.0
#: ... and this fraction of clipped pixels or more is "almost entirely clipped".
CLIP_WARN_FRACTION = 0.95

# exifread logs "PNG file does not have exif data." and similar at WARNING on its own logger: not the user's problem
logging.getLogger("exifread").setLevel(logging.ERROR)
# tifffile logs damaged-structure complaints at ERROR while it still reads what it can; the one-line DecodeError
# (or LibRaw's verdict) is what the user sees
logging.getLogger("tifffile").setLevel(logging.CRITICAL)
RAW_EXTENSIONS = {".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2",
                  ".rwl", ".pef", ".srw", ".3fr", ".fff", ".iiq", ".erf", ".kdc", ".dcr", ".mos", ".mrw", ".x3f",
                  ".raw", ".mef", ".gpr"}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".heic", ".heif", ".avif", ".webp"}
SUPPORTED_EXTENSIONS = RAW_EXTENSIONS | IMAGE_EXTENSIONS

# D65 white point in XYZ (Y = 1)
_D65_XYZ = np.array([0.95047, 1.0, 1.08883])


def sniff(path: str | Path) -> str:
    """Guess the container from magic bytes: 'jpeg', 'png', 'tiff', 'heif', 'webp', or 'raw' (anything else)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise DecodeError(f"{path}: empty file (0 bytes)")
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"crx ",):
            return "raw"  # Canon CR3 is ISO-BMFF
        return "heif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return "raw"


def _check_budget(path, w: int, h: int, max_megapixels: float) -> None:
    if w <= 0 or h <= 0:
        raise DecodeError(f"{path}: image has no pixels ({w}x{h})")
    if w < MIN_SIDE or h < MIN_SIDE:
        raise DecodeError(f"{path}: image is too small ({w}x{h}); campipe needs at least {MIN_SIDE}x{MIN_SIDE} pixels")
    mp = w * h / 1e6
    if max_megapixels and mp > max_megapixels:
        raise DecodeError(f"{path}: {w}x{h} = {mp:.0f} MP exceeds the pixel budget of {max_megapixels:g} MP "
                          f"(raise it with --max-megapixels)")


def _percentile(a: np.ndarray, q: float) -> float:
    """``np.percentile(a, q)`` (linear interpolation) by partial sorting; np.percentile itself imports numpy.ma
    (~35 ms of start-up) through np.unique."""
    flat = np.ravel(a)
    pos = (flat.size - 1) * q / 100.0
    lo = int(np.floor(pos))
    hi = min(lo + 1, flat.size - 1)
    part = np.partition(flat, (lo, hi))
    return float(part[lo] + (pos - lo) * (float(part[hi]) - float(part[lo])))


def _warn_exposure(path, img: np.ndarray, clip_fraction: float | None) -> None:
    """Warn (not fail) on an almost entirely black or clipped result; both can be real photos (lens cap, sun)."""
    step = max(1, int(np.sqrt(img.shape[0] * img.shape[1] / 65536)))
    top = _percentile(img[::step, ::step].max(axis=2), 99.9)
    if top < BLACK_WARN_LEVEL:
        log.warning("%s: the image is almost entirely black (brightest pixels at %.2g of full scale): lens cap, or "
                    "a far too short exposure?", path, top)
    if clip_fraction is not None and clip_fraction >= CLIP_WARN_FRACTION:
        log.warning("%s: %.0f%% of the image is clipped (overexposed): highlights cannot be recovered", path,
                    100 * clip_fraction)


class _SideWork:
    """Work a RAW render needs that does not depend on the pixels, started on a second thread just before LibRaw's
    demosaic (rawpy releases the GIL while LibRaw runs, so it overlaps instead of following the decode): the EXIF
    read (exifread, pure Python) and the imports of the modules the later stages and the encoder use (OpenCV, Pillow,
    the dither tile). ``exif()`` joins and returns :func:`read_exif`'s result, or raises its exception, exactly as
    calling it here would. The imports are a warm-up only: a failure there resurfaces where the module is used."""

    def __init__(self, path: Path) -> None:
        import threading

        self.path, self._result, self._error = path, None, None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="campipe-decode-side", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = read_exif(self.path)
        except BaseException as e:  # noqa: BLE001 - handed to the caller by exif()
            self._error = e
        self._done.set()
        try:
            import cv2  # noqa: F401
            import PIL.Image  # noqa: F401

            from . import encode, output  # noqa: F401
            output._tpdf_tile()
        except Exception:  # noqa: BLE001 - warm-up only
            pass

    def exif(self) -> dict:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result


class _NativeStderr:
    """Capture what native code (LibRaw) writes on file descriptor 2 while the block runs.

    ``text`` holds it afterwards (stripped, at most 500 characters). Not thread-safe (fd 2 is process-wide): decode
    runs one file at a time per process.
    """

    def __enter__(self):
        import tempfile

        self.text = ""
        try:
            sys.stderr.flush()
        except (AttributeError, ValueError, OSError):
            pass
        try:
            self._tmp = tempfile.TemporaryFile()
            self._saved = os.dup(2)
            os.dup2(self._tmp.fileno(), 2)
        except OSError:  # no fd 2 (daemon) or no temp dir: just do not capture
            self._saved = None
        return self

    def __exit__(self, *exc):
        if self._saved is None:
            return False
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._tmp.seek(0)
        self.text = self._tmp.read(2000).decode("utf-8", "replace").strip()[:500]
        self._tmp.close()
        if self.text:
            log.debug("LibRaw: %s", self.text)
        return False

    def why(self) -> str:
        """The captured native message with the file path prefix LibRaw adds removed ('' if none)."""
        lines = [ln.split(": ", 1)[-1].strip() for ln in self.text.splitlines() if ln.strip()]
        return "; ".join(dict.fromkeys(lines))


def _libraw_reason(e: Exception, native: "_NativeStderr") -> str:
    why = native.why()
    msg = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
    return f"{why} ({type(e).__name__}: {msg})" if why else f"{type(e).__name__}: {msg}"


# ----------------------------------------------------------------------------------------------------------- RAW ---

def camera_to_xyz_matrix(xyz_to_cam: np.ndarray) -> np.ndarray:
    """3x3 white-balanced camera RGB -> XYZ (D65) from an XYZ->camera matrix.

    Rows of ``xyz_to_cam`` are scaled so that D65 white maps to camera (1, 1, 1) (the white-balanced neutral), as in
    dcraw's ``convert_to_rgb``; the result is its inverse. So ``camera_to_xyz_matrix(M) @ [1, 1, 1] == D65 white``.
    """
    m = np.asarray(xyz_to_cam, dtype=np.float64).reshape(3, 3)
    neutral = m @ _D65_XYZ
    if np.any(np.abs(neutral) < 1e-9):
        raise DecodeError("colour matrix maps white to zero")
    a = m / neutral[:, None]
    return np.linalg.inv(a)


def _finite(values, lo: float, hi: float) -> bool:
    try:
        a = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return False
    return a.size > 0 and bool(np.all(np.isfinite(a)) and np.all(a >= lo) and np.all(a <= hi))


def _sane_dng_tags(path, dng: dict[str, Any]) -> dict[str, Any]:
    """Drop DNG tag values that are physically implausible (with a warning) instead of letting them reach the
    stages: BaselineExposure outside +-8 EV, AsShotNeutral not in (0, 100], NoiseProfile not finite in [0, 1] or
    all (near) zero, colour matrices with non-finite or huge entries."""
    out = dict(dng)
    checks = {"BaselineExposure": (-8.0, 8.0), "AsShotNeutral": (1e-4, 100.0), "NoiseProfile": (0.0, 1.0),
              "ColorMatrix1": (-100.0, 100.0), "ColorMatrix2": (-100.0, 100.0)}
    for tag, (lo, hi) in checks.items():
        if tag in out and out[tag] is not None:
            ok = _finite(out[tag], lo, hi)
            if ok and tag == "NoiseProfile":
                ok = float(np.max(np.asarray(out[tag], dtype=np.float64))) > 1e-12
            if not ok:
                log.warning("%s: ignoring implausible DNG %s %s", path, tag, str(out[tag])[:60])
                del out[tag]
    return out


def _pick_dng_matrix(tags: dict[str, Any]) -> np.ndarray | None:
    cands = []
    for i in (1, 2):
        cm = tags.get(f"ColorMatrix{i}")
        if cm is not None and len(cm) >= 9:
            ill = int(tags.get(f"CalibrationIlluminant{i}", 0) or 0)
            cands.append((0 if ILLUMINANTS.get(ill) in ("D65", "D55", "D75", "Daylight") else 1,
                          np.asarray(cm[:9], dtype=np.float64).reshape(3, 3)))
    if not cands:
        return None
    cands.sort(key=lambda c: c[0])
    return cands[0][1]


def _raw_open(path, max_megapixels: float):
    import rawpy

    raw = rawpy.RawPy()
    native = _NativeStderr()
    name, fd = str(path), None
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a non-UTF-8 file name (old cards, other OSes): rawpy only takes UTF-8 str paths,
        fd = os.open(path, os.O_RDONLY)  # so LibRaw opens it through this read-only descriptor's /proc link
        name = f"/proc/self/fd/{fd}"
    try:
        with native:
            raw.open_file(name)
    except rawpy.LibRawFileUnsupportedError:
        raw.close()
        raise UnsupportedFormatError(f"{path}: not a RAW or image format campipe can read") from None
    except (rawpy.LibRawError, OSError) as e:
        raw.close()
        raise DecodeError(f"{path}: cannot open RAW file: {_libraw_reason(e, native)}") from None
    finally:
        if fd is not None:
            os.close(fd)  # LibRaw holds its own handle once open_file has returned
    s = raw.sizes
    try:
        _check_budget(path, int(s.raw_width), int(s.raw_height), max_megapixels)
    except DecodeError:
        raw.close()
        raise
    return raw


def _check_float_dng(path, max_megapixels: float) -> None:
    """Floating-point DNG data (SampleFormat 3): reject NaN/inf before LibRaw silently turns them into numbers."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            for page in tf.pages:
                if page.sampleformat != 3 or int(page.tags.valueof(254, 0) or 0) & 1:  # floats, not a preview
                    continue
                _check_budget(path, int(page.imagewidth), int(page.imagelength), max_megapixels)
                if not np.isfinite(page.asarray()).all():
                    raise DecodeError(f"{path}: floating-point raw data contains NaN or infinite values")
    except DecodeError:
        raise
    except Exception as e:  # a damaged TIFF structure: LibRaw gets the final say
        log.debug("%s: float DNG pre-check skipped (%s: %s)", path, type(e).__name__, e)


#: Highlight weight ramp: 0 at 90 % of full scale in the most-exposed camera channel, 1 at full scale.
_NEAR_CLIP = np.uint16(0.9 * 65535)
_CLIPPED = np.uint16(0.999 * 65535)


def _camera_to_working(path, rgb16: np.ndarray, cam_to_working: np.ndarray):
    """uint16 camera RGB (H, W, 3) -> (float32 linear working RGB >= 0, clipped fraction, highlight weight).

    One pass per 64-row band on two threads (campipe.bands), all in cache: cast into the preallocated output,
    apply the 3x3 matrix in place (the 1/65535 scale folded in), clamp negatives (out-of-gamut noise) and, from the
    same uint16 band, the most-exposed channel for the clipped fraction and the highlight weight (how close it is to
    clipping; used by the highlights stage). The weight is sparse (flat pixel indices, float32 weights) since few
    pixels are near clipping; internal, not serialised. No full-size temporary besides the output.

    Raises DecodeError for an empty, all-zero or non-finite result. The result is finite by construction when the
    matrix is (uint16 times a finite matrix whose row sums stay far below float32's range); otherwise every band is
    checked.
    """
    import cv2

    h, w = rgb16.shape[:2]
    if h < 1 or w < 1:
        raise DecodeError(f"{path}: decoded image is empty")
    m = np.asarray(cam_to_working, np.float32) * np.float32(1.0 / 65535.0)
    bound = float(np.abs(m.astype(np.float64)).sum(axis=1).max()) * 65535.0
    check_finite = not (np.isfinite(bound) and bound < 1e30)
    img = np.empty((h, w, 3), np.float32)
    bands: dict[int, tuple] = {}
    content = [False]  # some band already has a non-zero pixel (then the others need not be tested)

    def band(r0: int, r1: int) -> None:
        src, dst = rgb16[r0:r1], img[r0:r1]
        np.copyto(dst, src, casting="unsafe")
        cv2.transform(dst, m, dst=dst)  # per pixel, safe in place
        finite = bool(np.isfinite(dst).all()) if check_finite else True
        np.maximum(dst, 0.0, out=dst)
        top = src.max()  # one contiguous reduction; the per-pixel channel maximum only where it can matter
        near, wgt, clipped = np.empty(0, np.intp), None, 0
        if top >= _NEAR_CLIP:
            cmax = np.maximum(np.maximum(src[..., 0], src[..., 1]), src[..., 2])
            near = np.flatnonzero(cmax >= _NEAR_CLIP)
            wgt = cmax.ravel()[near] * np.float32(10.0 / 65535.0) - np.float32(9.0)
            np.clip(wgt, 0.0, 1.0, out=wgt)
            near += r0 * w
            clipped = int(np.count_nonzero(cmax >= _CLIPPED)) if top >= _CLIPPED else 0
        if top > 0 and not content[0] and dst.any():
            content[0] = True
        bands[r0] = (near, wgt, clipped, finite)

    for_each_band(h, band)
    parts = [bands[r0] for r0 in sorted(bands)]
    if not all(p[3] for p in parts):
        raise DecodeError(f"{path}: decoded data contains NaN or infinite values")
    if not content[0]:
        raise DecodeError(f"{path}: decoded data is all zero (no image content)")
    clip_fraction = sum(p[2] for p in parts) / float(h * w)
    hit = [p for p in parts if p[1] is not None]
    weight = None
    if hit:
        weight = (np.concatenate([p[0] for p in hit]), np.concatenate([p[1] for p in hit]))
    return img, clip_fraction, weight


def load_raw(path: str | Path, *, half_size: bool = False, demosaic: str = "AHD",
             max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, strict: bool = False) -> Frame:
    """Decode a RAW file into a linear working-space Frame.

    Args:
        path: DNG or any LibRaw-supported RAW.
        half_size: 2x2 binning instead of demosaicing (fast previews).
        demosaic: LibRaw demosaic algorithm name ('AHD', 'LINEAR', 'VNG', 'PPG', 'DHT', 'AAHD').
        max_megapixels: refuse larger images before decoding.
        strict: fail (instead of warn and fall back) on a missing colour matrix.

    Returns: Frame with image float32 (H, W, 3) linear Rec.2020, 1.0 = sensor clipping of the least-amplified
    channel; meta with camera/exposure EXIF, CFA pattern, levels, matrices, white balance and noise information.
    """
    import rawpy

    is_tiff = sniff(path) == "tiff"
    if is_tiff:
        _check_float_dng(path, max_megapixels)
    raw = _raw_open(path, max_megapixels)
    with raw:
        native = _NativeStderr()
        try:
            with native:
                raw.unpack()
        except (rawpy.LibRawError, OSError, MemoryError) as e:
            raise DecodeError(f"{path}: RAW data is truncated or corrupt: {_libraw_reason(e, native)}") from None
        meta: dict[str, Any] = {"source": str(path), "format": "raw", "scene_referred": True}
        try:
            pattern = None if raw.raw_pattern is None else np.asarray(raw.raw_pattern)
        except NotImplementedError as e:  # rawpy: a 'filters' value it cannot express (damaged header)
            raise UnsupportedFormatError(f"{path}: unsupported sensor layout ({e})") from None
        ncol = int(raw.num_colors)
        try:
            meta["cfa_pattern"] = "".join(chr(raw.color_desc[i]) for i in pattern.ravel())
        except (TypeError, ValueError, AttributeError, IndexError):
            meta["cfa_pattern"] = None
        mono = ncol == 1
        if mono or pattern is None:
            meta["cfa_pattern"] = None  # monochrome or linear (already demosaiced) DNG
        elif ncol not in (3, 4) or pattern.ndim != 2:
            raise UnsupportedFormatError(f"{path}: unsupported sensor layout ({ncol} colours, CFA "
                                         f"{'x'.join(map(str, pattern.shape))}); campipe reads RGB Bayer, X-Trans, "
                                         f"linear and monochrome raws")
        meta["monochrome"] = mono
        meta["cfa_size"] = None if pattern is None or mono else list(pattern.shape)
        meta["raw_type"] = str(raw.raw_type).split(".")[-1]
        meta["black_level"] = [int(x) for x in raw.black_level_per_channel]
        meta["white_level"] = int(raw.white_level)
        if meta["white_level"] <= 0 or max(meta["black_level"]) >= meta["white_level"]:
            raise DecodeError(f"{path}: implausible levels: black level {max(meta['black_level'])} is not below the "
                              f"white level {meta['white_level']} (damaged file?)")
        cam_wb = [float(x) for x in raw.camera_whitebalance]
        meta["camera_wb"] = cam_wb
        meta["daylight_wb"] = [float(x) for x in raw.daylight_whitebalance]
        xyz_to_cam = np.asarray(raw.rgb_xyz_matrix, dtype=np.float64)[:3, :3]
        try:
            dng = read_dng_tags(path) if is_tiff else {}
        except Exception as e:  # noqa: BLE001 - damaged tag values: LibRaw's data is still usable
            log.warning("%s: unreadable DNG colour tags (%s: %s); using LibRaw's values", path, type(e).__name__, e)
            dng = {}
        dng = _sane_dng_tags(path, dng)
        meta["matrix_source"] = "libraw"
        if not np.any(xyz_to_cam) and not mono:
            m = _pick_dng_matrix(dng)
            if m is not None:
                xyz_to_cam, meta["matrix_source"] = m, "dng-tags"
            else:
                msg = f"{path}: no colour matrix for this camera"
                if strict:
                    raise DecodeError(msg + " (--strict)")
                log.warning("%s; assuming camera RGB = sRGB primaries (colours will be approximate)", msg)
                xyz_to_cam = np.asarray(cc.colour.RGB_COLOURSPACES["sRGB"].matrix_XYZ_to_RGB)
                meta["matrix_source"] = "default-srgb"
        meta["xyz_to_cam"] = xyz_to_cam.tolist()
        if "AsShotNeutral" in dng:
            meta["as_shot_neutral"] = [float(x) for x in dng["AsShotNeutral"][:3]]
        elif cam_wb[1] > 0 and all(x > 0 for x in cam_wb[:3]):
            meta["as_shot_neutral"] = [cam_wb[1] / x for x in cam_wb[:3]]
        if mono:
            pass
        elif not all(x > 0 for x in cam_wb[:3]):
            msg = f"{path}: implausible as-shot white balance {cam_wb[:3]}"
            if strict:
                raise DecodeError(msg + " (--strict)")
            log.warning("%s; using the camera's daylight balance", msg)
        else:
            ratio = max(cam_wb[:3]) / max(min(cam_wb[:3]), 1e-9)
            if ratio > 16:
                log.warning("%s: implausible white balance multipliers %s", path, [round(x, 3) for x in cam_wb[:3]])
        if mono:  # no colour to balance or transform: grey maps to neutral grey
            xyz_to_cam = np.tile(_D65_XYZ / _D65_XYZ.sum(), (3, 1)) + np.eye(3) * 1e-3  # invertible, white -> 1
            meta["matrix_source"] = "monochrome"
            meta["xyz_to_cam"] = xyz_to_cam.tolist()
        if dng.get("NoiseProfile"):
            meta["noise_profile"] = dng["NoiseProfile"]
        if dng.get("BaselineExposure"):
            meta["baseline_exposure"] = float(dng["BaselineExposure"][0])
        if dng.get("UniqueCameraModel"):
            meta["unique_camera_model"] = dng["UniqueCameraModel"]
        try:
            algo = getattr(rawpy.DemosaicAlgorithm, demosaic.upper())
        except AttributeError:
            raise DecodeError(f"unknown demosaic algorithm {demosaic!r}") from None
        wb_ok = all(x > 0 for x in cam_wb[:3]) and not mono
        kw = dict(half_size=half_size, no_auto_bright=True, adjust_maximum_thr=0.0, output_bps=16, gamma=(1, 1),
                  output_color=rawpy.ColorSpace.raw, user_flip=None, use_camera_wb=wb_ok,
                  user_wb=[1.0, 1.0, 1.0, 1.0] if mono else None)
        native = _NativeStderr()
        side = _SideWork(path)  # EXIF + imports on the other core while LibRaw demosaics (it releases the GIL)
        try:
            with native:
                rgb16 = raw.postprocess(demosaic_algorithm=algo, **kw)
        except (rawpy.LibRawError, OSError, MemoryError) as e:
            non_bayer = pattern is not None and not mono and pattern.shape != (2, 2)
            if not non_bayer or isinstance(e, MemoryError) or demosaic.upper() == "LINEAR":
                raise DecodeError(f"{path}: RAW decode failed: {_libraw_reason(e, native)}") from None
            log.warning("%s: %s demosaicing failed on this %dx%d CFA (%s); using LINEAR interpolation", path,
                        demosaic.upper(), pattern.shape[0], pattern.shape[1], _libraw_reason(e, native))
            raw.close()
            raw = _raw_open(path, max_megapixels)  # LibRaw needs a fresh unpack after a failed postprocess
            try:
                with native:
                    raw.unpack()
                    rgb16 = raw.postprocess(demosaic_algorithm=rawpy.DemosaicAlgorithm.LINEAR, **kw)
            except (rawpy.LibRawError, OSError, MemoryError) as e2:
                raise DecodeError(f"{path}: RAW decode failed for this {pattern.shape[0]}x{pattern.shape[1]} CFA: "
                                  f"{_libraw_reason(e2, native)}") from None
            finally:
                meta["flip"] = int(raw.sizes.flip)
                raw.close()
        meta["flip"] = int(raw.sizes.flip) if "flip" not in meta else meta["flip"]
        if rgb16.ndim == 2:
            rgb16 = rgb16[..., None]
        if rgb16.shape[2] == 1:
            rgb16 = np.repeat(rgb16, 3, axis=2)
        elif rgb16.shape[2] != 3:
            raise UnsupportedFormatError(f"{path}: unsupported raw layout ({rgb16.shape[2]} output channels)")
    meta.update(side.exif())
    meta["orientation_applied"] = True
    cam_to_working = (cc.xyz_to_working() @ camera_to_xyz_matrix(xyz_to_cam)).astype(np.float32)
    meta["cam_to_working"] = cam_to_working.tolist()
    img, clip_fraction, weight = _camera_to_working(path, rgb16, cam_to_working)
    del rgb16  # LibRaw's buffer goes back before the stages allocate anything
    meta["clip_fraction"] = clip_fraction
    if weight is not None:
        meta["_highlight_weight"] = weight
    _warn_exposure(path, img, meta["clip_fraction"])
    meta["noise"] = {"iso": meta.get("iso"), "black_level": meta["black_level"], "white_level": meta["white_level"],
                     "profile": meta.get("noise_profile")}
    meta["width"], meta["height"] = int(img.shape[1]), int(img.shape[0])
    return Frame(image=img, meta=meta)


# ------------------------------------------------------------------------------------------------------ images ---

def _pil_open(path, max_megapixels: float):
    from PIL import Image

    if "heif" == sniff(path):
        try:
            import pillow_heif
            pillow_heif.register_heif_opener()
        except ImportError:
            raise UnsupportedFormatError(f"{path}: HEIC/HEIF needs pillow-heif (pip install pillow-heif)") from None
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise DecodeError(f"{path}: refused as a decompression bomb ({e})") from None
        except Exception as e:  # PIL.UnidentifiedImageError, OSError, SyntaxError from plugins...
            raise DecodeError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
    _check_budget(path, im.width, im.height, max_megapixels)
    return im


def load_image(path: str | Path, *, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, strict: bool = False) -> Frame:
    """Decode JPEG/PNG/TIFF(8/16-bit)/HEIC/AVIF/WebP into a linear working-space Frame (display-referred)."""
    from PIL import Image, ImageCms, ImageOps

    kind = sniff(path)
    meta: dict[str, Any] = {"source": str(path), "format": kind, "scene_referred": False}
    meta.update(read_exif(path))
    if kind == "tiff":
        arr, icc = _read_tiff(path, max_megapixels)
        enc, space = _to_encoded_float(path, arr, icc)
    else:
        im = _pil_open(path, max_megapixels)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                im.load()
                im = ImageOps.exif_transpose(im)
            except Exception as e:
                raise DecodeError(f"{path}: image data is truncated or corrupt ({type(e).__name__}: {e})") from None
        icc = im.info.get("icc_profile")
        space = "srgb"
        if icc and not _is_srgb_or_p3(icc)[0]:
            try:
                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                im = ImageCms.profileToProfile(im.convert("RGB"), src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            except Exception as e:
                log.warning("%s: embedded ICC profile unusable (%s); assuming sRGB", path, e)
        elif icc:
            space = _is_srgb_or_p3(icc)[1]
        meta["input_icc"] = bool(icc)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            g = np.asarray(im, dtype=np.float32) / (65535.0 if im.mode != "I" else max(1.0, float(np.max(im))))
            enc = np.repeat(g[..., None], 3, axis=2)
        else:
            enc = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    meta["orientation_applied"] = True
    meta["input_space"] = space
    img = cc.display_to_working(enc, space)
    np.maximum(img, 0.0, out=img)
    if not np.isfinite(img).all():  # an all-black JPEG is a legitimate photo; NaN is not
        raise DecodeError(f"{path}: decoded data contains NaN or infinite values")
    _warn_exposure(path, img, float(np.mean(enc.max(axis=2) >= 0.999)))
    meta["width"], meta["height"] = int(img.shape[1]), int(img.shape[0])
    meta["noise"] = {"iso": meta.get("iso")}
    return Frame(image=img, meta=meta)


def _is_srgb_or_p3(icc: bytes) -> tuple[bool, str]:
    from PIL import ImageCms

    try:
        desc = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).lower()
    except Exception:
        return False, "srgb"
    if "p3" in desc:
        return True, "display-p3"
    if "srgb" in desc or "iec61966" in desc:
        return True, "srgb"
    return False, "srgb"


def _read_tiff(path, max_megapixels):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            shape = page.shape
            h, w = (shape[0], shape[1]) if page.samplesperpixel == 1 or len(shape) == 3 and shape[2] <= 4 else shape[-2:]
            _check_budget(path, int(page.imagewidth), int(page.imagelength), max_megapixels)
            arr = page.asarray()
            icc = page.tags[34675].value if 34675 in page.tags else None
            orient = page.tags[274].value if 274 in page.tags else 1
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(f"{path}: cannot read TIFF ({type(e).__name__}: {e})") from None
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise UnsupportedFormatError(f"{path}: unsupported layout: {arr.shape[2] if arr.ndim == 3 else arr.ndim} "
                                     f"samples per pixel (campipe reads RGB/grey images, Bayer or X-Trans CFA raws, "
                                     f"linear and monochrome DNGs)")
    arr = arr[..., :3]
    arr = _orient(arr, int(orient))
    return arr, icc


def _orient(arr: np.ndarray, o: int) -> np.ndarray:
    """Apply EXIF orientation (1-8) to an HWC array."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
           7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1], 8: lambda a: a.transpose(1, 0, 2)[::-1]}
    return np.ascontiguousarray(ops[o](arr)) if o in ops else arr


def _to_encoded_float(path, arr: np.ndarray, icc) -> tuple[np.ndarray, str]:
    if arr.dtype == np.uint8:
        enc = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        enc = arr.astype(np.float32) / 65535.0
    elif arr.dtype.kind == "f":
        enc = arr.astype(np.float32)
        if not np.isfinite(enc).all():
            raise DecodeError(f"{path}: TIFF contains NaN or infinite values")
        enc = np.clip(enc, 0, 1)
    else:
        raise DecodeError(f"{path}: unsupported TIFF sample type {arr.dtype}")
    space = "srgb"
    if icc:
        ok, space = _is_srgb_or_p3(bytes(icc))
        if not ok:
            log.warning("%s: embedded ICC profile is neither sRGB nor Display P3; assuming sRGB", path)
    return enc, space


# ------------------------------------------------------------------------------------------------------ entry ---

def decode_file(path: str | Path, *, half_size: bool = False, demosaic: str = "AHD",
                max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, strict: bool = False) -> Frame:
    """Decode any supported file (RAW or encoded image), chosen by content, not by extension."""
    import stat

    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise DecodeError(f"{path}: no such file" + (" (dangling symbolic link)" if p.is_symlink() else "")) from None
    except OSError as e:  # ELOOP (symlink loop), EACCES on a parent folder, ENAMETOOLONG...
        raise DecodeError(f"{path}: cannot access ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise DecodeError(f"{path}: is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise DecodeError(f"{path}: not a regular file (device, pipe or socket)")
    if not os.access(p, os.R_OK):
        raise DecodeError(f"{path}: permission denied")
    if st.st_size == 0:
        raise DecodeError(f"{path}: empty file (0 bytes)")
    try:
        kind = sniff(p)
    except PermissionError:
        raise DecodeError(f"{path}: permission denied") from None
    ext = p.suffix.lower()
    if ext in RAW_EXTENSIONS and kind in ("jpeg", "png", "heif", "webp"):
        log.warning("%s: named %s but the content is %s; decoding it as %s", path, ext, kind.upper(), kind.upper())
    elif ext in IMAGE_EXTENSIONS and kind == "raw":
        log.warning("%s: named %s but the content is not that format; trying the RAW decoder", path, ext)
    if kind in ("jpeg", "png", "heif", "webp"):
        return load_image(p, max_megapixels=max_megapixels, strict=strict)
    if kind == "tiff":
        # DNG and most RAW formats are TIFF containers: LibRaw first, plain TIFF if LibRaw does not take it
        try:
            return load_raw(p, half_size=half_size, demosaic=demosaic, max_megapixels=max_megapixels, strict=strict)
        except UnsupportedFormatError:
            return load_image(p, max_megapixels=max_megapixels, strict=strict)
    return load_raw(p, half_size=half_size, demosaic=demosaic, max_megapixels=max_megapixels, strict=strict)
