"""``campipe compare``: render one input in several styles, or pair two batch runs, and show the difference.

Usage::

    campipe compare IMG.dng --styles standard,warm,cool [--portrait] -o OUT/       # page + renders + side-by-side
    campipe compare IMG.dng --styles standard,warm,cool -o side.png                # just the labelled side-by-side
    campipe compare RUN_A/ RUN_B/ -o OUT/                                         # pairs same-named files, contact sheet
    campipe compare RUN_A/ RUN_B/ -o sheet.png                                    # just the contact sheet

A folder output receives ``index.html`` (open it in any browser, works offline, see :mod:`campipe.compare_page`),
the renders (``renders/<style>.jpg``, colour-managed with the output ICC profile), mask overlays (``masks/``),
``sidebyside.png`` (style mode) or ``contact_sheet.png`` (pair mode) and thumbnails.

The reference render of the style mode is ``standard`` (added first when ``--styles`` omits it): skin ΔE is
measured against it and the slider starts as standard | next style.

References: :mod:`campipe.compare_metrics` (numbers), :mod:`campipe.sidebyside` (PNG), :mod:`campipe.compare_page`.
"""
from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .errors import CampipeError

# compare_metrics, compare_page and sidebyside (with cv2 and Pillow) are imported by the functions that use them,
# so that registering this command costs nothing at start-up of the other commands.

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".heic", ".heif")
BROWSER_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SINGLE_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SIDE_BY_SIDE_HEIGHT = 720


class CompareError(ValueError):
    """A compare request that cannot be carried out; the message names the input and the reason."""


def _log(console, msg: str) -> None:
    if console is not None:
        console.print(msg, highlight=False)


def _check_out(out: Path, overwrite: bool) -> bool:
    """True when ``out`` is a single image file (.png/.jpg); raise if it would overwrite without ``overwrite``."""
    single = out.suffix.lower() in SINGLE_IMAGE_SUFFIXES
    if single:
        if out.exists() and not overwrite:
            raise CompareError(f"{out} exists (use --overwrite)")
        if not out.parent.is_dir():
            raise CompareError(f"{out}: output folder {out.parent} does not exist")
    else:
        if out.exists() and not out.is_dir():
            raise CompareError(f"{out} exists and is not a folder (give a folder, or a .png/.jpg for one image)")
        if (out / "index.html").exists() and not overwrite:
            raise CompareError(f"{out}/index.html exists (use --overwrite)")
    return single


def _write_render(path: Path, display: np.ndarray, meta: dict) -> None:
    """Full-resolution JPEG render with the output profile (campipe.encode when present)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        from .encode import write_image
    except ImportError:
        from .sidebyside import to_uint8, write_rgb8

        write_rgb8(path, to_uint8(display), meta=meta, quality=92)
        return
    write_image(path, display, fmt="jpeg", quality=92, meta=meta, overwrite=True)


# -------------------------------------------------------------------------------------------------- style compare

def resolve_styles(styles: list[str], reference: str = "standard") -> list[str]:
    """Deduplicate, validate every style up front (clear error before any rendering) and put the reference first."""
    from .presets import available_presets, load_preset

    out: list[str] = []
    for s in styles:
        s = s.strip()
        if s and s not in out:
            out.append(s)
    if not out:
        raise CompareError("--styles: no style given")
    if reference not in out and reference in available_presets():
        out.insert(0, reference)
    elif reference in out:
        out.remove(reference)
        out.insert(0, reference)
    for s in out:
        load_preset(s)  # raises PresetError naming the file / key
    return out


def compare_styles(source: str | Path, styles: list[str], out: str | Path, portrait: bool = False,
                   sets: list[str] | None = None, half_size: bool = False, overwrite: bool = False,
                   console=None, process: Callable | None = None) -> Path:
    """Render ``source`` with each style and write the page folder, or only the side-by-side when ``out`` is .png/.jpg.

    The input is decoded once (:func:`campipe.decode.decode_file`) and every style renders a copy of that frame.
    ``process`` defaults to :func:`campipe.api.process` (injectable for tests; it receives the decoded
    :class:`~campipe.frame.Frame` copy). Returns the written page or image.
    """
    from .compare_metrics import clipped_fractions, downscale, histograms, skin_delta_e, sky_noise
    from .compare_page import (METRIC_COLUMNS, PageGroup, PageRender, metric_values, safe_name, timing_columns,
                               timing_values, write_overlays, write_page)
    from .sidebyside import side_by_side, to_uint8, write_rgb8

    out = Path(out)
    source = Path(source)
    if not source.is_file():
        raise CompareError(f"{source}: input file not found")
    single = _check_out(out, overwrite)
    styles = resolve_styles(styles)
    if process is None:
        from .api import process
        from .decode import decode_file

        t0 = time.perf_counter()
        decoded = decode_file(source, half_size=half_size)
        _log(console, f"  decoded {source.name} in {time.perf_counter() - t0:.2f} s")
    else:
        decoded = None
    if len(styles) < 2:
        _log(console, f"[yellow]only one style ({styles[0]}): the page shows it alone[/]")

    ref_small = ref_skin = None
    renders: list[PageRender] = []
    thumbs: list[np.ndarray] = []
    stage_order: list[str] = []
    overlays = []
    space = "srgb"
    for i, style in enumerate(styles):
        t0 = time.perf_counter()
        res = process(decoded.copy() if decoded is not None else source, style=style, sets=sets, portrait=portrait)
        disp = np.asarray(res.image, dtype=np.float32)
        frame = res.frame
        meta = dict(frame.meta)
        space = meta.get("output_space", "srgb")
        masks = dict(res.masks or {})
        label = style + (" +portrait" if portrait else "")
        small = downscale(disp, 768)
        if i == 0:
            ref_small = small
            skin = masks.get("skin")
            ref_skin = downscale(np.asarray(skin, np.float32), 768) if skin is not None else None
            if not single:
                overlays = write_overlays(out, masks, getattr(frame, "persons", []))
        clip = clipped_fractions(disp)
        values = metric_values({
            "skin_de": skin_delta_e(small, ref_small, ref_skin, space=space) if small.shape == ref_small.shape
            else None,
            "clip_hi": clip["highlights"], "clip_lo": clip["shadows"],
            "sky_noise": sky_noise(disp, masks.get("sky")),
        })
        values.update(timing_values(frame.timings))
        for n in list(getattr(res.pipeline, "names", [])) or list(frame.timings):
            if n not in stage_order:
                stage_order.append(n)
        h, w = disp.shape[:2]
        if not single:
            rel = f"renders/{i + 1:02d}_{safe_name(style)}.jpg"
            _write_render(out / rel, disp, meta)
            renders.append(PageRender(label, rel, w, h, values, hist=histograms(disp)))
        thumbs.append(to_uint8(_to_height(disp, SIDE_BY_SIDE_HEIGHT)))
        _log(console, f"  {label:<24} {time.perf_counter() - t0:6.2f} s  {w}×{h}")
        del res, disp, frame

    sbs = side_by_side(thumbs, [r for r in styles], height=SIDE_BY_SIDE_HEIGHT)
    if single:
        write_rgb8(out, sbs, meta={"output_space": space})
        return out
    write_rgb8(out / "sidebyside.png", sbs, meta={"output_space": space})
    note = ("Overlays are the masks of the reference render." if overlays else
            "Skin ΔE and sky noise need the skin / sky masks: n/a without them.")
    group = PageGroup(source.name, renders, overlays, note=note + " Side-by-side PNG: sidebyside.png",
                      left=0, right=min(1, len(renders) - 1))
    sub = f"{source.name} · {renders[0].width}×{renders[0].height}" + (" · portrait" if portrait else "")
    if sets:
        sub += " · " + " ".join(sets)
    return write_page(out, [group], "campipe compare", METRIC_COLUMNS + timing_columns(stage_order), subtitle=sub)


def _to_height(img: np.ndarray, height: int) -> np.ndarray:
    """Area-downscale (float or uint8) to ``height`` rows; smaller images are returned as they are."""
    import cv2

    h, w = img.shape[:2]
    if h <= height:
        return img
    return cv2.resize(img, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------------------------------- pair compare

@dataclass
class Pair:
    name: str
    a: Path
    b: Path


def list_images(folder: Path) -> dict[str, Path]:
    """Image files directly in ``folder`` keyed by stem (first by sorted name when two share a stem)."""
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES:
            found.setdefault(p.stem, p)
    return found


def pair_folders(dir_a: Path, dir_b: Path) -> tuple[list[Pair], list[Path], list[Path]]:
    """Same-named images of two folders (matched by file stem, so a.jpg pairs with a.png): pairs, only-A, only-B."""
    for d in (dir_a, dir_b):
        if not d.is_dir():
            raise CompareError(f"{d}: not a folder")
    a, b = list_images(dir_a), list_images(dir_b)
    pairs = [Pair(k, a[k], b[k]) for k in sorted(a) if k in b]
    return pairs, [a[k] for k in sorted(a) if k not in b], [b[k] for k in sorted(b) if k not in a]


def read_display(path: Path) -> tuple[np.ndarray, str, bytes | None]:
    """Read an encoded image as float32 (H, W, 3) in [0, 1], its space ('srgb', or 'display-p3' when the embedded
    ICC profile names P3) and the ICC bytes. TIFFs go through tifffile (16-bit kept), the rest through Pillow."""
    from PIL import Image

    suffix = path.suffix.lower()
    try:
        if suffix in (".heic", ".heif"):
            import pillow_heif

            pillow_heif.register_heif_opener()
        with Image.open(path) as im:
            icc = im.info.get("icc_profile")
            if suffix in (".tif", ".tiff"):
                import tifffile

                a = tifffile.imread(path)
                if a.ndim == 2:
                    a = np.repeat(a[..., None], 3, axis=2)
                a = a[..., :3]
                scale = {np.dtype(np.uint16): 65535.0, np.dtype(np.uint8): 255.0}.get(a.dtype, 1.0)
                arr = np.clip(a.astype(np.float32) / np.float32(scale), 0.0, 1.0)
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / np.float32(255.0)
    except (OSError, ValueError, SyntaxError) as e:
        raise CompareError(f"{path}: cannot read image ({e})") from None
    space = "display-p3" if icc and b"P3" in icc else "srgb"
    return arr, space, icc


def _page_copy(src: Path, out: Path, rel_stem: str, display: np.ndarray, icc: bytes | None) -> str:
    """Copy a browser-viewable file as-is (keeps its ICC); convert others (TIFF, HEIC) to an 8-bit PNG."""
    suffix = src.suffix.lower()
    if suffix in BROWSER_SUFFIXES:
        rel = rel_stem + (".jpg" if suffix == ".jpeg" else suffix)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out / rel)
        return rel
    from PIL import Image

    from .sidebyside import to_uint8

    rel = rel_stem + ".png"
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    kw = {"icc_profile": icc} if icc else {}
    Image.fromarray(to_uint8(display)).save(out / rel, **kw)
    return rel


def compare_folders(dir_a: str | Path, dir_b: str | Path, out: str | Path, overwrite: bool = False,
                    console=None) -> Path:
    """Pair same-named renders of two batch runs into one page (split slider per pair + contact sheet)."""
    from .compare_metrics import clipped_fractions, histograms, mean_delta_e
    from .compare_page import (METRIC_COLUMNS, Column, PageGroup, PageRender, fmt_value, metric_values, safe_name,
                               write_page, write_thumb)
    from .sidebyside import contact_sheet, side_by_side, to_uint8, write_rgb8

    dir_a, dir_b, out = Path(dir_a), Path(dir_b), Path(out)
    pairs, only_a, only_b = pair_folders(dir_a, dir_b)
    if not pairs:
        raise CompareError(f"no same-named images in {dir_a} and {dir_b} "
                           f"({len(only_a)} and {len(only_b)} images, matched by file name without extension)")
    single = _check_out(out, overwrite)
    la, lb = dir_a.resolve().name or str(dir_a), dir_b.resolve().name or str(dir_b)
    if la == lb:
        la, lb = f"A: {dir_a}", f"B: {dir_b}"
    for side, missing in (("only in " + la, only_a), ("only in " + lb, only_b)):
        if missing:
            _log(console, f"[yellow]{len(missing)} {side}: {', '.join(p.name for p in missing[:8])}"
                          f"{' …' if len(missing) > 8 else ''}[/]")
    groups: list[PageGroup] = []
    sheet_tiles, sheet_labels = [], []
    for k, pr in enumerate(pairs):
        da, sa, icc_a = read_display(pr.a)
        db, sb, icc_b = read_display(pr.b)
        de = mean_delta_e(db, da, space=sb, reference_space=sa)
        vals = []
        for d, is_b in ((da, False), (db, True)):
            c = clipped_fractions(d)
            v = metric_values({"de": de if is_b else 0.0, "clip_hi": c["highlights"], "clip_lo": c["shadows"]})
            vals.append(v)
        tile = side_by_side([da, db], [la, lb], height=240, gap=4, label_size=13)
        sheet_tiles.append(tile)
        sheet_labels.append(f"{pr.name}   dE00 {fmt_value(de, 'de')}")
        if not single:
            stem = f"{k + 1:03d}_{safe_name(pr.name)}"
            ra = _page_copy(pr.a, out, f"a/{stem}", da, icc_a)
            rb = _page_copy(pr.b, out, f"b/{stem}", db, icc_b)
            ta = write_thumb(out, f"thumbs/a_{stem}.jpg", to_uint8(da))
            tb = write_thumb(out, f"thumbs/b_{stem}.jpg", to_uint8(db))
            groups.append(PageGroup(pr.name, [
                PageRender(la, ra, da.shape[1], da.shape[0], vals[0], ta, histograms(da)),
                PageRender(lb, rb, db.shape[1], db.shape[0], vals[1], tb, histograms(db))],
                note=f"{pr.a}\n{pr.b}" + ("" if da.shape == db.shape else
                                          f"\nsizes differ: {da.shape[1]}×{da.shape[0]} vs "
                                          f"{db.shape[1]}×{db.shape[0]}")))
        _log(console, f"  {pr.name:<32} ΔE00 {fmt_value(de, 'de')}")
    cell = (max(t.shape[1] for t in sheet_tiles), max(t.shape[0] for t in sheet_tiles))
    sheet = contact_sheet(sheet_tiles, sheet_labels, columns=2 if cell[0] > 900 else 3, cell=cell)
    if single:
        write_rgb8(out, sheet)
        return out
    write_rgb8(out / "contact_sheet.png", sheet)
    cols = [Column("de", "ΔE00 vs A", f"mean CIEDE2000 against {la} over the whole frame")] + [
        c for c in METRIC_COLUMNS if c.key in ("clip_hi", "clip_lo")]
    return write_page(out, groups, "campipe compare", cols, subtitle=f"{la}  vs  {lb} · {len(pairs)} pairs",
                      start_mode="sheet" if len(groups) > 1 else "split")


# ------------------------------------------------------------------------------------------------------------ CLI

def register(app) -> None:
    import typer

    @app.command("compare")
    def compare_cmd(
        inputs: list[Path] = typer.Argument(..., help="one image/RAW file (style compare), or two folders "
                                                      "(pair same-named renders of two batch runs)"),
        out: Path = typer.Option(..., "-o", "--out", help="output folder (page), or a .png/.jpg for one image"),
        styles: str = typer.Option("standard,warm,cool", "--styles", help="comma-separated styles (or .toml paths)"),
        portrait: bool = typer.Option(False, "--portrait", help="add the portrait (background blur) effect"),
        sets: Optional[list[str]] = typer.Option(None, "--set", help="stage.param=value, applied to every style"),
        half_size: bool = typer.Option(False, "--half-size", help="decode RAW at half size (4x faster)"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing page / image"),
        open_page: bool = typer.Option(False, "--open", help="open the page in the default browser"),
    ) -> None:
        """Compare styles of one input, or two batch runs, on a self-contained page (works offline).

        [b]campipe compare IMG.dng --styles standard,warm,cool -o OUT/[/]   page + renders + sidebyside.png

        [b]campipe compare IMG.dng --styles standard,warm -o side.png[/]    just the labelled side-by-side

        [b]campipe compare RUN_A/ RUN_B/ -o OUT/[/]                         same-named files paired, contact sheet

        Open OUT/index.html: drag the split, 1-9 pick images, G grid, Z 1:1, S/P/H/K/T/L mask overlays, ? help.
        """
        from rich.console import Console

        from .cli import EXIT_FAILED, EXIT_USAGE
        from .presets import PresetError

        console = Console(stderr=True)
        try:
            if len(inputs) == 1 and not inputs[0].is_dir():
                console.print(f"compare {inputs[0]} with styles {styles}", highlight=False)
                path = compare_styles(inputs[0], styles.split(","), out, portrait=portrait, sets=sets,
                                      half_size=half_size, overwrite=overwrite, console=console)
            elif len(inputs) == 2 and all(p.is_dir() for p in inputs):
                if portrait or sets:
                    raise CompareError("--portrait/--set apply to rendering a file; comparing two folders "
                                       "only reads their images")
                console.print(f"compare {inputs[0]} with {inputs[1]}", highlight=False)
                path = compare_folders(inputs[0], inputs[1], out, overwrite=overwrite, console=console)
            else:
                missing = [str(p) for p in inputs if not p.exists()]
                why = f"not found: {', '.join(missing)}" if missing else \
                    f"got {len(inputs)} input(s): {', '.join(map(str, inputs))}"
                console.print(f"[red]campipe compare: give one image file, or two folders ({why})[/]",
                              highlight=False, soft_wrap=True)
                raise typer.Exit(EXIT_USAGE)
        except typer.Exit:
            raise
        except (CompareError, PresetError) as e:  # bad arguments: usage error
            console.print(f"[red]campipe compare: {e}[/]", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USAGE)
        except (CampipeError, ValueError, OSError) as e:  # PresetError, DecodeError, EncodeError: one-line messages
            console.print(f"[red]campipe compare: {e}[/]", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_FAILED)
        console.print(f"wrote {path}", highlight=False)
        if open_page and path.suffix == ".html":
            import webbrowser

            webbrowser.open(path.resolve().as_uri())


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: campipe compare ...")
