"""Batch throughput (issue 8): files/s with --jobs 1 and 2 (warm workers: model loaded once per worker), scaling
efficiency against the ideal N x single-worker rate, and the mask-cache speed-up when a folder is re-rendered with
another style.

Inputs: ``--n`` simulated DNGs (campipe.simulate, ``--size`` pixels, canon-5d4 ISO 400) written to a temporary folder.
Model: the installed HyperDETR weights if present, else (``--random-weights``, the default when none is installed) a
randomly initialised HyperDETR of the default architecture saved with the segmentation package's save_checkpoint:
its masks are meaningless but it costs exactly the same compute, which is what throughput measures. Say which one
was used when quoting the figures (the script prints it).

Rates are *steady state*: measured from the first finished file to the last (worker start-up, imports and the model
load are excluded; they are printed separately as the time to the first result).

Usage::

    python benchmarks/bench_batch.py --n 12 --size 1024x1536 [--jobs 1 2] [--runtime torch]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_inputs(folder: Path, n: int, h: int, w: int) -> list[Path]:
    from campipe.cameras import get_camera
    from campipe.dng import write_dng
    from campipe.simulate import simulate_raw

    out = []
    for i in range(n):
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.stack([x / w, y / h, 0.5 + 0.3 * np.sin((x + 7 * i) / 23)], -1) * 0.8 + 0.1
        sim = simulate_raw((img * 255).astype(np.uint8), get_camera("canon-5d4"), iso=400, seed=i)
        out.append(write_dng(folder / f"img{i:03d}.dng", sim))
    return out


def weights_for_bench(tmp: Path, force_random: bool) -> tuple[str, str]:
    from campipe.segmentation import NoWeightsError, weights_path

    if not force_random:
        try:
            return str(weights_path()), "installed weights"
        except NoWeightsError:
            pass
    import torch

    from campipe.segmentation.checkpoint import save_checkpoint
    from campipe.segmentation.model import build_model

    torch.manual_seed(0)
    p = save_checkpoint(tmp / "hyperdetr_random.pt", build_model().eval())
    return str(p), "randomly initialised HyperDETR (default architecture; same compute as trained weights)"


def timed_batch(srcs: list[Path], out: Path, style: str, sets: list[str], jobs: int, cache: str | None,
                threads: int | None = None):
    from campipe.batch import RenderJob, run_batch

    out.mkdir(parents=True, exist_ok=True)
    js = [RenderJob(str(s), str(out / f"{s.stem}_{style}.jpg"), overwrite=True, cache_dir=cache) for s in srcs]
    stamps: list[float] = []
    t0 = time.perf_counter()
    res = run_batch(js, style, sets, [], workers=jobs, on_result=lambda r: stamps.append(time.perf_counter()),
                    in_process=False, threads=threads)
    total = time.perf_counter() - t0
    bad = [r for r in res if r.status != "ok"]
    if bad:
        raise SystemExit(f"benchmark renders failed: {bad[0].error}")
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0
    hits = sum(r.mask_cache == "hit" for r in res)
    cpu = sorted(r.cpu_seconds for r in res)[1:] or [r.cpu_seconds for r in res]  # drop the first (model load)
    return {"files": len(res), "total_s": total, "first_s": stamps[0] - t0, "steady_fps": steady,
            "overall_fps": len(res) / total, "cache_hits": hits, "cpu_per_file": float(np.median(cpu))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--size", default="1024x1536", help="HxW of the simulated raws")
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runtime", default="auto", help="segment.runtime (auto, onnx, torch)")
    ap.add_argument("--random-weights", action="store_true", help="use random weights even if trained ones exist")
    ap.add_argument("--no-cache-bench", action="store_true")
    ap.add_argument("--dask", type=int, default=0, metavar="N",
                    help="also time Dask mode on a LocalCluster of N single-threaded workers on 127.0.0.1")
    a = ap.parse_args(argv)
    h, w = (int(v) for v in a.size.lower().split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="campipe-bench-batch-"))
    try:
        (tmp / "in").mkdir()
        srcs = make_inputs(tmp / "in", a.n, h, w)
        weights, what = weights_for_bench(tmp, a.random_weights)
        sets = [f"segment.weights={weights}", f"segment.runtime={a.runtime}"]
        print(f"bench_batch: {a.n} DNGs {h}x{w} ({h * w / 1e6:.1f} MP), style standard, model: {what}; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        rates, cpus = {}, {}
        for j in a.jobs:  # 1 thread per worker: process-level scaling against N x the one-worker rate
            r = timed_batch(srcs, tmp / f"out{j}", "standard", sets, j, None, threads=1)
            rates[j], cpus[j] = r["steady_fps"], r["cpu_per_file"]
            print(f"  --jobs {j} (1 thread each): {r['steady_fps']:.3f} files/s steady ({r['overall_fps']:.3f} "
                  f"overall, first result after {r['first_s']:.1f} s, {r['total_s']:.1f} s total); median CPU "
                  f"{r['cpu_per_file']:.2f} s per file")
        if 1 in rates and rates[1] > 0:
            for j in a.jobs:
                if j > 1:
                    print(f"  scaling --jobs {j}: {rates[j] / (j * rates[1]) * 100:.0f} % of the ideal {j} x "
                          f"{rates[1]:.3f} files/s (wall clock, depends on what else runs on the machine); CPU per "
                          f"file with {j} workers = {cpus[j] / cpus[1] * 100:.0f} % of one worker's -> "
                          f"{cpus[1] / cpus[j] * 100:.0f} % of the ideal on {j} free cores")
        if 1 in a.jobs and (os.cpu_count() or 1) > 1:
            r = timed_batch(srcs, tmp / "out1t", "standard", sets, 1, None)
            print(f"  --jobs 1 with the default {os.cpu_count()} threads: {r['steady_fps']:.3f} files/s steady")
        if not a.no_cache_bench:
            j = max(a.jobs)
            cache = str(tmp / "cache")
            cold = timed_batch(srcs, tmp / "cold", "standard", sets, j, cache)
            warm = timed_batch(srcs, tmp / "warm", "warm", sets, j, cache)
            print(f"  mask cache, --jobs {j}: first style {cold['steady_fps']:.3f} files/s (cache filled, "
                  f"{cold['cache_hits']} hits), re-render with style warm {warm['steady_fps']:.3f} files/s "
                  f"({warm['cache_hits']}/{warm['files']} hits): x{warm['steady_fps'] / max(cold['steady_fps'], 1e-9):.2f}")
            size = sum(f.stat().st_size for f in Path(cache).rglob("*.npz"))
            print(f"  mask cache size: {size / 1e6:.1f} MB for {a.n} files")
        if a.dask:
            r = timed_dask(srcs, tmp / "dask", "standard", sets, a.dask)
            print(f"  Dask LocalCluster, {a.dask} workers x 1 thread: {r['steady_fps']:.3f} files/s steady "
                  f"({r['overall_fps']:.3f} overall incl. cluster start and model loads, {r['total_s']:.1f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def timed_dask(srcs: list[Path], out: Path, style: str, sets: list[str], n: int):
    from distributed import LocalCluster

    from campipe.api import build
    from campipe.batch import RenderJob, model_spec, run_batch_dask

    out.mkdir(parents=True, exist_ok=True)
    js = [RenderJob(str(s), str(out / f"{s.stem}_{style}.jpg"), overwrite=True) for s in srcs]
    stamps: list[float] = []
    t0 = time.perf_counter()
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                      silence_logs=40) as cluster:
        res = run_batch_dask(js, style, sets, [], cluster.scheduler_address,
                             lambda r: stamps.append(time.perf_counter()), model=model_spec(build(style, sets)))
    total = time.perf_counter() - t0
    if any(r.status != "ok" for r in res):
        raise SystemExit(f"dask renders failed: {[r.error for r in res if r.status != 'ok'][:1]}")
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0
    return {"total_s": total, "steady_fps": steady, "overall_fps": len(res) / total}


if __name__ == "__main__":
    sys.exit(main())
