"""Decode (RAW samples, encoded images with orientation/profiles) and encode (formats, ICC, EXIF, atomic writes)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from campipe import colour as cc
from campipe.decode import decode_file, load_raw
from campipe.encode import encode_bytes, write_image
from campipe.errors import DecodeError, EncodeError
from campipe.icc import icc_profile

SAMPLES = Path(__file__).resolve().parents[1] / "samples"

DNGS = sorted(SAMPLES.glob("*.dng"))
META = {"camera_make": "Canon", "camera_model": "EOS 5D Mark IV", "iso": 800, "exposure_time": 1 / 125,
        "f_number": 2.8, "focal_length": 50.0, "datetime_original": "2026:01:02 03:04:05", "lens": "EF50mm f/1.8"}


@pytest.mark.parametrize("path", DNGS, ids=lambda p: p.name)
def test_samples_decode_to_linear_working_space(path):
    f = load_raw(path)
    assert f.image.dtype == np.float32 and f.image.ndim == 3 and f.image.shape[2] == 3
    assert np.isfinite(f.image).all() and f.image.min() >= 0
    assert 0.01 < float(np.median(f.image)) < 1.0
    m = f.meta
    assert m["scene_referred"] and m["cfa_pattern"] and m["white_level"] > max(m["black_level"])
    assert m["camera_make"] and m["iso"] and len(m["as_shot_neutral"]) == 3
    np.testing.assert_allclose(np.asarray(m["cam_to_working"]) @ np.ones(3), np.ones(3), atol=2e-3)  # neutral stays neutral


def test_sniffing_ignores_extensions(tmp_path):
    png = tmp_path / "really_a_png.dng"
    Image.fromarray(np.full((8, 10, 3), 128, np.uint8)).save(png, "PNG")
    f = decode_file(png)
    assert f.meta["format"] == "png" and not f.meta["scene_referred"]
    np.testing.assert_allclose(f.image, cc.display_to_working(np.full((8, 10, 3), 128 / 255, np.float32)), atol=1e-5)


def test_jpeg_orientation_is_honoured(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    im = Image.fromarray(arr)
    ex = Image.Exif()
    ex[0x0112] = 6  # rotate 90 CW to view
    p = tmp_path / "o6.jpg"
    im.save(p, quality=95, exif=ex.tobytes())
    f = decode_file(p)
    assert f.image.shape[:2] == (40, 20)
    assert f.image[:20].mean() > 0.8 and f.image[20:].mean() < 0.1  # white half is now on top


def test_16bit_tiff_and_p3_png(tmp_path):
    import tifffile

    ramp = (np.linspace(0, 65535, 30 * 3).reshape(1, 30, 3).repeat(8, 0)).astype(np.uint16)
    p = tmp_path / "ramp16.tif"
    tifffile.imwrite(p, ramp, photometric="rgb")
    f = decode_file(p)
    np.testing.assert_allclose(cc.working_to_display(f.image), ramp / 65535.0, atol=2e-5)
    arr = (np.random.default_rng(0).random((9, 11, 3)) * 255).astype(np.uint8)
    q = tmp_path / "p3.png"
    Image.fromarray(arr).save(q, icc_profile=icc_profile("display-p3"))
    g = decode_file(q)
    assert g.meta["input_space"] == "display-p3"
    np.testing.assert_allclose(g.image, cc.display_to_working(arr / 255.0, "display-p3"), atol=1e-5)


def test_heic_roundtrip(tmp_path):
    x = np.full((32, 48, 3), 0.5, np.float32)
    p = tmp_path / "a.heic"
    write_image(p, x, "heic", quality=95)
    f = decode_file(p)
    assert f.image.shape == (32, 48, 3)
    assert abs(float(cc.working_to_display(f.image).mean()) - 0.5) < 0.02


def test_clear_errors(tmp_path):
    empty = tmp_path / "empty.dng"
    empty.write_bytes(b"")
    with pytest.raises(DecodeError, match="empty file"):
        decode_file(empty)
    txt = tmp_path / "notes.dng"
    txt.write_text("hello, this is not a photo at all " * 10)
    with pytest.raises(DecodeError, match="notes.dng"):
        decode_file(txt)
    with pytest.raises(DecodeError, match="no such file"):
        decode_file(tmp_path / "missing.dng")


@pytest.mark.parametrize("fmt", ["jpeg", "png", "tiff16", "heic", "avif"])
def test_encode_formats_carry_icc(fmt):
    x = np.random.default_rng(1).random((16, 24, 3), dtype=np.float32)
    data = encode_bytes(x, fmt, 90, META, "display-p3")
    assert len(data) > 100
    if fmt in ("jpeg", "png", "heic", "avif"):
        import io

        import pillow_heif

        pillow_heif.register_heif_opener()
        im = Image.open(io.BytesIO(data))
        assert im.info.get("icc_profile") == icc_profile("display-p3")
        assert im.size == (24, 16)


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool not installed (apt-get install libimage-exiftool-perl)")
@pytest.mark.parametrize("fmt,ext", [("jpeg", "jpg"), ("png", "png"), ("tiff16", "tif"), ("heic", "heic")])
def test_exiftool_sees_icc_and_exif(tmp_path, fmt, ext):
    x = np.random.default_rng(1).random((16, 24, 3), dtype=np.float32)
    p = write_image(tmp_path / f"out.{ext}", x, fmt, meta=dict(META, orientation=6))
    out = subprocess.run(["exiftool", "-s", "-s", "-s", "-ProfileDescription", "-Make", "-Model", "-ISO",
                          "-ExposureTime", "-FNumber", "-DateTimeOriginal", "-Orientation#", str(p)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["sRGB IEC61966-2.1 (campipe)", "Canon", "EOS 5D Mark IV", "800", "1/125", "2.8",
                   "2026:01:02 03:04:05", "1"]


def test_atomic_write_never_clobbers_and_never_writes_the_input(tmp_path):
    x = np.zeros((4, 4, 3), np.float32)
    p = write_image(tmp_path / "a.png", x)
    before = p.read_bytes()
    with pytest.raises(EncodeError, match="exists"):
        write_image(p, np.ones((4, 4, 3), np.float32))
    assert p.read_bytes() == before
    write_image(p, np.ones((4, 4, 3), np.float32), overwrite=True)
    assert p.read_bytes() != before
    with pytest.raises(EncodeError, match="overwrite its input"):
        write_image(tmp_path / "." / "a.png", x, inputs=[p], overwrite=True)
    assert not [q for q in tmp_path.iterdir() if "campipe-tmp" in q.name]
    with pytest.raises(EncodeError, match="cannot tell the output format"):
        write_image(tmp_path / "a.bmp", x)
