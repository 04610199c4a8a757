"""Issue 6, bad inputs: every broken, hostile or odd input gets one line of error naming the file and the reason (or
a documented warning), never a traceback and never an output file.

All inputs are generated here (small simulated DNGs from campipe.simulate/campipe.dng, Pillow images, hand-built
PNG/TIFF headers); no binary is committed. The generators are reused by the other reliability/batch tests.
"""
from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from campipe.cameras import get_camera
from campipe.decode import decode_file
from campipe.dng import _EXIF_PLACEHOLDER, dng_tags
from campipe.errors import DecodeError, UnsupportedFormatError
from campipe.simulate import simulate_raw

# ------------------------------------------------------------------------------------------------ generators ---


def srgb_image(h: int = 64, w: int = 96, seed: int = 0) -> np.ndarray:
    """Small smooth uint8 sRGB test picture (gradients + a sine, mild noise)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    a = np.stack([x / max(w, 1), y / max(h, 1), 0.5 + 0.3 * np.sin(x / 5)], -1) * 0.8 + 0.1
    return np.clip(a * 255 + rng.normal(0, 1, a.shape), 0, 255).astype(np.uint8)


def write_raw_dng(path, data, tags, photometric=32803, drop=(), replace=None, extra=()) -> Path:
    """A DNG with raw ``data`` and the DNG tags of :func:`campipe.dng.dng_tags` (minus ``drop``, with ``replace``)."""
    replace = replace or {}
    out = [replace.get(t[0], t) for t in tags if t[0] != _EXIF_PLACEHOLDER and t[0] not in drop] + list(extra)
    with tifffile.TiffWriter(path, byteorder="<") as tw:
        tw.write(np.ascontiguousarray(data), photometric=photometric, subfiletype=0, metadata=None, resolution=None,
                 extratags=out)
    return Path(path)


def patch_tag(path, code: int, value: int) -> None:
    """Overwrite the (inline SHORT/LONG) value of IFD0 tag ``code`` in place, e.g. to fake an image size."""
    b = bytearray(Path(path).read_bytes())
    with tifffile.TiffFile(path) as tf:
        off = tf.pages[0].tags[code].offset
    typ = struct.unpack_from("<H", b, off + 2)[0]
    struct.pack_into("<H" if typ == 3 else "<I", b, off + 8, value)
    Path(path).write_bytes(bytes(b))


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims ``w`` x ``h`` with (almost) no data: what a decompression bomb's header looks like."""
    def chunk(t, b):
        return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


def good_dng(path, h: int = 64, w: int = 96, seed: int = 1, camera: str = "canon-5d4") -> Path:
    s = simulate_raw(srgb_image(h, w, seed), get_camera(camera), iso=400, seed=seed)
    return write_raw_dng(path, s.cfa, dng_tags(s))


XTRANS = (0, 1, 1, 2, 1, 1, 1, 1, 2, 1, 0, 1, 1, 2, 1, 1, 1, 0, 2, 1, 1, 0, 1, 1, 1, 1, 0, 1, 2, 1, 1, 0, 1, 1, 1, 2)


def make_cases(d: Path) -> dict[str, tuple[Path, str, str]]:
    """Generate every input case in ``d``. Returns name -> (path, expected, text): expected is "error" (text must
    appear in the one-line error), "warn" (renders, text appears in a warning) or "ok" (renders)."""
    from PIL import Image

    d.mkdir(parents=True, exist_ok=True)
    s = simulate_raw(srgb_image(), get_camera("canon-5d4"), iso=400, seed=1)
    tags = dng_tags(s)
    good = write_raw_dng(d / "good.dng", s.cfa, tags)
    data = good.read_bytes()
    with tifffile.TiffFile(good) as tf:
        data_at = tf.pages[0].dataoffsets[0]
    c: dict[str, tuple[Path, str, str]] = {"good": (good, "ok", "")}

    def put(name, payload: bytes, expected, text):
        (d / name).write_bytes(payload)
        c[name] = (d / name, expected, text)

    put("empty.dng", b"", "error", "empty file (0 bytes)")
    put("text.dng", b"this is not a photo\n" * 20, "error", "not a RAW or image format")
    put("random.dng", np.random.default_rng(0).bytes(20000), "error", "not a RAW or image format")
    put("truncated_half.dng", data[: len(data) // 2], "error", "truncated or corrupt")
    put("truncated_in_header.dng", data[:300], "error", "cannot open RAW file")
    put("header_only.dng", data[:data_at], "error", "truncated or corrupt")
    huge = d / "claims_30000x20000.dng"
    huge.write_bytes(data)
    patch_tag(huge, 256, 30000)
    patch_tag(huge, 257, 20000)
    c[huge.name] = (huge, "error", "exceeds the pixel budget of 200 MP")
    rgb = srgb_image()
    buf = d / "photo.jpg"
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    jpeg = buf.read_bytes()
    put("jpeg_renamed.dng", jpeg, "warn", "the content is JPEG")
    put("truncated.jpg", jpeg[: len(jpeg) // 2], "error", "truncated")
    put("zero_by_zero.png", png_header_only(0, 0), "error", "cannot read image")
    for n in (1, 2):
        Image.fromarray(srgb_image(n, n)).save(d / f"{n}x{n}.png")
        c[f"{n}x{n}.png"] = (d / f"{n}x{n}.png", "error", "too small")
    Image.fromarray(srgb_image(8, 8)).save(d / "8x8.png")
    c["8x8.png"] = (d / "8x8.png", "ok", "")
    put("bomb_12000x9000.png", png_header_only(12000, 9000), "error", "decompression bomb")
    write_raw_dng(d / "all_zero.dng", np.zeros_like(s.cfa), tags)
    c["all_zero.dng"] = (d / "all_zero.dng", "error", "all zero")
    fl = {50714: (50714, 4, 4, (0,) * 4, True), 50717: (50717, 4, 1, 1, True)}
    write_raw_dng(d / "float_nan.dng", np.full(s.cfa.shape, np.nan, np.float32), tags, replace=fl)
    c["float_nan.dng"] = (d / "float_nan.dng", "error", "NaN or infinite")
    inf = (s.cfa / 16383.0).astype(np.float32)
    inf[10, 10] = np.inf
    write_raw_dng(d / "float_inf.dng", inf, tags, replace=fl)
    c["float_inf.dng"] = (d / "float_inf.dng", "error", "NaN or infinite")
    write_raw_dng(d / "float_ok.dng", (s.cfa / 16383.0).astype(np.float32), tags, replace=fl)
    c["float_ok.dng"] = (d / "float_ok.dng", "ok", "")
    unknown = {271: (271, 2, 0, "Nobody", True), 272: (272, 2, 0, "Fake 1", True),
               50708: (50708, 2, 0, "Nobody Fake 1", True)}
    write_raw_dng(d / "no_matrix.dng", s.cfa, tags, drop=(50721, 50778), replace=unknown)
    c["no_matrix.dng"] = (d / "no_matrix.dng", "warn", "no colour matrix")
    write_raw_dng(d / "bad_wb.dng", s.cfa, tags, replace={50728: (50728, 5, 3, (1, 1000, 1, 1, 1000, 1), True)})
    c["bad_wb.dng"] = (d / "bad_wb.dng", "warn", "implausible as-shot white balance")
    nearly_black = (512 + np.arange(s.cfa.size).reshape(s.cfa.shape) % 3).astype(np.uint16)
    write_raw_dng(d / "all_black.dng", nearly_black, tags)
    c["all_black.dng"] = (d / "all_black.dng", "warn", "almost entirely black")
    write_raw_dng(d / "all_clipped.dng", np.full_like(s.cfa, 16383), tags)
    c["all_clipped.dng"] = (d / "all_clipped.dng", "warn", "clipped")
    write_raw_dng(d / "huge_baseline_exposure.dng", s.cfa, tags, replace={50730: (50730, 10, 1, (30000, 1), True)})
    c["huge_baseline_exposure.dng"] = (d / "huge_baseline_exposure.dng", "warn", "ignoring implausible DNG Baseline")
    write_raw_dng(d / "zero_noise_profile.dng", s.cfa, tags, replace={51041: (51041, 12, 6, (1e-300,) * 6, True)})
    c["zero_noise_profile.dng"] = (d / "zero_noise_profile.dng", "warn", "ignoring implausible DNG NoiseProfile")
    write_raw_dng(d / "black_above_white.dng", s.cfa, tags, replace={50714: (50714, 4, 4, (20000,) * 4, True)})
    c["black_above_white.dng"] = (d / "black_above_white.dng", "error", "implausible levels")
    bayer = (33421, 33422, 50710, 50711)
    write_raw_dng(d / "mono.dng", s.cfa, tags, photometric=1, drop=bayer)
    patch_tag(d / "mono.dng", 262, 34892)  # LinearRaw, 1 sample: a monochrome sensor
    c["mono.dng"] = (d / "mono.dng", "ok", "")
    write_raw_dng(d / "linear.dng", np.stack([s.cfa] * 3, -1), tags, photometric=34892, drop=bayer)
    c["linear.dng"] = (d / "linear.dng", "ok", "")
    write_raw_dng(d / "xtrans.dng", s.cfa[:60], tags,
                  replace={33421: (33421, 3, 2, (6, 6), True), 33422: (33422, 1, 36, XTRANS, True)})
    c["xtrans.dng"] = (d / "xtrans.dng", "ok", "")
    two = np.stack([s.cfa] * 2, -1)
    with tifffile.TiffWriter(d / "two_samples.dng", byteorder="<") as tw:
        tw.write(two, photometric=1, planarconfig=1, extrasamples=[0], subfiletype=0, metadata=None,
                 extratags=[t for t in tags if t[0] not in (*bayer, _EXIF_PLACEHOLDER)])
    patch_tag(d / "two_samples.dng", 262, 34892)
    c["two_samples.dng"] = (d / "two_samples.dng", "error", "unsupported layout")
    return c


# --------------------------------------------------------------------------------------- decode-level tests ----

@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return make_cases(tmp_path_factory.mktemp("cases"))


class _Grab(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _decode(path, **kw):
    h = _Grab()
    lg = logging.getLogger("campipe")
    lg.addHandler(h)
    try:
        return decode_file(path, **kw), h.lines
    finally:
        lg.removeHandler(h)


CASE_NAMES = ["good", "empty.dng", "text.dng", "random.dng", "truncated_half.dng", "truncated_in_header.dng",
              "header_only.dng", "claims_30000x20000.dng", "jpeg_renamed.dng", "truncated.jpg", "zero_by_zero.png",
              "1x1.png", "2x2.png", "8x8.png", "bomb_12000x9000.png", "all_zero.dng", "float_nan.dng",
              "float_inf.dng", "float_ok.dng", "no_matrix.dng", "bad_wb.dng", "all_black.dng", "all_clipped.dng",
              "huge_baseline_exposure.dng", "zero_noise_profile.dng", "black_above_white.dng",
              "mono.dng", "linear.dng", "xtrans.dng", "two_samples.dng"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_decode_case(cases, name):
    path, expected, text = cases[name]
    if expected == "error":
        with pytest.raises(DecodeError) as ei:
            _decode(path)
        msg = str(ei.value)
        assert "\n" not in msg and msg.startswith(str(path)), msg  # one line, names the file
        assert text in msg, msg
        return
    frame, warned = _decode(path)
    img = frame.image
    assert img.dtype == np.float32 and img.ndim == 3 and img.shape[2] == 3
    assert np.isfinite(img).all() and img.min() >= 0 and img.any()
    if expected == "warn":
        assert any(text in w for w in warned), warned
        assert all(str(path) in w for w in warned if text in w)


def test_strict_turns_colour_warnings_into_errors(cases):
    for name, text in (("no_matrix.dng", "no colour matrix"), ("bad_wb.dng", "implausible")):
        with pytest.raises(DecodeError, match=f"{text}.*--strict"):
            decode_file(cases[name][0], strict=True)


def test_missing_matrix_falls_back_to_documented_default(cases):
    frame, _ = _decode(cases["no_matrix.dng"][0])
    assert frame.meta["matrix_source"] == "default-srgb"


def test_pixel_budget_is_checked_before_decoding_and_adjustable(cases):
    path = cases["claims_30000x20000.dng"][0]
    with pytest.raises(DecodeError, match="exceeds the pixel budget of 50 MP"):
        decode_file(path, max_megapixels=50)
    # with a budget large enough, the (lying) header gets past the check and LibRaw reports the missing data
    with pytest.raises(DecodeError) as ei:
        decode_file(path, max_megapixels=1000)
    assert "pixel budget" not in str(ei.value)


def test_monochrome_dng_is_neutral_grey(cases):
    frame, _ = _decode(cases["mono.dng"][0])
    img = frame.image
    assert frame.meta["monochrome"] is True
    # neutral to 0.1 %: the 4-decimal D65 white of the matrices vs the working space's own white point
    np.testing.assert_allclose(img[..., 0], img[..., 1], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(img[..., 2], img[..., 1], rtol=1e-3, atol=1e-5)


def test_xtrans_cfa_is_demosaiced(cases):
    frame, _ = _decode(cases["xtrans.dng"][0])
    assert frame.meta["cfa_size"] == [6, 6]
    assert frame.image.shape[:2] == (60, 96)


def test_jpeg_with_raw_extension_is_read_by_content(cases):
    frame, warned = _decode(cases["jpeg_renamed.dng"][0])
    assert frame.meta["format"] == "jpeg"


def test_special_files_and_links(tmp_path):
    fifo = tmp_path / "pipe.dng"
    os.mkfifo(fifo)
    with pytest.raises(DecodeError, match="not a regular file"):
        decode_file(fifo)  # must not block reading a FIFO
    (tmp_path / "dangling.dng").symlink_to(tmp_path / "nowhere.dng")
    with pytest.raises(DecodeError, match="dangling symbolic link"):
        decode_file(tmp_path / "dangling.dng")
    (tmp_path / "loop.dng").symlink_to(tmp_path / "loop.dng")
    with pytest.raises(DecodeError, match="cannot access"):
        decode_file(tmp_path / "loop.dng")
    with pytest.raises(DecodeError, match="is a directory"):
        decode_file(tmp_path)
    with pytest.raises(DecodeError, match="no such file"):
        decode_file(tmp_path / "missing.dng")


def test_unsupported_layout_is_its_own_error_type(cases):
    with pytest.raises(UnsupportedFormatError):
        decode_file(cases["two_samples.dng"][0])


def test_pillow_limit_is_kept():
    from PIL import Image

    import campipe.decode  # noqa: F401  (importing campipe must not lift Pillow's bomb limit)
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS <= 2 * 89478485


# ------------------------------------------------------------------------------------------ end to end (CLI) ----

def _campipe(*args, cwd=None, env=None, timeout=180):
    e = dict(os.environ, **(env or {}))
    e.pop("CAMPIPE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "campipe.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=e, timeout=timeout)


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text and "internal error" not in text, text


def test_batch_of_bad_files_reports_each_in_one_line(cases, tmp_path):
    """A card dump with every case: exit 1, one error line per bad file, outputs for exactly the good ones."""
    src = tmp_path / "card"
    src.mkdir()
    for name in CASE_NAMES:
        path = cases[name][0]
        (src / path.name).write_bytes(path.read_bytes())
    (src / "sub").mkdir()
    (src / "loop").symlink_to(src)                       # directory link loop: never followed
    (src / "dangling.dng").symlink_to(src / "gone.dng")  # dangling link: not an input
    (src / "link_to_good.dng").symlink_to(src / "good.dng")  # file links are skipped too (regular files only)
    out = tmp_path / "out"
    r = _campipe("batch", src, "-o", out, "-j", "2", "-r", timeout=300)
    _no_traceback(r.stderr + r.stdout)
    assert r.returncode == 1, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("campipe: error: ")]
    for name in CASE_NAMES:
        path, expected, text = cases[name]
        rendered = list(out.glob(f"{Path(name).stem}_standard.jpg"))
        mine = [ln for ln in errors if ln.startswith(f"campipe: error: {src / name}:")]
        if expected == "error":
            assert not rendered, name
            assert len(mine) == 1 and text in mine[0], (name, mine)
        else:
            assert rendered and rendered[0].stat().st_size > 0, (name, r.stderr)
            assert not mine, mine
    n_bad = sum(cases[n][1] == "error" for n in CASE_NAMES)
    assert len(errors) == n_bad, errors
    assert f"{n_bad} failed" in r.stderr
    assert not list(out.glob("link_to_good*")) and not list(out.glob("dangling*"))
    assert not [p for p in out.iterdir() if ".campipe-tmp-" in p.name]


def test_process_bad_file_one_line_exit_1(cases, tmp_path):
    r = _campipe("process", cases["truncated_half.dng"][0], cases["good"][0], "-o", tmp_path)
    _no_traceback(r.stderr)
    assert r.returncode == 1
    errs = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert len(errs) == 1 and "truncated_half.dng: RAW data is truncated or corrupt" in errs[0]
    assert "Unexpected end of file" in errs[0]  # LibRaw's own message folded in, not printed on its own line
    assert (tmp_path / "good_standard.jpg").exists() and not (tmp_path / "truncated_half_standard.jpg").exists()
    assert not any(ln.strip().endswith("Unexpected end of file") and "error" not in ln for ln in r.stderr.splitlines())


@pytest.mark.parametrize("name", ["my photo.dng", "été_ünïcødé.dng", "📷 snap 🌅.dng"])
def test_names_with_spaces_unicode_emoji(tmp_path, name):
    src = tmp_path / "in dir ✓"
    src.mkdir()
    good_dng(src / name)
    r = _campipe("process", src / name, "-o", tmp_path / "out ✓")
    _no_traceback(r.stderr)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out ✓" / (Path(name).stem + "_standard.jpg")).exists()
