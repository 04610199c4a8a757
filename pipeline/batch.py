"""Batch rendering: find inputs in a folder, render each with the same pipeline in worker processes, lose nothing.

* One bad file never stops the batch: each file's result is a :class:`FileResult` (ok / failed / skipped) with a
  one-line error naming the file and the reason.
* Workers (:mod:`campipe.workers`) are processes (``spawn``) that build the pipeline once (models included), then
  take one file at a time. The parent always knows which file each worker holds, so a worker killed by a native crash
  (segfault or abort in a decoder, OOM kill) loses only that file: the worker is replaced and the file is resubmitted
  once, then reported as failed. An optional per-file ``timeout`` kills a hung worker (reported as failed, not
  retried).
* Interrupts: SIGINT/SIGTERM in the parent stop dispatching; workers get SIGTERM, abandon their file (the atomic
  write removes its temporary file) and exit; :func:`run_batch` re-raises ``KeyboardInterrupt`` (exit code 130 in
  the CLI). Workers ask the kernel to SIGKILL them when the parent dies (``PR_SET_PDEATHSIG``), so a SIGKILLed batch
  leaves no orphans; its temporary files are removed by the next run (:func:`campipe.encode.remove_stale_temps`).
* Manifest (:class:`Manifest`, :mod:`campipe.manifest`): an append-only JSON-lines file
  ``OUT/.campipe-manifest.jsonl``. Each file gets a ``started`` line when it is dispatched and a ``done`` line
  (status ok/failed, error, seconds) when it finishes, keyed by the input's content hash (BLAKE2b-256; a same path +
  size + mtime fast path avoids re-reading unchanged files), the settings hash (resolved stage list and parameters,
  output format and decode options, campipe version) and the model hash (the segmentation weights file, or "none").
  Re-running the same command resumes: files whose last record is ``ok`` and whose output still exists are skipped,
  failed ones are retried, and a file left ``started`` by a killed run is re-rendered (its output, if the link
  happened just before the kill, is ours to replace).
* Mask cache (:class:`MaskCache`, :mod:`campipe.maskcache`) and Dask mode (:func:`run_batch_dask`,
  :mod:`campipe.batch_dask`).
* Inputs: regular files with a supported extension; hidden files, campipe temp files and symbolic links are skipped;
  directory links are never followed (so link loops cannot trap the walk) and the output folder is never walked.

Test-only fault injection (never set in production): ``CAMPIPE_TEST_FAULT`` makes a batch worker crash, hang or
sleep on chosen inputs; see :mod:`campipe.workers`.

Every public name of the modules above is re-exported here (``from campipe.batch import ...`` keeps working).

References: Python ``multiprocessing`` (spawn context, ``connection.wait`` on pipes and process sentinels),
prctl(2) ``PR_SET_PDEATHSIG``, JSON Lines (jsonlines.org).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from . import workers as _workers
from .bands import all_finite
from .batch_dask import model_spec, run_batch_dask
from .decode import SUPPORTED_EXTENSIONS
from .encode import FORMATS, LOCK_NAME, TMP_MARK
from .errors import CampipeError
from .manifest import MANIFEST_NAME, BatchLedger, Manifest, file_digest, model_hash, settings_hash
from .maskcache import DEFAULT_CACHE_BYTES, MaskCache, _cached_pipeline  # noqa: F401 - re-exported
from .workers import CRASH_RETRIES, FAULT_ENV, _run_pool  # noqa: F401 - re-exported

log = logging.getLogger("campipe")


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
    cache_dir: str | None = None  # mask cache folder (issue 8); None = no cache
    cache_max_bytes: int = 0  # size bound of the mask cache (0 = DEFAULT_CACHE_BYTES)
    input_key: str | None = None  # content hash of the input if the parent already computed it


@dataclass
class FileResult:
    """Outcome of one file. ``status``: "ok" | "failed" | "skipped"; ``error``: one line naming the file and the
    reason; ``error_type``: the exception class name (``WorkerCrash``/``Timeout`` for dead or hung workers);
    ``attempts``: how many times it was dispatched."""

    input: str
    output: str | None
    status: str
    error: str | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    error_type: str | None = None
    attempts: int = 1
    mask_cache: str | None = None  # "hit" | "miss" | None (no cache, or no segment stage)
    cpu_seconds: float = 0.0  # CPU time of the rendering process for this file (all its threads)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------- inputs ------

def find_inputs(folder: str | Path, recursive: bool = False, exclude: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Supported regular files under ``folder`` in sorted order (never following directory links).

    ``exclude``: folders not to walk (e.g. the output folder when it lies inside ``folder``).
    """
    folder = Path(folder)
    skip = {os.path.realpath(p) for p in exclude}
    if recursive:
        for root, dirs, files in os.walk(folder, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(root, d))
                             and os.path.realpath(os.path.join(root, d)) not in skip)
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
    try:
        if p.is_symlink() or not p.is_file():
            return False
    except OSError:  # ELOOP, EACCES on odd entries: not an input
        return False
    return p.suffix.lower() in SUPPORTED_EXTENSIONS


def output_name(template: str, src: Path, style: str, fmt: str) -> str:
    """Expand an output-name template: {stem}, {style}, {ext}, {name} (input file name)."""
    try:
        return template.format(stem=src.stem, style=style, ext=FORMATS[fmt].lstrip("."), name=src.name)
    except (KeyError, IndexError, ValueError) as e:
        raise CampipeError(f"--name {template!r}: unknown field {e}; use {{stem}}, {{style}}, {{ext}}, {{name}}")


# ------------------------------------------------------------------------------------------------- render ------

def render_one(job: RenderJob, pipeline=None, on_stage=None) -> FileResult:
    """Decode, run the pipeline, encode and atomically write one file. Never raises for a bad input.

    The output path is checked (not the input, not existing unless ``overwrite``) before any decoding.
    ``on_stage(name, frame, seconds)`` is passed to the pipeline (``--dump-stages`` / ``--report``).
    """
    from .api import process
    from .encode import check_output_path, write_image

    t0 = time.perf_counter()
    c0 = time.process_time()
    pipeline = pipeline or _workers._PIPELINE  # set in a batch worker by _init_worker
    warned: list[str] = []

    class _Catch(logging.Handler):
        def emit(self, record):
            warned.append(record.getMessage())

    h = _Catch(level=logging.WARNING)
    lg = logging.getLogger("campipe")
    lg.addHandler(h)
    try:
        check_output_path(job.output, [job.input], job.overwrite)
        if job.cache_dir:
            pipeline = _cached_pipeline(pipeline, job)
        res = process(job.input, pipeline=pipeline, max_megapixels=job.max_megapixels, strict=job.strict,
                      half_size=job.half_size, on_stage=on_stage, keep_linear=False)
        cache_state = res.frame.meta.pop("_mask_cache", None)
        if not all_finite(res.image):  # never write garbage: a stage bug on odd data
            return FileResult(job.input, None, "failed", f"{job.input}: internal error: the pipeline produced NaN or "
                              f"infinite values (please report this file); no output was written",
                              time.perf_counter() - t0, warned, "InternalError")
        write_image(job.output, res.image, job.fmt, job.quality, res.frame.meta, job.overwrite,
                    inputs=[job.input])
        return FileResult(job.input, job.output, "ok", None, time.perf_counter() - t0, warned,
                          mask_cache=cache_state, cpu_seconds=time.process_time() - c0)
    except CampipeError as e:
        return FileResult(job.input, None, "failed", str(e), time.perf_counter() - t0, warned, type(e).__name__)
    except (ValueError, MemoryError, OSError) as e:
        return FileResult(job.input, None, "failed", f"{job.input}: {type(e).__name__}: {e}",
                          time.perf_counter() - t0, warned, type(e).__name__)
    except Exception as e:  # a bug must not stop the batch either; reported as an internal error
        if os.environ.get("CAMPIPE_DEBUG"):
            raise
        return FileResult(job.input, None, "failed", f"{job.input}: internal error: {type(e).__name__}: {e}",
                          time.perf_counter() - t0, warned, "InternalError")
    finally:
        lg.removeHandler(h)



# ------------------------------------------------------------------------------------------------- batch -------

def run_batch(jobs: list[RenderJob], style: str, sets: list[str], extra: list[str], workers: int = 1,
              on_result: Callable[[FileResult], None] | None = None, *, in_process: bool | None = None,
              ledger: BatchLedger | None = None, timeout: float | None = None,
              threads: int | None = None) -> list[FileResult]:
    """Render ``jobs``; results in completion order.

    Args:
        workers: worker processes. ``in_process`` (default: ``workers <= 1``) renders in this process instead
            (fast for tests and single files, but a native crash then ends the whole run).
        on_result: called with each FileResult as it completes.
        ledger: records ``started``/``done`` lines in the batch manifest (see :class:`BatchLedger`).
        timeout: seconds per file before a worker is declared hung and killed (worker mode only).
        threads: torch/OpenCV threads per worker (default: cores // workers).

    Raises KeyboardInterrupt after stopping the workers when interrupted (SIGINT, or SIGTERM if the caller maps it).
    """
    results: list[FileResult] = []

    def emit(i: int, r: FileResult) -> None:
        if ledger is not None:
            ledger.finished(jobs[i], r)
        results.append(r)
        if on_result:
            on_result(r)

    if in_process is None:
        in_process = workers <= 1
    if not jobs:
        return results
    if in_process:
        from .api import build

        pipeline = build(style, sets, extra)
        for i, job in enumerate(jobs):
            if ledger is not None:
                ledger.started(job, 1)
            emit(i, render_one(job, pipeline))
        return results
    workers = max(1, workers)
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    started = (lambda i, a: ledger.started(jobs[i], a)) if ledger is not None else None
    _run_pool(jobs, (style, sets, extra, threads), workers, emit, started, timeout)
    return results


def output_folders_writable(folder: str | Path) -> str | None:
    """None if campipe can create files in ``folder`` (probed for real: root ignores mode bits), else the reason."""
    probe = Path(folder) / f".campipe-probe{TMP_MARK}{os.getpid()}-0"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as e:
        return e.strerror or str(e)
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass
    return None


__all__ = ["RenderJob", "FileResult", "find_inputs", "output_name", "render_one", "run_batch", "run_batch_dask",
           "MaskCache", "model_spec", "Manifest",
           "BatchLedger", "file_digest", "settings_hash", "model_hash", "MANIFEST_NAME", "LOCK_NAME",
           "output_folders_writable"]
