"""Per-class choice of the static head between two calibrated float checkpoints that share everything else.

Each static channel's logit is its own row of the 1x1 head (``decoder.sem_head``) plus, with
``model.sem_head_hidden``, its own row of the branch's last conv (``decoder.sem_branch.2``); nothing else is
per-class. So when two checkpoints have bit-identical trunks (a head trained on a frozen model, as
``configs/hyperdetr_cpu11.toml`` does), taking some classes' rows from one and the rest from the other gives a
model whose every channel equals that channel of the checkpoint it was taken from, exactly. A plain 1x1-head source
contributes a zero branch row.

``python -m campipe.segmentation.training.merge_heads --base NEW_cal.pt --from OLD_cal.pt --classes skin,teeth
--out MERGED.pt``

The choice of classes is the caller's; record how it was made (the calibration report of each checkpoint gives
per-class IoU on the *training* split). Provenance goes into ``extra["merged_heads"]``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

HEAD_PREFIXES = ("decoder.sem_head.", "decoder.sem_branch.")


def merge_heads(base: torch.nn.Module, other: torch.nn.Module, classes) -> torch.nn.Module:
    """Give ``base`` (in place) the static-channel rows of ``classes`` from ``other``; returns ``base``.

    Raises ValueError when the two models differ anywhere outside the static head or in their class lists.
    """
    names = list(base.cfg.semantic_classes)
    if list(other.cfg.semantic_classes) != names:
        raise ValueError(f"class lists differ: {names} vs {list(other.cfg.semantic_classes)}")
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise ValueError(f"unknown classes {unknown} (model classes: {names})")
    sb, so = base.state_dict(), other.state_dict()
    for k, v in sb.items():
        if k.startswith(HEAD_PREFIXES):
            continue
        if k not in so or so[k].shape != v.shape or not torch.equal(so[k], v):
            raise ValueError(f"the models differ outside the static head ({k}): rows cannot be exchanged exactly")
    rows = [names.index(c) for c in classes]
    with torch.no_grad():
        for p in ("weight", "bias"):
            getattr(base.decoder.sem_head, p)[rows] = getattr(other.decoder.sem_head, p)[rows]
        if base.decoder.sem_branch is not None:
            last = base.decoder.sem_branch[2]
            src = other.decoder.sem_branch[2] if other.decoder.sem_branch is not None else None
            for p in ("weight", "bias"):
                getattr(last, p)[rows] = getattr(src, p)[rows] if src is not None else 0.0
        elif other.decoder.sem_branch is not None:
            raise ValueError("the base has no static branch but the other model has one: use it as the base")
    return base


def main(argv=None) -> int:
    from ..checkpoint import file_sha256, load_checkpoint, save_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, type=Path, help="calibrated float checkpoint kept for most classes")
    ap.add_argument("--from", dest="other", required=True, type=Path, help="calibrated float checkpoint giving rows")
    ap.add_argument("--classes", required=True, help="comma-separated classes taken from --from")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    base, meta = load_checkpoint(a.base)
    other, ometa = load_checkpoint(a.other)
    if meta.get("quantized") or ometa.get("quantized"):
        raise SystemExit("merge the float checkpoints, not int8 ones")
    classes = [c.strip() for c in a.classes.split(",") if c.strip()]
    merge_heads(base, other, classes)
    extra = dict(meta.get("extra") or {})
    extra["merged_heads"] = {"base": {"file": a.base.name, "sha256": file_sha256(a.base)},
                             "from": {"file": a.other.name, "sha256": file_sha256(a.other)}, "classes": classes}
    norm = meta["normalization"]
    save_checkpoint(a.out, base, base.cfg, mean=norm["mean"], std=norm["std"], metrics=meta.get("metrics"),
                    extra=extra)
    print(f"wrote {a.out}: {', '.join(classes)} from {a.other}, the rest from {a.base}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
