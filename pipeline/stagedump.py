"""``campipe process --dump-stages DIR`` and ``--report``: see what every stage changed, what it cost.

Both are ``on_stage(name, frame, seconds)`` callbacks for :meth:`campipe.pipeline.Pipeline.run` /
``campipe.process(..., on_stage=...)``:

* :class:`StageReport` records, per stage, the wall time (measured by the pipeline runner) and memory: the process's
  resident-set peak *during* the stage (``VmHWM`` from ``/proc/self/status``, reset after every stage by writing
  ``5`` to ``/proc/self/clear_refs``) and the resident set after it (``VmRSS``). Where the peak cannot be reset
  (non-Linux, restricted ``/proc``) it falls back to ``resource.getrusage().ru_maxrss``, which only ever grows: the
  column is then marked ``≥`` and only rises when a stage sets a new process-wide peak. (``tracemalloc`` is not used:
  it slows numpy-heavy stages several-fold and misses memory allocated by OpenCV / torch.)
* :func:`make_stage_dumper` writes ``NN_<stage>.jpg`` after every stage (linear working image shown with a simple
  exposure + clip + sRGB encoding before the output stage, the display image after it), the masks after the stage
  that provides them (``NN_<stage>_mask_<class>.png``, ``NN_<stage>_person<k>.png``, 8-bit grey), and on
  :meth:`StageDumper.finish` an ``index.html`` compare page stepping through the stages (see
  :mod:`campipe.compare_page`).

Typical use (what ``campipe process`` does)::

    report = StageReport() if want_report else None
    dumper = make_stage_dumper(dump_dir, report=report) if dump_dir else None
    result = campipe.process(path, style=style, on_stage=dumper or report)
    if dumper: dumper.finish()
    if report: report.print()

The first stage's memory also includes whatever ``process`` did before it (decode), because the callback only runs
after stages.

References: proc(5) (``/proc/[pid]/status`` VmHWM/VmRSS, ``clear_refs``), getrusage(2).
"""
from __future__ import annotations

import resource
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from .colour import apply_matrix, srgb_encode, working_to_output
from .frame import Frame

OnStage = Callable[[str, Frame, float], None]

# --------------------------------------------------------------------------------------------------------- memory


def _status_kib() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def reset_peak() -> bool:
    """Reset the kernel's resident-set high-water mark for this process; False where not supported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _ru_maxrss_mib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0  # bytes on macOS, KiB on Linux


def memory_snapshot() -> tuple[float, float]:
    """(peak MiB since the last reset, current MiB); peak from ru_maxrss when /proc is unavailable."""
    st = _status_kib()
    cur = st.get("VmRSS", 0) / 1024.0
    peak = st["VmHWM"] / 1024.0 if "VmHWM" in st else _ru_maxrss_mib()
    return peak, cur


@dataclass
class StageRow:
    index: int
    name: str
    seconds: float
    peak_mib: float
    rss_mib: float
    start_rss_mib: float
    megapixels: float

    @property
    def extra_mib(self) -> float:
        """Peak memory above the resident set at the stage's start: what the stage itself needed."""
        return max(0.0, self.peak_mib - self.start_rss_mib)


@dataclass
class StageReport:
    """Per-stage time and memory, collected as an ``on_stage`` callback; :meth:`print` shows a rich table."""

    rows: list[StageRow] = field(default_factory=list)
    exact_peak: bool = True

    def __post_init__(self) -> None:
        self.exact_peak = reset_peak()
        self._start_rss = memory_snapshot()[1]

    def reset_peak(self) -> None:
        """Start a new measurement interval (called by the dumper after it wrote files)."""
        if self.exact_peak:
            reset_peak()
        self._start_rss = memory_snapshot()[1]

    def __call__(self, name: str, frame: Frame, seconds: float) -> None:
        peak, cur = memory_snapshot()
        mp = frame.height * frame.width / 1e6
        self.rows.append(StageRow(len(self.rows) + 1, name, float(seconds), peak, cur, self._start_rss, mp))
        self.reset_peak()

    @property
    def total_seconds(self) -> float:
        return sum(r.seconds for r in self.rows)

    def timings(self) -> dict[str, float]:
        """name -> seconds (a repeated stage name is summed), for :func:`campipe.compare_page.timing_values`."""
        out: dict[str, float] = {}
        for r in self.rows:
            out[r.name] = out.get(r.name, 0.0) + r.seconds
        return out

    def table(self, title: str = "stages"):
        """A ``rich.table.Table``: #, stage, ms, % of time, ms/MP, peak RSS, extra over start, RSS after."""
        from rich.table import Table

        total = self.total_seconds or 1e-12
        ge = "" if self.exact_peak else "≥"
        t = Table(title=title, title_justify="left", header_style="bold",
                  caption="peak = resident-set peak during the stage; +MiB = peak above the stage's starting RSS"
                          + ("" if self.exact_peak else "; ≥: process-wide peak (could not reset per stage)"),
                  caption_justify="left")
        for col, just in [("#", "right"), ("stage", "left"), ("ms", "right"), ("%", "right"), ("ms/MP", "right"),
                          ("peak MiB", "right"), ("+MiB", "right"), ("after MiB", "right")]:
            t.add_column(col, justify=just)
        for r in self.rows:
            t.add_row(str(r.index), r.name, f"{r.seconds * 1e3:.1f}", f"{100 * r.seconds / total:.1f}",
                      f"{r.seconds * 1e3 / max(r.megapixels, 1e-9):.1f}", f"{ge}{r.peak_mib:.0f}",
                      f"{r.extra_mib:.0f}", f"{r.rss_mib:.0f}")
        if self.rows:
            peak = max(r.peak_mib for r in self.rows)
            t.add_section()
            t.add_row("", "total", f"{total * 1e3:.1f}", "100.0",
                      f"{total * 1e3 / max(self.rows[-1].megapixels, 1e-9):.1f}", f"{ge}{peak:.0f}", "", "")
        return t

    def print(self, console=None, title: str = "stages") -> None:
        from rich.console import Console

        (console or Console(stderr=True)).print(self.table(title))


# ----------------------------------------------------------------------------------------------------------- dumps


def dump_view(frame: Frame, exposure_ev: float = 0.0) -> np.ndarray:
    """Viewable uint8 sRGB of a frame: ``frame.display`` once set, else linear working image * 2**ev, clipped.

    Display images in Display P3 are shown as they are (the numbers are P3; viewers assuming sRGB show them
    slightly desaturated, which is fine for seeing *what changed*).
    """
    if frame.display is not None:
        return (np.clip(frame.display, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    lin = apply_matrix(frame.image, working_to_output("srgb") * (2.0 ** exposure_ev))
    np.clip(lin, 0.0, 1.0, out=lin)
    lin *= 65535.0
    lin += 0.5
    return _srgb8_lut()[lin.astype(np.uint16)]


@lru_cache(maxsize=1)
def _srgb8_lut() -> np.ndarray:
    """16-bit linear -> 8-bit sRGB table: a lookup is ~10x faster than the transfer function on 24 MP, and the
    table's linear step (1/65535) is far below one 8-bit code even in the steep toe of the curve."""
    x = np.linspace(0.0, 1.0, 65536, dtype=np.float32)
    return (srgb_encode(x) * 255.0 + 0.5).astype(np.uint8)


def _downscale(a: np.ndarray, max_side: int | None) -> np.ndarray:
    if not max_side or max(a.shape[:2]) <= max_side:
        return a
    h, w = a.shape[:2]
    f = max_side / max(h, w)
    return cv2.resize(a, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def _provides_masks(name: str, frame: Frame) -> bool:
    try:
        from .registry import get_stage

        return "masks" in get_stage(name).provides
    except KeyError:
        return name == "segment"


class StageDumper:
    """Callable ``on_stage`` that writes one image per stage (and masks) into ``out_dir``; see the module doc."""

    def __init__(self, out_dir: str | Path, report: StageReport | None = None, max_side: int | None = None,
                 exposure_ev: float = 0.0, quality: int = 92):
        self.out_dir = Path(out_dir)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"--dump-stages {out_dir}: cannot create the folder ({e.strerror})") from None
        self.report = report
        self.max_side = max_side
        self.exposure_ev = float(exposure_ev)
        self.quality = int(quality)
        self.count = 0
        #: (label, relative jpg path, width, height, seconds) per stage, in call order.
        self.stages: list[tuple[str, str, int, int, float]] = []
        #: mask name -> relative png path, for the masks most recently dumped.
        self.mask_files: dict[str, str] = {}
        self._masks: dict[str, np.ndarray] = {}
        self._persons: list = []

    def __call__(self, name: str, frame: Frame, seconds: float) -> None:
        if self.report is not None:
            self.report(name, frame, seconds)  # measure before our own file writing
        self.count += 1
        stem = f"{self.count:02d}_{name}"
        img = _downscale(dump_view(frame, self.exposure_ev), self.max_side)
        rel = f"{stem}.jpg"
        Image.fromarray(img).save(self.out_dir / rel, quality=self.quality)
        self.stages.append((name, rel, img.shape[1], img.shape[0], float(seconds)))
        if _provides_masks(name, frame) or (frame.masks and not self._masks):
            self._dump_masks(stem, frame)
        if self.report is not None:
            self.report.reset_peak()  # the files we wrote must not count as the next stage's memory

    def _dump_masks(self, stem: str, frame: Frame) -> None:
        items = [(f"mask_{k}", m) for k, m in frame.masks.items()]
        items += [(f"person{i + 1}", p.mask) for i, p in enumerate(frame.persons)]
        for key, m in items:
            m8 = (np.clip(np.asarray(m, np.float32), 0, 1) * 255.0 + 0.5).astype(np.uint8)
            rel = f"{stem}_{key}.png"
            Image.fromarray(_downscale(m8, self.max_side), "L").save(self.out_dir / rel, compress_level=1)
            self.mask_files[key] = rel
        self._masks = {k: np.asarray(v, np.float32) for k, v in frame.masks.items()}
        self._persons = list(frame.persons)

    def finish(self, title: str = "campipe stages") -> Path | None:
        """Write ``index.html`` stepping through the dumped stages (split slider between consecutive stages)."""
        if not self.stages:
            return None
        from .compare_metrics import histograms, mean_delta_e
        from .compare_page import Column, PageGroup, PageRender, fmt_value, write_overlays, write_page

        renders = []
        prev = None
        for label, rel, w, h, s in self.stages:
            with Image.open(self.out_dir / rel) as im:
                im.draft("RGB", (512, 512))  # JPEG draft mode: decode at 1/2..1/8 size, enough for these numbers
                small = np.asarray(im.convert("RGB"), dtype=np.float32) / np.float32(255.0)
            de = mean_delta_e(small, prev) if prev is not None and prev.shape == small.shape else None
            vals = {"ms": fmt_value(s, "ms"), "de_prev": fmt_value(de, "de") if prev is not None else "–"}
            renders.append(PageRender(label, rel, w, h, vals, hist=histograms(small)))
            prev = small
        overlays = write_overlays(self.out_dir, self._masks, self._persons, subdir="overlays")
        group = PageGroup(title, renders, overlays, left=0, right=min(1, len(renders) - 1),
                          note="Keys , and . step both sides through the stages. Before the output stage the "
                               "linear image is shown with a plain sRGB encoding (no tone curve).")
        cols = [Column("ms", "time (ms)", "stage wall time"),
                Column("de_prev", "ΔE00 vs previous", "mean CIEDE2000 between this stage's dump and the previous one "
                                                      "(how much the stage changed the picture)")]
        return write_page(self.out_dir, [group], title, cols)


def make_stage_dumper(out_dir: str | Path, report: StageReport | None = None, max_side: int | None = None,
                      exposure_ev: float = 0.0, quality: int = 92) -> StageDumper:
    """The ``on_stage`` callback behind ``--dump-stages DIR`` (pass ``report`` to also fill ``--report``).

    Args:
        out_dir: folder for ``NN_<stage>.jpg``, masks and (after :meth:`StageDumper.finish`) ``index.html``;
            created if missing.
        report: a :class:`StageReport` to feed first (its memory interval excludes the dumper's own writes).
        max_side: downscale dumps to this long side (``None``: full resolution).
        exposure_ev: exposure applied to the linear dumps before the output stage.
        quality: JPEG quality of the dumps.
    """
    return StageDumper(out_dir, report=report, max_side=max_side, exposure_ev=exposure_ev, quality=quality)
