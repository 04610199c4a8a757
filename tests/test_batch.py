"""Issue 6, batches survive: the manifest and resume, worker crashes (real dying processes), hung workers, SIGINT,
SIGTERM and SIGKILL of a running `campipe batch`.

Crashes and slow files are produced with the documented test-only hook ``CAMPIPE_TEST_FAULT`` (campipe.batch): the
worker process really calls os.abort(), really segfaults, or sleeps, so the recovery code runs for real.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

from campipe.batch import MANIFEST_NAME, BatchLedger, Manifest, RenderJob, file_digest, run_batch
from test_reliability_inputs import _no_traceback, good_dng


def _env(**kw) -> dict:
    e = dict(os.environ)
    e.pop("CAMPIPE_DEBUG", None)
    e.pop("CAMPIPE_TEST_FAULT", None)
    e.update(kw)
    return e


def _batch(src, out, *args, env=None, timeout=240):
    return subprocess.run([sys.executable, "-m", "campipe.cli", "batch", str(src), "-o", str(out), *map(str, args)],
                          capture_output=True, text=True, env=env or _env(), timeout=timeout)


def _card(d: Path, n: int, names=None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names or [f"img{i:02d}.dng" for i in range(n)]):
        good_dng(d / name, h=48, w=64, seed=i)
    return d


def _manifest(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / MANIFEST_NAME).read_text().splitlines() if ln.strip()]


def _final(out: Path) -> dict[str, dict]:
    """Last 'done' record per output."""
    last = {}
    for rec in _manifest(out):
        if rec["event"] == "done":
            last[rec["output"]] = rec
    return last


def _valid_jpeg(p: Path) -> bool:
    try:
        with Image.open(p) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001
        return False


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".campipe-tmp-" in p.name]


def _procs_with_marker(marker: str) -> list[int]:
    """PIDs of live processes whose environment contains ``marker`` (leftover workers)."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            if marker.encode() in (p / "environ").read_bytes():
                stat = (p / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(p.name))
        except OSError:
            continue
    return found


# ------------------------------------------------------------------------------------------ manifest / resume ---

def test_manifest_resume_skips_done_and_retries_failed(tmp_path):
    src = _card(tmp_path / "card", 2)
    (src / "broken.dng").write_bytes(b"not a raw file at all" * 10)
    out = tmp_path / "out"
    r = _batch(src, out, "-j", "1")
    assert r.returncode == 1, r.stderr
    recs = _manifest(out)
    assert [x["event"] for x in recs].count("start") == 3 and [x["event"] for x in recs].count("done") == 3
    for x in recs:
        assert {"input", "key", "settings", "model", "output", "status", "size", "mtime_ns", "run"} <= set(x)
        assert x["key"] == file_digest(x["input"])
    fin = _final(out)
    assert sorted(v["status"] for v in fin.values()) == ["failed", "ok", "ok"]
    broken = next(v for v in fin.values() if v["status"] == "failed")
    assert "not a RAW or image format" in broken["error"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.jpg")}

    r = _batch(src, out, "-j", "1")  # same command: done files skipped, the failed one retried
    assert r.returncode == 1
    assert "2 skipped" in r.stderr and "1 failed" in r.stderr, r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.jpg")} == mtimes

    good_dng(src / "broken.dng", h=48, w=64, seed=9)  # the user replaces the broken file: new content -> rendered
    (out / "img00_standard.jpg").unlink()  # an output deleted by the user is rendered again
    r = _batch(src, out, "-j", "1")
    assert r.returncode == 0, r.stderr
    assert "2 rendered" in r.stderr and "1 skipped" in r.stderr, r.stderr
    assert all(_valid_jpeg(p) for p in out.glob("*.jpg")) and len(list(out.glob("*.jpg"))) == 3

    r = _batch(src, out, "-j", "1", "--style", "warm")  # other settings: a different key, all rendered
    assert r.returncode == 0 and "3 rendered" in r.stderr, r.stderr
    assert len(list(out.glob("*_warm.jpg"))) == 3


def test_settings_and_model_hash_change_the_key(tmp_path):
    from campipe.api import build
    from campipe.batch import model_hash, settings_hash

    job = RenderJob("x.dng", "x.jpg")
    a, b = build("standard"), build("warm")
    assert settings_hash(a, job) == settings_hash(build("standard"), job)
    assert settings_hash(a, job) != settings_hash(b, job)
    assert settings_hash(a, job) != settings_hash(a, RenderJob("x.dng", "x.jpg", quality=80))
    assert settings_hash(a, job) != settings_hash(a, RenderJob("x.dng", "x.jpg", half_size=True))
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights v1")
    m1 = model_hash(build("standard", [f"segment.weights={weights}"]))
    weights.write_bytes(b"weights v2")
    os.utime(weights, ns=(1, 1))
    m2 = model_hash(build("standard", [f"segment.weights={weights}"]))
    assert m1 != m2 and m1.startswith("w.pt:")


def test_manifest_tolerates_a_torn_last_line_and_fast_path(tmp_path):
    src = _card(tmp_path / "card", 2)
    out = tmp_path / "out"
    out.mkdir()
    m = Manifest(out)
    led = BatchLedger(m, "S", "M")
    jobs = [RenderJob(str(p), str(out / (p.stem + ".jpg"))) for p in sorted(src.glob("*.dng"))]
    todo, skipped = led.plan(jobs)
    assert len(todo) == 2 and not skipped
    res = run_batch(todo, "standard", [], [], 1, ledger=led)
    assert [r.status for r in res] == ["ok", "ok"]
    with open(out / MANIFEST_NAME, "ab") as f:
        f.write(b'{"v": 1, "event": "done", "inp')  # SIGKILL in the middle of an append
    m2 = Manifest(out).load()
    assert len(m2.records) == 4
    calls = []
    import campipe.batch as cb

    real = cb.file_digest
    cb.file_digest = lambda p, *a: calls.append(p) or real(p, *a)
    try:
        todo, skipped = BatchLedger(m2, "S", "M").plan(jobs)
    finally:
        cb.file_digest = real
    assert not todo and len(skipped) == 2 and calls == []  # unchanged files are not re-read


# ------------------------------------------------------------------------------------------------ crashes -------

def test_worker_crashes_lose_only_that_file(tmp_path):
    src = _card(tmp_path / "card", 0, names=["a_ok.dng", "b_abort.dng", "c_segv.dng", "d_flaky.dng", "e_ok.dng"])
    out = tmp_path / "out"
    fault = "abort:b_abort;segv:c_segv;abort-once:d_flaky"
    r = _batch(src, out, "-j", "2", env=_env(CAMPIPE_TEST_FAULT=fault))
    _no_traceback(r.stderr)
    assert r.returncode == 1, r.stderr
    assert "3 rendered" in r.stderr and "2 failed" in r.stderr, r.stderr
    errs = [ln for ln in r.stderr.splitlines() if ln.startswith("campipe: error:")]
    assert any("b_abort.dng: worker process crashed (SIGABRT) on every attempt (2)" in e for e in errs), errs
    assert any("c_segv.dng: worker process crashed (SIGSEGV) on every attempt (2)" in e for e in errs), errs
    assert any("d_flaky.dng: worker process died (SIGABRT); resubmitting the file once" in ln
               for ln in r.stderr.splitlines()), r.stderr
    assert sorted(p.name for p in out.glob("*.jpg")) == ["a_ok_standard.jpg", "d_flaky_standard.jpg",
                                                          "e_ok_standard.jpg"]
    fin = {Path(k).name: v for k, v in _final(out).items()}
    assert fin["d_flaky_standard.jpg"]["status"] == "ok" and fin["d_flaky_standard.jpg"]["attempts"] == 2
    assert fin["b_abort_standard.jpg"]["error_type"] == "WorkerCrash"
    assert _temps(out) == []


def test_worker_dying_after_its_write_is_replaced_not_refused(tmp_path):
    # The worker writes b_late's output, then dies before its result reaches the parent. The resubmitted attempt
    # finds that file; it did not exist when the batch started, so it is this run's own and is replaced (without
    # --overwrite), not reported as "exists".
    src = _card(tmp_path / "card", 0, names=["a_ok.dng", "b_late.dng", "c_ok.dng"])
    out = tmp_path / "out"
    r = _batch(src, out, "-j", "2", env=_env(CAMPIPE_TEST_FAULT="exit-after-write-once:b_late"))
    _no_traceback(r.stderr)
    assert r.returncode == 0, r.stderr
    assert "3 rendered" in r.stderr and "b_late.dng: worker process died (exit code 3)" in r.stderr, r.stderr
    fin = {Path(k).name: v for k, v in _final(out).items()}
    assert fin["b_late_standard.jpg"]["status"] == "ok" and fin["b_late_standard.jpg"]["attempts"] == 2
    assert all(_valid_jpeg(out / n) for n in fin) and _temps(out) == []


def test_output_existing_before_the_batch_is_still_refused_after_a_crash(tmp_path):
    # The same crash, but the output was there before the batch started: it is not ours, so it is kept.
    src = _card(tmp_path / "card", 0, names=["b_late.dng"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "b_late_standard.jpg").write_bytes(b"the user's file")
    r = _batch(src, out, env=_env(CAMPIPE_TEST_FAULT="exit-after-write-once:b_late"))
    _no_traceback(r.stderr)
    assert r.returncode == 1 and "exists (use --overwrite to replace it)" in r.stderr, r.stderr
    assert (out / "b_late_standard.jpg").read_bytes() == b"the user's file"


def test_hung_worker_is_killed_after_timeout(tmp_path):
    src = _card(tmp_path / "card", 0, names=["a_ok.dng", "b_hang.dng"])
    out = tmp_path / "out"
    t0 = time.monotonic()
    r = _batch(src, out, "-j", "1", "--timeout", "4", env=_env(CAMPIPE_TEST_FAULT="hang:b_hang"))
    assert time.monotonic() - t0 < 120
    assert r.returncode == 1, r.stderr
    assert "b_hang.dng: gave up after 4 s" in r.stderr, r.stderr
    assert (out / "a_ok_standard.jpg").exists() and not (out / "b_hang_standard.jpg").exists()


# ------------------------------------------------------------------------------------------ interruptions -------

def _start_slow_batch(src, out, marker, jobs="2"):
    env = _env(CAMPIPE_TEST_FAULT="sleep=0.8:*", CAMPIPE_TEST_MARKER=marker)
    return subprocess.Popen([sys.executable, "-m", "campipe.cli", "batch", str(src), "-o", str(out), "-j", jobs],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _wait_for_done(out: Path, n: int, proc, limit=120.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if (out / MANIFEST_NAME).exists() and sum(r["event"] == "done" for r in _manifest(out)) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("batch made no progress")


@pytest.mark.parametrize("how", ["SIGINT-group", "SIGTERM"])
def test_interrupt_exits_130_cleanly_and_resumes(tmp_path, how):
    src = _card(tmp_path / "card", 8)
    out = tmp_path / "out"
    marker = uuid.uuid4().hex
    p = _start_slow_batch(src, out, marker)
    _wait_for_done(out, 2, p)
    if how == "SIGINT-group":  # Ctrl-C in a terminal: the whole foreground process group gets SIGINT
        os.killpg(p.pid, signal.SIGINT)
    else:
        os.kill(p.pid, signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=60)
    _no_traceback(stderr)
    assert p.returncode == 130, stderr
    assert "interrupted" in stderr and "Run the same command again to resume" in stderr, stderr
    time.sleep(0.5)
    assert _procs_with_marker(marker) == []  # no worker left behind
    assert _temps(out) == []  # the abandoned files left no temporary file
    done_before = {k for k, v in _final(out).items() if v["status"] == "ok"}
    on_disk = {str(x) for x in out.glob("*.jpg")}
    assert all(_valid_jpeg(Path(k)) for k in on_disk)
    # Every file recorded ok is there. A file whose worker linked its output just before being stopped (a race
    # campipe.batch documents: its output is left "started" and is re-rendered by the next run) may be there
    # unrecorded; only the files in flight (at most -j 2) can be.
    assert done_before <= on_disk and len(on_disk - done_before) <= 2 and len(done_before) < 8
    mt = {k: Path(k).stat().st_mtime_ns for k in done_before}
    r = _batch(src, out, "-j", "2")
    assert r.returncode == 0, r.stderr
    assert f"{len(done_before)} skipped" in r.stderr, r.stderr
    assert len(list(out.glob("*.jpg"))) == 8 and all(_valid_jpeg(x) for x in out.glob("*.jpg"))
    assert {k: Path(k).stat().st_mtime_ns for k in done_before} == mt
    assert all(v["status"] == "ok" for v in _final(out).values()) and len(_final(out)) == 8


def test_sigkill_mid_batch_loses_only_the_in_flight_files(tmp_path):
    src = _card(tmp_path / "card", 8)
    out = tmp_path / "out"
    marker = uuid.uuid4().hex
    p = _start_slow_batch(src, out, marker)
    _wait_for_done(out, 3, p)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL
    t0 = time.monotonic()
    while _procs_with_marker(marker) and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    assert _procs_with_marker(marker) == []  # workers die with their parent (PR_SET_PDEATHSIG)
    outputs = list(out.glob("*.jpg"))
    assert all(_valid_jpeg(x) for x in outputs)  # never a torn output
    recorded = {k for k, v in _final(out).items() if v["status"] == "ok"}
    assert recorded <= {str(x) for x in outputs}
    in_flight = {r["output"] for r in _manifest(out) if r["event"] == "start"} - set(_final(out))
    assert len(in_flight) <= 2  # at most one file per worker was in flight (0 if both had just finished)
    mt = {k: Path(k).stat().st_mtime_ns for k in recorded}
    r = _batch(src, out, "-j", "2")
    assert r.returncode == 0, r.stderr
    assert f"{len(recorded)} skipped" in r.stderr and f"{8 - len(recorded)} rendered" in r.stderr, r.stderr
    assert {k: Path(k).stat().st_mtime_ns for k in recorded} == mt
    assert len(list(out.glob("*.jpg"))) == 8 and all(_valid_jpeg(x) for x in out.glob("*.jpg"))
    assert _temps(out) == []  # the killed run's temporary files were removed at start


def test_output_folder_inside_the_input_folder_is_not_walked(tmp_path):
    src = _card(tmp_path / "card", 2)
    out = src / "rendered"
    for _ in range(2):  # the second run must not take the first run's JPEGs as inputs
        r = _batch(src, out, "-j", "1", "-r")
        assert r.returncode == 0, r.stderr
        assert "2 found" in r.stderr, r.stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["img00_standard.jpg",
                                                                                   "img01_standard.jpg"]


def test_non_utf8_and_emoji_names_render_and_resume(tmp_path):
    src = tmp_path / "card"
    src.mkdir()
    names = [os.fsdecode(b"old\xffcard.dng"), "📷 snap é.dng"]
    for i, n in enumerate(names):
        good_dng(src / n, h=48, w=64, seed=i)
    (src / os.fsdecode(b"broken\xfe.dng")).write_bytes(b"junk" * 50)
    out = tmp_path / "out"
    r = _batch(src, out, "-j", "1")
    _no_traceback(r.stderr)
    assert r.returncode == 1 and "2 rendered" in r.stderr and "1 failed" in r.stderr, r.stderr
    assert "not a RAW or image format" in r.stderr
    assert sorted(p.name for p in out.glob("*.jpg")) == sorted(Path(n).stem + "_standard.jpg" for n in names)
    r = _batch(src, out, "-j", "1")
    assert "2 skipped" in r.stderr, r.stderr  # manifest lines with raw (non-UTF-8) names are read back
