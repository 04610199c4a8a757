"""HyperDETR checkpoint files: one ``torch.save``'d dict that rebuilds the model with nothing else.

Format ``campipe-hyperdetr/1``::

    {"format": "campipe-hyperdetr/1",
     "config": HyperDETRConfig.to_dict(),
     "classes": [semantic class names, sem_logits order],
     "normalization": {"mean": [r, g, b], "std": [r, g, b]},   # applied to sRGB in [0, 1]
     "state_dict": {name: float32 tensor | {"int8": int8 tensor, "scale": float32 (C,)}},
     "quantized": bool,          # True if weight matrices are stored as per-channel int8 (see .quantize)
     "metrics": {...},           # free-form evaluation numbers from training
     "extra": {...}}             # optional free-form (training args, data hash, ...)

``load_checkpoint(path, keep_dec_layers=k)`` prunes the transformer decoder to its first k layers at load time
(no retraining: every decoder layer is supervised). A checkpoint saved already pruned records that in its config.

References: facebookresearch/detr checkpoint layout (``{"model", "args"}``), PyTorch ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from .config import HyperDETRConfig
from .graph_cache import file_sha256  # noqa: F401 - part of this module's API
from .model import HyperDETR, build_model
from .quantize import dequantize_state_dict, quantize_state_dict

FORMAT = "campipe-hyperdetr/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_DEC_KEY = re.compile(r"^transformer\.decoder\.(\d+)\.")


class CheckpointError(ValueError):
    """A file that is not a usable HyperDETR checkpoint; the message names the file and the problem."""


def _strip_decoder(sd: dict[str, Any], k: int) -> dict[str, Any]:
    """Drop decoder layers >= k from a state dict."""
    out = {}
    for name, v in sd.items():
        m = _DEC_KEY.match(name)
        if m is None or int(m.group(1)) < k:
            out[name] = v
    return out


def save_checkpoint(path: str | Path, model: HyperDETR, cfg: HyperDETRConfig | None = None, *,
                    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                    quantize: bool = False, keep_dec_layers: int | None = None) -> Path:
    """Write a checkpoint of ``model`` (its config defaults to ``model.cfg``).

    Args:
        quantize: store weight matrices as per-channel int8 (about 4x smaller; dequantised on load).
        keep_dec_layers: also prune the stored decoder to its first k layers (smaller file; recorded in the config).
    Returns the path written. The file is written to a temporary name first, then renamed.
    """
    path = Path(path)
    cfg = HyperDETRConfig.from_dict((cfg or model.cfg).to_dict())
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    n_built = sum(1 for k in sd if k.startswith("transformer.decoder.") and k.endswith(".norm3.weight"))
    cfg.keep_dec_layers = n_built if n_built < cfg.dec_layers else None
    if keep_dec_layers is not None:
        if not 1 <= keep_dec_layers <= n_built:
            raise ValueError(f"keep_dec_layers={keep_dec_layers} but the model has {n_built} decoder layers")
        sd = _strip_decoder(sd, keep_dec_layers)
        cfg.keep_dec_layers = keep_dec_layers if keep_dec_layers < cfg.dec_layers else None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean/std must be 3 values with std > 0, got {mean}, {std}")
    ckpt = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "classes": list(cfg.semantic_classes),
        "normalization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "state_dict": quantize_state_dict(sd) if quantize else sd,
        "quantized": bool(quantize),
        "metrics": dict(metrics or {}),
        "extra": dict(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)
    return path


def _load_error(e: Exception) -> str:
    """One short reason for a failed ``torch.load``. Its unpickling errors open with advice to retry with
    ``weights_only=False`` (running code from the file), which campipe's weight loading never does; their last line
    says what stopped the unpickler, before a pointer to the documentation."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if isinstance(e, pickle.UnpicklingError):
        why = [ln for ln in lines if not ln.startswith(("Check the documentation", "Please file an issue"))
               and "weights_only" not in ln]
        detail = why[-1].split(" Please use")[0].removeprefix("WeightsUnpickler error: ") if why else "?"
        return ("not a file of plain tensors: corrupt, truncated, or holding pickled objects, which campipe does not "
                f"load (weights_only=True); the unpickler stopped at: {detail}")
    return f"{type(e).__name__}: {lines[0] if lines else '?'}"


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """Load and validate the raw checkpoint dict (no model built)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupted / not a torch file
        raise CheckpointError(f"{path}: cannot be read as a HyperDETR checkpoint ({_load_error(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint (format: {got!r})")
    for key in ("config", "normalization", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    return ckpt


def load_checkpoint(path: str | Path, keep_dec_layers: int | None = None, map_location: str = "cpu"
                    ) -> tuple[HyperDETR, dict[str, Any]]:
    """Rebuild the model from a checkpoint, in eval mode, float32.

    Args:
        keep_dec_layers: prune to the first k decoder layers (k <= the layers stored in the file).
    Returns ``(model, meta)`` where ``meta`` is the checkpoint dict without the state dict, plus ``path``,
    ``sha256``, ``file_size`` and ``config_obj`` (the :class:`HyperDETRConfig` of the built model).
    """
    path = Path(path)
    ckpt = read_checkpoint(path, map_location)
    try:
        cfg = HyperDETRConfig.from_dict(dict(ckpt["config"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad config: {e}") from None
    stored = cfg.active_dec_layers
    sd = dequantize_state_dict(ckpt["state_dict"])
    if keep_dec_layers is not None:
        if not 1 <= keep_dec_layers <= stored:
            raise CheckpointError(f"{path}: keep_dec_layers={keep_dec_layers} but the file stores {stored} "
                                  f"decoder layers")
        sd = _strip_decoder(sd, keep_dec_layers)
        cfg.keep_dec_layers = keep_dec_layers if keep_dec_layers < cfg.dec_layers else None
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: state dict does not match its config (missing: {missing[:5]}, "
                              f"unexpected: {unexpected[:5]})")
    model.eval()
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    meta.update(path=str(path), sha256=file_sha256(path), file_size=path.stat().st_size, config_obj=model.cfg)
    return model, meta
