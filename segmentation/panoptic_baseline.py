"""DETR-panoptic baseline head (for the scaling benchmark only; not used for inference).

Same backbone, input projection and transformer as HyperDETR; the mask path is DETR's: a multi-head attention map of
each query over the encoder memory (``MHAttentionMap``), concatenated to the stride-32 features *expanded per query*,
then a convolutional FPN decoder (``MaskHeadSmallConv``) run on the batch of B*N query copies — extended here with two
more stages (strides 2 and 1) so masks come out at the same resolution as HyperDETR's (input / mask_stride). Compute
and memory therefore grow linearly with N, which is what the benchmark shows against HyperDETR's flat curve.

``DETRPanoptic.forward(x)`` -> {"pred_logits": (B, N, 2), "pred_masks": (B, N, H/s, W/s) logits}.

References: Carion et al. (DETR, ECCV 2020) §4.4; facebookresearch/detr ``models/segmentation.py``
(``MHAttentionMap``, ``MaskHeadSmallConv``, ``_expand``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .backbone import MobileNetV3Backbone
from .config import HyperDETRConfig
from .transformer import PositionEmbeddingSine, Transformer


def _expand(t: torch.Tensor, n: int) -> torch.Tensor:
    """(B, C, H, W) -> (B*n, C, H, W), each image repeated for its n queries."""
    return t.unsqueeze(1).repeat(1, n, 1, 1, 1).flatten(0, 1)


class MHAttentionMap(nn.Module):
    """Attention of each query over the memory, softmax jointly over heads and positions (DETR).

    ``forward(q (B, N, C), k (B, C, h, w))`` -> (B, N, nheads, h, w) float32 in [0, 1].
    """

    def __init__(self, dim: int, nheads: int) -> None:
        super().__init__()
        self.nheads = nheads
        self.q_linear, self.k_linear = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.scale = float(dim / nheads) ** -0.5

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        q = self.q_linear(q)
        k = F.conv2d(k, self.k_linear.weight.unsqueeze(-1).unsqueeze(-1), self.k_linear.bias)
        b, n, c = q.shape
        qh = q.view(b, n, self.nheads, c // self.nheads)
        kh = k.view(b, self.nheads, c // self.nheads, k.shape[-2], k.shape[-1])
        w = torch.einsum("bqnc,bnchw->bqnhw", qh * self.scale, kh)
        return F.softmax(w.flatten(2), dim=-1).view(w.shape)


class MaskHeadSmallConv(nn.Module):
    """DETR's per-query FPN conv decoder, extended to strides 2 and 1; conv3x3 + GroupNorm(8) + ReLU per stage."""

    def __init__(self, dim: int, fpn_dims: list[int], context_dim: int, mask_stride: int = 1) -> None:
        super().__init__()
        d = [dim, context_dim // 2, context_dim // 4, context_dim // 8, context_dim // 16]
        c3 = lambda a, b: nn.Conv2d(a, b, 3, padding=1)  # noqa: E731
        self.lay1, self.gn1 = c3(d[0], d[0]), nn.GroupNorm(8, d[0])
        self.lay2, self.gn2 = c3(d[0], d[1]), nn.GroupNorm(8, d[1])
        self.lay3, self.gn3 = c3(d[1], d[2]), nn.GroupNorm(8, d[2])
        self.lay4, self.gn4 = c3(d[2], d[3]), nn.GroupNorm(8, d[3])
        self.lay5, self.gn5 = c3(d[3], d[4]), nn.GroupNorm(8, d[4])
        self.lay6, self.gn6 = c3(d[4], d[4]), nn.GroupNorm(8, d[4])
        self.out_lay = c3(d[4], 1)
        self.adapters = nn.ModuleList(nn.Conv2d(c, o, 1) for c, o in zip(fpn_dims, (d[1], d[2], d[3], d[4])))
        self.mask_stride = mask_stride

    def forward(self, x: torch.Tensor, attn: torch.Tensor, fpns: list[torch.Tensor], out_hw) -> torch.Tensor:
        n = attn.shape[1]
        x = torch.cat([_expand(x, n), attn.flatten(0, 1)], 1)
        x = F.relu(self.gn1(self.lay1(x)))
        x = F.relu(self.gn2(self.lay2(x)))
        stages = ((self.lay3, self.gn3), (self.lay4, self.gn4), (self.lay5, self.gn5), (self.lay6, self.gn6))
        for fpn, adapter, (lay, gn) in zip(fpns, self.adapters, stages):
            cur = adapter(fpn)
            if cur.shape[0] != x.shape[0]:
                cur = _expand(cur, x.shape[0] // cur.shape[0])
            x = cur + F.interpolate(x, size=cur.shape[-2:], mode="nearest")
            x = F.relu(gn(lay(x)))
        if tuple(x.shape[-2:]) != tuple(out_hw):
            x = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False)
        return self.out_lay(x)


class DETRPanoptic(nn.Module):
    """Backbone + transformer + DETR panoptic mask head; see module docstring."""

    def __init__(self, cfg: HyperDETRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = MobileNetV3Backbone(cfg.width_mult)
        ch = self.backbone.channels
        self.input_proj = nn.Conv2d(ch["s32"], cfg.hidden_dim, 1)
        self.position = PositionEmbeddingSine(cfg.hidden_dim // 2)
        self.transformer = Transformer(cfg.hidden_dim, cfg.nheads, cfg.enc_layers, cfg.active_dec_layers,
                                       cfg.dim_feedforward, cfg.dropout)
        self.query_embed = nn.Embedding(cfg.num_queries, cfg.hidden_dim)
        self.class_embed = nn.Linear(cfg.hidden_dim, 2)
        self.attention = MHAttentionMap(cfg.hidden_dim, 8)
        self.mask_head = MaskHeadSmallConv(cfg.hidden_dim + 8, [ch["s16"], ch["s8"], ch["s4"], ch["s2"]],
                                           cfg.hidden_dim, cfg.mask_stride)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        p32 = self.input_proj(feats["s32"])
        hs, memory = self.transformer(p32, self.position(p32), self.query_embed.weight)
        q = hs[-1]
        attn = self.attention(q, memory)
        out_hw = self.cfg.output_size
        masks = self.mask_head(p32, attn, [feats["s16"], feats["s8"], feats["s4"], feats["s2"]], out_hw)
        b, n = q.shape[:2]
        return {"pred_logits": self.class_embed(q), "pred_masks": masks.view(b, n, *out_hw)}


def build_panoptic_baseline(cfg: HyperDETRConfig | None = None) -> DETRPanoptic:
    return DETRPanoptic(cfg or HyperDETRConfig())
