"""Dask mode of the batch: render on an existing Dask distributed cluster (``campipe batch --scheduler``).

Each file is one task; the task carries the job and the model's path + hash (:func:`model_spec`, never the
weights), and each Dask worker builds the pipeline once per process and refuses to render with a different model
(``ModelMismatch``). Outputs are written by the workers with the same atomic write (OUT must be on a shared file
system); the manifest is written by the client, as in local mode (:mod:`campipe.manifest`).

Split out of :mod:`campipe.batch`, which re-exports :func:`run_batch_dask` and :func:`model_spec`.

References: Dask distributed (``Client.submit`` with ``pure=False``/``retries``, ``as_completed``,
``KilledWorker``), https://distributed.dask.org.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

from .errors import CampipeError
from .manifest import model_hash
from .workers import _inject_fault, _inject_fault_after, output_is_new

if TYPE_CHECKING:
    from .batch import FileResult, RenderJob
    from .manifest import BatchLedger

log = logging.getLogger("campipe")
_DASK_PIPELINES: dict[str, Any] = {}


def own_output_lost(r: FileResult, fresh: bool) -> bool:
    """True when ``r`` failed only because its output exists although that output did not exist when the file was
    submitted (``fresh``): an earlier attempt of this very job wrote it and its worker died before reporting."""
    return fresh and r.status == "failed" and r.error_type == "OutputExistsError"


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
    from .batch import FileResult, render_one

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
    r = render_one(job, pipeline)
    _inject_fault_after(job, 1, r)
    return r


def run_batch_dask(jobs: list[RenderJob], style: str, sets: list[str], extra: list[str], scheduler: str,
                   on_result: Callable[[FileResult], None] | None = None, *, ledger: BatchLedger | None = None,
                   model: dict[str, Any] | None = None, connect_timeout: float = 10.0) -> list[FileResult]:
    """Render ``jobs`` on an existing Dask distributed cluster (``scheduler`` = ``tcp://HOST:PORT``).

    Each file is one task (``pure=False``, one retry); tasks carry the job and the model's path + hash, and each
    worker builds the pipeline (and loads the model) once. Outputs are written by the workers with the same atomic
    write, so OUT must be the same path on every worker (a shared file system); the manifest is written here, as in
    local mode. A worker that dies is restarted by its nanny and the scheduler re-runs its tasks; a task that keeps
    killing workers (``KilledWorker``) is reported as failed. A worker that dies after writing its output but before
    its result is gathered makes the re-run find that output: an output that did not exist when the file was
    submitted is this run's own, so the file is submitted once more with ``overwrite`` (:func:`own_output_lost`).
    """
    try:
        from distributed import Client, as_completed
        from distributed.scheduler import KilledWorker
    except ImportError:
        raise CampipeError("--scheduler needs Dask: pip install 'campipe[dask]' (dask and distributed)") from None
    from .batch import FileResult

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
    fresh = [False] * len(jobs)  # the output did not exist when the file was submitted
    attempts = [1] * len(jobs)
    try:
        for i, job in enumerate(jobs):
            if ledger is not None:
                ledger.started(job, 1)
            fresh[i] = output_is_new(job)
            futs[client.submit(_dask_task, job, spec, key=f"campipe-render-{run}-{i}", pure=False, retries=1)] = i
        pending = as_completed(list(futs))
        for fut in pending:
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
            if own_output_lost(r, fresh[i]) and attempts[i] == 1:
                # A worker wrote this output and died before its result reached us; the scheduler re-ran the task,
                # which found the file. The file is this run's own (it did not exist at submission): replace it.
                log.info("%s: a Dask worker died after writing %s; rendering it again", job.input, job.output)
                jobs[i] = job = replace(job, overwrite=True)
                attempts[i] += 1
                if ledger is not None:
                    ledger.started(job, attempts[i])
                nf = client.submit(_dask_task, job, spec, key=f"campipe-render-{run}-{i}-a{attempts[i]}", pure=False,
                                   retries=1)
                futs[nf] = i
                pending.add(nf)
                continue
            r.attempts = attempts[i]
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


__all__ = ["model_spec", "own_output_lost", "run_batch_dask"]
