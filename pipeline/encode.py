"""Encode: display-encoded float32 RGB -> JPEG / PNG / 16-bit TIFF / HEIC / AVIF with ICC profile and EXIF.

Writes are atomic and never clobber by accident: the file is written to a temporary name in the destination
folder, fsync'ed, then linked into place (``os.link`` fails if the name exists, so an existing output is kept
unless ``overwrite=True``, which uses ``os.replace``). On any error (disk full, permissions) the temporary file is
removed and the previous output, if any, stays intact. The output can never be the input.

Two campipe processes writing the same output are serialised by a per-output lock (:func:`output_lock`: a POSIX
byte-range lock on one hidden ``.campipe.lock`` file per output folder, at an offset derived from the file name), so
the existence check, the write and the rename happen as one step; readers only ever see a complete old or new file.
Temporary files of killed runs (``.NAME.campipe-tmp-PID-RANDOM``) are removed by :func:`remove_stale_temps` once
their writer process is gone.

EXIF carried over from the input: Make, Model, LensModel, ExposureTime, FNumber, ISO, FocalLength(35 mm),
DateTimeOriginal; Orientation is reset to 1 (pixels are already rotated); Software = campipe.
TIFF gets the same fields as TIFF/EP-style IFD0 tags (tifffile does not write an EXIF sub-IFD).

JPEG goes through OpenCV's libjpeg-turbo (``cv2.imencodeWithMetadata``) when available, else Pillow; both give the
same bytes for the same quality and chroma subsampling (tested).

References: Pillow image file formats (JPEG/PNG/AVIF save options), pillow-heif, tifffile.imwrite, EXIF 2.32,
OpenCV imgcodecs (imencodeWithMetadata, IMWRITE_JPEG_*), ICC.1:2022 annex B (embedding profiles in JPEG).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import secrets
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EncodeError, OutputExistsError
from .icc import icc_profile
from .output import quantize

FORMATS = {"jpeg": ".jpg", "png": ".png", "tiff16": ".tif", "heic": ".heic", "avif": ".avif"}
TMP_MARK = ".campipe-tmp-"
LOCK_NAME = ".campipe.lock"

log = logging.getLogger("campipe")


def _rational(v: float, max_den: int = 100000):
    from PIL.TiffImagePlugin import IFDRational

    f = Fraction(v).limit_denominator(max_den)
    return IFDRational(f.numerator, f.denominator)


def build_exif(meta: dict[str, Any] | None, size: tuple[int, int] | None = None, space: str = "srgb") -> bytes:
    """EXIF bytes (for Pillow/pillow-heif) from decode metadata; orientation reset to 1; ``size`` = (w, h)."""
    from PIL import Image

    meta = meta or {}
    ex = Image.Exif()
    ex[0x0112] = 1
    ex[0x0131] = "campipe"
    ex[0x011A] = _rational(72.0)
    ex[0x011B] = _rational(72.0)
    ex[0x0128] = 2
    ex[0x0213] = 1  # YCbCrPositioning: centred
    for tag, key in ((0x010F, "camera_make"), (0x0110, "camera_model")):
        if meta.get(key):
            ex[tag] = str(meta[key])
    exif_ifd = ex.get_ifd(0x8769)
    exif_ifd[0x9000] = b"0232"
    exif_ifd[0xA000] = b"0100"
    exif_ifd[0xA001] = 1 if space == "srgb" else 0xFFFF
    if size:
        exif_ifd[0xA002], exif_ifd[0xA003] = int(size[0]), int(size[1])
    if meta.get("datetime_original"):
        ex[0x0132] = str(meta["datetime_original"])
        exif_ifd[0x9003] = str(meta["datetime_original"])
    if meta.get("exposure_time"):
        exif_ifd[0x829A] = _rational(float(meta["exposure_time"]), 1000000)
    if meta.get("f_number"):
        exif_ifd[0x829D] = _rational(float(meta["f_number"]), 100)
    if meta.get("iso"):
        exif_ifd[0x8827] = int(meta["iso"])
    if meta.get("focal_length"):
        exif_ifd[0x920A] = _rational(float(meta["focal_length"]), 100)
    if meta.get("focal_length_35mm"):
        exif_ifd[0xA405] = int(round(float(meta["focal_length_35mm"])))
    if meta.get("lens"):
        exif_ifd[0xA434] = str(meta["lens"])
    return ex.tobytes()


def _tiff_tags(meta: dict[str, Any] | None, icc: bytes) -> list[tuple]:
    meta = meta or {}
    tags: list[tuple] = [(34675, "B", len(icc), icc, True), (274, "H", 1, 1, True)]

    def rat(v, den):
        f = Fraction(float(v)).limit_denominator(den)
        return (f.numerator, f.denominator)

    for code, key in ((271, "camera_make"), (272, "camera_model")):
        if meta.get(key):
            tags.append((code, "s", 0, str(meta[key]), True))
    if meta.get("datetime_original"):
        tags.append((36867, "s", 0, str(meta["datetime_original"]), True))
    if meta.get("exposure_time"):
        tags.append((33434, "2I", 1, rat(meta["exposure_time"], 1000000), True))
    if meta.get("f_number"):
        tags.append((33437, "2I", 1, rat(meta["f_number"], 100), True))
    if meta.get("iso"):
        tags.append((34855, "H", 1, int(meta["iso"]), True))
    if meta.get("focal_length"):
        tags.append((37386, "2I", 1, rat(meta["focal_length"], 100), True))
    return tags


def check_output_path(out: str | Path, inputs: list[str | Path] | None = None, overwrite: bool = False) -> Path:
    """Refuse an output that is one of the inputs (also via ./, .. or a symlink) or exists without overwrite."""
    out = Path(out)
    real_out = os.path.realpath(out)
    for src in inputs or []:
        if os.path.realpath(src) == real_out or (out.exists() and Path(src).exists() and os.path.samefile(src, out)):
            raise EncodeError(f"{out}: output would overwrite its input {src}; choose another name or folder")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: exists (use --overwrite to replace it)")
    if out.exists() and out.is_dir():
        raise EncodeError(f"{out}: is a directory")
    return out


def encode_bytes(display: np.ndarray, fmt: str, quality: int = 92, meta: dict | None = None,
                 space: str = "srgb", dither: float = 1.0) -> bytes:
    """Encode display RGB float32 (H, W, 3) in [0, 1] (in ``space``) to file bytes of ``fmt``."""
    if fmt not in FORMATS:
        raise EncodeError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not 1 <= int(quality) <= 100:
        raise EncodeError(f"--quality must be within 1..100, got {quality}")
    icc = icc_profile(space)
    buf = io.BytesIO()
    if fmt == "tiff16":
        import tifffile

        arr = quantize(display, 16)
        tifffile.imwrite(buf, arr, photometric="rgb", compression="zlib", software="campipe",
                         extratags=_tiff_tags(meta, icc))
        return buf.getvalue()
    if fmt == "jpeg":
        data = _jpeg_opencv(display, int(quality), meta, space, dither, icc)
        if data is not None:
            return data
    from PIL import Image

    im = Image.fromarray(quantize(display, 8, dither))
    exif = build_exif(meta, (im.width, im.height), space)
    if fmt == "jpeg":
        im.save(buf, "JPEG", quality=int(quality), icc_profile=icc, exif=exif, optimize=False,
                subsampling=0 if quality >= 90 else 2)
    elif fmt == "png":
        im.save(buf, "PNG", icc_profile=icc, exif=exif, compress_level=6)
    elif fmt == "heic":
        try:
            import pillow_heif
        except ImportError:
            raise EncodeError("HEIC output needs pillow-heif (pip install pillow-heif)") from None
        pillow_heif.register_heif_opener()
        im.save(buf, "HEIF", quality=int(quality), icc_profile=icc, exif=exif)
    elif fmt == "avif":
        try:
            im.save(buf, "AVIF", quality=int(quality), icc_profile=icc, exif=exif)
        except (KeyError, OSError) as e:
            raise EncodeError(f"AVIF output is not supported by this Pillow build ({e})") from None
    return buf.getvalue()


#: Largest ICC profile one APP2 segment holds (65535 - 2 length bytes - "ICC_PROFILE\0" - sequence/count bytes).
_ICC_ONE_SEGMENT = 65519


def _jpeg_opencv(display: np.ndarray, quality: int, meta: dict | None, space: str, dither: float,
                 icc: bytes) -> bytes | None:
    """JPEG bytes through OpenCV's libjpeg-turbo, straight from the quantised array (Pillow would first copy it into
    its own 4-byte-per-pixel image): JFIF APP0, EXIF APP1 and ICC APP2 in the same order and with the same content
    as Pillow writes them, 4:4:4 chroma at quality >= 90 (4:2:0 below), baseline Huffman tables. Returns None
    where this OpenCV has no metadata support (before 4.12) or the profile needs several APP2 segments; the caller
    then uses Pillow."""
    import cv2

    if not hasattr(cv2, "imencodeWithMetadata") or len(icc) > _ICC_ONE_SEGMENT:
        return None
    bgr = quantize(display, 8, dither, bgr=True)
    exif = build_exif(meta, (bgr.shape[1], bgr.shape[0]), space)
    if exif.startswith(b"Exif\x00\x00"):  # OpenCV writes the APP1 identifier itself
        exif = exif[6:]
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_OPTIMIZE, 0, cv2.IMWRITE_JPEG_PROGRESSIVE, 0,
              cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
              cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444 if quality >= 90 else cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420]
    ok, buf = cv2.imencodeWithMetadata(".jpg", bgr, [cv2.IMAGE_METADATA_EXIF, cv2.IMAGE_METADATA_ICCP],
                                       [np.frombuffer(exif, np.uint8), np.frombuffer(icc, np.uint8)], params)
    if not ok:
        raise EncodeError("JPEG encoding failed (OpenCV)")
    return buf.tobytes()


def _why(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "disk full: No space left on device"
    if e.errno == errno.EDQUOT:
        return "disk quota exceeded"
    if e.errno == errno.EFBIG:
        return "file too large for this file system or process limit"
    return e.strerror or str(e)


@contextlib.contextmanager
def output_lock(path: str | Path):
    """Hold an exclusive inter-process lock for writing ``path`` (blocks while another process holds it).

    A 1-byte POSIX record lock (``fcntl.lockf``) on ``FOLDER/.campipe.lock`` at an offset hashed from the file name:
    one small hidden file per folder instead of one lock file per output. POSIX record locks belong to the process
    (they do not exclude threads of one process) and are dropped if the process closes *any* descriptor of the lock
    file, so campipe only opens it here. Raises EncodeError when the folder is not writable. File systems without
    lock support (``ENOLCK``) proceed unlocked (the write is still atomic).
    """
    import fcntl

    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise EncodeError(f"{path}: cannot write in {folder} ({_why(e)})") from None
    off = int.from_bytes(hashlib.blake2b(os.fsencode(path.name), digest_size=4).digest(), "big") & 0x7FFFFFFF
    locked = False
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, off)
            locked = True
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise EncodeError(f"{path}: cannot lock the output ({_why(e)})") from None
            log.debug("%s: file system without record locks; writing unlocked", path)
        yield
    finally:
        if locked:
            try:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, off)
            except OSError:
                pass
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` all-or-nothing (temp file + fsync + link/rename), under :func:`output_lock`.

    Raises EncodeError (one line naming the file and the reason) when the output exists and ``overwrite`` is false,
    the folder is missing or not writable, or the disk is full; in every failure case the previous ``path`` (if any)
    is untouched and no temporary file remains.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise EncodeError(f"{path}: output folder {folder} does not exist")
    with output_lock(path):
        if not overwrite and (path.exists() or path.is_symlink()):
            raise OutputExistsError(f"{path}: exists (use --overwrite to replace it)")
        return _write_locked(path, folder, data, overwrite)


def _write_locked(path: Path, folder: Path, data: bytes, overwrite: bool) -> Path:
    tmp = folder / f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as e:
        raise EncodeError(f"{path}: cannot write in {folder} ({_why(e)})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OutputExistsError(f"{path}: exists (use --overwrite to replace it)") from None
            except OSError:  # file systems without hard links: fall back to a checked rename
                if path.exists():
                    raise OutputExistsError(f"{path}: exists (use --overwrite to replace it)") from None
                os.replace(tmp, path)
        try:
            dfd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    except OSError as e:
        raise EncodeError(f"{path}: write failed ({_why(e)}); no partial file was left") from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    return path


def write_image(path: str | Path, display: np.ndarray, fmt: str | None = None, quality: int = 92,
                meta: dict | None = None, overwrite: bool = False, space: str | None = None,
                dither: float | None = None, inputs: list | None = None) -> Path:
    """Encode and atomically write ``display`` (float32 (H, W, 3) in [0, 1]) to ``path``.

    ``fmt`` defaults from the extension; ``space`` and ``dither`` default from ``meta`` ('output_space', 'dither').
    """
    path = Path(path)
    if fmt is None:
        ext = path.suffix.lower()
        fmt = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".tif": "tiff16", ".tiff": "tiff16",
               ".heic": "heic", ".heif": "heic", ".avif": "avif"}.get(ext)
        if fmt is None:
            raise EncodeError(f"{path}: cannot tell the output format from {ext!r}; use --format")
    meta = meta or {}
    space = space or meta.get("output_space", "srgb")
    dither = meta.get("dither", 0.0) if dither is None else dither
    check_output_path(path, inputs, overwrite)
    data = encode_bytes(display, fmt, quality, meta, space, dither)
    return atomic_write_bytes(path, data, overwrite)


def _writer_alive(pid: int, since: float) -> bool:
    """Whether process ``pid`` exists, is not a zombie, and is old enough to have written a file modified at
    ``since`` (a reused PID of a newer process does not count). A zombie is a writer that has died but was not yet
    reaped: a SIGKILLed batch's workers are reparented to PID 1, which in a container may reap them late or never."""
    if pid == os.getpid():
        return False  # this process has no write in flight when it cleans up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    info = _process_state_and_start(pid)
    if info is None:
        return True  # no /proc (not Linux): trust the PID
    state, started = info
    if state in ("Z", "X"):
        return False
    return started <= since + 1.0


def _process_state_and_start(pid: int) -> tuple[str, float] | None:
    """(state letter, epoch seconds at which ``pid`` started) from Linux's /proc/PID/stat (fields 3 and 22, plus the
    boot time), or None without /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[19])  # field 22 overall; fields after "(comm)" start at field 3
        with open("/proc/stat", "rb") as f:
            btime = next(int(ln.split()[1]) for ln in f if ln.startswith(b"btime"))
        return fields[0].decode(), btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def remove_stale_temps(folder: str | Path) -> int:
    """Delete temporary files left by killed campipe runs in ``folder`` (their writer process is gone).

    Returns the number of files removed. Temporary files of live writers (another campipe run) are kept.
    """
    n = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for p in folder.glob(f".*{TMP_MARK}*"):
        try:
            pid = int(p.name.rsplit(TMP_MARK, 1)[1].split("-")[0])
            mtime = p.lstat().st_mtime
        except (IndexError, ValueError, OSError):
            continue
        if not _writer_alive(pid, mtime):
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
    return n
