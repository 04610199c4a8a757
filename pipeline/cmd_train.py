"""``campipe train`` and ``campipe eval``: train HyperDETR on the shared labelled photos, and measure checkpoints.

* ``campipe train --config segmentation/configs/hyperdetr_cpu.toml [--data DIR] [--out DIR] [--no-resume]``:
  runs :func:`campipe.segmentation.training.train.train` (rich progress bar, periodic validation, resumable
  checkpoints outside the repository, deterministic sampling). Ctrl-C / SIGTERM save a resumable state.
* ``campipe eval DATA_DIR [--set NAME ...] [--weights CKPT] [--compare CKPT] [--int8-of-float] [--split val]
  [--limit N] [--json FILE|-]``: pooled per-class IoU at 0.5 and person panoptic quality on the held-out split
  (see :mod:`campipe.segmentation.training.evaluate`), as a table and JSON. ``--weights`` defaults to the installed
  weights; ``--compare`` adds another checkpoint (e.g. the float 6-layer model) as a column; ``--int8-of-float``
  also evaluates the ``--weights`` float checkpoint quantised to int8 and pruned to 2 decoder layers.

Exit codes: 0 ok, 1 failure (no weights, unreadable checkpoint, missing data), 2 usage error.

References: typer documentation; rich tables.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        config: Path = typer.Option(..., "--config", "-c", help="Training config TOML (segmentation/configs/)."),
        data: Optional[Path] = typer.Option(None, "--data", help="Shared data folder (default ../shared/data)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Checkpoint folder (overrides [train].out_dir)."),
        no_resume: bool = typer.Option(False, "--no-resume", help="Start from scratch even if out/last.pt exists."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Rich progress bar."),
    ) -> None:
        """Train HyperDETR (phases, EMA, validation, resumable checkpoints) from a TOML config."""
        from campipe.segmentation.training.train import TrainConfig, train

        try:
            cfg = TrainConfig.from_toml(config)
        except (OSError, ValueError, TypeError) as e:
            typer.echo(f"campipe train: {e}", err=True)
            raise typer.Exit(2)
        if data is not None:
            cfg.data_dir = str(data)
        if out is not None:
            cfg.out_dir = str(out)
        repo = Path(__file__).resolve().parents[1]
        try:
            Path(cfg.out_dir).resolve().relative_to(repo)
            typer.echo(f"campipe train: out_dir {cfg.out_dir} is inside the repository; keep checkpoints outside",
                       err=True)
            raise typer.Exit(2)
        except ValueError:
            pass
        try:
            summary = train(cfg, resume=not no_resume, progress=progress)
        except (FileNotFoundError, ValueError) as e:
            typer.echo(f"campipe train: {e}", err=True)
            raise typer.Exit(1)
        typer.echo(json.dumps({k: v for k, v in summary.items() if k != "val"}, default=str))
        if summary.get("interrupted"):
            raise typer.Exit(130)

    @app.command("eval")
    def eval_cmd(
        data_dir: Path = typer.Argument(..., help="Shared data folder (e.g. ../shared/data)."),
        sets: Optional[list[str]] = typer.Option(None, "--set", help="Data set(s): celebamask, figaro1k, "
                                                 "lfw_hair, camvid, pennfudan (default: every one the folder holds)."),
        weights: Optional[Path] = typer.Option(None, "--weights", help="Checkpoint (default: installed weights)."),
        compare: Optional[list[Path]] = typer.Option(None, "--compare", help="More checkpoints to evaluate."),
        int8_of_float: bool = typer.Option(False, "--int8-of-float", help="Also evaluate --weights quantised "
                                           "to int8 and pruned to 2 decoder layers."),
        split: str = typer.Option("val", "--split", help="val | train | all"),
        limit: Optional[int] = typer.Option(None, "--limit", min=1, help="At most N images per set."),
        json_out: Optional[str] = typer.Option(None, "--json", help="Write the JSON report to FILE ('-' = stdout)."),
        refine: str = typer.Option("guided", "--refine", help="Mask upsampling: guided (campipe's default, "
                                   "edge-aware) or bilinear."),
        tta: bool = typer.Option(False, "--tta", help="Flip test-time augmentation of the static channels, as "
                                 "`campipe segment --tta`."),
        sky_refine: bool = typer.Option(True, "--sky-refine/--no-sky-refine", help="Refine the sky with the photo's "
                                        "colours, as campipe does by default (--no-sky-refine: the network alone)."),
        person_refine: bool = typer.Option(True, "--person-refine/--no-person-refine", help="Refine the person "
                                           "channel with the photo's colours, as campipe does by default."),
        hair_refine: bool = typer.Option(True, "--hair-refine/--no-hair-refine", help="Refine hair with the photo's "
                                         "colours, as campipe does by default."),
        person_framing: bool = typer.Option(True, "--person-framing/--no-person-framing", help="A stricter person "
                                            "threshold when the subject fills the frame (close-ups), as campipe does "
                                            "by default."),
    ) -> None:
        """Per-class pooled IoU at 0.5 and person panoptic quality on the held-out split; table + JSON."""
        from campipe.segmentation import NoWeightsError, weights_path
        from campipe.segmentation.training.datasets import SETS
        from campipe.segmentation.training.evaluate import evaluate_checkpoints, format_table

        bad = [s for s in (sets or []) if s not in SETS]
        if bad:
            typer.echo(f"campipe eval: unknown set(s) {', '.join(bad)}; choose from {', '.join(SETS)}", err=True)
            raise typer.Exit(2)
        if split not in ("val", "train", "all"):
            typer.echo(f"campipe eval: --split must be val, train or all (got {split!r})", err=True)
            raise typer.Exit(2)
        from campipe.segmentation.postprocess import REFINE_MODES

        if refine not in REFINE_MODES:
            typer.echo(f"campipe eval: --refine must be guided or bilinear (got {refine!r})", err=True)
            raise typer.Exit(2)
        if not data_dir.is_dir():
            typer.echo(f"campipe eval: data folder not found: {data_dir}", err=True)
            raise typer.Exit(1)
        if not sets:  # every set the folder holds; an explicit --set that is missing stays an error
            from campipe.segmentation.training.datasets import has_set
            from campipe.segmentation.training.evaluate import EVAL_SPEC

            sets = [s for s in EVAL_SPEC if has_set(data_dir, s)]
            missing = [s for s in EVAL_SPEC if s not in sets]
            if not sets:
                typer.echo(f"campipe eval: no data set under {data_dir}: expected one or more of "
                           f"{', '.join(missing)}, each with images/ and masks/", err=True)
                raise typer.Exit(1)
            if missing:
                typer.echo(f"campipe eval: no {', '.join(missing)} under {data_dir}; evaluating "
                           f"{', '.join(sets)}", err=True)
        try:
            w = weights_path(weights)
        except NoWeightsError as e:
            typer.echo(f"campipe eval: {e}", err=True)
            raise typer.Exit(1)
        ckpts = {"weights": w}
        for i, c in enumerate(compare or []):
            if not c.is_file():
                typer.echo(f"campipe eval: checkpoint not found: {c}", err=True)
                raise typer.Exit(1)
            ckpts[f"compare{i + 1}" if len(compare) > 1 else "compare"] = c
        from rich.console import Console
        from rich.progress import Progress

        console = Console(stderr=True)
        try:
            with Progress(console=console, transient=True) as prog:
                tasks: dict = {}

                def cb(name: str, i: int, n: int) -> None:
                    if name not in tasks:
                        tasks[name] = prog.add_task(name, total=n)
                    prog.update(tasks[name], completed=i)

                report = evaluate_checkpoints(ckpts, data_dir, sets or None, split, limit,
                                              derive_int8_from="weights" if int8_of_float else None, progress=cb,
                                              refine=refine, tta=tta, sky_refine=sky_refine,
                                              person_refine=person_refine, hair_refine=hair_refine,
                                              person_framing=person_framing)
        except (FileNotFoundError, ValueError, OSError) as e:
            typer.echo(f"campipe eval: {e}", err=True)
            raise typer.Exit(1)
        from rich.table import Table

        rows = format_table(report)
        table = Table(title=f"HyperDETR validation ({split} split, pooled IoU @0.5, person PQ, {refine} upsampling)")
        for h in rows[0]:
            table.add_column(h)
        for r in rows[1:]:
            table.add_row(*r)
        console.print(table)
        for lab, m in report["models"].items():
            size = f"{m['file_size'] / 1e6:.2f} MB, " if m.get("file_size") else ""
            src = f"{m['derived']} of {m['path']}" if m.get("derived") else m["path"]
            console.print(f"{lab}: {src} ({size}{m['dec_layers']} decoder layers, "
                          f"{'int8' if m['quantized'] else 'float32'})")
        if json_out:
            text = json.dumps(report, indent=2, default=float)
            if json_out == "-":
                sys.stdout.write(text + "\n")
            else:
                Path(json_out).write_text(text + "\n")
