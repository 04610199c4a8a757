"""``campipe process``, ``campipe batch``, ``campipe info`` and ``campipe styles``.

Errors about one input are printed as one line (``campipe: error: FILE: reason``) and the next input goes on;
exit code 1 when any input failed, 2 for usage errors (bad style, unknown --set key, missing file arguments),
130 when interrupted. Set CAMPIPE_DEBUG=1 to get tracebacks for internal errors.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .exitcodes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from .errors import CampipeError

log = logging.getLogger("campipe")


class _OneLine(logging.Formatter):
    def format(self, record):
        return f"campipe: {record.levelname.lower()}: {record.getMessage()}"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (CliRunner and pytest swap it; a handler bound to a
    closed stream would print logging errors)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def setup_logging(verbose: bool = False) -> None:
    """One-line ``campipe: level: message`` logging on stderr. The logger still propagates (the root logger has no
    handler in the CLI, so nothing is printed twice; pytest's caplog sees the records)."""
    root = logging.getLogger("campipe")
    if not any(getattr(h, "_campipe", False) for h in root.handlers):
        h = _StderrHandler()
        h.setFormatter(_OneLine())
        h._campipe = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def err(msg: str) -> None:
    sys.stderr.write(f"campipe: error: {msg}\n")


def usage_exit(msg: str) -> None:
    err(msg)
    raise typer.Exit(EXIT_USAGE)


FormatOpt = Annotated[str, typer.Option("--format", "-f", help="Output format: jpeg, png, tiff16, heic, avif.")]
StyleOpt = Annotated[str, typer.Option("--style", "-s", help="Built-in style name (see `campipe styles`) or a .toml path.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a stage parameter: stage.param=value (repeatable).")]


def _build_or_exit(style: str, sets: list[str], portrait: bool, stage_light: Optional[str], aperture, focus):
    from .api import build, effect_overrides

    try:
        extra, more = effect_overrides(portrait, stage_light, aperture, focus)
        return build(style, list(sets) + more, extra)
    except (CampipeError, ValueError) as e:
        usage_exit(str(e))


def _make_output_folder(output: Path) -> None:
    """Create the --output folder; usage error (2) if it is a file, exit 1 if it cannot be created."""
    if output.exists() and not output.is_dir():
        usage_exit(f"--output {output}: exists and is not a folder")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        err(f"{output}: cannot create the output folder ({e.strerror or e})")
        raise typer.Exit(EXIT_FAILED)


def _check_format(fmt: str, quality: int) -> None:
    from .encode import FORMATS

    if fmt not in FORMATS:
        usage_exit(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if not 1 <= quality <= 100:
        usage_exit(f"--quality {quality}: must be within 1..100")


def register(app: typer.Typer) -> None:
    @app.command()
    def process(
        inputs: Annotated[list[Path], typer.Argument(help="RAW (DNG, CR2, NEF, ARW, ...) or JPEG/PNG/TIFF/HEIC files.")],
        output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output folder (default: beside each input).")] = None,
        name: Annotated[str, typer.Option("--name", help="Output file name template: {stem} {style} {ext} {name}.")] = "{stem}_{style}.{ext}",
        style: StyleOpt = "standard",
        set_: SetOpt = None,
        fmt: FormatOpt = "jpeg",
        quality: Annotated[int, typer.Option("--quality", "-q", help="JPEG/HEIC/AVIF quality 1-100.")] = 92,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
        portrait: Annotated[bool, typer.Option("--portrait", help="Portrait mode: blur the background behind the focus subject.")] = False,
        aperture: Annotated[Optional[float], typer.Option("--aperture", help="Simulated f-number for --portrait (e.g. 1.8).")] = None,
        focus: Annotated[Optional[str], typer.Option("--focus", help="Focus subject, person:K (default: automatic).")] = None,
        stage_light: Annotated[Optional[str], typer.Option("--stage-light", help="Stage Light: 'color' or 'mono'.")] = None,
        dump_stages: Annotated[Optional[Path], typer.Option("--dump-stages", help="Write every stage's output (and masks) as images into this folder.")] = None,
        report: Annotated[bool, typer.Option("--report", help="Print per-stage timing and memory.")] = False,
        max_megapixels: Annotated[float, typer.Option("--max-megapixels", help="Refuse larger images before decoding.")] = 200.0,
        strict: Annotated[bool, typer.Option("--strict", help="Fail instead of warning on missing colour data.")] = False,
        half_size: Annotated[bool, typer.Option("--half-size", help="Fast half-resolution RAW decode.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report per input on stdout.")] = False,
        verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    ):
        """Render photos with a style: RAW -> linear -> masks -> effects -> colour-managed output."""
        setup_logging(verbose)
        _check_format(fmt, quality)
        sl = None
        if stage_light is not None:
            if stage_light not in ("color", "colour", "mono"):
                usage_exit("--stage-light must be 'color' or 'mono'")
            sl = "stage_light_mono" if stage_light == "mono" else "stage_light"
        pipeline = _build_or_exit(style, set_ or [], portrait, sl, aperture, focus)
        if output is not None:
            _make_output_folder(output)
        from .batch import RenderJob, output_name, render_one
        from .encode import check_output_path, remove_stale_temps

        _interrupt_on_sigterm()
        jobs = []
        for src in inputs:
            folder = output if output is not None else src.parent
            try:
                out = folder / output_name(name, src, pipeline.preset_name, fmt)
            except CampipeError as e:
                usage_exit(str(e))
            job = RenderJob(str(src), str(out), fmt, quality, overwrite, max_megapixels, strict, half_size)
            try:  # refuse output == input (also via ./, .. or links) before any work on any file
                check_output_path(out, [src], True)
            except CampipeError as e:
                usage_exit(str(e))
            jobs.append(job)
        results = []
        failed = 0
        for dest in {Path(j.output).parent for j in jobs}:  # once per folder, not once per input
            remove_stale_temps(dest)
        for job in jobs:
            if dump_stages is not None or report:
                r = _render_with_hooks(job, pipeline, dump_stages, report)
            else:
                r = render_one(job, pipeline)
            results.append(r)
            if r.status == "ok":
                if not as_json:
                    sys.stderr.write(f"campipe: wrote {r.output} ({r.seconds:.2f} s)\n")
            else:
                failed += 1
                err(r.error or f"{job.input}: failed")
        if as_json:
            print(json.dumps([r.to_dict() for r in results], indent=2))
        raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)

    @app.command()
    def batch(
        folder: Annotated[Path, typer.Argument(help="Folder of photos.")],
        output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (mirrors sub-folders with --recursive).")],
        style: StyleOpt = "standard",
        set_: SetOpt = None,
        jobs: Annotated[int, typer.Option("--jobs", "-j", help="Worker processes (default: number of cores).")] = 0,
        recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Include sub-folders.")] = False,
        name: Annotated[str, typer.Option("--name", help="Output file name template: {stem} {style} {ext} {name}.")] = "{stem}_{style}.{ext}",
        fmt: FormatOpt = "jpeg",
        quality: Annotated[int, typer.Option("--quality", "-q")] = 92,
        overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
        portrait: Annotated[bool, typer.Option("--portrait")] = False,
        max_megapixels: Annotated[float, typer.Option("--max-megapixels")] = 200.0,
        strict: Annotated[bool, typer.Option("--strict")] = False,
        timeout: Annotated[float, typer.Option("--timeout", help="Seconds per file before a hung worker is killed (0 = no limit).")] = 0.0,
        no_resume: Annotated[bool, typer.Option("--no-resume", help="Ignore the manifest of earlier runs (add --overwrite to replace their outputs).")] = False,
        cache: Annotated[Optional[Path], typer.Option("--cache", help="Mask cache folder: re-renders (e.g. another style) reuse the masks instead of running the network.")] = None,
        cache_size: Annotated[float, typer.Option("--cache-size", help="Mask cache size bound in GB (least recently used entries are evicted).")] = 4.0,
        scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="Run on a Dask cluster: tcp://HOST:PORT (needs campipe[dask]; OUTPUT must be on a file system the workers share).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable per-file report on stdout.")] = False,
        verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    ):
        """Render every supported file in a folder; one bad file never stops the batch.

        Re-running the same command resumes: files already rendered with the same settings and model are skipped
        (see OUTPUT/.campipe-manifest.jsonl), failed ones are retried. Ctrl-C stops cleanly (exit 130).
        """
        setup_logging(verbose)
        _check_format(fmt, quality)
        if not folder.is_dir():
            usage_exit(f"{folder}: not a folder")
        pipeline = _build_or_exit(style, set_ or [], portrait, None, None, None)  # fail fast on a bad style/--set
        from .api import effect_overrides
        from .batch import (BatchLedger, Manifest, RenderJob, find_inputs, model_hash, output_folders_writable,
                            output_name, settings_hash)
        from .encode import check_output_path, remove_stale_temps

        _interrupt_on_sigterm()
        extra, more = effect_overrides(portrait)
        sets = list(set_ or []) + more
        _make_output_folder(output)
        why = output_folders_writable(output)
        if why:
            err(f"{output}: cannot write in the output folder ({why}); nothing was rendered")
            raise typer.Exit(EXIT_FAILED)
        try:
            srcs = list(find_inputs(folder, recursive, exclude=[output]))
        except OSError as e:
            err(f"{folder}: cannot list the folder ({e.strerror or e})")
            raise typer.Exit(EXIT_FAILED)
        style_name = Path(style).stem if style.endswith(".toml") else style
        job_list: list = []
        taken: dict[str, str] = {}
        for src in srcs:
            rel = src.parent.relative_to(folder)
            dest = output / rel
            try:
                out = dest / output_name(name, src, style_name, fmt)
            except CampipeError as e:
                usage_exit(str(e))
            if str(out) in taken:  # RAW+JPEG pairs (IMG_1.CR2, IMG_1.JPG) would share a name: keep both
                first = taken[str(out)]
                alt = src.with_name(f"{src.stem}_{src.suffix.lstrip('.').lower()}{src.suffix}")
                out = dest / output_name(name, alt, style_name, fmt)
                log.warning("%s: its output name is taken by %s; writing %s instead", src, first, out.name)
            try:  # output == input (e.g. -o FOLDER --name {name}) is refused before any work
                check_output_path(out, [src], True)
            except CampipeError as e:
                usage_exit(str(e))
            taken[str(out)] = str(src)
            job_list.append(RenderJob(str(src), str(out), fmt, quality, overwrite, max_megapixels, strict,
                                      cache_dir=str(cache.resolve()) if cache else None,
                                      cache_max_bytes=int(cache_size * (1 << 30))))
        for dest in sorted({Path(j.output).parent for j in job_list}):
            try:
                dest.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                err(f"{dest}: cannot create the output folder ({e.strerror or e})")
                raise typer.Exit(EXIT_FAILED)
            n = remove_stale_temps(dest)
            if n:
                log.info("removed %d temporary file(s) left by an interrupted run in %s", n, dest)
        manifest = Manifest(output).load()
        ledger = BatchLedger(manifest, settings_hash(pipeline, job_list[0]) if job_list else "", model_hash(pipeline))
        todo, skipped = ledger.plan(job_list, resume=not no_resume)
        for j in todo:  # workers need not hash the input again for the mask cache key
            j.input_key = ledger.key_of(j)
        if cache is not None:
            try:
                cache.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                usage_exit(f"--cache {cache}: cannot create the folder ({e.strerror or e})")
        if skipped:
            sys.stderr.write(f"campipe: resuming: {len(skipped)} file(s) already rendered with these settings are "
                             f"skipped ({manifest.path.name}; --no-resume --overwrite renders them again)\n")
        workers = jobs if jobs > 0 else (os.cpu_count() or 1)
        t0 = time.perf_counter()
        done: list = []
        try:
            if scheduler:
                from .batch import model_spec, run_batch_dask

                results = run_batch_dask(todo, style, sets, extra, scheduler, done.append, ledger=ledger,
                                         model=model_spec(pipeline))
            else:
                results = _run_with_progress(todo, style, sets, extra, workers,
                                             show=sys.stderr.isatty() and not as_json, ledger=ledger,
                                             timeout=timeout or None, sink=done)
        except KeyboardInterrupt:
            ok = sum(r.status == "ok" for r in done)
            sys.stderr.write(f"campipe: interrupted: {ok} rendered, {len(todo) - len(done)} not done; the file(s) in "
                             f"progress were abandoned (no partial output). Run the same command again to resume.\n")
            raise typer.Exit(EXIT_INTERRUPTED)
        except CampipeError as e:
            err(str(e))
            raise typer.Exit(EXIT_FAILED)
        dt = time.perf_counter() - t0
        results = list(results) + skipped
        ok = sum(r.status == "ok" for r in results)
        bad = [r for r in results if r.status == "failed"]
        for r in bad:
            err(r.error or r.input)
        hits = sum(getattr(r, "mask_cache", None) == "hit" for r in results)
        sys.stderr.write(f"campipe: batch done: {ok} rendered, {len(skipped)} skipped (done before), {len(bad)} "
                         f"failed, {len(srcs)} found in {folder} ({dt:.1f} s, "
                         f"{ok / dt if dt > 0 else 0:.2f} files/s"
                         + (f", masks from the cache for {hits}" if cache is not None else "") + ")\n")
        if as_json:
            order = {j.input: i for i, j in enumerate(job_list)}
            print(json.dumps({"folder": str(folder), "output": str(output), "style": style, "seconds": dt,
                              "manifest": str(manifest.path),
                              "files": [r.to_dict() for r in sorted(results, key=lambda r: order.get(r.input, 0))]},
                             indent=2))
        raise typer.Exit(EXIT_FAILED if bad else EXIT_OK)

    @app.command()
    def info(
        inputs: Annotated[list[Path], typer.Argument(help="Files to describe.")],
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ):
        """Camera, lens, ISO, exposure, white balance, CFA pattern, levels, colour matrices, dimensions."""
        from rich.console import Console
        from rich.table import Table

        from .info import LABELS, describe, format_value

        out, failed = [], 0
        for src in inputs:
            try:
                out.append(describe(src))
            except CampipeError as e:
                err(str(e))
                failed += 1
        if as_json:
            print(json.dumps(out if len(inputs) > 1 else (out[0] if out else {}), indent=2, default=str))
        else:
            con = Console()
            for d in out:
                t = Table(show_header=False, box=None, pad_edge=False)
                t.add_column(style="bold cyan")
                t.add_column()
                for key, label in LABELS:
                    if d.get(key) is not None:
                        t.add_row(label, format_value(key, d[key]))
                con.print(t)
                con.print()
        raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)

    @app.command()
    def styles():
        """List the built-in styles (presets) with their stages."""
        from rich.console import Console
        from rich.table import Table

        from .presets import available_presets, load_preset

        t = Table(title="campipe styles")
        t.add_column("style", style="bold")
        t.add_column("description")
        t.add_column("stages", style="dim")
        for name in available_presets():
            try:
                p = load_preset(name)
                t.add_row(name, p.description, " > ".join(p.stages))
            except CampipeError as e:
                t.add_row(name, f"[red]invalid: {e}[/red]", "")
        Console().print(t)


def _interrupt_on_sigterm() -> None:
    """SIGTERM (kill, systemd, CI timeouts) behaves like Ctrl-C: stop cleanly, exit 130."""
    import signal

    def _raise(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread (embedded use): leave the default
        pass


def _run_with_progress(job_list, style, sets, extra, workers, show: bool, ledger=None, timeout=None, sink=None):
    from .batch import run_batch

    sink = sink if sink is not None else []
    if not show:
        return run_batch(job_list, style, sets, extra, workers, sink.append, in_process=False, ledger=ledger,
                         timeout=timeout)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]rendering"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), TextColumn("{task.fields[last]}"), transient=False) as prog:
        task = prog.add_task("render", total=len(job_list), last="")

        def on_result(r):
            sink.append(r)
            prog.update(task, advance=1, last=("[red]✗ " if r.status != "ok" else "[green]✓ ") + Path(r.input).name)

        return run_batch(job_list, style, sets, extra, workers, on_result, in_process=False, ledger=ledger,
                         timeout=timeout)


def _render_with_hooks(job, pipeline, dump_dir: Optional[Path], report: bool):
    """render_one with --dump-stages / --report hooks (campipe.stagedump): the dumper writes NN_stage.jpg (+ masks)
    and a page stepping through the stages; the report prints per-stage time and peak memory."""
    from . import stagedump
    from .batch import render_one

    rep = stagedump.StageReport() if report else None
    dumper = None
    if dump_dir is not None:
        dump_dir.mkdir(parents=True, exist_ok=True)
        dumper = stagedump.make_stage_dumper(dump_dir / Path(job.input).stem, report=rep)
    r = render_one(job, pipeline, on_stage=dumper or rep)
    if r.status == "ok":
        if dumper is not None:
            dumper.finish(title=f"{Path(job.input).name} · stages")
        if rep is not None:
            rep.print(title=Path(job.input).name)
    return r
