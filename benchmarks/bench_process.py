"""Benchmark (issue 2): ``campipe process --style standard`` against rawpy's default ``postprocess()`` + write.

For each size (default 12 MP = 4000x3000 and 24 MP = 6000x4000) a DNG is simulated into a temporary folder with
campipe's sensor simulator (scikit-image's astronaut upscaled, Sony ILCE-7M3, ISO 800), then, in the same run and
interleaved, each contender is run ``--runs`` times as a separate child process (after one untimed warm-up each):

* campipe:  ``python -m campipe.cli process IN --style standard -o DIR`` (JPEG, campipe's default format);
* rawpy:    a python child doing ``rawpy.imread(IN).postprocess()`` (LibRaw defaults: AHD, camera WB if present,
  auto-bright, 8-bit sRGB) and ``PIL.Image.save(OUT.jpg, quality=95)``.

Per run: wall time (perf_counter around the child), the child's CPU time (user + system, all its threads) and its
own peak RSS (``ru_utime``/``ru_stime``/``ru_maxrss`` from ``os.wait4`` in a small launcher process, so that the
benchmark's own memory is not folded into it).
Printed: the 1/5/15-minute load averages before and after, median wall time, median CPU time, median peak RSS and the
campipe / rawpy ratios (target: wall-time ratio <= 1.5x), then (unless --no-breakdown) one in-process
``campipe.process`` per size with its per-stage timings. On a shared machine the wall time depends on the load (the
CPU columns much less so): compare ratios from the same run.
Both children pay the Python start-up and import cost; that is part of what a user waits for. They run with Python's
default bytecode caching (PYTHONDONTWRITEBYTECODE removed from their environment; the warm-up run writes the caches).

Usage::

    python benchmarks/bench_process.py [--runs 3] [--sizes 12,24] [--style standard] [-- extra campipe args]

References: issue 2 ("Done means": 12 MP and 24 MP, median wall time and peak RSS, ratio, same run).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {1: (864, 1152), 12: (3000, 4000), 24: (4000, 6000)}  # MP -> (H, W); 1 MP is for smoke tests

RAWPY_CHILD = """
import sys, rawpy
from PIL import Image
with rawpy.imread(sys.argv[1]) as r:
    rgb = r.postprocess()
Image.fromarray(rgb).save(sys.argv[2], quality=95)
"""


def make_dng(path: Path, mp: int, seed: int = 0) -> Path:
    """Simulate an ``mp``-megapixel DNG from scikit-image's astronaut (bicubic upscale), Sony A7 III, ISO 800."""
    import cv2
    import skimage.data

    from campipe.cameras import get_camera
    from campipe.dng import write_dng
    from campipe.simulate import simulate_raw

    h, w = SIZES[mp]
    src = skimage.data.astronaut()
    big = cv2.resize(src, (w, h), interpolation=cv2.INTER_CUBIC)
    sim = simulate_raw(big, get_camera("sony-a7m3"), iso=800, seed=seed, datetime="2026:01:01 12:00:00")
    return write_dng(path, sim, overwrite=True)


# A tiny launcher between this (large) benchmark process and each contender. Linux folds the high-water RSS of the
# address space a child was forked from into the child's ru_maxrss, so children forked straight from this process
# (which holds the simulated 12/24 MP images) would all report at least its peak. The launcher is small; it runs the
# contender and reports that child's own ru_maxrss (KiB) on its last stderr line.
_LAUNCHER = """
import os, subprocess, sys
p = subprocess.Popen(sys.argv[1:])
_, status, ru = os.wait4(p.pid, 0)
sys.stderr.write(f"\\nCPU_S={ru.ru_utime + ru.ru_stime:.4f}\\nMAXRSS_KIB={ru.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


# Children run with Python's default bytecode caching: an environment with PYTHONDONTWRITEBYTECODE set (this
# sandbox sets it) would make every run of an editable install recompile campipe's ~30 modules (~35 ms), which no
# installed copy does (pip compiles at install; an editable checkout caches on first import, here the warm-up).
_CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_child(cmd: list[str]) -> tuple[float, float, float, int, str]:
    """Run ``cmd`` (through the launcher); return (wall s, CPU s, peak RSS MiB of that child, exit status,
    stderr tail)."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", _LAUNCHER, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=_CHILD_ENV)
    # read stderr before waiting so a chatty child cannot block on a full pipe
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    p.stderr.close()
    p.wait()
    wall = time.perf_counter() - t0
    head, _, tail = err.rstrip().rpartition("MAXRSS_KIB=")
    peak_mib = int(tail) / 1024.0 if tail.isdigit() else float("nan")
    head, _, cpu_s = head.rstrip().rpartition("CPU_S=")
    try:
        cpu = float(cpu_s)
    except ValueError:
        cpu = float("nan")
    return wall, cpu, peak_mib, p.returncode, head[-2000:]


def _load() -> str:
    """The 1/5/15-minute load averages (as `uptime` prints them)."""
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per contender and size (median reported)")
    ap.add_argument("--sizes", default="12,24", help="megapixel sizes, from: 1 (smoke test), 12, 24")
    ap.add_argument("--style", default="standard")
    ap.add_argument("--keep", type=Path, default=None,
                    help="keep the simulated DNGs and outputs in this folder (DNGs already there are reused)")
    ap.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                    help="skip the in-process per-stage timing of campipe.process")
    ap.add_argument("extra", nargs="*", help="extra arguments for campipe process (after --)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    for s in sizes:
        if s not in SIZES:
            ap.error(f"unknown size {s}; choose from {sorted(SIZES)}")

    load_before = _load()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="campipe-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# campipe process vs rawpy postprocess  ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}, runs={args.runs}, style={args.style})")

    rows = []
    for mp in sizes:
        dng = work / f"bench_{mp}mp.dng"
        if args.keep and dng.is_file():  # the same simulation (fixed seed): reuse it from an earlier --keep run
            print(f"reusing {dng}")
        else:
            t0 = time.perf_counter()
            make_dng(dng, mp)
            print(f"simulated {dng.name}: {dng.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")
        results: dict[str, list[tuple[float, float, float]]] = {"campipe": [], "rawpy": []}
        for i in range(args.runs + 1):  # run 0 is the warm-up
            out_dir = work / f"out_{mp}_{i}"
            out_dir.mkdir(exist_ok=True)
            for old in out_dir.iterdir():  # outputs of an earlier --keep run
                if old.is_file():
                    old.unlink()
            cmds = {
                "campipe": [sys.executable, "-m", "campipe.cli", "process", str(dng), "--style", args.style,
                            "-o", str(out_dir), *args.extra],
                "rawpy": [sys.executable, "-c", RAWPY_CHILD, str(dng), str(out_dir / "rawpy.jpg")],
            }
            for name, cmd in cmds.items():
                wall, cpu, rss, rc, err = run_child(cmd)
                if rc != 0:
                    print(f"{name} failed (exit {rc}) on {dng.name}:\n{err}", file=sys.stderr)
                    return 1
                if i > 0:
                    results[name].append((wall, cpu, rss))
        med = {k: tuple(statistics.median(r[j] for r in v) for j in range(3)) for k, v in results.items()}
        rows.append((mp, med))

    print()
    print(f"load average before: {load_before}; after: {_load()}")
    print(f"{'size':>6} | {'campipe s':>9} | {'rawpy s':>8} | {'time x':>6} | {'campipe CPU':>11} | {'rawpy CPU':>9} | "
          f"{'CPU x':>5} | {'campipe MiB':>11} | {'rawpy MiB':>9} | {'RSS x':>5} | target")
    print("-" * 124)
    for mp, med in rows:
        (tc, cc_, rc_), (tr, cr, rr) = med["campipe"], med["rawpy"]
        ratio = tc / tr
        print(f"{mp:>4}MP | {tc:9.2f} | {tr:8.2f} | {ratio:5.2f}x | {cc_:11.2f} | {cr:9.2f} | {cc_ / cr:4.2f}x | "
              f"{rc_:11.0f} | {rr:9.0f} | {rc_ / rr:4.2f}x | {'met' if ratio <= 1.5 else 'NOT met'} (<= 1.5x)")
    if args.breakdown:
        # where campipe's time goes: one in-process run per size (not part of the medians above)
        import campipe
        from campipe.decode import load_raw

        print()
        for mp in sizes:
            dng = work / f"bench_{mp}mp.dng"
            t0 = time.perf_counter()
            load_raw(str(dng))
            t_dec = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = campipe.process(str(dng), style=args.style)
            t_all = time.perf_counter() - t0
            stages = ", ".join(f"{k} {v:.2f}" for k, v in res.frame.timings.items())
            print(f"{mp}MP in-process: load_raw {t_dec:.2f} s; process {t_all:.2f} s (decode + stages, no encode); stages: {stages}")
    if not args.keep:
        for p in sorted(work.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        work.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
