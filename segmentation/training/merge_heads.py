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

``--query-path`` instead takes the whole person path from ``--from``: the transformer, the query embeddings and the
instance head (class scores and the hyper-network making the dynamic 1x1 convs), everything the static channels do
not use. The static channels (backbone, ``input_proj``, conv decoder, static head) stay the base's exactly; the
instance masks become the other model's hyper-network applied to the base's mask features, which is only as good as
those features are alike, so measure the result (recipe v6 took v5's person path this way:
``--base CPU16_cal.pt --from V5.pt --query-path``). The other model may be an int8 file (dequantised on load).
Provenance goes into ``extra["merged_query_path"]``.

``--class-branches`` instead gives the base the further residual branches of ``--from`` (``model.class_branches``,
e.g. a face-skin branch), unchanged: allowed when the two models are equal everywhere but their sky branches and
neither sky branch refines a class those branches read (each branch reads the stride-2 features, the mask features
and its own classes' logits), so every class branch sees exactly the input it was fitted on and writes exactly what
it wrote in ``--from``; the sky stays the base's. The twelfth session's candidate c8 put c7's skin branch beside
the cheaper stride-4 sky branch this way (MODEL_CARD.md; not shipped). Provenance goes into
``extra["merged_class_branches"]``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..model import check_rows_free_of_branch

HEAD_PREFIXES = ("decoder.sem_head.", "decoder.sem_branch.")


def _check_classes(base: torch.nn.Module, other: torch.nn.Module) -> None:
    names, onames = list(base.cfg.semantic_classes), list(other.cfg.semantic_classes)
    if onames != names:
        raise ValueError(f"class lists differ: {names} vs {onames}")


def _first_difference(sb: dict, so: dict, keys, skip: tuple[str, ...]) -> str | None:
    """The first of ``keys`` outside the ``skip`` prefixes whose tensor is missing from either state dict or differs
    between them (shape or value), or None."""
    for k in keys:
        if k.startswith(skip):
            continue
        if k not in sb or k not in so or sb[k].shape != so[k].shape or not torch.equal(sb[k], so[k]):
            return k
    return None


def merge_heads(base: torch.nn.Module, other: torch.nn.Module, classes) -> torch.nn.Module:
    """Give ``base`` (in place) the static-channel rows of ``classes`` from ``other``; returns ``base``.

    Raises ValueError when the two models differ anywhere outside the static head or in their class lists.
    """
    _check_classes(base, other)
    names = list(base.cfg.semantic_classes)
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise ValueError(f"unknown classes {unknown} (model classes: {names})")
    check_rows_free_of_branch((base, other), classes, "merge")
    sb, so = base.state_dict(), other.state_dict()
    k = _first_difference(sb, so, sb, HEAD_PREFIXES)
    if k is not None:
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


QUERY_PATH_PREFIXES = ("transformer.", "query_embed.", "head.")


def merge_query_path(base: torch.nn.Module, other: torch.nn.Module) -> torch.nn.Module:
    """Give ``base`` (in place) the transformer, query embeddings and instance head of ``other``; returns ``base``.

    Raises ValueError when the two models' person paths differ in architecture (tensor names or shapes, e.g. a
    different number of decoder layers) or their class lists differ.
    """
    _check_classes(base, other)
    sb, so = base.state_dict(), other.state_dict()
    kb = {k for k in sb if k.startswith(QUERY_PATH_PREFIXES)}
    ko = {k for k in so if k.startswith(QUERY_PATH_PREFIXES)}
    if kb != ko:
        diff = sorted(kb ^ ko)
        raise ValueError(f"the person paths differ in architecture ({len(diff)} tensors, e.g. {diff[0]}); "
                         "prune both to the same number of decoder layers first")
    bad = [k for k in kb if sb[k].shape != so[k].shape]
    if bad:
        raise ValueError(f"the person paths differ in shape at {bad[0]}: {tuple(sb[bad[0]].shape)} vs "
                         f"{tuple(so[bad[0]].shape)}")
    base.load_state_dict({**sb, **{k: so[k].clone() for k in kb}})
    return base


BRANCH_PREFIXES = ("decoder.sky_branch.", "decoder.class_branches.")


def merge_class_branches(base: torch.nn.Module, other: torch.nn.Module) -> torch.nn.Module:
    """A new model: ``base`` with the class branches (``model.class_branches``) of ``other``, bit for bit.

    Raises ValueError when ``base`` has class branches already, ``other`` has none, the two differ anywhere but in
    their sky branches, or a sky branch refines a class that one of the class branches reads.
    """
    from ..config import HyperDETRConfig
    from ..model import build_model

    _check_classes(base, other)
    if base.cfg.class_branches:
        raise ValueError("the base has class branches already")
    if not other.cfg.class_branches:
        raise ValueError("the other model has no class branches (model.class_branches)")
    # a class branch is fitted on its model's output logits, so neither model's sky branch may refine what it reads
    # (a lower-only class branch may sit beside the sky branch on one class, model.class_branches)
    read = {c for cs, *_ in other.cfg.class_branches for c in cs}
    for name, m in (("base", base), ("other model", other)):
        hit = sorted(read & set(m.cfg.sky_head_classes)) if m.cfg.sky_head_hidden else []
        if hit:
            raise ValueError(f"the {name}'s sky branch refines {hit}, which a class branch reads")
    sb, so = base.state_dict(), other.state_dict()
    k = _first_difference(sb, so, sorted(set(sb) | set(so)), BRANCH_PREFIXES)
    if k is not None:
        raise ValueError(f"the models differ outside their residual branches ({k})")
    cfg = HyperDETRConfig.from_dict({**base.cfg.to_dict(),
                                     "class_branches": other.cfg.to_dict()["class_branches"]})
    merged = build_model(cfg).eval()
    taken = {k: v.clone() for k, v in so.items() if k.startswith("decoder.class_branches.")}
    merged.load_state_dict({**sb, **taken})
    return merged


def main(argv=None) -> int:
    from ..checkpoint import file_sha256, load_checkpoint, save_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, type=Path, help="calibrated float checkpoint kept for most classes")
    ap.add_argument("--from", dest="other", required=True, type=Path, help="calibrated float checkpoint giving rows")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--classes", help="comma-separated classes taken from --from")
    what.add_argument("--query-path", action="store_true",
                      help="take the transformer, query embeddings and instance head from --from instead")
    what.add_argument("--class-branches", action="store_true",
                      help="take the further residual branches (model.class_branches) from --from instead")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    base, meta = load_checkpoint(a.base)
    other, ometa = load_checkpoint(a.other)
    if meta.get("quantized") or (ometa.get("quantized") and not a.query_path):
        raise SystemExit("merge the float checkpoints, not int8 ones (--query-path accepts an int8 --from)")
    sources = {"base": {"file": a.base.name, "sha256": file_sha256(a.base)},
               "from": {"file": a.other.name, "sha256": file_sha256(a.other)}}
    extra = dict(meta.get("extra") or {})
    try:
        if a.class_branches:
            base = merge_class_branches(base, other)
            extra["merged_class_branches"] = {**sources, "class_branches": base.cfg.to_dict()["class_branches"]}
            for k, v in (ometa.get("extra") or {}).items():
                if k.startswith("class_branch:"):
                    extra[k] = v  # the branch's own fit record
            taken = "the class branches"
        elif a.query_path:
            merge_query_path(base, other)
            extra["merged_query_path"] = {**sources, "prefixes": list(QUERY_PATH_PREFIXES),
                                          "from_quantized": bool(ometa.get("quantized"))}
            taken = "the transformer, queries and instance head"
        else:
            classes = [c.strip() for c in a.classes.split(",") if c.strip()]
            merge_heads(base, other, classes)
            extra["merged_heads"] = {**sources, "classes": classes}
            taken = ", ".join(classes)
    except ValueError as e:
        raise SystemExit(f"cannot merge: {e}")
    norm = meta["normalization"]
    save_checkpoint(a.out, base, base.cfg, mean=norm["mean"], std=norm["std"], metrics=meta.get("metrics"),
                    extra=extra)
    print(f"wrote {a.out}: {taken} from {a.other}, the rest from {a.base}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
