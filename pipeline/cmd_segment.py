"""``campipe segment IN... -o DIR [--overlay]``: write HyperDETR soft masks for each input image.

Output contract (fixed; tools depend on it), for each input ``DIR/<stem>/``:
    ``sky.png hair.png skin.png teeth.png glasses.png person.png`` — 8-bit grayscale soft masks (0-255 = 0-1),
    exactly the input image's width and height after EXIF orientation;
    ``person_0.png, person_1.png, ...`` — one per kept person instance, sorted by descending score;
    ``segments.json`` — source, size, model (name, file, sha256, runtime, ...), per-instance scores, timings;
    ``overlay.jpg`` — with ``--overlay``: colour-coded masks over the photo.
If two inputs share a stem, the later one is written to ``DIR/<stem>.<ext>/``.

Inputs: anything campipe reads (JPEG/PNG/TIFF/HEIC/DNG/RAW) via ``campipe.decode.decode_file``.
Exit codes: 0 all inputs done, 1 some inputs failed (or no weights installed), 2 usage error.

References: typer documentation; DETR panoptic visualisation (colour per segment).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer

SEMANTIC_FILES = ("sky", "hair", "skin", "teeth", "glasses", "person")
#: overlay colours (sRGB 0-1) per semantic class, then per instance
OVERLAY_COLOURS = {"sky": (0.25, 0.55, 1.0), "hair": (0.65, 0.3, 0.05), "skin": (1.0, 0.7, 0.45),
                   "teeth": (1.0, 1.0, 0.2), "glasses": (0.1, 1.0, 0.9)}
INSTANCE_COLOURS = ((1.0, 0.15, 0.15), (0.2, 0.9, 0.2), (0.75, 0.25, 1.0), (1.0, 0.5, 0.0),
                    (0.0, 0.6, 0.6), (1.0, 0.3, 0.7))


def _to_u8(m):
    import numpy as np

    return np.clip(np.rint(np.asarray(m, np.float32) * 255.0), 0, 255).astype(np.uint8)


def _write_png(path: Path, m) -> None:
    from PIL import Image

    Image.fromarray(_to_u8(m), mode="L").save(path, optimize=False, compress_level=3)


def make_overlay(rgb, result):
    """float32 (H, W, 3) sRGB in [0, 1] + SegmentationResult -> uint8 (H, W, 3) overlay (alpha 0.55 per mask)."""
    import numpy as np

    out = rgb.astype(np.float32) * 0.75
    layers = [(result.masks.get(k), c) for k, c in OVERLAY_COLOURS.items()]
    layers += [(p.mask, INSTANCE_COLOURS[i % len(INSTANCE_COLOURS)]) for i, p in enumerate(result.persons)]
    for m, colour in layers:
        if m is None:
            continue
        a = (0.55 * m)[..., None]
        out = out * (1.0 - a) + np.asarray(colour, np.float32) * a
    return _to_u8(out)


def write_outputs(outdir: Path, source: Path, rgb, result, extra_timings: dict, overlay: bool) -> dict:
    """Write one input's masks, segments.json and optional overlay into ``outdir``; returns the JSON dict."""
    from PIL import Image

    outdir.mkdir(parents=True, exist_ok=True)
    for stale in list(outdir.glob("person_*.png")) + ([outdir / "overlay.jpg"] if not overlay else []):
        if stale.is_file():
            stale.unlink()  # from an earlier run with more instances / an overlay
    for name in SEMANTIC_FILES:
        _write_png(outdir / f"{name}.png", result.masks[name])
    persons = []
    for i, p in enumerate(result.persons):
        _write_png(outdir / f"person_{i}.png", p.mask)
        persons.append({"index": i, "file": f"person_{i}.png", "score": round(float(p.score), 6),
                        "area_fraction": round(float(p.mask.mean()), 6)})
    if overlay:
        Image.fromarray(make_overlay(rgb, result), mode="RGB").save(outdir / "overlay.jpg", quality=90)
    h, w = result.size
    doc = {
        "source": str(source),
        "width": int(w), "height": int(h),
        "masks": {name: f"{name}.png" for name in SEMANTIC_FILES},
        "persons": persons,
        "model": {k: v for k, v in result.model.items() if k != "path"},
        "timings": {k: round(float(v), 6) for k, v in {**extra_timings, **result.timings}.items()},
        "overlay": "overlay.jpg" if overlay else None,
    }
    (outdir / "segments.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def register(app: typer.Typer) -> None:
    @app.command("segment")
    def segment_cmd(
        inputs: list[Path] = typer.Argument(..., help="Images to segment (JPEG/PNG/TIFF/HEIC/DNG/RAW)."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder; one sub-folder per input."),
        overlay: bool = typer.Option(False, "--overlay", help="Also write overlay.jpg (masks over the photo)."),
        weights: Optional[Path] = typer.Option(None, "--weights", help="Checkpoint (default: installed weights "
                                               "or $CAMPIPE_WEIGHTS)."),
        runtime: str = typer.Option("auto", "--runtime", help="auto | onnx | onnx-int8 | torch | compile-bf16"),
        max_persons: int = typer.Option(4, "--max-persons", min=0, help="Keep at most this many instances."),
        threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0, help="Minimum instance score."),
        refine: bool = typer.Option(True, "--refine/--no-refine", help="Edge-aware (guided) mask upsampling."),
        dedup_iou: float = typer.Option(0.8, "--dedup-iou", min=0.0, max=1.0,
                                        help="Drop a person instance overlapping a higher-scoring one by more than "
                                             "this mask IoU (duplicate answers); 1 keeps every instance."),
        tta: bool = typer.Option(False, "--tta", help="Flip test-time augmentation: also run the network on the "
                                 "mirrored image and average the static masks (twice the network time)."),
        sky_refine: bool = typer.Option(True, "--sky-refine/--no-sky-refine", help="Refine the sky mask with the "
                                        "photo's colours (sky through branches)."),
        person_refine: bool = typer.Option(True, "--person-refine/--no-person-refine", help="Refine the person "
                                           "channel with the photo's colours (plain backgrounds around people)."),
        hair_refine: bool = typer.Option(True, "--hair-refine/--no-hair-refine", help="Refine the hair mask with the "
                                         "photo's colours."),
        person_framing: bool = typer.Option(True, "--person-framing/--no-person-framing", help="A stricter person "
                                            "threshold when the subject fills the frame (close-ups), as campipe does "
                                            "by default."),
    ) -> None:
        """Write soft masks (sky, hair, skin, teeth, glasses, person, person_i) + segments.json per image."""
        from campipe.segmentation import NoWeightsError

        from campipe.segmentation.runtime import RUNTIMES

        if runtime not in RUNTIMES:
            typer.echo(f"campipe segment: --runtime must be one of {', '.join(RUNTIMES)} (got {runtime!r})", err=True)
            raise typer.Exit(2)
        if out.exists() and not out.is_dir():
            typer.echo(f"campipe segment: output {out} exists and is not a folder", err=True)
            raise typer.Exit(2)
        try:
            from campipe.segmentation.inference import get_segmenter

            seg = get_segmenter(weights, runtime=runtime, max_persons=max_persons, score_threshold=threshold,
                                refine="guided" if refine else "bilinear", dedup_iou=dedup_iou, tta=tta,
                                sky_refine=sky_refine, person_refine=person_refine, hair_refine=hair_refine,
                                person_framing=person_framing)
        except NoWeightsError as e:
            typer.echo(f"campipe segment: {e}", err=True)
            raise typer.Exit(1)
        except (ValueError, RuntimeError) as e:  # unreadable checkpoint, bad option combination
            typer.echo(f"campipe segment: {e}", err=True)
            raise typer.Exit(1)
        from campipe.decode import decode_file
        from campipe.errors import CampipeError
        from campipe.segment_stage import frame_render

        failed, used = 0, set()
        for src in inputs:
            name = src.stem if src.stem not in used else src.name
            used.add(name)
            try:
                t0 = time.perf_counter()
                frame = decode_file(src)
                rgb = frame_render(frame)[0]
                t_dec = time.perf_counter() - t0
                res = seg(rgb)
                t_w = time.perf_counter()
                doc = write_outputs(out / name, src, rgb, res, {"decode": t_dec}, overlay)
                doc["timings"]["write"] = round(time.perf_counter() - t_w, 6)
                doc["timings"]["total"] = round(time.perf_counter() - t0, 6)
                (out / name / "segments.json").write_text(json.dumps(doc, indent=2) + "\n")
                typer.echo(f"{src} -> {out / name}/ ({len(res.persons)} person(s), "
                           f"{doc['timings']['total']:.2f} s)", err=True)
            except CampipeError as e:  # messages already name the file
                failed += 1
                typer.echo(f"campipe segment: {e}", err=True)
            except (OSError, ValueError) as e:
                failed += 1
                typer.echo(f"campipe segment: {src}: {e}", err=True)
        if failed:
            typer.echo(f"campipe segment: {failed} of {len(inputs)} input(s) failed", err=True)
            raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: campipe segment ...")
