"""DNG writer + `campipe simulate`: tags read back by tifffile and rawpy, exiftool validation, CLI, shipped samples."""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import shutil
import subprocess

import numpy as np
import pytest
import tifffile

from campipe.cameras import get_camera
from campipe.dng import write_dng
from campipe.simulate import cfa_indices, simulate_raw

from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "samples"

rawpy = pytest.importorskip("rawpy")


def _img(h=32, w=48, seed=0):
    """Small smooth sRGB test image (uint8): gradients, so demosaicing has something sensible to do."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    img = np.stack([x / w, y / h, 0.5 + 0.3 * np.sin(x / 5)], -1) * 0.8 + 0.1
    return np.clip(img * 255 + rng.normal(0, 1, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def sim():
    return simulate_raw(_img(), get_camera("canon-5d4"), iso=800, illuminant="A", seed=4, datetime="2025:06:07 08:09:10")


@pytest.fixture
def dng(tmp_path, sim):
    return write_dng(tmp_path / "t.dng", sim)


def test_tags_read_back_by_tifffile(dng, sim):
    cam = sim.camera
    with tifffile.TiffFile(dng) as tf:
        p = tf.pages[0]
        t = {tag.code: tag.value for tag in p.tags.values()}
        np.testing.assert_array_equal(p.asarray(), sim.cfa)  # integer raw data: exact
        exif = p.tags["ExifTag"].value
    assert tuple(t[50706]) == (1, 4, 0, 0) and tuple(t[50707]) == (1, 1, 0, 0)
    assert t[262] == 32803 and t[254] == 0 and t[258] == 16
    assert t[271] == "Canon" and t[272] == "Canon EOS 5D Mark IV" and t[50708] == "Canon EOS 5D Mark IV"
    assert tuple(t[33421]) == (2, 2) and tuple(t[33422]) == (0, 1, 1, 2) and tuple(t[50710]) == (0, 1, 2)
    assert t[50711] == 1 and t[274] == 1
    assert tuple(t[50713]) == (2, 2) and tuple(t[50714]) == (512,) * 4 and t[50717] == 16383
    cm = np.array(t[50721], dtype=np.float64).reshape(9, 2)
    np.testing.assert_allclose(cm[:, 0] / cm[:, 1], cam.color_matrix, atol=1e-4)
    assert t[50778] == 21
    asn = np.array(t[50728], dtype=np.float64).reshape(3, 2)
    np.testing.assert_allclose(asn[:, 0] / asn[:, 1], sim.as_shot_neutral, rtol=1e-5)
    be = t[50730]
    assert be[0] / be[1] == pytest.approx(sim.baseline_exposure, abs=1e-5)
    np.testing.assert_allclose(t[51041], list(sim.noise_profile) * 3, rtol=1e-12)
    assert exif["ISOSpeedRatings"] == 800
    assert exif["DateTimeOriginal"] == "2025:06:07 08:09:10"
    assert exif["FNumber"][0] / exif["FNumber"][1] == pytest.approx(5.6)
    assert exif["FocalLength"][0] / exif["FocalLength"][1] == pytest.approx(50.0)
    assert exif["ExposureTime"][0] / exif["ExposureTime"][1] == pytest.approx(sim.exif["exposure_time"], rel=1e-4)
    assert exif["LightSource"] == 17  # tungsten (illuminant A)


def test_read_back_by_rawpy(dng, sim):
    cam = sim.camera
    with rawpy.imread(str(dng)) as r:
        np.testing.assert_array_equal(r.raw_image_visible, sim.cfa)
        desc = r.color_desc.decode()
        pattern = "".join(desc[i] for i in np.asarray(r.raw_pattern).ravel())
        assert pattern == cam.cfa
        assert list(r.black_level_per_channel) == [cam.black_level] * 4
        assert r.white_level == cam.white_level
        wb = np.asarray(r.camera_whitebalance[:3], dtype=np.float64)
        np.testing.assert_allclose(wb / wb[1], 1.0 / sim.as_shot_neutral, rtol=1e-4)  # LibRaw: cam_mul = 1/neutral
        np.testing.assert_allclose(np.asarray(r.rgb_xyz_matrix)[:3], cam.matrix, atol=1e-4)
        rgb = r.postprocess(use_camera_wb=True, no_auto_bright=True, adjust_maximum_thr=0.0, output_bps=16)
    assert rgb.shape == (*sim.cfa.shape, 3) and rgb.dtype == np.uint16


@pytest.mark.parametrize("pattern", ["BGGR", "GRBG", "GBRG"])
def test_other_cfa_patterns_read_back_by_rawpy(tmp_path, pattern):
    cam = dataclasses.replace(get_camera("sony-a7m3"), cfa=pattern)
    s = simulate_raw(_img(32, 32), cam, iso=100, seed=0)  # LibRaw rejects frames under 22 px
    path = write_dng(tmp_path / f"{pattern}.dng", s)
    with rawpy.imread(str(path)) as r:
        desc = r.color_desc.decode()
        assert "".join(desc[i] for i in np.asarray(r.raw_pattern).ravel()) == pattern
    with tifffile.TiffFile(path) as tf:
        assert tuple(tf.pages[0].tags[33422].value) == tuple(cfa_indices(pattern).ravel())


def _roundtrip_psnr(path, baseline_exposure, src):
    from campipe.colour import srgb_encode

    with rawpy.imread(str(path)) as r:
        rgb = r.postprocess(use_camera_wb=True, no_auto_bright=True, adjust_maximum_thr=0.0, gamma=(1, 1),
                            output_bps=16, user_flip=0, output_color=rawpy.ColorSpace.sRGB)
    out = srgb_encode(rgb.astype(np.float32) / 65535 * np.float32(2 ** baseline_exposure))
    ref = src[: out.shape[0], : out.shape[1]].astype(np.float32) / 255
    return 10 * np.log10(1 / np.mean((out - ref) ** 2))


def test_rawpy_round_trip_quality(tmp_path):
    """simulate -> rawpy linear -> sRGB is close to the source, and worse at high ISO (noise)."""
    skdata = pytest.importorskip("skimage.data")
    src = skdata.astronaut()[128:320, 160:352]  # 192x192 crop with the face
    cam = get_camera("sony-a7m3")
    res = {}
    for iso in (100, 12800):
        s = simulate_raw(src, cam, iso=iso, seed=0)
        res[iso] = _roundtrip_psnr(write_dng(tmp_path / f"{iso}.dng", s), s.baseline_exposure, src)
    assert res[100] > 30.0, res      # demosaicing + base-ISO noise only
    assert res[12800] < res[100] - 3, res


def test_exposure_is_white_balanced_and_scaled(tmp_path):
    """A grey patch decodes (camera WB, x 2**BaselineExposure) to the source's linear grey in every channel."""
    grey = np.full((32, 32, 3), 0.6, np.float32)  # sRGB 0.6 -> linear 0.3185
    s = simulate_raw(grey, get_camera("nikon-d850"), iso=100, illuminant="A", seed=0)
    with rawpy.imread(str(write_dng(tmp_path / "g.dng", s))) as r:
        rgb = r.postprocess(use_camera_wb=True, no_auto_bright=True, adjust_maximum_thr=0.0, gamma=(1, 1),
                            output_bps=16, output_color=rawpy.ColorSpace.sRGB)
    lin = rgb[4:-4, 4:-4].reshape(-1, 3).mean(0) / 65535 * 2 ** s.baseline_exposure
    np.testing.assert_allclose(lin, ((0.6 + 0.055) / 1.055) ** 2.4, rtol=0.01)


def test_refuses_to_overwrite(tmp_path, sim):
    p = write_dng(tmp_path / "x.dng", sim)
    with pytest.raises(FileExistsError, match="exists"):
        write_dng(p, sim)
    write_dng(p, sim, overwrite=True)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool not installed (Debian package libimage-exiftool-perl; CI installs it)")
def test_exiftool_validate(dng):
    out = subprocess.run(["exiftool", "-validate", "-warning", "-a", str(dng)], capture_output=True, text=True,
                         check=True).stdout
    assert "Validate" in out and ": OK" in out, out
    assert "Warning" not in out and "Error" not in out, out


# ----------------------------------------------------------------------------------------------- CLI
def _simulate_args(app, args):
    """typer runs a lone command as the app itself; with several commands it needs the 'simulate' name."""
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    return (["simulate"] if len(names) > 1 else []) + args


def test_cli_simulate(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from campipe.cli import app

    src = tmp_path / "in.png"
    Image.fromarray(_img(20, 30)).save(src)
    out = tmp_path / "out.dng"
    runner = CliRunner()
    res = runner.invoke(app, _simulate_args(app, [str(src), "-o", str(out), "--iso", "1600", "--camera", "nikon-d850",
                                                  "--illuminant", "D50", "--seed", "3"]))
    assert res.exit_code == 0, res.output
    with tifffile.TiffFile(out) as tf:
        p = tf.pages[0]
        assert p.shape == (20, 30)
        assert p.tags[50708].value == "Nikon D850"
        assert p.tags["ExifTag"].value["ISOSpeedRatings"] == 1600
        assert p.tags["ExifTag"].value["LightSource"] == 23
    # existing output without --overwrite: exit 1 with a message
    res = runner.invoke(app, _simulate_args(app, [str(src), "-o", str(out)]))
    assert res.exit_code == 1 and "exists" in res.output
    # unknown camera: usage error (2) naming the choices
    res = runner.invoke(app, _simulate_args(app, [str(src), "-o", str(tmp_path / "b.dng"), "--camera", "leica-m3"]))
    assert res.exit_code == 2 and "sony-a7m3" in res.output
    # not an image: exit 1 with a message, no traceback
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    res = runner.invoke(app, _simulate_args(app, [str(bad), "-o", str(tmp_path / "c.dng")]))
    assert res.exit_code == 1 and "cannot read" in res.output and "Traceback" not in res.output


# ----------------------------------------------------------------------------------------------- samples
SAMPLE_FILES = ["astronaut_5d4_iso200.dng", "rocket_a7m3_iso800.dng", "astronaut_d850_iso3200_tungsten.dng"]


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_samples_exist_small_and_open(name):
    path = SAMPLES / name
    assert path.is_file(), f"missing sample {path} (run python samples/make_samples.py)"
    assert path.stat().st_size <= 2_000_000
    with rawpy.imread(str(path)) as r:
        assert r.raw_image_visible.shape[0] >= 400
    assert name.split(".")[0] in (SAMPLES / "README.md").read_text()


def test_samples_are_reproducible(tmp_path):
    """make_samples.py rebuilds the shipped files bit for bit (fixed seeds, fixed date)."""
    pytest.importorskip("skimage.data")
    spec = importlib.util.spec_from_file_location("make_samples", SAMPLES / "make_samples.py")
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    name = "astronaut_5d4_iso200.dng"
    src, cam, iso, ill, seed = mk.SAMPLES[name]
    s = simulate_raw(mk.source_image(src), get_camera(cam), iso=iso, illuminant=ill, seed=seed, datetime=mk.DATETIME)
    out = write_dng(tmp_path / name, s)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(out) == digest(SAMPLES / name)
