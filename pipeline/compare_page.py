"""Self-contained comparison page: before/after split slider, grid, contact sheet, mask overlays, numbers table.

:func:`write_page` writes ``index.html`` into a folder that already holds the images (renders, overlay PNGs,
thumbnails), referenced by **relative** paths only; the page has its CSS and JavaScript inline and makes no network
request, so the folder can be zipped, mailed or opened from a USB stick (``file://``).

Data model (all paths relative to the page's folder, POSIX separators):

* :class:`PageRender` — one image (a style render, one side of a batch pair, one stage dump) with its pixel size and
  the pre-formatted values of the numbers table;
* :class:`PageOverlay` — one mask class drawn as a coloured RGBA PNG (soft fill + 0.5 contour), made by
  :func:`write_overlays` from ``frame.masks`` / ``frame.persons``;
* :class:`PageGroup` — what the viewer compares: renders of one input (style compare, stage dump) or the two sides of
  a batch pair; several groups make a contact sheet.

Viewer keys (also shown by ``?`` on the page): ←/→ move the split (Shift: fine), drag or click to place it, hold
Space to see the left image whole, D difference view (|right − left| × 4), 1–9 right image, Shift+1–9 left image,
[ ] previous/next right image, , . step both (consecutive stages), X swap, G grid, C contact sheet, Z or
double-click 1:1 zoom (drag to pan, Shift+drag moves the split), F full screen, mask keys as labelled (S sky,
P person, H hair, K skin, T teeth, L glasses, M all), O/Shift+O overlay opacity, ↑/↓ previous/next group, I numbers
table. The side panel also plots RGB/luma histograms of the two compared images (:attr:`PageRender.hist`). The view
state is kept in the URL hash, so a particular comparison can be bookmarked or linked.

References: the "juxtapose"/before-after slider idiom (clip-path on the top image), CSS ``image-rendering`` for 1:1
pixel inspection, HTML ``<script type="application/json">`` data islands.
"""
from __future__ import annotations

import html
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import cv2
import numpy as np
from PIL import Image

from .frame import SEMANTIC_CLASSES

#: Overlay colours (sRGB 8-bit) per mask class, chosen to stay distinguishable on skin, sky and foliage.
MASK_COLOURS: dict[str, tuple[int, int, int]] = {
    "sky": (60, 150, 255),
    "person": (255, 190, 0),
    "hair": (190, 90, 255),
    "skin": (255, 110, 80),
    "teeth": (130, 255, 60),
    "glasses": (0, 230, 230),
}
PERSON_COLOURS = [(255, 214, 10), (0, 205, 140), (255, 80, 170), (140, 170, 255)]
MASK_HOTKEYS = {"sky": "s", "person": "p", "hair": "h", "skin": "k", "teeth": "t", "glasses": "l"}


@dataclass
class PageRender:
    label: str
    src: str
    width: int
    height: int
    values: dict[str, str] = field(default_factory=dict)
    thumb: str | None = None
    #: optional histograms from :func:`campipe.compare_metrics.histograms` (drawn in the side panel)
    hist: dict[str, list[float]] | None = None


@dataclass
class PageOverlay:
    key: str
    label: str
    src: str
    colour: str
    hotkey: str = ""


@dataclass
class PageGroup:
    title: str
    renders: list[PageRender]
    overlays: list[PageOverlay] = field(default_factory=list)
    note: str = ""
    left: int = 0
    right: int = 1


@dataclass
class Column:
    """One column of the numbers table; ``group`` spans a header over consecutive columns (e.g. 'stage times')."""

    key: str
    label: str
    title: str = ""
    group: str = ""


# ----------------------------------------------------------------------------------------------------------- helpers

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A file-name-safe version of a label (ASCII letters, digits, ``._-``); never empty."""
    s = _SAFE.sub("_", str(text)).strip("._") or "image"
    return s[:80]


def _rel(path: str | Path, root: Path) -> str:
    p = Path(path)
    if p.is_absolute():
        p = p.resolve().relative_to(root.resolve())
    return PurePosixPath(*p.parts).as_posix()


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % rgb


def overlay_rgba(mask: np.ndarray, colour: tuple[int, int, int], fill: float = 0.6) -> np.ndarray:
    """Soft mask float (H, W) in [0, 1] -> uint8 RGBA: colour everywhere, alpha = ``fill`` * mask, contour at 0.5.

    The contour (where the mask crosses 0.5, ~1/800 of the long side thick) is fully opaque so the boundary stays
    readable when the fill is faint.
    """
    m = np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)
    if m.ndim != 2:
        raise ValueError(f"overlay_rgba: expected an (H, W) mask, got shape {m.shape}")
    h, w = m.shape
    alpha = (m * (255.0 * fill) + 0.5).astype(np.uint8)
    inside = (m > 0.5).astype(np.uint8)
    k = max(3, 2 * round(max(h, w) / 1600) + 1)
    edge = inside - cv2.erode(inside, np.ones((k, k), np.uint8), borderType=cv2.BORDER_REPLICATE)
    alpha[edge.astype(bool)] = 255
    out = np.empty((h, w, 4), np.uint8)
    out[..., :3] = colour
    out[..., 3] = alpha
    return out


def _downscale_mask(m: np.ndarray, max_side: int) -> np.ndarray:
    h, w = m.shape
    if max(h, w) <= max_side:
        return m
    f = max_side / max(h, w)
    return cv2.resize(m, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def write_overlays(out_dir: str | Path, masks: dict[str, np.ndarray] | None, persons: Sequence[Any] = (),
                   subdir: str = "masks", max_side: int = 2048) -> list[PageOverlay]:
    """Write one RGBA PNG per mask class (:data:`SEMANTIC_CLASSES` order) and per person instance.

    Args:
        out_dir: the page folder; PNGs go to ``out_dir/subdir``.
        masks: ``frame.masks`` (float32 (H, W) in [0, 1]); missing or empty -> no overlay for that class.
        persons: ``frame.persons`` (objects with ``.mask`` and ``.score``), at most 4 drawn.
        max_side: overlays are area-downscaled to this long side (the browser scales them back; masks are soft).

    Returns:
        The overlays for :class:`PageGroup`, in display order; empty when there are no masks.
    """
    out_dir = Path(out_dir)
    masks = masks or {}
    items: list[tuple[str, str, np.ndarray, tuple[int, int, int], str]] = []
    for cls in SEMANTIC_CLASSES:
        if cls in masks and masks[cls] is not None:
            items.append((cls, cls, masks[cls], MASK_COLOURS[cls], MASK_HOTKEYS[cls]))
    for i, p in enumerate(list(persons)[:4]):
        score = getattr(p, "score", None)
        label = f"person {i + 1}" + (f" ({score:.2f})" if isinstance(score, (int, float)) else "")
        items.append((f"person{i + 1}", label, p.mask, PERSON_COLOURS[i], ""))
    if not items:
        return []
    (out_dir / subdir).mkdir(parents=True, exist_ok=True)
    overlays = []
    for key, label, m, col, hot in items:
        m = np.asarray(m, dtype=np.float32)
        if m.ndim != 2:
            raise ValueError(f"mask {key!r}: expected (H, W), got shape {m.shape}")
        rgba = overlay_rgba(_downscale_mask(m, max_side), col)
        rel = f"{subdir}/{safe_name(key)}.png"
        Image.fromarray(rgba, "RGBA").save(out_dir / rel, compress_level=3)
        overlays.append(PageOverlay(key, label, rel, _hex(col), hot))
    return overlays


def write_thumb(out_dir: str | Path, rel: str, rgb8: np.ndarray, max_side: int = 480, quality: int = 85) -> str:
    """Write a small JPEG thumbnail of uint8 RGB at ``out_dir/rel``; returns ``rel``."""
    h, w = rgb8.shape[:2]
    f = min(1.0, max_side / max(h, w))
    t = rgb8 if f >= 1.0 else cv2.resize(rgb8, (max(1, round(w * f)), max(1, round(h * f))),
                                         interpolation=cv2.INTER_AREA)
    path = Path(out_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(t).save(path, quality=quality)
    return rel


# ------------------------------------------------------------------------------------------------------ formatting

def fmt_value(v: Any, kind: str) -> str:
    """Format a number for the table: ``de`` (ΔE, 2 decimals), ``pct`` (fraction -> %), ``sigma``, ``ms``."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if kind == "de":
        return f"{v:.2f}"
    if kind == "pct":
        p = 100.0 * v
        return "0" if p == 0 else (f"{p:.3f}" if p < 0.1 else f"{p:.2f}") + " %"
    if kind == "sigma":
        return f"{v:.2f}"
    if kind == "ms":
        return f"{1000.0 * v:.0f}" if v >= 0.01 else f"{1000.0 * v:.1f}"
    return str(v)


METRIC_COLUMNS = [
    Column("skin_de", "skin ΔE00", "mean CIEDE2000 vs the reference render over the skin mask (n/a without masks)"),
    Column("clip_hi", "clipped hi", "pixels with any channel at 255"),
    Column("clip_lo", "crushed lo", "pixels with all channels at 0"),
    Column("sky_noise", "sky noise σ", "Immerkær noise estimate over the sky mask, 8-bit code values"),
]


def metric_values(metrics: dict[str, float | None]) -> dict[str, str]:
    """Format the dict from :func:`campipe.compare_metrics.render_metrics` for :class:`PageRender.values`."""
    kinds = {"skin_de": "de", "clip_hi": "pct", "clip_lo": "pct", "sky_noise": "sigma", "de": "de"}
    return {k: fmt_value(v, kinds.get(k, "")) for k, v in metrics.items()}


def timing_columns(stage_names: Sequence[str]) -> list[Column]:
    """Table columns for per-stage times (ms), in pipeline order, plus the total."""
    cols = [Column(f"t:{n}", n, f"time of stage {n} in ms", "stage times (ms)") for n in stage_names]
    cols.append(Column("t:total", "total", "sum of stage times in ms", "stage times (ms)"))
    return cols


def timing_values(timings: dict[str, float] | None) -> dict[str, str]:
    """``frame.timings`` (seconds) -> ``{'t:<stage>': 'ms', 't:total': 'ms'}``; empty input -> empty dict."""
    if not timings:
        return {}
    out = {f"t:{k}": fmt_value(float(v), "ms") for k, v in timings.items()}
    out["t:total"] = fmt_value(float(sum(timings.values())), "ms")
    return out


# ------------------------------------------------------------------------------------------------------------ page

def _validate(out_dir: Path, groups: Sequence[PageGroup]) -> None:
    missing = []
    for g in groups:
        if not g.renders:
            raise ValueError(f"group {g.title!r} has no images")
        paths = [r.src for r in g.renders] + [r.thumb for r in g.renders if r.thumb] + [o.src for o in g.overlays]
        for p in paths:
            if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", p) or p.startswith(("/", "\\")) or ".." in p.split("/"):
                raise ValueError(f"page image path {p!r} must be relative to the page folder, without '..'")
            if not (out_dir / p).is_file():
                missing.append(p)
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) referenced by the page are missing in {out_dir}: "
                                f"{', '.join(missing[:5])}")


def page_data(groups: Sequence[PageGroup], columns: Sequence[Column], title: str, subtitle: str = "",
              start_mode: str = "split") -> dict:
    """The JSON data island of the page (also handy for tests)."""
    gs = []
    for g in groups:
        d = asdict(g)
        n = len(g.renders)
        d["left"] = min(max(g.left, 0), n - 1)
        d["right"] = min(max(g.right, 0), n - 1)
        gs.append(d)
    if start_mode not in ("split", "grid", "sheet"):
        raise ValueError(f"start_mode must be split, grid or sheet, got {start_mode!r}")
    return {"title": title, "subtitle": subtitle, "mode": start_mode, "columns": [asdict(c) for c in columns],
            "groups": gs}


def write_page(out_dir: str | Path, groups: Sequence[PageGroup], title: str, columns: Sequence[Column] = (),
               subtitle: str = "", filename: str = "index.html", start_mode: str = "split") -> Path:
    """Write the self-contained HTML page into ``out_dir`` (whose images must already exist). Returns its path.

    Raises:
        ValueError: no group, an empty group, or an absolute / URL / ``..`` image path.
        FileNotFoundError: an image referenced by the page is not in ``out_dir``.
    """
    out_dir = Path(out_dir)
    if not groups:
        raise ValueError("write_page: nothing to show (no groups)")
    for g in groups:
        for r in g.renders:
            r.src = _rel(r.src, out_dir)
            r.thumb = _rel(r.thumb, out_dir) if r.thumb else None
        for o in g.overlays:
            o.src = _rel(o.src, out_dir)
    _validate(out_dir, groups)
    data = json.dumps(page_data(groups, columns, title, subtitle, start_mode), ensure_ascii=False)
    data = data.replace("</", "<\\/")  # a label containing "</script>" must not end the data island
    from ._compare_assets import CSS, JS, BODY

    doc = (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src 'self' file: data: blob:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body class=\"mode-split\">\n"
        f"{BODY}\n<script type=\"application/json\" id=\"campipe-data\">{data}</script>\n"
        f"<script>{JS}</script>\n</body>\n</html>\n"
    )
    path = out_dir / filename
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{filename}.tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(path)
    return path
