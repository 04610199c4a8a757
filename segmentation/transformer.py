"""DETR-style transformer over the stride-32 feature map: post-norm encoder, decoder with learned queries.

Every decoder layer's output (after the shared final LayerNorm, as in DETR's ``return_intermediate``) is returned,
so every layer can be supervised and any prefix of layers is a valid (pruned) predictor.

Shapes (sequence-first inside, batch-first outside):
    ``Transformer.forward(src, pos, query_embed)``
        src:   (B, C, h, w) projected features, C = hidden_dim
        pos:   (B, C, h, w) positional encoding (:class:`PositionEmbeddingSine`)
        query_embed: (N, C) learned query positions
    returns ``hs`` (L, B, N, C) decoder outputs of the L kept layers and ``memory`` (B, C, h, w).

References: Carion et al., "End-to-End Object Detection with Transformers" (ECCV 2020);
facebookresearch/detr ``models/transformer.py`` and ``models/position_encoding.py``.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine 2-D positional encoding (DETR ``PositionEmbeddingSine``, normalised, no padding mask).

    ``forward(x)`` -> float32 (B, 2 * num_pos_feats, h, w) in [-1, 1].
    """

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        eps, scale = 1e-6, 2 * math.pi
        ones = torch.ones_like(x[:, 0])  # (B, h, w)
        y_embed = ones.cumsum(1)
        x_embed = ones.cumsum(2)
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class EncoderLayer(nn.Module):
    """Post-norm self-attention + FFN; positional encoding added to queries and keys."""

    def __init__(self, d: int, nheads: int, dff: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, nheads, dropout=dropout)
        self.linear1, self.linear2 = nn.Linear(d, dff), nn.Linear(dff, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q = k = src + pos
        src = self.norm1(src + self.dropout(self.self_attn(q, k, src, need_weights=False)[0]))
        src = self.norm2(src + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(src))))))
        return src


class DecoderLayer(nn.Module):
    """Post-norm query self-attention, cross-attention to the encoder memory, FFN (DETR ``TransformerDecoderLayer``)."""

    def __init__(self, d: int, nheads: int, dff: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, nheads, dropout=dropout)
        self.cross_attn = nn.MultiheadAttention(d, nheads, dropout=dropout)
        self.linear1, self.linear2 = nn.Linear(d, dff), nn.Linear(dff, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                query_pos: torch.Tensor) -> torch.Tensor:
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout(self.self_attn(q, k, tgt, need_weights=False)[0]))
        tgt2 = self.cross_attn(tgt + query_pos, memory + pos, memory, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout(tgt2))
        tgt = self.norm3(tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(tgt))))))
        return tgt


class Transformer(nn.Module):
    """Encoder (``enc_layers``) + decoder (``num_dec_layers`` built layers) returning all decoder layer outputs."""

    def __init__(self, d: int = 128, nheads: int = 4, enc_layers: int = 3, num_dec_layers: int = 6,
                 dff: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = nn.ModuleList(EncoderLayer(d, nheads, dff, dropout) for _ in range(enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(d, nheads, dff, dropout) for _ in range(num_dec_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.d_model = d
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, query_embed: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = src.shape
        src_seq = src.flatten(2).permute(2, 0, 1)  # (hw, B, C)
        pos_seq = pos.flatten(2).permute(2, 0, 1)
        memory = src_seq
        for layer in self.encoder:
            memory = layer(memory, pos_seq)
        query_pos = query_embed.unsqueeze(1).expand(-1, b, -1)  # (N, B, C)
        tgt = torch.zeros_like(query_pos)
        outs = []
        for layer in self.decoder:
            tgt = layer(tgt, memory, pos_seq, query_pos)
            outs.append(self.decoder_norm(tgt))
        hs = torch.stack(outs).transpose(1, 2)  # (L, B, N, C)
        return hs, memory.permute(1, 2, 0).reshape(b, c, h, w)
