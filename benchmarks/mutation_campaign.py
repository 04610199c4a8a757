"""Mutation campaign (issue 6): random byte mutations of the sample DNGs, each rendered by campipe in a child process.

Every mutated file goes through exactly the code of ``campipe process`` / ``campipe batch`` (decode -> pipeline ->
encode -> atomic write, :func:`campipe.batch.render_one`) inside campipe's batch worker processes, so a native crash
(segfault/abort in LibRaw, exifread, tifffile, Pillow) kills a *child* and is counted, not the campaign. A worker
that dies is replaced; a hang is killed after ``--timeout`` s. With ``--cli N`` the first N mutations are also run
through the real ``python -m campipe.cli process`` command (one fresh process each: slow) and checked for exit codes
0/1, one ``campipe: error:`` line and no traceback.

Outcome classes (printed as counts):
  crash            worker died (signal) or hung: must be 0
  internal-error   a Python exception campipe did not anticipate (reported as one line, but a bug): should be 0
  clean-error      a CampipeError: one line naming the file and the reason (unreadable, truncated, budget...)
  other-error      OSError/ValueError/MemoryError caught generically (one line; candidates for clearer messages)
  sanity-rejected  LibRaw decoded the file without complaint, campipe's sanity checks refused the data
                   (all zero, NaN/inf, too small, black level above white level)
  sanity-warned    rendered, with a sanity warning (almost black/clipped, implausible white balance, no matrix)
  rendered         rendered silently (the mutation hit pixels or unused bytes)

Mutations (one per file, chosen at random): flip 1-32 random bits; overwrite a random run of 1-64 bytes; set 1-8
bytes to 0x00/0xFF/0x7F/0x80; truncate at a random offset; insert or delete a random run; duplicate a block; half of
all edits target the first 4 KiB (TIFF header, IFD entries and tag values), where they change sizes, offsets,
bit depths, CFA patterns and colour tags rather than pixels.

Usage::

    python benchmarks/mutation_campaign.py --n 2000 --jobs 2 [--seed 0] [--timeout 60] [--cli 40] [--keep DIR]

The decode pixel budget is lowered to ``--max-megapixels`` (default 16: the samples are 0.26 MP) so that a mutated
header claiming a large image is refused instead of letting two workers allocate gigabytes on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SANITY_ERRORS = ("all zero", "NaN or infinite", "too small", "implausible levels")
SANITY_WARNINGS = ("almost entirely black", "clipped", "implausible", "no colour matrix", "unreadable DNG")


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    b = bytearray(data)
    n = len(b)

    def pos() -> int:
        return rng.randrange(min(4096, n)) if rng.random() < 0.5 else rng.randrange(n)

    kind = rng.choice(["bitflip", "overwrite", "magic", "truncate", "insert", "delete", "duplicate"])
    if kind == "bitflip":
        k = rng.randint(1, 32)
        for _ in range(k):
            i = pos()
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b), f"bitflip x{k}"
    if kind == "overwrite":
        i, k = pos(), rng.randint(1, 64)
        b[i:i + k] = rng.randbytes(k)
        return bytes(b[:n]), f"overwrite {k}@{i}"
    if kind == "magic":
        k = rng.randint(1, 8)
        for _ in range(k):
            b[pos()] = rng.choice([0x00, 0xFF, 0x7F, 0x80])
        return bytes(b), f"magic x{k}"
    if kind == "truncate":
        i = pos() if rng.random() < 0.3 else rng.randrange(n)
        return bytes(b[:i]), f"truncate@{i}"
    if kind == "insert":
        i, k = pos(), rng.randint(1, 256)
        return bytes(b[:i] + rng.randbytes(k) + b[i:]), f"insert {k}@{i}"
    if kind == "delete":
        i, k = pos(), rng.randint(1, 256)
        return bytes(b[:i] + b[i + k:]), f"delete {k}@{i}"
    i, k = pos(), rng.randint(16, 4096)
    j = rng.randrange(n)
    return bytes(b[:j] + b[i:i + k] + b[j:]), f"duplicate {k}@{i}->{j}"


def classify(r) -> str:
    if r.status == "ok":
        return "sanity-warned" if any(s in w for w in r.warnings for s in SANITY_WARNINGS) else "rendered"
    if r.error_type in ("WorkerCrash", "Timeout"):
        return "crash"
    if r.error_type == "InternalError":
        return "internal-error"
    if r.error and any(s in r.error for s in SANITY_ERRORS):
        return "sanity-rejected"
    if r.error_type in ("OSError", "ValueError", "MemoryError"):
        return "other-error"
    return "clean-error"


def run_cli(files: list[Path], out: Path, timeout: float, max_mp: float) -> Counter:
    """Run the real CLI once per file; count exit codes and check the one-line/no-traceback contract."""
    c: Counter = Counter()
    env = dict(os.environ)
    env.pop("CAMPIPE_DEBUG", None)
    for f in files:
        try:
            r = subprocess.run([sys.executable, "-m", "campipe.cli", "process", str(f), "-o", str(out), "--overwrite",
                                "--max-megapixels", str(max_mp)], capture_output=True, text=True, timeout=timeout,
                               env=env)
        except subprocess.TimeoutExpired:
            c["cli-hang"] += 1
            continue
        if r.returncode < 0:
            c["cli-crash"] += 1
        elif "Traceback" in r.stderr or "internal error" in r.stderr:
            c["cli-traceback-or-internal"] += 1
        elif r.returncode == 0:
            c["cli-exit-0"] += 1
        elif r.returncode == 1 and sum(ln.startswith("campipe: error:") for ln in r.stderr.splitlines()) == 1:
            c["cli-exit-1-one-line"] += 1
        else:
            c[f"cli-exit-{r.returncode}-other"] += 1
    return c


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="number of mutated files")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per file before a worker counts as hung")
    ap.add_argument("--max-megapixels", type=float, default=16.0)
    ap.add_argument("--cli", type=int, default=0, help="also run the first N mutations through the real CLI")
    ap.add_argument("--keep", type=Path, default=None, help="copy crashing/internal-error inputs here")
    ap.add_argument("--json", type=Path, default=None, help="write per-file results as JSON")
    ap.add_argument("--samples", type=Path, nargs="*", default=sorted((REPO / "samples").glob("*.dng")))
    a = ap.parse_args(argv)

    from campipe.batch import RenderJob, run_batch

    rng = random.Random(a.seed)
    seeds = [p.read_bytes() for p in a.samples]
    if not seeds:
        print("no sample DNGs found", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="campipe-mutations-"))
    src, out = tmp / "in", tmp / "out"
    src.mkdir()
    out.mkdir()
    how: dict[str, str] = {}
    jobs = []
    try:
        for i in range(a.n):
            k = rng.randrange(len(seeds))
            data, desc = mutate(seeds[k], rng)
            f = src / f"m{i:05d}.dng"
            f.write_bytes(data)
            how[str(f)] = f"{a.samples[k].name}: {desc}"
            jobs.append(RenderJob(str(f), str(out / f"m{i:05d}.jpg"), quality=80, overwrite=True,
                                  max_megapixels=a.max_megapixels))
        t0 = time.perf_counter()
        done = [0]

        def progress(r):
            done[0] += 1
            if done[0] % 200 == 0:
                print(f"  {done[0]}/{a.n} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

        results = run_batch(jobs, "standard", [], [], workers=a.jobs, on_result=progress, in_process=False,
                            timeout=a.timeout)
        dt = time.perf_counter() - t0
        counts = Counter(classify(r) for r in results)
        errors = Counter()
        for r in results:
            if r.status != "ok" and r.error:
                reason = r.error.split(": ", 1)[-1]
                errors[reason.split(" (")[0].split(":")[0][:70]] += 1
        print(f"mutation campaign: {a.n} mutated DNGs from {len(seeds)} samples, seed {a.seed}, {a.jobs} workers, "
              f"{dt:.0f} s ({a.n / dt:.1f} files/s)")
        for k in ("crash", "internal-error", "other-error", "clean-error", "sanity-rejected", "sanity-warned",
                  "rendered"):
            print(f"  {k:16s} {counts.get(k, 0):6d}")
        print("  most common error reasons:")
        for reason, n in errors.most_common(12):
            print(f"    {n:6d}  {reason}")
        bad = [r for r in results if classify(r) in ("crash", "internal-error")]
        for r in bad[:20]:
            print(f"  !! {classify(r)}: {how[r.input]}: {r.error}")
        if a.keep and bad:
            a.keep.mkdir(parents=True, exist_ok=True)
            for r in bad:
                shutil.copy(r.input, a.keep / Path(r.input).name)
        if a.cli:
            cli = run_cli([Path(j.input) for j in jobs[: a.cli]], out, a.timeout + 30, a.max_megapixels)
            print(f"  real CLI on the first {a.cli}: " + ", ".join(f"{k} {v}" for k, v in sorted(cli.items())))
            counts.update({k: v for k, v in cli.items() if k in ("cli-crash", "cli-hang", "cli-traceback-or-internal")})
        if a.json:
            a.json.write_text(json.dumps([{**r.to_dict(), "mutation": how[r.input], "class": classify(r)}
                                          for r in results], indent=1))
        return 1 if counts.get("crash") or counts.get("cli-crash") or counts.get("cli-hang") else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
