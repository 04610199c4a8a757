"""``campipe compare`` (styles of one input, two batch folders), stage dumps and the per-stage report.

The style-compare tests inject a fake ``process`` (a tiny gain per style on a small linear image) so they test the
command's plumbing quickly; ``test_compare_styles_real_pipeline`` renders a bundled sample for real.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from campipe.cmd_compare import CompareError, compare_folders, compare_styles, pair_folders, read_display
from campipe.colour import working_to_display
from campipe.frame import Frame, PersonInstance
from campipe.pipeline import build_pipeline
from campipe.stagedump import StageReport, dump_view, make_stage_dumper

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "astronaut_5d4_iso200.dng"
GAINS = {"standard": (1.0, 1.0, 1.0), "warm": (1.1, 1.0, 0.85), "cool": (0.9, 1.0, 1.1)}


def data_of(page: Path) -> dict:
    m = re.search(r'id="campipe-data">(.*?)</script>', page.read_text(encoding="utf-8"), re.S)
    return json.loads(m.group(1))


@pytest.fixture
def fake_process(linear_image):
    calls = []

    def process(source, style="standard", sets=None, portrait=False, on_stage=None):
        calls.append((style, tuple(sets or ()), portrait))
        disp = working_to_display(np.clip(linear_image * np.float32(GAINS[style]), 0, 1))
        h, w = disp.shape[:2]
        skin = np.zeros((h, w), np.float32)
        skin[10:30, 20:40] = 1
        sky = np.zeros((h, w), np.float32)
        sky[:12] = 1
        frame = Frame(image=linear_image.copy(), masks={"skin": skin, "sky": sky},
                      persons=[PersonInstance(skin, 0.8)], meta={"output_space": "srgb"},
                      timings={"wb": 0.001, "tone": 0.002})
        return SimpleNamespace(image=disp, masks=frame.masks, frame=frame,
                               pipeline=SimpleNamespace(names=["wb", "tone"]))

    process.calls = calls
    return process


@pytest.fixture
def src(tmp_path) -> Path:
    p = tmp_path / "in.dng"
    p.write_bytes(b"not read by the fake process")
    return p


def test_compare_styles_writes_page(tmp_path, src, fake_process):
    out = tmp_path / "out"
    page = compare_styles(src, ["warm", "cool"], out, sets=["tone.strength=1"], process=fake_process)
    assert page == out / "index.html"
    assert [c[0] for c in fake_process.calls] == ["standard", "warm", "cool"]  # reference added first
    assert all(c[1] == ("tone.strength=1",) for c in fake_process.calls)
    d = data_of(page)
    g = d["groups"][0]
    assert [r["label"] for r in g["renders"]] == ["standard", "warm", "cool"]
    assert [o["key"] for o in g["overlays"]] == ["sky", "skin", "person1"]
    for p in [r["src"] for r in g["renders"]] + [o["src"] for o in g["overlays"]]:
        assert (out / p).is_file() and not Path(p).is_absolute()
    v = [r["values"] for r in g["renders"]]
    assert v[0]["skin_de"] == "0.00" and float(v[1]["skin_de"]) > 1 and float(v[2]["skin_de"]) > 1
    assert v[0]["t:wb"] == "1.0" and v[0]["t:total"] == "3.0"
    assert v[0]["sky_noise"] != "n/a"
    keys = [c["key"] for c in d["columns"]]
    assert keys[:4] == ["skin_de", "clip_hi", "clip_lo", "sky_noise"] and keys[4:] == ["t:wb", "t:tone", "t:total"]
    sbs = Image.open(out / "sidebyside.png")
    assert sbs.size[0] > 3 * 64 and sbs.size[1] > 48
    assert Image.open(out / g["renders"][1]["src"]).size == (64, 48)


def test_compare_styles_without_masks_says_na(tmp_path, src, fake_process):
    def no_masks(*a, **k):
        r = fake_process(*a, **k)
        r.masks = {}
        r.frame.persons = []
        return r

    page = compare_styles(src, ["standard", "warm"], tmp_path / "o", process=no_masks)
    g = data_of(page)["groups"][0]
    assert g["overlays"] == [] and "n/a without" in g["note"]
    assert all(r["values"]["skin_de"] == "n/a" and r["values"]["sky_noise"] == "n/a" for r in g["renders"])


def test_compare_styles_single_png(tmp_path, src, fake_process):
    out = tmp_path / "side.png"
    assert compare_styles(src, ["standard", "warm"], out, process=fake_process) == out
    assert Image.open(out).size[0] > 2 * 64
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["in.dng", "side.png"]
    with pytest.raises(CompareError, match="exists"):
        compare_styles(src, ["standard"], out, process=fake_process)
    compare_styles(src, ["standard"], out, process=fake_process, overwrite=True)


def test_compare_styles_errors(tmp_path, src, fake_process):
    with pytest.raises(CompareError, match="not found"):
        compare_styles(tmp_path / "missing.dng", ["standard"], tmp_path / "o", process=fake_process)
    with pytest.raises(ValueError, match="unknown style 'nope'"):
        compare_styles(src, ["warm", "nope"], tmp_path / "o", process=fake_process)
    assert fake_process.calls == []  # styles are validated before anything is rendered
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "index.html").write_text("x")
    with pytest.raises(CompareError, match="--overwrite"):
        compare_styles(src, ["standard"], tmp_path / "o", process=fake_process)


def _write_runs(tmp_path: Path, rng) -> tuple[Path, Path]:
    a, b = tmp_path / "runA", tmp_path / "runB"
    a.mkdir()
    b.mkdir()
    for name in ("one", "two"):
        img = rng.uniform(0.2, 0.8, (20, 30, 3)).astype(np.float32)
        Image.fromarray((img * 255).astype(np.uint8)).save(a / f"{name}.jpg", quality=95)
        Image.fromarray((np.clip(img * 1.2, 0, 1) * 255).astype(np.uint8)).save(b / f"{name}.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(a / "only_a.png")
    (b / "notes.txt").write_text("ignored")
    import tifffile

    tifffile.imwrite(a / "deep.tif", np.full((6, 8, 3), 32768, np.uint16))
    Image.fromarray(np.full((6, 8, 3), 128, np.uint8)).save(b / "deep.jpg")
    return a, b


def test_pair_folders_and_read(tmp_path, rng):
    a, b = _write_runs(tmp_path, rng)
    pairs, only_a, only_b = pair_folders(a, b)
    assert [p.name for p in pairs] == ["deep", "one", "two"]
    assert [p.name for p in only_a] == ["only_a.png"] and only_b == []
    arr, space, _ = read_display(a / "deep.tif")
    assert arr.dtype == np.float32 and arr.shape == (6, 8, 3) and space == "srgb"
    assert arr[0, 0, 0] == pytest.approx(32768 / 65535, abs=1e-6)
    with pytest.raises(CompareError, match="not a folder"):
        pair_folders(a, tmp_path / "nope")
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(CompareError, match="cannot read"):
        read_display(tmp_path / "bad.jpg")


def test_compare_folders_page_and_sheet(tmp_path, rng):
    a, b = _write_runs(tmp_path, rng)
    page = compare_folders(a, b, tmp_path / "cmp")
    d = data_of(page)
    assert d["mode"] == "sheet" and [g["title"] for g in d["groups"]] == ["deep", "one", "two"]
    for g in d["groups"]:
        assert [r["label"] for r in g["renders"]] == ["runA", "runB"]
        for r in g["renders"]:
            assert (tmp_path / "cmp" / r["src"]).is_file() and (tmp_path / "cmp" / r["thumb"]).is_file()
            assert r["src"].rsplit(".", 1)[1] in ("jpg", "png")  # the TIFF was converted for the browser
        de = float(g["renders"][1]["values"]["de"])
        assert g["renders"][0]["values"]["de"] == "0.00"
        assert de < 0.5 if g["title"] == "deep" else de > 1  # same grey in 16-bit TIFF and JPEG / a 1.2x gain
    assert Image.open(tmp_path / "cmp" / "contact_sheet.png").size[0] > 100
    sheet = compare_folders(a, b, tmp_path / "sheet.png")
    assert Image.open(sheet).size == Image.open(tmp_path / "cmp" / "contact_sheet.png").size
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CompareError, match="no same-named images"):
        compare_folders(a, empty, tmp_path / "x")


def test_cli_usage_errors(tmp_path, rng):
    from typer.testing import CliRunner

    from campipe.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["compare", str(tmp_path / "nope.dng"), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not found" in r.output
    a, b = _write_runs(tmp_path, rng)
    r = runner.invoke(app, ["compare", str(SAMPLE), "--styles", "warm,bogus", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "unknown style 'bogus'" in r.output
    r = runner.invoke(app, ["compare", str(a), str(b), "--portrait", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--portrait" in r.output
    r = runner.invoke(app, ["compare", str(a), str(b), "-o", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "index.html").is_file()
    r = runner.invoke(app, ["compare", str(a), str(b), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--overwrite" in r.output


@pytest.mark.slow
def test_compare_styles_real_pipeline(tmp_path):
    """Render the bundled sample for real (whatever stages and weights are installed) and check the page."""
    from campipe.presets import PresetError, load_preset

    try:
        load_preset("standard")
    except PresetError as e:  # a stage of the preset is not implemented in this checkout yet
        pytest.skip(f"preset 'standard' cannot be built here: {e}")
    page = compare_styles(SAMPLE, ["standard", "warm"], tmp_path / "o", half_size=True)
    g = data_of(page)["groups"][0]
    assert [r["label"] for r in g["renders"]] == ["standard", "warm"]
    assert g["renders"][0]["values"]["t:total"] not in ("", "n/a")
    for r in g["renders"]:
        assert (tmp_path / "o" / r["src"]).stat().st_size > 1000


# --------------------------------------------------------------------------------------------------- stage dumps

def test_stage_dumper_and_report(tmp_path, linear_image):
    pipe = build_pipeline(["wb", "highlights", "tone", "output", "dither"])
    report = StageReport()
    dumper = make_stage_dumper(tmp_path / "dump", report=report)
    frame = Frame(image=linear_image.copy(), meta={"scene_referred": True})
    pipe.run(frame, on_stage=dumper)
    names = sorted(p.name for p in (tmp_path / "dump").iterdir())
    assert names == ["01_wb.jpg", "02_highlights.jpg", "03_tone.jpg", "04_output.jpg", "05_dither.jpg"]
    assert Image.open(tmp_path / "dump" / "01_wb.jpg").size == (64, 48)
    assert [r.name for r in report.rows] == pipe.names
    assert all(r.seconds >= 0 and r.peak_mib > 0 and r.rss_mib > 0 for r in report.rows)
    assert set(report.timings()) == set(pipe.names)
    page = dumper.finish()
    d = data_of(page)
    assert [r["label"] for r in d["groups"][0]["renders"]] == pipe.names
    vals = [r["values"] for r in d["groups"][0]["renders"]]
    assert vals[0]["de_prev"] == "–" and all(float(v["de_prev"]) >= 0 for v in vals[1:])
    assert float(vals[pipe.names.index("tone")]["de_prev"]) > 0.5   # the tone curve visibly changes the picture
    console = Console(record=True, width=120)
    report.print(console=console)
    text = console.export_text()
    assert "highlights" in text and "total" in text and "peak MiB" in text


def test_stage_dumper_writes_masks_after_segment(tmp_path, linear_image):
    dumper = make_stage_dumper(tmp_path, max_side=32)
    f = Frame(image=linear_image.copy())
    dumper("wb", f, 0.0)
    m = np.zeros((48, 64), np.float32)
    m[:, :32] = 1.0
    f.masks = {"sky": m}
    f.persons = [PersonInstance(m, 0.7)]
    dumper("segment", f, 0.0)
    assert (tmp_path / "02_segment_mask_sky.png").is_file() and (tmp_path / "02_segment_person1.png").is_file()
    sky = np.asarray(Image.open(tmp_path / "02_segment_mask_sky.png"))
    assert sky.shape == (24, 32) and sky[:, :15].min() == 255 and sky[:, 17:].max() == 0
    assert Image.open(tmp_path / "02_segment.jpg").size == (32, 24)
    page = dumper.finish()
    assert [o["key"] for o in data_of(page)["groups"][0]["overlays"]] == ["sky", "person1"]


def test_dump_view_linear_vs_display(linear_image):
    f = Frame(image=linear_image.copy())
    v = dump_view(f)
    assert v.dtype == np.uint8 and v.shape == (48, 64, 3)
    ref = (np.clip(working_to_display(np.clip(linear_image, 0, 1)), 0, 1) * 255 + 0.5).astype(int)
    assert np.abs(v.astype(int) - ref).max() <= 1  # the 16-bit lookup table matches the transfer function
    brighter = dump_view(f, exposure_ev=1.0)
    assert brighter.astype(int).mean() > v.astype(int).mean()
    f.display = np.full((48, 64, 3), 0.5, np.float32)
    assert (dump_view(f) == 128).all()


def test_stage_dumper_bad_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="--dump-stages"):
        make_stage_dumper(tmp_path / "file" / "sub")
