"""Unit tests of the compare page, its numbers and the side-by-side PNG (small arrays, no browser)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from campipe.colour import delta_e_2000, display_to_working, working_to_display, working_to_lab
from campipe.compare_metrics import (CLIP_HI, clipped_fractions, histograms, mean_delta_e, render_metrics,
                                     skin_delta_e, sky_noise)
from campipe.compare_page import (METRIC_COLUMNS, Column, PageGroup, PageRender, fmt_value, overlay_rgba,
                                  page_data, safe_name, timing_columns, timing_values, write_overlays, write_page)
from campipe.frame import PersonInstance
from campipe.sidebyside import BACKGROUND, contact_sheet, side_by_side, to_uint8, write_rgb8

URL = re.compile(r"(?i)\b(?:https?|ftp|wss?)://|//[a-z0-9.-]+\.[a-z]{2,}/")


def read_data(page: Path) -> dict:
    html = page.read_text(encoding="utf-8")
    m = re.search(r'<script type="application/json" id="campipe-data">(.*?)</script>', html, re.S)
    assert m, "data island missing"
    return json.loads(m.group(1))


def page_paths(data: dict) -> list[str]:
    out = []
    for g in data["groups"]:
        out += [r["src"] for r in g["renders"]] + [r["thumb"] for r in g["renders"] if r["thumb"]]
        out += [o["src"] for o in g["overlays"]]
    return out


# ------------------------------------------------------------------------------------------------------- metrics

def test_clipped_fractions_exact():
    img = np.full((4, 5, 3), 0.5, np.float32)
    img[0, 0] = (1.0, 0.2, 0.2)      # one channel at 255 -> clipped highlight
    img[0, 1] = (CLIP_HI - 0.002, 0.5, 0.5)  # 254 -> not clipped
    img[1, 0] = 0.0                  # all channels 0 -> crushed
    img[1, 1] = (0.0, 0.0, 0.01)     # one channel above 0 -> not crushed
    c = clipped_fractions(img)
    assert c["highlights"] == pytest.approx(1 / 20)
    assert c["shadows"] == pytest.approx(1 / 20)


def test_skin_delta_e_zero_identity_none_without_mask(rng):
    img = rng.uniform(0.2, 0.8, (32, 32, 3)).astype(np.float32)
    skin = np.zeros((32, 32), np.float32)
    skin[8:24, 8:24] = 1.0
    assert skin_delta_e(img, img, skin) == pytest.approx(0.0, abs=1e-5)
    assert skin_delta_e(img, img, None) is None
    assert skin_delta_e(img, img, np.zeros_like(skin)) is None  # empty mask -> n/a, not 0


def test_skin_delta_e_only_counts_the_mask():
    ref = np.full((32, 32, 3), 0.6, np.float32)
    other = ref.copy()
    other[:, 16:] = (0.8, 0.5, 0.4)         # changed outside the mask only
    skin = np.zeros((32, 32), np.float32)
    skin[:, :16] = 1.0
    assert skin_delta_e(other, ref, skin) == pytest.approx(0.0, abs=1e-5)
    skin2 = 1.0 - skin
    de = skin_delta_e(other, ref, skin2)
    lab_de = float(delta_e_2000(working_to_lab(display_to_working(other[0, 20], "srgb")),
                                working_to_lab(display_to_working(ref[0, 20], "srgb"))))
    assert de == pytest.approx(lab_de, rel=1e-4) and de > 5


def test_skin_delta_e_grows_with_the_shift():
    base = np.full((24, 24, 3), 0.55, np.float32)
    skin = np.ones((24, 24), np.float32)
    des = [skin_delta_e(np.clip(base * np.float32([1 + s, 1, 1 - s]), 0, 1), base, skin) for s in (0.02, 0.05, 0.1)]
    assert des[0] < des[1] < des[2]


def test_sky_noise_estimates_known_sigma(rng):
    h, w = 160, 200
    y = np.linspace(0.3, 0.7, h, dtype=np.float32)[:, None, None]   # smooth sky gradient
    clean = np.broadcast_to(y, (h, w, 3)).astype(np.float32).copy()
    sigma_codes = 2.0
    noisy = clean + rng.normal(0, sigma_codes / 255.0, (h, w, 1)).astype(np.float32)  # grey noise: luma sigma = 2
    sky = np.zeros((h, w), np.float32)
    sky[: h // 2] = 1.0
    est = sky_noise(noisy, sky)
    assert est == pytest.approx(sigma_codes, rel=0.12)
    assert sky_noise(clean, sky) < 0.05            # a gradient is not noise
    assert sky_noise(noisy, None) is None
    # noise outside the sky does not count
    half = clean.copy()
    half[h // 2:] = noisy[h // 2:]
    assert sky_noise(half, sky) < 0.1


def test_mean_delta_e_and_render_metrics(linear_image):
    disp = working_to_display(linear_image)
    assert mean_delta_e(disp, disp) == pytest.approx(0.0, abs=1e-5)
    m = render_metrics(disp, {})
    assert m["skin_de"] is None and m["sky_noise"] is None
    assert 0.0 <= m["clip_hi"] <= 1.0 and 0.0 <= m["clip_lo"] <= 1.0
    with pytest.raises(ValueError, match="RGB"):
        clipped_fractions(disp[..., 0])


def test_histograms_exact_and_clipping_capped():
    img = np.zeros((4, 4, 3), np.float32)
    img[:2] = (0.5, 0.25, 1.0)   # 8 pixels: r bin 2, g bin 1, b bin 3 (4 bins); luma 0.3580 -> bin 1
    img[2:] = (0.5, 0.5, 0.5)    # 8 pixels: all bin 2
    h = histograms(img, bins=4)
    assert h["r"] == [0, 0, 1, 0] and h["g"] == [0, 0.5, 0.5, 0]
    assert h["b"] == [0, 0, 0.5, 0.5] and h["y"] == [0, 0.5, 0.5, 0]
    clipped = np.ones((8, 8, 3), np.float32)
    clipped[0, :2] = 0.5
    hc = histograms(clipped, bins=4)
    assert hc["y"][3] == 1.0 and hc["y"][2] == 1.0   # end bin capped, interior bin sets the scale


def test_mean_delta_e_uses_each_images_space():
    srgb = np.full((8, 8, 3), (0.8, 0.3, 0.2), np.float32)
    same_colour_p3 = working_to_display(display_to_working(srgb, "srgb"), "display-p3")
    assert mean_delta_e(same_colour_p3, srgb, space="display-p3", reference_space="srgb") < 0.05
    assert mean_delta_e(same_colour_p3, srgb, space="srgb") > 1


# ------------------------------------------------------------------------------------------------------ overlays

def test_overlay_rgba_alpha_and_contour():
    m = np.zeros((20, 20), np.float32)
    m[5:15, 5:15] = 1.0
    m[0, 0] = 0.5
    rgba = overlay_rgba(m, (10, 20, 30), fill=0.6)
    assert rgba.dtype == np.uint8 and rgba.shape == (20, 20, 4)
    assert (rgba[..., :3] == (10, 20, 30)).all()
    assert rgba[10, 10, 3] == round(0.6 * 255)       # soft fill inside
    assert rgba[5, 10, 3] == 255 and rgba[10, 5, 3] == 255   # contour on the border of the region
    assert rgba[2, 10, 3] == 0                        # nothing outside
    assert rgba[0, 0, 3] == int(0.5 * 0.6 * 255 + 0.5)  # soft value kept, rounded half up (0.5 is not > 0.5)


def test_write_overlays_classes_and_persons(tmp_path):
    m = np.zeros((30, 40), np.float32)
    m[:10] = 1
    masks = {"skin": m, "sky": m[::-1].copy(), "unknown": m}
    persons = [PersonInstance(m, 0.9), PersonInstance(m, 0.4)]
    ov = write_overlays(tmp_path, masks, persons)
    assert [o.key for o in ov] == ["sky", "skin", "person1", "person2"]   # SEMANTIC_CLASSES order, then persons
    assert ov[2].label == "person 1 (0.90)"
    for o in ov:
        im = Image.open(tmp_path / o.src)
        assert im.mode == "RGBA" and im.size == (40, 30)
    assert write_overlays(tmp_path / "none", {}, []) == []
    assert not (tmp_path / "none").exists()


def test_write_overlays_downscales_big_masks(tmp_path):
    m = np.ones((100, 300), np.float32)
    (o,) = write_overlays(tmp_path, {"sky": m}, max_side=150)
    assert Image.open(tmp_path / o.src).size == (150, 50)


# ---------------------------------------------------------------------------------------------------------- page

def _page(tmp_path: Path, n: int = 3, with_masks: bool = True) -> Path:
    renders = []
    for i in range(n):
        rel = f"renders/{i:02d}_r{i}.jpg"
        write_rgb8(tmp_path / rel, np.full((12, 16, 3), 40 * i, np.uint8))
        renders.append(PageRender(f"r{i}", rel, 16, 12, {"skin_de": fmt_value(0.5 * i, "de")}))
    ov = write_overlays(tmp_path, {"sky": np.ones((12, 16), np.float32)}) if with_masks else []
    return write_page(tmp_path, [PageGroup("input.dng", renders, ov)], "t", METRIC_COLUMNS, subtitle="s")


def test_page_is_self_contained(tmp_path):
    page = _page(tmp_path)
    html = page.read_text(encoding="utf-8")
    assert page.name == "index.html"
    assert not URL.search(html), f"network URL in page: {URL.search(html).group(0)}"
    assert "<link" not in html and "@import" not in html and " src=\"http" not in html
    assert "Content-Security-Policy" in html
    data = read_data(page)
    paths = page_paths(data)
    assert len(paths) == 4
    for p in paths:
        assert not p.startswith("/") and ".." not in p.split("/") and ":" not in p
        assert (tmp_path / p).is_file()
    g = data["groups"][0]
    assert (g["left"], g["right"]) == (0, 1)
    assert [c["key"] for c in data["columns"]] == ["skin_de", "clip_hi", "clip_lo", "sky_noise"]
    assert "skin" in html  # default overlay set and help text reach the page
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temp file


def test_page_accepts_absolute_paths_inside_and_rejects_bad_ones(tmp_path):
    write_rgb8(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    r = PageRender("a", str(tmp_path / "a.png"), 4, 4)
    write_page(tmp_path, [PageGroup("g", [r])], "t")
    assert r.src == "a.png"
    with pytest.raises(FileNotFoundError, match="missing"):
        write_page(tmp_path, [PageGroup("g", [PageRender("b", "b.png", 4, 4)])], "t")
    for bad in ("https://example.org/x.png", "../a.png", "file:a.png"):
        with pytest.raises(ValueError, match="relative"):
            write_page(tmp_path, [PageGroup("g", [PageRender("b", bad, 4, 4)])], "t")
    with pytest.raises(ValueError, match="nothing"):
        write_page(tmp_path, [], "t")
    with pytest.raises(ValueError, match="no images"):
        write_page(tmp_path, [PageGroup("g", [])], "t")


def test_page_data_escapes_script_end_and_clamps(tmp_path):
    write_rgb8(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    g = PageGroup("</script><b>x", [PageRender("a", "a.png", 4, 4)], right=5)
    page = write_page(tmp_path, [g], "t")
    html = page.read_text(encoding="utf-8")
    assert html.count("</script>") == 2  # the data island and the code, not the label
    data = read_data(page)
    assert data["groups"][0]["title"] == "</script><b>x"
    assert data["groups"][0]["right"] == 0
    with pytest.raises(ValueError, match="start_mode"):
        page_data([g], [], "t", start_mode="zoom")


def test_formatting_and_timings():
    assert fmt_value(None, "de") == "n/a" and fmt_value(float("nan"), "pct") == "n/a"
    assert fmt_value(1.234, "de") == "1.23"
    assert fmt_value(0.0, "pct") == "0" and fmt_value(0.5, "pct") == "50.00 %" and fmt_value(2e-4, "pct") == "0.020 %"
    assert fmt_value(0.25, "ms") == "250" and fmt_value(0.0042, "ms") == "4.2"
    tv = timing_values({"wb": 0.01, "tone": 0.2})
    assert tv == {"t:wb": "10", "t:tone": "200", "t:total": "210"}
    assert timing_values({}) == {}
    cols = timing_columns(["wb", "tone"])
    assert [c.key for c in cols] == ["t:wb", "t:tone", "t:total"] and all(c.group for c in cols)
    assert safe_name("my style/v2 ü") == "my_style_v2" and safe_name("...") == "image"


# --------------------------------------------------------------------------------------------------- side-by-side

def test_side_by_side_layout():
    a = np.zeros((100, 80, 3), np.float32)
    b = np.ones((50, 50, 3), np.float32)
    out = side_by_side([a, b], ["dark", "bright"], height=400, gap=4)
    assert out.dtype == np.uint8
    h = 50  # never upscaled beyond the smallest input
    assert out.shape[1] == 40 + 50 + 3 * 4
    assert (out[4:4 + h, 4:44] == 0).all() and (out[4:4 + h, 48:98] == 255).all()
    assert tuple(out[1, 1]) == BACKGROUND
    label_bar = out[4 + h:, 48:98]
    assert label_bar.max() > 150  # label text drawn in light grey
    with pytest.raises(ValueError, match="labels"):
        side_by_side([a], ["x", "y"])
    with pytest.raises(ValueError, match="no images"):
        side_by_side([], [])


def test_contact_sheet_grid():
    ims = [np.full((30, 60, 3), v, np.uint8) for v in (10, 100, 200)]
    out = contact_sheet(ims, ["a", "b", "c"], columns=2, cell=60, gap=2, label_size=10)
    bar = round(10 * 1.9)
    assert out.shape == (2 * (60 + bar + 2) + 2, 2 * 62 + 2, 3)
    assert out[2 + 30, 2 + 30, 0] == 10 and out[2 + 30, 64 + 30, 0] == 100


def test_to_uint8_and_write(tmp_path):
    x = np.array([[[0.0, 0.5, 1.2]]], np.float32)
    assert to_uint8(x).tolist() == [[[0, 128, 255]]]
    p = write_rgb8(tmp_path / "x.png", to_uint8(np.full((8, 8, 3), 0.25, np.float32)))
    assert np.asarray(Image.open(p).convert("RGB"))[0, 0, 0] == 64
    with pytest.raises(ValueError, match="unsupported"):
        write_rgb8(tmp_path / "x.bmp", np.zeros((2, 2, 3), np.uint8))


def test_column_dataclass_round_trip():
    c = Column("k", "label", "tip", "grp")
    assert page_data([PageGroup("g", [PageRender("a", "a.png", 1, 1)])], [c], "t")["columns"][0] == {
        "key": "k", "label": "label", "title": "tip", "group": "grp"}
