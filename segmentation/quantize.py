"""8-bit per-channel weight quantization of a state dict (storage compression; weights are dequantised on load).

Every floating-point tensor with >= 2 dimensions (conv kernels, linear weights, embeddings, attention in-projections)
is stored as symmetric int8 with one float32 scale per output channel (axis 0):
``q = round(w / scale)`` clipped to [-127, 127], ``scale = max|w[c]| / 127``, so the reconstruction error per weight is
at most ``scale / 2``. 1-D tensors (biases, BatchNorm/LayerNorm parameters and running stats) stay float32: they are a
tiny fraction of the parameters and quantizing them hurts more than it saves.

A quantized entry is the dict ``{"int8": int8 tensor (same shape), "scale": float32 (C,)}``; plain tensors pass
through unchanged. The format is plain torch containers so ``torch.load(weights_only=True)`` reads it.

References: Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference" (CVPR 2018); Krishnamoorthi, "Quantizing deep convolutional networks for efficient inference" (2018),
per-channel symmetric weight quantization.
"""
from __future__ import annotations

import torch


def quantize_tensor(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Symmetric per-output-channel int8 quantization of a float tensor with >= 2 dims."""
    w = w.detach().float()
    flat = w.reshape(w.shape[0], -1)
    scale = flat.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(flat / scale[:, None]), -127, 127).to(torch.int8)
    return {"int8": q.reshape(w.shape).contiguous(), "scale": scale.contiguous()}


def dequantize_tensor(entry: dict[str, torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`quantize_tensor` -> float32 tensor."""
    q, scale = entry["int8"], entry["scale"].float()
    shape = (-1,) + (1,) * (q.dim() - 1)
    return q.float() * scale.reshape(shape)


def is_quantized_entry(v) -> bool:
    return isinstance(v, dict) and "int8" in v and "scale" in v


def quantize_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, object]:
    """Quantize every floating tensor with >= 2 dims; everything else is copied (float32 for float tensors)."""
    out: dict[str, object] = {}
    for k, v in sd.items():
        if torch.is_tensor(v) and v.is_floating_point() and v.dim() >= 2:
            out[k] = quantize_tensor(v)
        elif torch.is_tensor(v) and v.is_floating_point():
            out[k] = v.detach().float().clone()
        else:
            out[k] = v.detach().clone() if torch.is_tensor(v) else v
    return out


def dequantize_state_dict(sd: dict[str, object]) -> dict[str, torch.Tensor]:
    """Float32 state dict from a (possibly partially) quantized one."""
    return {k: dequantize_tensor(v) if is_quantized_entry(v) else v for k, v in sd.items()}  # type: ignore[misc]


def quantization_report(sd: dict[str, torch.Tensor]) -> dict[str, float]:
    """Numbers for the docs: parameter counts and the worst relative per-tensor reconstruction error."""
    n_q = n_f = 0
    worst = 0.0
    for v in sd.values():
        if torch.is_tensor(v) and v.is_floating_point():
            if v.dim() >= 2:
                n_q += v.numel()
                r = dequantize_tensor(quantize_tensor(v))
                worst = max(worst, float((r - v).norm() / (v.norm() + 1e-12)))
            else:
                n_f += v.numel()
    return {"quantized_params": n_q, "float_params": n_f, "worst_relative_error": worst}
