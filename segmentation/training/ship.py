"""Package a trained checkpoint as campipe's shipped weights: int8, decoder pruned to 2 layers, validation figures
embedded in ``metrics``, provenance in ``extra``.

``python -m campipe.segmentation.training.ship --float RUN/ema_float.pt --eval-json EVAL.json --label LABEL
--out segmentation/weights/hyperdetr.pt``

* the float (all decoder layers) EMA checkpoint of a run is quantised to per-channel int8 and pruned to its first 2
  decoder layers (:func:`campipe.segmentation.checkpoint.save_checkpoint`);
* ``metrics`` gets the pooled IoUs / PQ of the column ``LABEL`` of a ``campipe eval --json`` report (the shipped
  variant), as ``"<set>/<metric>"`` keys, plus ``eval_split``; ``extra`` keeps the training config and step count of
  the float checkpoint and the sha256 of the float checkpoint the file was made from;
* the result must be <= 12 MB (the issue's budget), else nothing is written.

``--float`` may also be a file made from shipped weights (a branch fitted on ``segmentation/weights/hyperdetr.pt``,
which loads dequantised): their int8 values and scales come back bit for bit
(``tests/test_segmentation_sky_branch.py::test_the_shipped_int8_weights_quantise_back_to_themselves``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

MAX_BYTES = 12 * 1024 * 1024


def ship(float_ckpt: Path, eval_json: Path | None, label: str, out: Path, keep_dec_layers: int = 2) -> Path:
    from ..checkpoint import file_sha256, load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(float_ckpt)
    metrics: dict = {}
    if eval_json is not None:
        rep = json.loads(Path(eval_json).read_text())
        if label not in rep["results"]:
            raise ValueError(f"{eval_json}: no column {label!r} (have {sorted(rep['results'])})")
        for s, r in rep["results"][label].items():
            for k, v in r.items():
                if k.startswith("iou_") or k in ("pq", "sq", "rq", "n_images", "n_images_glasses"):
                    metrics[f"{s}/{k}"] = v
        metrics["eval_split"] = rep.get("split", "val")
    extra = dict(meta.get("extra") or {})
    extra["made_from"] = {"file": Path(float_ckpt).name, "sha256": file_sha256(float_ckpt)}
    tmp = out.with_name(out.name + ".candidate")
    save_checkpoint(tmp, model, model.cfg, mean=meta["normalization"]["mean"], std=meta["normalization"]["std"],
                    metrics=metrics, extra=extra, quantize=True, keep_dec_layers=keep_dec_layers)
    size = tmp.stat().st_size
    if size > MAX_BYTES:
        tmp.unlink()
        raise ValueError(f"shipped weights would be {size / 1e6:.1f} MB > 12 MB")
    tmp.replace(out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--float", dest="float_ckpt", required=True, type=Path)
    ap.add_argument("--eval-json", type=Path, default=None)
    ap.add_argument("--label", default="weights-int8-l2")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    p = ship(a.float_ckpt, a.eval_json, a.label, a.out)
    print(f"wrote {p} ({p.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
