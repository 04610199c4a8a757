"""Batch worker processes: a small process pool (used instead of ``concurrent.futures.ProcessPoolExecutor``) that
loses nothing when a worker dies.

* Workers are processes (``spawn``) that build the pipeline once (:func:`_init_worker`, models included, with
  torch/OpenCV limited to ``threads`` threads each), then take one file at a time over a pipe.
* The parent (:func:`_run_pool`) always knows which file each worker holds, so a worker killed by a native crash
  (segfault or abort in a decoder, OOM kill) loses only that file: the worker is replaced and the file is
  resubmitted :data:`CRASH_RETRIES` time(s), then reported as failed (``WorkerCrash``). An optional per-file
  ``timeout`` kills a hung worker (reported as failed, ``Timeout``, not retried). The temporary files a dead worker
  was writing are removed (:func:`campipe.encode.remove_stale_temps`).
* Interrupts: workers ignore SIGINT (the parent decides); on SIGTERM they abandon their file (the atomic write
  removes its temporary file) and exit. Workers ask the kernel to SIGKILL them when the parent dies
  (``PR_SET_PDEATHSIG``), so a SIGKILLed batch leaves no orphans.

Test-only fault injection (never set in production): ``CAMPIPE_TEST_FAULT="ACTION:PATTERN[;ACTION:PATTERN...]"``
makes a *batch worker* misbehave on inputs whose file name contains PATTERN (``*`` = every file) before rendering:
``abort`` (os.abort, SIGABRT), ``segv`` (a real segmentation fault), ``exit`` (os._exit(3)), ``hang`` (sleep for
an hour), ``sleep=SECONDS``, ``exit-after-write`` (exit after the output is written, before the result is sent),
``preexist`` (create the output file first, as a lost earlier attempt would have). ``ACTION-once`` acts only on
the first attempt (Dask tasks do not know their attempt: there, every attempt is the first). Used by
tests/test_batch*.py to exercise crash recovery with real dying processes (also honoured by Dask tasks).

Split out of :mod:`campipe.batch` (:func:`campipe.batch.run_batch` is the entry point).

References: Python ``multiprocessing`` (spawn context, ``connection.wait`` on pipes and process sentinels),
prctl(2) ``PR_SET_PDEATHSIG``, signal(7).
"""
from __future__ import annotations

import logging
import os
import signal
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .encode import remove_stale_temps
from .errors import CampipeError

if TYPE_CHECKING:
    from .batch import FileResult, RenderJob

log = logging.getLogger("campipe")

FAULT_ENV = "CAMPIPE_TEST_FAULT"
#: How many times a file whose worker died is resubmitted before it is reported as failed.
CRASH_RETRIES = 1

# ----------------------------------------------------------------------------------------------- worker side ----

_PIPELINE = None  # this worker's pipeline (read by campipe.batch.render_one)


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



def output_is_new(job: RenderJob) -> bool:
    """Whether ``job`` may not overwrite and its output does not exist yet: checked when the file is first sent, so
    an output found there later was written by an earlier attempt of this very job (a worker that died after its
    write) and is this run's own to replace."""
    return not job.overwrite and not os.path.lexists(job.output)


def _faults(job: RenderJob, attempt: int) -> list[str]:
    """The CAMPIPE_TEST_FAULT actions that apply to this file on this attempt (``-once`` stripped)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return []
    name = Path(job.input).name
    out = []
    for item in spec.split(";"):
        action, _, pat = item.partition(":")
        if not pat or (pat != "*" and pat not in name):
            continue
        if action.endswith("-once"):
            if attempt > 1:
                continue
            action = action[:-5]
        out.append(action)
    return out


def _inject_fault_after(job: RenderJob, attempt: int, r: FileResult) -> None:
    """Test-only: ``exit-after-write`` dies (os._exit(3)) after the output was written, before the result is sent."""
    if r.status == "ok" and "exit-after-write" in _faults(job, attempt):
        os._exit(3)


def _inject_fault(job: RenderJob, attempt: int) -> None:
    """Test-only (see module docstring): crash/hang/sleep on matching inputs when CAMPIPE_TEST_FAULT is set."""
    for action in _faults(job, attempt):
        if action == "preexist" and not os.path.lexists(job.output):
            with open(job.output, "xb") as f:  # as if an earlier attempt had written it and died unreported
                f.write(b"left by an earlier attempt")
        elif action == "abort":
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
    from .batch import render_one

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
        _inject_fault_after(job, attempt, r)
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

    from .batch import FileResult

    ctx = mp.get_context("spawn")
    pending: deque[int] = deque(range(len(jobs)))
    attempts = [0] * len(jobs)
    fresh = [False] * len(jobs)  # the output did not exist when the file was first dispatched
    pool = [_Worker(ctx, init_args) for _ in range(min(workers, len(jobs)))]
    boot_failures = 0
    try:
        while pending or any(w.job is not None for w in pool):
            for w in pool:
                if w.ready and w.job is None and pending and not w.dead:
                    i = pending.popleft()
                    attempts[i] += 1
                    if attempts[i] == 1:
                        fresh[i] = output_is_new(jobs[i])
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
                            if fresh[i] and os.path.lexists(job.output):  # it died after writing: ours to replace
                                jobs[i] = replace(job, overwrite=True)
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
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM) or failing: files that already finished may have their results still in
        # the pipes; record them before the workers are stopped, so that no written output lacks its manifest line.
        for w in pool:
            try:
                while not w.dead and w.conn.poll():
                    msg = w.conn.recv()
                    if msg[0] == "result":
                        _, i, r = msg
                        r.attempts = attempts[i]
                        emit(i, r)
            except (EOFError, OSError):
                pass
        raise
    finally:
        for w in pool:
            w.stop()
