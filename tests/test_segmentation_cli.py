"""`campipe segment` output contract on small images (random-init checkpoint in tmp_path)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from campipe import cmd_segment
from test_segmentation_helpers import tiny_checkpoint

MASKS = ("sky", "hair", "skin", "teeth", "glasses", "person")


@pytest.fixture
def app():
    a = typer.Typer()

    @a.callback()
    def _root() -> None:  # keep `segment` a sub-command like in the real CLI
        pass

    cmd_segment.register(a)
    return a


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMPIPE_CACHE", str(tmp_path / "cache"))
    ck = tiny_checkpoint(tmp_path / "tiny.pt")
    monkeypatch.setenv("CAMPIPE_WEIGHTS", str(ck))
    img = (np.random.default_rng(0).random((45, 70, 3)) * 255).astype(np.uint8)
    src = tmp_path / "photo.png"
    Image.fromarray(img).save(src)
    return tmp_path, src


def test_cli_contract(app, setup):
    tmp, src = setup
    out = tmp / "out"
    # a random model's queries answer the same blob: --dedup-iou 1 keeps all 4 so the whole contract is exercised
    r = CliRunner().invoke(app, ["segment", str(src), "-o", str(out), "--overlay", "--threshold", "0",
                                 "--runtime", "torch", "--dedup-iou", "1"])
    assert r.exit_code == 0, r.output
    d = out / "photo"
    for name in MASKS:
        im = Image.open(d / f"{name}.png")
        assert im.mode == "L" and im.size == (70, 45)
    persons = sorted(d.glob("person_*.png"))
    assert [p.name for p in persons] == [f"person_{i}.png" for i in range(4)]
    doc = json.loads((d / "segments.json").read_text())
    assert doc["width"] == 70 and doc["height"] == 45
    assert doc["model"]["name"] == "HyperDETR" and len(doc["model"]["sha256"]) == 64
    scores = [p["score"] for p in doc["persons"]]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True)
    assert {"decode", "network", "total"} <= set(doc["timings"])
    ov = Image.open(d / "overlay.jpg")
    assert ov.size == (70, 45) and ov.mode == "RGB"
    # soft masks: not only 0/255
    assert len(np.unique(np.asarray(Image.open(d / "sky.png")))) > 2

    # re-run with fewer persons and no overlay: stale files are removed
    r = CliRunner().invoke(app, ["segment", str(src), "-o", str(out), "--max-persons", "1", "--threshold", "0",
                                 "--runtime", "torch"])
    assert r.exit_code == 0, r.output
    assert [p.name for p in sorted(d.glob("person_*.png"))] == ["person_0.png"]
    assert not (d / "overlay.jpg").exists()
    assert json.loads((d / "segments.json").read_text())["model"]["tta"] is False

    # flip test-time augmentation: recorded in segments.json, static masks change, the contract stays
    sky = np.asarray(Image.open(d / "sky.png"))
    r = CliRunner().invoke(app, ["segment", str(src), "-o", str(out), "--tta", "--runtime", "torch"])
    assert r.exit_code == 0, r.output
    assert json.loads((d / "segments.json").read_text())["model"]["tta"] is True
    sky_tta = np.asarray(Image.open(d / "sky.png"))
    assert sky_tta.shape == sky.shape and np.abs(sky_tta.astype(int) - sky).max() > 0


def test_cli_partial_failure_exit_1(app, setup):
    tmp, src = setup
    bad = tmp / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    r = CliRunner().invoke(app, ["segment", str(src), str(tmp / "missing.jpg"), str(bad), "-o", str(tmp / "o"),
                                 "--runtime", "torch"])
    assert r.exit_code == 1
    assert "missing.jpg" in r.output and "broken.jpg" in r.output and "2 of 3" in r.output
    assert (tmp / "o" / "photo" / "segments.json").is_file()


def test_cli_no_weights_and_usage(app, tmp_path, monkeypatch):
    monkeypatch.setenv("CAMPIPE_WEIGHTS", str(tmp_path / "none.pt"))
    src = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    r = CliRunner().invoke(app, ["segment", str(src), "-o", str(tmp_path / "o")])
    assert r.exit_code == 1 and "no trained HyperDETR weights are installed" in r.output
    r = CliRunner().invoke(app, ["segment", str(src)])  # missing -o
    assert r.exit_code == 2
    r = CliRunner().invoke(app, ["segment", str(src), "-o", str(tmp_path / "o"), "--runtime", "gpu"])
    assert r.exit_code == 2


def test_cli_reads_dng(app, setup):
    """A DNG (written by campipe's sensor simulator) is decoded, rendered display-referred and segmented."""
    from campipe import cameras, dng, simulate

    tmp, _ = setup
    cam = next(iter(cameras.CAMERAS.values())) if hasattr(cameras, "CAMERAS") else None
    if cam is None:
        pytest.skip("no simulated camera model available")
    srgb = (np.random.default_rng(1).random((40, 64, 3)) * 255).astype(np.uint8)
    raw = simulate.simulate_raw(srgb, cam, iso=200)
    path = dng.write_dng(tmp / "shot.dng", raw)
    r = CliRunner().invoke(app, ["segment", str(path), "-o", str(tmp / "o"), "--runtime", "torch"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp / "o" / "shot" / "segments.json").read_text())
    im = Image.open(tmp / "o" / "shot" / "sky.png")
    assert im.size == (doc["width"], doc["height"])
    assert doc["width"] >= 60 and doc["height"] >= 36  # LibRaw may trim a few border pixels
