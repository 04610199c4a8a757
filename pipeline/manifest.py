"""Batch manifest: input keys and hashes, the append-only JSON-lines record of an output folder, resume logic.

* :class:`Manifest`: an append-only JSON-lines file ``OUT/.campipe-manifest.jsonl``. Each file gets a ``started``
  line when it is dispatched and a ``done`` line (status ok/failed, error, seconds) when it finishes, keyed by the
  input's content hash (:func:`file_digest`, BLAKE2b-256; a same path + size + mtime fast path avoids re-reading
  unchanged files), the settings hash (:func:`settings_hash`: resolved stage list and parameters, output format and
  decode options, campipe version) and the model hash (:func:`model_hash`: the segmentation weights file, or
  "none"). Every line is written with a single ``write`` under an exclusive ``flock`` and fsync'ed; a torn last line
  left by a SIGKILL is ignored on load.
* :class:`BatchLedger`: resume logic for one run. Re-running the same command resumes: files whose last record is
  ``ok`` and whose output still exists are skipped, failed ones are retried, and a file left ``started`` by a killed
  run is re-rendered (its output, if the link happened just before the kill, is ours to replace).

Split out of :mod:`campipe.batch`, which re-exports every public name here.

References: JSON Lines (jsonlines.org); BLAKE2 (RFC 7693, Python ``hashlib.blake2b``); flock(2), fsync(2).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .batch import FileResult, RenderJob

log = logging.getLogger("campipe")

MANIFEST_NAME = ".campipe-manifest.jsonl"


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


def _digest(path: str | Path) -> str:
    """:func:`file_digest`, looked up through :mod:`campipe.batch` at call time: that module has always been its
    home, and code that replaces ``campipe.batch.file_digest`` (tests/test_batch.py) still sees every call."""
    from . import batch

    return batch.file_digest(path)


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
        _MODEL_CACHE[key] = f"{p.name}:{_digest(p)}"
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
            k = _digest(path)
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
        from .batch import FileResult

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


__all__ = ["MANIFEST_NAME", "Manifest", "BatchLedger", "file_digest", "settings_hash", "model_hash"]
