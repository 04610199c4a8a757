"""Spatial tiling of HyperDETR's convolutional decoder: run it on horizontal bands to cap peak memory.

The U-Net decoder's full-resolution intermediates (several C x H x W tensors at strides 2 and 1) dominate its memory
at large output sizes. :func:`tiled_decode` splits the stride-32 grid into ``bands`` row bands, decodes each band
with a halo of ``halo_cells`` stride-32 rows (= 32 * halo_cells input pixels) on both sides, and keeps only the band's
own rows. Band borders are aligned to stride-32 cells, so every scale's crop is exact (bilinear x2 upsampling of a
crop starting at an even row equals the global one away from the crop edge); the halo absorbs the decoder's receptive
field (measured: a halo of 2 cells reproduces the untiled decoder to float rounding, 1 cell does not; the test
checks it). Trade-off: less peak memory, slightly more compute (halo rows are decoded twice) — measured by
``benchmarks/bench_segmentation.py``.

Shapes: as :class:`campipe.segmentation.model.ConvDecoder` — returns mask features (B, D, H/s, W/s) and semantic
logits (B, K, H/s, W/s), float32.

References: the tiled execution of on-device segmentation decoders (e.g. Apple, "On-device Panoptic Segmentation for
Camera Using Transformers", 2021); overlap-tile strategy of U-Net (Ronneberger et al. 2015).
"""
from __future__ import annotations

import torch
from torch import nn


def set_tiling(model: nn.Module, bands: int = 1, halo_cells: int = 2) -> nn.Module:
    """Make ``model`` (HyperDETR) decode in ``bands`` row bands (1 = untiled). Returns the model."""
    if bands < 1 or halo_cells < 0:
        raise ValueError(f"bands must be >= 1 and halo_cells >= 0, got {bands}, {halo_cells}")
    model.decoder_bands = int(bands)
    model.decoder_halo = int(halo_cells)
    return model


def tiled_decode(decoder: nn.Module, p32: torch.Tensor, feats: dict[str, torch.Tensor], image: torch.Tensor,
                 bands: int, halo_cells: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode in row bands; see module docstring."""
    b, _, h32, _ = p32.shape
    bands = max(1, min(bands, h32))
    edges = [round(i * h32 / bands) for i in range(bands + 1)]
    scale = {"s16": 2, "s8": 4, "s4": 8, "s2": 16}
    out_per_cell = 32 // decoder.mask_stride
    mf_out = sem_out = None
    for r0, r1 in zip(edges[:-1], edges[1:]):
        w0, w1 = max(0, r0 - halo_cells), min(h32, r1 + halo_cells)
        sub = {k: feats[k][:, :, w0 * s:w1 * s] for k, s in scale.items()}
        mf, sem = decoder(p32[:, :, w0:w1], sub, image[:, :, w0 * 32:w1 * 32])
        a, z = (r0 - w0) * out_per_cell, (r1 - w0) * out_per_cell
        if mf_out is None:
            width = mf.shape[-1]
            mf_out = mf.new_empty((b, mf.shape[1], h32 * out_per_cell, width))
            sem_out = sem.new_empty((b, sem.shape[1], h32 * out_per_cell, width))
        mf_out[:, :, r0 * out_per_cell:r1 * out_per_cell] = mf[:, :, a:z]
        sem_out[:, :, r0 * out_per_cell:r1 * out_per_cell] = sem[:, :, a:z]
    return mf_out, sem_out
