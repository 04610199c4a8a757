"""Batch rendering: find inputs in a folder, render each with the same pipeline in worker processes, lose nothing.

* One bad file never stops the batch: each file's result is a :class:`FileResult` (ok / failed / skipped) with a
  one-line error naming the file and the reason.
* Workers are processes (``spawn``) that build the pipeline once (models included), then take one file at a time.
  The parent always knows which file each worker holds, so a worker killed by a native crash (segfault or abort in a
  decoder, OOM kill) loses only that file: the worker is replaced and the file is resubmitted once, then reported as
  failed. An optional per-file ``timeout`` kills a hung worker (reported as failed, not retried).
* Interrupts: SIGINT/SIGTERM in the parent stop dispatching; workers get SIGTERM, abandon their file (the atomic
  write removes its temporary file) and exit; :func:`run_batch` re-raises ``KeyboardInterrupt`` (exit code 130 in
  the CLI). Workers ask the kernel to SIGKILL them when the parent dies (``PR_SET_PDEATHSIG``), so a SIGKILLed batch
  leaves no orphans; its temporary files are removed by the next run (:func:`campipe.encode.remove_stale_temps`).
* Manifest (:class:`Manifest`): an append-only JSON-lines file ``OUT/.campipe-manifest.jsonl``. Each file gets a
  ``started`` line when it is dispatched and a ``done`` line (status ok/failed, error, seconds) when it finishes, keyed
  by the input's content hash (BLAKE2b-256; a same path + size + mtime fast path avoids re-reading unchanged files),
  the settings hash (resolved stage list and parameters, output format and decode options, campipe version) and the
  model hash (the segmentation weights file, or "none"). Re-running the same command resumes: files whose last
  record is ``ok`` and whose output still exists are skipped, failed ones are retried, and a file left ``started``
  by a killed run is re-rendered (its output, if the link happened just before the kill, is ours to replace).
* Inputs: regular files with a supported extension; hidden files, campipe temp files and symbolic links are skipped;
  directory links are never followed (so link loops cannot trap the walk) and the output folder is never walked.

Test-only fault injection (never set in production): ``CAMPIPE_TEST_FAULT="ACTION:PATTERN[;ACTION:PATTERN...]"``
makes a *batch worker* misbehave on inputs whose file name contains PATTERN (``*`` = every file) before rendering:
``abort`` (os.abort, SIGABRT), ``segv`` (a real segmentation fault), ``exit`` (os._exit(3)), ``hang`` (sleep for
an hour), ``sleep=SECONDS``. ``abort-once``/``segv-once`` crash only on the first attempt. Used by
tests/test_batch*.py to exercise crash recovery with real dying processes.

References: Python ``multiprocessing`` (spawn context, ``connection.wait`` on pipes and process sentinels),
prctl(2) ``PR_SET_PDEATHSIG``, JSON Lines (jsonlines.org).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .decode import SUPPORTED_EXTENSIONS
from .encode import FORMATS, LOCK_NAME, TMP_MARK, remove_stale_temps
from .errors import CampipeError

log = logging.getLogger("campipe")

MANIFEST_NAME = ".campipe-manifest.jsonl"
FAULT_ENV = "CAMPIPE_TEST_FAULT"
#: How many times a file whose worker died is resubmitted before it is reported as failed.
CRASH_RETRIES = 1


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


# ------------------------------------------------------------------------------------------ keys, manifest -----

def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """BLAKE2b-256 hex digest of a file's content (streamed; the file is opened read-only)."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def settings_hash(pipeline, job: RenderJob) -> str:
    """Hash of everything that changes an output's pixels or bytes: stage order and resolved parameters, output
    format and quality, decode options, campipe version. (The output path is recorded separately.)"""
    from . import __version__

    blob = {"stages": list(getattr(pipeline, "names", [])), "params": getattr(pipeline, "settings", {}),
            "fmt": job.fmt, "quality": job.quality, "max_megapixels": job.max_megapixels, "strict": job.strict,
            "half_size": job.half_size, "version": __version__}
    return hashlib.blake2b(json.dumps(blob, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


_MODEL_CACHE: dict[tuple, str] = {}


def model_hash(pipeline) -> str:
    """Fingerprint of the segmentation model the pipeline uses: ``"none"`` when it has no segment stage or no
    weights are installed, else ``"<file name>:<BLAKE2b-256 of the weights file>"`` (cached per path/size/mtime)."""
    settings = getattr(pipeline, "settings", {}) or {}
    if "segment" not in settings:
        return "none"
    try:
        from campipe.segmentation import NoWeightsError, weights_path
    except ImportError:
        return "none"
    try:
        p = Path(weights_path(settings["segment"].get("weights") or None))
        st = p.stat()
    except (NoWeightsError, OSError):
        return "none"
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = f"{p.name}:{file_digest(p)}"
    return _MODEL_CACHE[key]


class Manifest:
    """Append-only JSON-lines record of a batch output folder (see the module docstring).

    Every line is one JSON object written with a single ``write`` under an exclusive ``flock`` and fsync'ed, so
    concurrent runs never interleave lines and a SIGKILL can at worst leave a torn *last* line, which
    :meth:`load` ignores.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST_NAME
        self.records: list[dict[str, Any]] = []
        self._last: dict[tuple, dict[str, Any]] = {}
        self._fast: dict[tuple, str] = {}
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        self._warned = False

    def load(self) -> "Manifest":
        self.records.clear()
        try:
            with open(self.path, "rb") as f:
                for raw in f:
                    try:  # non-UTF-8 file names are stored as their raw bytes (surrogateescape)
                        rec = json.loads(raw.decode("utf-8", "surrogateescape"))
                    except ValueError:
                        continue  # a torn last line from a killed run
                    if isinstance(rec, dict):
                        self._index(rec)
        except FileNotFoundError:
            pass
        return self

    def _index(self, rec: dict[str, Any]) -> None:
        self.records.append(rec)
        k = (rec.get("key"), rec.get("settings"), rec.get("model"), rec.get("output"))
        self._last[k] = rec
        if rec.get("key") and rec.get("input"):
            self._fast[(rec["input"], rec.get("size"), rec.get("mtime_ns"))] = rec["key"]

    def input_key(self, path: str | Path) -> tuple[str, int, int]:
        """(content hash, size, mtime_ns) of an input; unchanged files (same path, size, mtime) are not re-read."""
        st = os.stat(path)
        k = self._fast.get((str(path), st.st_size, st.st_mtime_ns))
        if k is None:
            k = file_digest(path)
            self._fast[(str(path), st.st_size, st.st_mtime_ns)] = k
        return k, st.st_size, st.st_mtime_ns

    def last(self, key: str, settings: str, model: str, output: str) -> dict[str, Any] | None:
        return self._last.get((key, settings, model, output))

    def append(self, rec: dict[str, Any]) -> None:
        import fcntl

        rec = {"v": 1, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run": self.run_id, **rec}
        line = (json.dumps(rec, ensure_ascii=False, default=str) + "\n").encode("utf-8", "surrogateescape")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    if os.write(fd, line) != len(line):
                        raise OSError(28, "short write")
                    os.fsync(fd)
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        except OSError as e:  # disk full: outputs stay correct, only resume knows less (it re-renders)
            if not self._warned:
                log.warning("%s: cannot record progress (%s); a re-run will render these files again", self.path,
                            e.strerror or e)
                self._warned = True
        self._index(rec)


@dataclass
class _Keyed:
    job: RenderJob
    key: str
    size: int
    mtime_ns: int


class BatchLedger:
    """Resume logic and manifest records for one batch run (used by :func:`run_batch` and the CLI).

    ``plan(jobs)`` returns (jobs to render, results for skipped jobs); ``started``/``finished`` append the records.
    """

    def __init__(self, manifest: Manifest, settings: str, model: str):
        self.manifest, self.settings, self.model = manifest, settings, model
        self._keys: dict[str, _Keyed] = {}

    def plan(self, jobs: list[RenderJob], resume: bool = True) -> tuple[list[RenderJob], list[FileResult]]:
        """Key every job (content hash); with ``resume``, skip those already done with these settings and model."""
        todo: list[RenderJob] = []
        skipped: list[FileResult] = []
        for job in jobs:
            try:
                key, size, mtime = self.manifest.input_key(job.input)
            except OSError as e:
                todo.append(job)  # render_one reports the reason (permission, vanished file)
                log.debug("%s: cannot hash (%s)", job.input, e)
                continue
            self._keys[job.output] = _Keyed(job, key, size, mtime)
            if not resume:
                todo.append(job)
                continue
            last = self.manifest.last(key, self.settings, self.model, job.output)
            if last is not None and last.get("status") == "ok" and os.path.exists(job.output):
                # also with --overwrite: re-running the same command resumes (--no-resume forces a re-render)
                skipped.append(FileResult(job.input, job.output, "skipped", None, 0.0, [], None, 0))
                continue
            if last is not None and last.get("status") == "started" and os.path.exists(job.output):
                job.overwrite = True  # written by the interrupted run that recorded 'started': ours to replace
            todo.append(job)
        return todo, skipped

    def key_of(self, job: RenderJob) -> str | None:
        """The input content hash computed by :meth:`plan` (None if the input could not be read)."""
        k = self._keys.get(job.output)
        return k.key if k else None

    def _base(self, job: RenderJob) -> dict[str, Any]:
        k = self._keys.get(job.output)
        return {"input": job.input, "key": k.key if k else None, "size": k.size if k else None,
                "mtime_ns": k.mtime_ns if k else None, "settings": self.settings, "model": self.model,
                "output": job.output}

    def started(self, job: RenderJob, attempt: int) -> None:
        self.manifest.append({**self._base(job), "event": "start", "status": "started", "attempt": attempt})

    def finished(self, job: RenderJob, r: FileResult) -> None:
        self.manifest.append({**self._base(job), "event": "done", "status": r.status, "error": r.error,
                              "error_type": r.error_type, "seconds": round(r.seconds, 4), "attempts": r.attempts,
                              "warnings": r.warnings[:5]})


# ----------------------------------------------------------------------------------------------- worker side ----

_PIPELINE = None


def _init_worker(style: str, sets: list[str], extra: list[str], threads: int) -> None:
    """Build the pipeline once in this process (models load here, not once per file)."""
    global _PIPELINE
    try:
        import torch
        torch.set_num_threads(max(1, threads))
    except ImportError:
        pass
    try:  # OpenCV's own pool would otherwise use every core in every worker (oversubscription)
        import cv2
        cv2.setNumThreads(max(1, threads))
    except ImportError:
        pass
    from .api import build

    _PIPELINE = build(style, sets, extra)


def render_one(job: RenderJob, pipeline=None) -> FileResult:
    """Decode, run the pipeline, encode and atomically write one file. Never raises for a bad input.

    The output path is checked (not the input, not existing unless ``overwrite``) before any decoding.
    """
    from .api import process
    from .encode import check_output_path, write_image

    t0 = time.perf_counter()
    c0 = time.process_time()
    pipeline = pipeline or _PIPELINE
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
                      half_size=job.half_size)
        cache_state = res.frame.meta.pop("_mask_cache", None)
        if not np.isfinite(res.image).all():  # never write garbage: a stage bug on odd data
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


# ------------------------------------------------------------------------------------------------ mask cache ----

DEFAULT_CACHE_BYTES = 4 << 30


class MaskCache:
    """On-disk cache of segmentation results (issue 8), shared by concurrent runs and machines on one file system.

    One file per (input content hash, model hash, segment parameters, decode resolution):
    ``DIR/<2 hex>/<key>.npz``: a zip (deflate level 1) of ``.npy`` arrays (``mask_<name>`` and ``person_<i>`` as
    float16 (H, W) in [0, 1]) plus a JSON ``meta`` (scores, model info). Soft masks in float16 differ from the
    network's float32 by < 5e-4. Writes go to a temporary name and are renamed into place (readers never see a
    partial file; two runs computing the same key both write the same content); unreadable entries are misses.
    Size bound: after a write, if the folder exceeds ``max_bytes``, the least recently used entries (mtime, touched
    on every hit) are deleted down to 90 %, by one process at a time (non-blocking ``flock`` on ``DIR/.evict.lock``).
    """

    def __init__(self, folder: str | Path, max_bytes: int = 0):
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes or DEFAULT_CACHE_BYTES)
        self.folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def make_key(input_key: str, model: str, params: dict, half_size: bool) -> str:
        blob = json.dumps({"input": input_key, "model": model, "params": params, "half": bool(half_size), "v": 1},
                          sort_keys=True, default=str)
        return hashlib.blake2b(blob.encode(), digest_size=20).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npz"

    def get(self, key: str, shape: tuple[int, int]):
        """(masks dict, persons list) or None. ``shape`` (H, W) must match (else a miss)."""
        from .frame import PersonInstance

        p = self.path(key)
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                masks = {k[5:]: z[k].astype(np.float32) for k in z.files if k.startswith("mask_")}
                persons = [PersonInstance(z[f"person_{i}"].astype(np.float32), float(sc))
                           for i, sc in enumerate(meta["scores"])]
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 - a damaged entry is a miss, and is removed
            log.debug("mask cache: unreadable %s (%s)", p, e)
            try:
                p.unlink()
            except OSError:
                pass
            return None
        if any(m.shape != tuple(shape) for m in masks.values()) or any(q.mask.shape != tuple(shape) for q in persons):
            return None
        try:
            os.utime(p)  # LRU
        except OSError:
            pass
        return masks, persons, meta.get("segmentation")

    def put(self, key: str, masks: dict, persons: list, info: Any = None) -> None:
        import zipfile

        p = self.path(key)
        try:
            p.parent.mkdir(exist_ok=True)
            tmp = p.with_name(f".{p.name}{TMP_MARK}{os.getpid()}-{os.urandom(4).hex()}")
            try:
                with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
                    def put_arr(name, arr):
                        with z.open(name + ".npy", "w", force_zip64=True) as f:
                            np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
                    for k, m in masks.items():
                        put_arr(f"mask_{k}", np.asarray(m, np.float16))
                    for i, q in enumerate(persons):
                        put_arr(f"person_{i}", np.asarray(q.mask, np.float16))
                    meta = {"scores": [float(q.score) for q in persons], "segmentation": info}
                    put_arr("meta", np.frombuffer(json.dumps(meta, default=str).encode(), np.uint8))
                os.replace(tmp, p)
            finally:
                if tmp.exists():
                    tmp.unlink()
        except OSError as e:  # a full or read-only cache never fails a render
            log.debug("mask cache: cannot store %s (%s)", p, e)
            return
        self.evict()

    def size(self) -> int:
        return sum(f.stat().st_size for f in self.folder.glob("*/*.npz"))

    def evict(self) -> int:
        """Delete least recently used entries while the cache is above its bound; returns how many were removed."""
        import fcntl

        entries = []
        for f in self.folder.glob("*/*.npz"):
            try:
                st = f.stat()
                entries.append((st.st_mtime, st.st_size, f))
            except OSError:
                continue
        total = sum(e[1] for e in entries)
        if total <= self.max_bytes:
            return 0
        fd = os.open(self.folder / ".evict.lock", os.O_RDWR | os.O_CREAT, 0o644)
        n = 0
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return 0  # another process is evicting
            for _, size, f in sorted(entries, key=lambda e: e[0]):
                if total <= 0.9 * self.max_bytes:
                    break
                try:
                    f.unlink()
                    total -= size
                    n += 1
                except OSError:
                    pass
        finally:
            os.close(fd)
        return n


_CACHED_PIPELINES: dict[tuple, Any] = {}


def _cached_pipeline(pipeline, job: RenderJob):
    """``pipeline`` with its segment stage wrapped by the mask cache of ``job`` (memoised per process)."""
    import dataclasses

    if "segment" not in pipeline.names:
        return pipeline
    ck = (id(pipeline), job.cache_dir, job.cache_max_bytes)
    cached = _CACHED_PIPELINES.get(ck)
    if cached is None:
        cache = MaskCache(job.cache_dir, job.cache_max_bytes)
        model = model_hash(pipeline)
        stages = []
        for st in pipeline.stages:
            if st.name == "segment":
                spec = dataclasses.replace(st.spec, fn=_caching_segment(st.spec.fn, cache, model))
                st = dataclasses.replace(st, spec=spec)
            stages.append(st)
        cached = _CACHED_PIPELINES[ck] = (dataclasses.replace(pipeline, stages=stages), pipeline)
    _CURRENT["job"] = job
    return cached[0]


_CURRENT: dict[str, Any] = {}


def _caching_segment(fn, cache: MaskCache, model: str):
    def segment_with_cache(frame, **params):
        job = _CURRENT.get("job")
        src = frame.meta.get("source")
        if job is None or src is None or str(src) != str(job.input):
            return fn(frame, **params)
        key = cache.make_key(job.input_key or file_digest(job.input), model, params, job.half_size)
        hit = cache.get(key, (frame.height, frame.width))
        if hit is not None:
            frame.masks, frame.persons = dict(hit[0]), list(hit[1])
            if hit[2] is not None:
                frame.meta["segmentation"] = hit[2]
            frame.meta["_mask_cache"] = "hit"
            return frame
        frame = fn(frame, **params)
        if frame.masks or frame.persons:  # no weights -> empty masks: nothing worth caching
            cache.put(key, frame.masks, frame.persons, frame.meta.get("segmentation"))
        frame.meta["_mask_cache"] = "miss"
        return frame

    return segment_with_cache


def _inject_fault(job: RenderJob, attempt: int) -> None:
    """Test-only (see module docstring): crash/hang/sleep on matching inputs when CAMPIPE_TEST_FAULT is set."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name = Path(job.input).name
    for item in spec.split(";"):
        action, _, pat = item.partition(":")
        if not pat or (pat != "*" and pat not in name):
            continue
        if action.endswith("-once"):
            if attempt > 1:
                continue
            action = action[:-5]
        if action == "abort":
            os.abort()
        elif action == "segv":
            import ctypes
            ctypes.string_at(0)
        elif action == "exit":
            os._exit(3)
        elif action == "hang":
            time.sleep(3600)
        elif action.startswith("sleep="):
            time.sleep(float(action.split("=", 1)[1]))


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphans after a SIGKILLed batch)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _worker_main(conn, parent_pid: int, style: str, sets: list[str], extra: list[str], threads: int) -> None:
    """Worker process: build the pipeline once, then render one job per message until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides

    def _term(signum, frame):
        raise SystemExit(128 + signum)  # unwinds render_one: the atomic write removes its temporary file

    signal.signal(signal.SIGTERM, _term)
    _die_with_parent()
    if os.getppid() != parent_pid:
        os._exit(1)
    try:
        _init_worker(style, sets, extra, threads)
    except Exception as e:  # noqa: BLE001 - reported to the parent as one line
        conn.send(("fatal", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        idx, job, attempt = msg
        _inject_fault(job, attempt)
        r = render_one(job)
        conn.send(("result", idx, r))


# ----------------------------------------------------------------------------------------------- parent side ----

def _signal_name(code: int | None) -> str:
    if code is None:
        return "unknown"
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class _Worker:
    def __init__(self, ctx, init_args: tuple):
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, os.getpid(), *init_args), daemon=True,
                                name="campipe-worker")
        self.proc.start()
        child.close()
        self.ready = False
        self.job: int | None = None
        self.since = 0.0
        self.dead = False

    def send(self, idx: int, job: RenderJob, attempt: int) -> None:
        self.job, self.since = idx, time.monotonic()
        self.conn.send((idx, job, attempt))

    def stop(self, grace: float = 5.0) -> None:
        if self.proc.is_alive():
            try:
                self.proc.terminate()
            except OSError:
                pass
            self.proc.join(grace)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(2)
        self.conn.close()


def _run_pool(jobs: list[RenderJob], init_args: tuple, workers: int, emit: Callable[[int, FileResult], None],
              dispatched: Callable[[int, int], None] | None, timeout: float | None) -> None:
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    pending: deque[int] = deque(range(len(jobs)))
    attempts = [0] * len(jobs)
    pool = [_Worker(ctx, init_args) for _ in range(min(workers, len(jobs)))]
    boot_failures = 0
    try:
        while pending or any(w.job is not None for w in pool):
            for w in pool:
                if w.ready and w.job is None and pending and not w.dead:
                    i = pending.popleft()
                    attempts[i] += 1
                    if dispatched:
                        dispatched(i, attempts[i])
                    w.send(i, jobs[i], attempts[i])
            waitables = [w.conn for w in pool if not w.dead] + [w.proc.sentinel for w in pool if not w.dead]
            wait(waitables, timeout=0.5)
            for w in list(pool):
                if w.dead:
                    continue
                try:
                    while w.conn.poll():
                        msg = w.conn.recv()
                        if msg[0] == "ready":
                            w.ready = True
                        elif msg[0] == "fatal":
                            raise CampipeError(f"batch worker could not start: {msg[1]}")
                        elif msg[0] == "result":
                            _, i, r = msg
                            r.attempts = attempts[i]
                            w.job = None
                            emit(i, r)
                except (EOFError, OSError):
                    pass
                if not w.proc.is_alive():
                    w.proc.join()
                    w.dead = True
                    why = _signal_name(w.proc.exitcode)
                    if w.job is not None:
                        i = w.job
                        job = jobs[i]
                        remove_stale_temps(Path(job.output).parent)  # what the dead worker was writing
                        if attempts[i] <= CRASH_RETRIES:
                            log.warning("%s: worker process died (%s); resubmitting the file once", job.input, why)
                            pending.appendleft(i)
                        else:
                            emit(i, FileResult(job.input, None, "failed",
                                               f"{job.input}: worker process crashed ({why}) on every attempt "
                                               f"({attempts[i]}); the file was skipped",
                                               time.monotonic() - w.since, [], "WorkerCrash", attempts[i]))
                    elif not w.ready:
                        boot_failures += 1
                        if boot_failures > 3:
                            raise CampipeError(f"batch workers keep dying while starting ({why})")
                    w.conn.close()
                    pool.remove(w)
                    busy = sum(x.job is not None for x in pool)
                    if len(pool) < workers and len(pending) > len(pool) - busy:
                        pool.append(_Worker(ctx, init_args))
                elif timeout and w.job is not None and time.monotonic() - w.since > timeout:
                    i = w.job
                    w.proc.kill()
                    w.proc.join()
                    w.dead = True
                    w.conn.close()
                    pool.remove(w)
                    remove_stale_temps(Path(jobs[i].output).parent)
                    emit(i, FileResult(jobs[i].input, None, "failed",
                                       f"{jobs[i].input}: gave up after {timeout:g} s (decoder hung?); the file "
                                       f"was skipped", float(timeout), [], "Timeout", attempts[i]))
                    if pending:
                        pool.append(_Worker(ctx, init_args))
            if not pool and pending:
                pool.append(_Worker(ctx, init_args))
        for w in pool:
            try:
                w.conn.send(None)
            except OSError:
                pass
        for w in pool:
            w.proc.join(5)
    finally:
        for w in pool:
            w.stop()


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


# ------------------------------------------------------------------------------------------------- Dask mode -----

_DASK_PIPELINES: dict[str, Any] = {}


def model_spec(pipeline) -> dict[str, Any]:
    """What a remote worker needs to use the same model: the weights *path* and its hash (never the weights)."""
    settings = getattr(pipeline, "settings", {}) or {}
    path = None
    if "segment" in settings:
        try:
            from campipe.segmentation import NoWeightsError, weights_path

            path = str(weights_path(settings["segment"].get("weights") or None))
        except (ImportError, NoWeightsError):
            path = None
    return {"weights": path, "model": model_hash(pipeline)}


def _dask_task(job: RenderJob, spec: dict[str, Any]) -> FileResult:
    """Runs on a Dask worker: build (once per worker process and spec) the pipeline, check the model hash, render."""
    key = json.dumps(spec, sort_keys=True, default=str)
    pipeline = _DASK_PIPELINES.get(key)
    if pipeline is None:
        from .api import build

        sets = list(spec["sets"]) + ([f"segment.weights={spec['weights']}"] if spec.get("weights") else [])
        pipeline = build(spec["style"], sets, spec["extra"])
        here = model_hash(pipeline)
        if here != spec["model"]:
            return FileResult(job.input, None, "failed", f"{job.input}: the worker's model ({here}) differs from the "
                              f"client's ({spec['model']}); install the same weights at {spec.get('weights')}",
                              0.0, [], "ModelMismatch")
        _DASK_PIPELINES[key] = pipeline
    _inject_fault(job, 1)
    return render_one(job, pipeline)


def run_batch_dask(jobs: list[RenderJob], style: str, sets: list[str], extra: list[str], scheduler: str,
                   on_result: Callable[[FileResult], None] | None = None, *, ledger: BatchLedger | None = None,
                   model: dict[str, Any] | None = None, connect_timeout: float = 10.0) -> list[FileResult]:
    """Render ``jobs`` on an existing Dask distributed cluster (``scheduler`` = ``tcp://HOST:PORT``).

    Each file is one task (``pure=False``, one retry); tasks carry the job and the model's path + hash, and each
    worker builds the pipeline (and loads the model) once. Outputs are written by the workers with the same atomic
    write, so OUT must be the same path on every worker (a shared file system); the manifest is written here, as in
    local mode. A worker that dies is restarted by its nanny and the scheduler re-runs its tasks; a task that keeps
    killing workers (``KilledWorker``) is reported as failed.
    """
    try:
        from distributed import Client, as_completed
        from distributed.scheduler import KilledWorker
    except ImportError:
        raise CampipeError("--scheduler needs Dask: pip install 'campipe[dask]' (dask and distributed)") from None
    results: list[FileResult] = []
    if not jobs:
        return results
    spec = {"style": style, "sets": list(sets), "extra": list(extra), **(model or {"weights": None, "model": "none"})}
    try:
        client = Client(scheduler, timeout=connect_timeout)
    except (OSError, TimeoutError, ValueError) as e:
        raise CampipeError(f"cannot connect to the Dask scheduler at {scheduler} ({e})") from None
    run = f"{os.getpid()}-{time.time_ns()}"
    futs = {}
    try:
        for i, job in enumerate(jobs):
            if ledger is not None:
                ledger.started(job, 1)
            futs[client.submit(_dask_task, job, spec, key=f"campipe-render-{run}-{i}", pure=False, retries=1)] = i
        for fut in as_completed(list(futs)):
            i = futs[fut]
            job = jobs[i]
            try:
                r = fut.result()
            except KilledWorker as e:
                r = FileResult(job.input, None, "failed", f"{job.input}: Dask workers died on this file on every "
                               f"attempt ({e}); the file was skipped", 0.0, [], "WorkerCrash")
            except Exception as e:  # noqa: BLE001 - a task error is one file's failure
                r = FileResult(job.input, None, "failed", f"{job.input}: task failed on the cluster: "
                               f"{type(e).__name__}: {e}", 0.0, [], "InternalError")
            if ledger is not None:
                ledger.finished(job, r)
            results.append(r)
            if on_result:
                on_result(r)
    except BaseException:
        client.cancel(list(futs), force=True)
        raise
    finally:
        client.close()
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
