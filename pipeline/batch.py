"""Batch rendering: find inputs in a folder, render each with the same pipeline, in worker processes.

One bad file never stops the batch: each file's result is a :class:`FileResult` (ok / failed / skipped) with a
one-line error. Workers build the pipeline once (process initializer), not once per file.

Inputs: regular files with a supported extension; hidden files, campipe temp files and symbolic links are skipped
(directory links are never followed, so link loops cannot trap the walk).
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .decode import SUPPORTED_EXTENSIONS
from .encode import FORMATS, TMP_MARK
from .errors import CampipeError


@dataclass
class RenderJob:
    """Everything a worker needs to render one file (picklable)."""

    input: str
    output: str
    fmt: str = "jpeg"
    quality: int = 92
    overwrite: bool = False
    max_megapixels: float = 200.0
    strict: bool = False
    half_size: bool = False


@dataclass
class FileResult:
    input: str
    output: str | None
    status: str  # "ok" | "failed" | "skipped"
    error: str | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_inputs(folder: str | Path, recursive: bool = False) -> Iterator[Path]:
    """Supported regular files under ``folder`` in sorted order (never following directory links)."""
    folder = Path(folder)
    if recursive:
        for root, dirs, files in os.walk(folder, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(root, d)))
            for name in sorted(files):
                p = Path(root) / name
                if _wanted(p):
                    yield p
    else:
        for p in sorted(folder.iterdir()):
            if _wanted(p):
                yield p


def _wanted(p: Path) -> bool:
    if p.name.startswith(".") or TMP_MARK in p.name:
        return False
    if p.is_symlink() or not p.is_file():
        return False
    return p.suffix.lower() in SUPPORTED_EXTENSIONS


def output_name(template: str, src: Path, style: str, fmt: str) -> str:
    """Expand an output-name template: {stem}, {style}, {ext}, {name} (input file name)."""
    try:
        return template.format(stem=src.stem, style=style, ext=FORMATS[fmt].lstrip("."), name=src.name)
    except (KeyError, IndexError, ValueError) as e:
        raise CampipeError(f"--name {template!r}: unknown field {e}; use {{stem}}, {{style}}, {{ext}}, {{name}}")


# ----------------------------------------------------------------------------------------------- worker side ----

_PIPELINE = None


def _init_worker(style: str, sets: list[str], extra: list[str], threads: int) -> None:
    global _PIPELINE
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and shuts the pool down
    try:
        import torch
        torch.set_num_threads(max(1, threads))
    except ImportError:
        pass
    from .api import build

    _PIPELINE = build(style, sets, extra)


def render_one(job: RenderJob, pipeline=None) -> FileResult:
    """Decode, run the pipeline, encode and atomically write one file. Never raises for a bad input."""
    import logging

    from .api import process
    from .encode import write_image

    t0 = time.perf_counter()
    pipeline = pipeline or _PIPELINE
    warned: list[str] = []

    class _Catch(logging.Handler):
        def emit(self, record):
            warned.append(record.getMessage())

    h = _Catch(level=logging.WARNING)
    log = logging.getLogger("campipe")
    log.addHandler(h)
    try:
        res = process(job.input, pipeline=pipeline, max_megapixels=job.max_megapixels, strict=job.strict,
                      half_size=job.half_size)
        write_image(job.output, res.image, job.fmt, job.quality, res.frame.meta, job.overwrite,
                    inputs=[job.input])
        return FileResult(job.input, job.output, "ok", None, time.perf_counter() - t0, warned)
    except CampipeError as e:
        return FileResult(job.input, None, "failed", str(e), time.perf_counter() - t0, warned)
    except (ValueError, MemoryError, OSError) as e:
        return FileResult(job.input, None, "failed", f"{job.input}: {type(e).__name__}: {e}",
                          time.perf_counter() - t0, warned)
    except Exception as e:  # a bug must not stop the batch either; reported as an internal error
        return FileResult(job.input, None, "failed", f"{job.input}: internal error: {type(e).__name__}: {e}",
                          time.perf_counter() - t0, warned)
    finally:
        log.removeHandler(h)


def _render_in_worker(job: RenderJob) -> FileResult:
    return render_one(job)


def run_batch(jobs: list[RenderJob], style: str, sets: list[str], extra: list[str], workers: int = 1,
              on_result: Callable[[FileResult], None] | None = None) -> list[FileResult]:
    """Render ``jobs`` with ``workers`` processes (1 = in this process). Results in completion order."""
    results: list[FileResult] = []
    if workers <= 1 or len(jobs) <= 1:
        from .api import build

        pipeline = build(style, sets, extra)
        for job in jobs:
            r = render_one(job, pipeline)
            results.append(r)
            if on_result:
                on_result(r)
        return results
    threads = max(1, (os.cpu_count() or 1) // workers)
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(style, sets, extra, threads)) as pool:
        futs = {pool.submit(_render_in_worker, j): j for j in jobs}
        try:
            for fut in as_completed(futs):
                job = futs[fut]
                try:
                    r = fut.result()
                except Exception as e:  # worker died (segfault in a native decoder, OOM kill)
                    r = FileResult(job.input, None, "failed", f"{job.input}: worker crashed ({type(e).__name__})")
                results.append(r)
                if on_result:
                    on_result(r)
        except KeyboardInterrupt:
            for f in futs:
                f.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return results
