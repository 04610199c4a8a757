"""Issue 6, nothing lost: inputs are never touched, outputs are all-or-nothing, a full disk or a read-only folder
leaves the previous output intact and no partial file, concurrent writers never tear a file.

Privileged cases: CI runs as root, where mode bits do not stop writes, so the read-only-folder test forks a child
that drops to ``nobody`` (os.setgid/os.setuid) before running the CLI in-process (an exec of the interpreter may be
impossible as nobody when Python lives under /root). The disk-full case runs twice: with RLIMIT_FSIZE in a forked
child (unprivileged: writes past the limit fail with EFBIG) and, where ``mount -t tmpfs`` is allowed, on a real tiny
tmpfs (ENOSPC).
"""
from __future__ import annotations

import builtins
import hashlib
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from campipe.batch import RenderJob, render_one
from campipe.encode import (EncodeError, atomic_write_bytes, output_lock, remove_stale_temps, write_image)
from test_reliability_inputs import _campipe, _no_traceback, good_dng


def _digest(p: Path) -> tuple[str, int, int]:
    st = p.stat()
    return hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns, stat.S_IMODE(st.st_mode)


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".campipe-tmp-" in p.name]


def _in_child(fn, *args) -> tuple[int, str]:
    """Run ``fn(*args)`` in a forked child; returns (its exit code, what it wrote to the pipe)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code = 99
        try:
            msg, code = fn(*args)
            os.write(w, str(msg).encode("utf-8", "replace"))
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            os.write(w, f"child raised {type(e).__name__}: {e}".encode())
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode()


# --------------------------------------------------------------------------------------------- inputs ----------

def test_inputs_are_opened_read_only_and_never_changed(tmp_path, monkeypatch):
    src = good_dng(tmp_path / "in.dng")
    os.chmod(src, 0o444)
    before = _digest(src)
    opened = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, mode="r", *a, **k):
        if str(file) == str(src):
            opened.append(mode)
        return real_open(file, mode, *a, **k)

    def spy_os_open(path, flags, *a, **k):
        if str(path) == str(src):
            opened.append(flags)
        return real_os_open(path, flags, *a, **k)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    r = render_one(RenderJob(str(src), str(tmp_path / "out.jpg")))
    monkeypatch.undo()
    assert r.status == "ok", r.error
    assert opened, "the spy saw no open of the input"
    for m in opened:
        if isinstance(m, str):
            assert set(m) <= {"r", "b"}, m
        else:
            assert m & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND) == 0, m
    assert _digest(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".campipe.lock", "in.dng", "out.jpg"]


def test_batch_leaves_the_input_folder_as_it_was(tmp_path):
    src = tmp_path / "card"
    src.mkdir()
    for i in range(2):
        good_dng(src / f"img{i}.dng", seed=i)
    (src / "notes.txt").write_text("not a photo")
    before = {p.name: _digest(p) for p in src.iterdir()}
    r = _campipe("batch", src, "-o", tmp_path / "out", "-j", "1")
    assert r.returncode == 0, r.stderr
    assert {p.name: _digest(p) for p in src.iterdir()} == before


def test_output_equal_to_input_is_refused_before_any_work(tmp_path):
    from PIL import Image

    from test_reliability_inputs import srgb_image

    d = tmp_path / "pics"
    d.mkdir()
    jpg = d / "a.jpg"
    Image.fromarray(srgb_image()).save(jpg, quality=90)
    before = _digest(jpg)
    (tmp_path / "same").symlink_to(d)
    for args, cwd in ((["process", jpg, "-o", d, "--name", "{name}", "--overwrite"], None),
                      (["process", "./a.jpg", "-o", ".", "--name", "{stem}.{ext}", "--overwrite"], d),
                      (["process", jpg, "-o", tmp_path / "same", "--name", "{name}", "--overwrite"], None),
                      (["batch", d, "-o", tmp_path / "same" / ".." / "pics", "--name", "{name}", "--overwrite"], None)):
        r = _campipe(*args, cwd=cwd)
        _no_traceback(r.stderr)
        assert r.returncode == 2, (args, r.stderr)
        assert "would overwrite its input" in r.stderr, r.stderr
        assert "wrote" not in r.stderr
        assert _digest(jpg) == before
    assert sorted(p.name for p in d.iterdir()) in (["a.jpg"], [".campipe.lock", "a.jpg"])


def test_output_name_collision_keeps_both(tmp_path):
    """A RAW+JPEG pair (img.dng, img.jpg) must not write the same output twice (one would be lost)."""
    from PIL import Image

    from test_reliability_inputs import srgb_image

    src = tmp_path / "card"
    src.mkdir()
    good_dng(src / "img.dng")
    Image.fromarray(srgb_image()).save(src / "img.jpg", quality=90)
    r = _campipe("batch", src, "-o", tmp_path / "out", "-j", "1")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jpg")) == ["img_jpg_standard.jpg", "img_standard.jpg"]


# --------------------------------------------------------------------------------------------- outputs ---------

def test_stale_temps_from_a_killed_run_are_removed_at_start(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a PID that no longer runs
    stale = out / f".x_standard.jpg.campipe-tmp-{dead.pid}-abcd1234"
    stale.write_bytes(b"half a jpeg")
    live = out / f".y_standard.jpg.campipe-tmp-{os.getppid()}-abcd1234"  # a live writer's temp is kept
    live.write_bytes(b"in progress")
    src = tmp_path / "card"
    src.mkdir()
    good_dng(src / "x.dng")
    r = _campipe("batch", src, "-o", out, "-j", "1")
    assert r.returncode == 0, r.stderr
    assert not stale.exists() and live.exists()
    assert remove_stale_temps(out) == 0


def test_a_dead_but_unreaped_writer_does_not_keep_its_temp(tmp_path):
    """A SIGKILLed batch's workers are reparented to PID 1, which in a container may reap them late: a zombie writer
    is dead, and its temporary file goes (this kept a temp file after test_sigkill_mid_batch... now and then)."""
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:  # exited, not reaped by us: a zombie
        if Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.02)
    else:
        pytest.fail("the child did not become a zombie")
    try:
        stale = tmp_path / f".z_standard.jpg.campipe-tmp-{zombie.pid}-abcd1234"
        stale.write_bytes(b"half a jpeg")
        live = tmp_path / f".y_standard.jpg.campipe-tmp-{os.getppid()}-abcd1234"
        live.write_bytes(b"in progress")
        assert remove_stale_temps(tmp_path) == 1
        assert not stale.exists() and live.exists()
    finally:
        zombie.wait()


def _write_over(path: str, size: int):
    try:
        atomic_write_bytes(path, b"N" * size, overwrite=True)
    except EncodeError as e:
        return str(e), 7
    return "written", 0


def _fsize_child(path: str, limit: int, size: int):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # default action would kill: we want the EFBIG error
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return _write_over(path, size)


def test_write_past_file_size_limit_keeps_previous_output(tmp_path):
    """Unprivileged disk-full equivalent: RLIMIT_FSIZE makes the write fail half-way (EFBIG)."""
    out = tmp_path / "photo.jpg"
    out.write_bytes(b"OLD" * 1000)
    code, msg = _in_child(_fsize_child, str(out), 64 * 1024, 1 << 20)
    assert code == 7, msg
    assert f"{out}: write failed (file too large" in msg and "no partial file was left" in msg, msg
    assert out.read_bytes() == b"OLD" * 1000
    assert _temps(tmp_path) == []


def _enospc_child(path: str, size: int):
    real = os.fsync

    def full(fd):  # the kernel may accept the write into the page cache and report ENOSPC on fsync
        raise OSError(28, "No space left on device")

    os.fsync = full
    try:
        return _write_over(path, size)
    finally:
        os.fsync = real


def test_enospc_on_fsync_keeps_previous_output(tmp_path):
    out = tmp_path / "photo.jpg"
    out.write_bytes(b"OLD")
    code, msg = _in_child(_enospc_child, str(out), 4096)
    assert code == 7 and "disk full" in msg, msg
    assert out.read_bytes() == b"OLD" and _temps(tmp_path) == []


@pytest.fixture
def tiny_tmpfs():
    d = Path(tempfile.mkdtemp(prefix="campipe-tmpfs-"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        d.rmdir()
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'not root'}); "
                    f"test_write_past_file_size_limit_keeps_previous_output covers the path unprivileged")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)
        d.rmdir()


def test_disk_full_on_a_real_tmpfs(tmp_path, tiny_tmpfs):
    """A real ENOSPC: the CLI says 'disk full' in one line, exit 1, the old output is intact, no temp file."""
    src = good_dng(tmp_path / "big.dng", h=128, w=192)
    out = tiny_tmpfs / "big_standard.tif"
    out.write_bytes(b"OLD OUTPUT")
    free = shutil.disk_usage(tiny_tmpfs).free
    (tiny_tmpfs / "filler").write_bytes(b"\0" * max(0, free - 40 * 1024))  # leave ~40 kB: the TIFF needs ~100 kB
    r = _campipe("process", src, "-o", tiny_tmpfs, "-f", "tiff16", "--overwrite")
    _no_traceback(r.stderr)
    assert r.returncode == 1, r.stderr
    assert "disk full" in r.stderr and "no partial file was left" in r.stderr, r.stderr
    assert out.read_bytes() == b"OLD OUTPUT"
    assert _temps(tiny_tmpfs) == []


@pytest.fixture
def world_readable_dir():
    d = Path(tempfile.mkdtemp(prefix="campipe-ro-"))
    os.chmod(d, 0o755)  # a child running as nobody must reach the files (pytest's tmp_path is 0700)
    try:
        yield d
    finally:
        for p in d.rglob("*"):
            if p.is_dir():
                os.chmod(p, 0o755)
        shutil.rmtree(d, ignore_errors=True)


def _unprivileged_prefix(probe_dir: Path) -> tuple[list[str], str]:
    """A command prefix that runs a child without the right to write into ``probe_dir`` (mode 0555), and its name.

    1. ``setpriv --reuid=nobody`` when the interpreter and campipe are importable by nobody;
    2. else root without the DAC-override capabilities (``setpriv --bounding-set=-dac_override,...``): mode bits
       then apply to root as to any owner, and Python under /root stays readable.
    Skips (with the reason) when neither really stops a write.
    """
    if os.geteuid() != 0:
        return [], "an unprivileged user"
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not installed: cannot drop root's privileges for the read-only test")
    check = [sys.executable, "-c", "import os,sys,campipe.cli; fd=os.open(sys.argv[1], os.O_WRONLY|os.O_CREAT); "
                                   "print('WRITABLE')", str(probe_dir / ".probe")]
    tries = [([setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"], "nobody"),
             ([setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner",
               "--inh-caps=-dac_override,-dac_read_search,-fowner"], "root without CAP_DAC_OVERRIDE")]
    reasons = []
    for prefix, name in tries:
        r = subprocess.run(prefix + check, capture_output=True, text=True)
        if "PermissionError" in r.stderr and "Permission denied" in r.stderr and str(probe_dir) in r.stderr:
            return prefix, name
        reasons.append(f"{name}: {(r.stdout + r.stderr).strip().splitlines()[-1:] or r.returncode}")
    pytest.skip(f"cannot run a child that is denied writes: {reasons}")


def test_read_only_output_folder_as_unprivileged_user(world_readable_dir):
    d = world_readable_dir
    src = d / "in"
    src.mkdir()
    good_dng(src / "a.dng")
    os.chmod(src / "a.dng", 0o644)
    ro = d / "ro"
    ro.mkdir()
    (ro / "a_standard.jpg").write_bytes(b"PREVIOUS")
    os.chmod(ro / "a_standard.jpg", 0o644)
    os.chmod(ro, 0o555)
    prefix, who = _unprivileged_prefix(ro)
    env = dict(os.environ, HOME=str(d))
    env.pop("CAMPIPE_DEBUG", None)
    cli = [sys.executable, "-m", "campipe.cli"]
    r = subprocess.run(prefix + cli + ["process", str(src / "a.dng"), "--overwrite", "-o", str(ro)],
                       capture_output=True, text=True, env=env, cwd=d, timeout=120)
    _no_traceback(r.stderr)
    assert r.returncode == 1, (who, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("campipe: error:")]
    assert len(lines) == 1 and "cannot write in" in lines[0] and "Permission denied" in lines[0], (who, r.stderr)
    assert (ro / "a_standard.jpg").read_bytes() == b"PREVIOUS"
    assert _temps(ro) == []
    r = subprocess.run(prefix + cli + ["batch", str(src), "-o", str(ro), "-j", "1"],
                       capture_output=True, text=True, env=env, cwd=d, timeout=120)
    _no_traceback(r.stderr)
    assert r.returncode == 1, (who, r.stderr)
    assert "cannot write in the output folder (Permission denied); nothing was rendered" in r.stderr, r.stderr
    assert sorted(p.name for p in ro.iterdir()) == ["a_standard.jpg"]


# ------------------------------------------------------------------------------------------- concurrency -------

def _writer(path: str, payload: bytes, n: int):
    for _ in range(n):
        atomic_write_bytes(path, payload, overwrite=True)
    return "ok", 0


def test_concurrent_writers_never_tear_a_file(tmp_path):
    import multiprocessing as mp

    path = tmp_path / "same.jpg"
    a, b = b"A" * 300_000, b"B" * 200_000
    atomic_write_bytes(path, a)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), p, 40)) for p in (a, b)]
    for p in procs:
        p.start()
    seen = set()
    while any(p.is_alive() for p in procs):
        data = path.read_bytes()
        assert data in (a, b), (len(data), data[:1], data[-1:])
        seen.add(data[:1])
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert path.read_bytes() in (a, b)
    assert _temps(tmp_path) == []


def _hold_lock(path: str, seconds: float, ready):
    with output_lock(path):
        ready.set()
        time.sleep(seconds)


def test_output_lock_serialises_writers(tmp_path):
    import multiprocessing as mp

    path = tmp_path / "x.jpg"
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(str(path), 1.0, ready))
    p.start()
    assert ready.wait(10)
    t0 = time.monotonic()
    atomic_write_bytes(path, b"after the lock")
    waited = time.monotonic() - t0
    p.join()
    assert waited > 0.5, waited
    other = tmp_path / "y.jpg"  # another output in the same folder is not blocked by it
    ready2 = ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(str(path), 1.0, ready2))
    p.start()
    assert ready2.wait(10)
    t0 = time.monotonic()
    atomic_write_bytes(other, b"free")
    assert time.monotonic() - t0 < 0.5
    p.join()


def test_existing_output_is_kept_without_overwrite(tmp_path):
    path = tmp_path / "keep.jpg"
    path.write_bytes(b"MINE")
    img = np.full((16, 16, 3), 0.5, np.float32)
    with pytest.raises(EncodeError, match="exists"):
        write_image(path, img)
    assert path.read_bytes() == b"MINE" and _temps(tmp_path) == []
