"""HyperDETR: MobileNetV3-Large backbone + DETR transformer + U-Net conv decoder + hyper-network mask head.

Data flow for an input x (B, 3, H, W), float32 RGB normalised with the checkpoint's mean/std:

1. backbone -> features at strides 2, 4, 8, 16, 32;
2. ``input_proj`` (1x1 conv) -> stride-32 map P (B, hidden_dim, H/32, W/32);
3. convolutional decoder (U-Net: upsample x2, add 1x1-projected skip, residual depthwise-separable block) from P down
   to the output resolution (H/s, W/s), ending in the 16-channel mask-feature map F and the static semantic logits
   (one 1x1 conv on F, plus with ``cfg.sem_head_hidden`` a residual 3x3 branch over F and the stride-2 decoder
   features, and with ``cfg.sky_head_hidden`` a residual branch on the sky logit, and on the logits of
   ``cfg.sky_head_classes``' other classes if any, :class:`SkyBranch`); it
   never depends on the transformer, so ``scene_only`` outputs are identical;
   optionally in row bands with a halo (``tiling.set_tiling(model, bands)``) to cap peak memory;
4. transformer (skipped with ``scene_only=True``): encoder over P's tokens, decoder with N learned queries;
5. HyperDETR head per kept decoder layer: class logits + dynamic 1x1 conv of F (see :mod:`.hyperdetr_head`).

``forward(x, scene_only=False)`` returns a dict:
    ``"sem_logits"``  (B, len(semantic_classes), H/s, W/s) float32 logits of the static channels (sigmoid -> [0, 1]);
    ``"pred_logits"`` (B, N, 2) logits [person, no-object] of the last kept decoder layer (absent if scene_only);
    ``"pred_masks"``  (B, N, H/s, W/s) instance-mask logits (absent if scene_only);
    ``"aux_outputs"`` list of {"pred_logits", "pred_masks"} of the earlier kept layers, when ``cfg.aux_loss``.

References: Carion et al. (DETR, 2020); Ronneberger et al. (U-Net, 2015); Howard et al. (MobileNetV3, 2019);
facebookresearch/detr ``models/detr.py`` / ``models/segmentation.py``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .backbone import MobileNetV3Backbone
from .config import HyperDETRConfig
from .hyperdetr_head import COORD_DIM, HyperMaskHead
from .tiling import tiled_decode
from .transformer import PositionEmbeddingSine, Transformer


def conv_of_concat(conv: nn.Conv2d, parts: list[torch.Tensor], shift: torch.Tensor | None = None,
                   scale: torch.Tensor | None = None) -> torch.Tensor:
    """``conv(((torch.cat(parts, 1) - shift) / scale))`` without building the concatenation or the normalised copy.

    ``parts``: (B, c_i, h, w) float32 maps; ``shift`` / ``scale``: optional per-channel (sum c_i,) normalisation.
    Returns (B, conv.out_channels, h', w'), equal to the concatenated form up to float rounding (the division is
    folded into the kernel; zero padding still means a normalised zero, since the shift is subtracted before the
    conv). Why: the sum of one conv per part keeps every channel count a multiple of ONNX Runtime's blocked (NCHWc)
    layout where the concatenation with a 1-channel logit does not, and skips two full passes; measured on 2 cores:
    the v7 sky branch 5.5 -> 3 ms, the semantic branch 0.5 ms less (MODEL_CARD.md, eleventh session).
    """
    w = conv.weight if scale is None else conv.weight / scale.view(1, -1, 1, 1)
    out, start = None, 0
    for p in parts:
        n = p.shape[1]
        if shift is not None:
            p = p - shift[start:start + n].view(1, -1, 1, 1)
        y = F.conv2d(p, w[:, start:start + n], conv.bias if out is None else None, conv.stride, conv.padding,
                     conv.dilation, conv.groups)
        out = y if out is None else out + y
        start += n
    if start != conv.in_channels:
        raise ValueError(f"parts have {start} channels, the conv takes {conv.in_channels}")
    return out


class ResidualDWBlock(nn.Module):
    """x + BN(pw(ReLU(BN(pw(dw3x3(x)))))) — cheap residual block (two pointwise convs around a depthwise conv)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.pw1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.pw2 = nn.Conv2d(c, c, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.pw1(self.dw(x))))
        return F.relu(x + self.bn2(self.pw2(y)))


class UpStage(nn.Module):
    """1x1 projection to ``cout`` + bilinear x2 upsampling, add the 1x1-projected skip feature, residual block."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, 1, bias=False)
        self.skip = nn.Sequential(nn.Conv2d(cskip, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.block = ResidualDWBlock(cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # project *before* upsampling: a bias-free 1x1 conv commutes with bilinear interpolation (both linear,
        # interpolation weights sum to 1), so this equals proj(upsample(x)) at 1/4 of the cost
        x = F.interpolate(self.proj(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(x + self.skip(skip))


class FullResStage(nn.Module):
    """Stride-2 -> stride-1 stage, kept light because every op here touches H x W pixels: 1x1 projection and a
    residual block at stride 2, bilinear x2 upsampling, plus a 3x3 conv of the input image itself (full-resolution
    skip, so features can follow photo edges), then ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, 1, bias=False)
        self.block = ResidualDWBlock(cout)
        self.image_skip = nn.Sequential(nn.Conv2d(3, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.block(self.proj(x)), size=image.shape[-2:], mode="bilinear", align_corners=False)
        return F.relu(x + self.image_skip(image))


class SkyBranch(nn.Module):
    """Residual refinement of the sky logit (and of ``cfg.sky_head_classes``' others) at the mask resolution
    (``cfg.sky_head_hidden``).

    ``forward(feats)``: (B, cin, h, w) float32 (the decoder's stride-2 features, the mask features and the logits of
    the refined classes, concatenated (at ``mask_stride == 1``: without the stride-2 features); or the list of those
    channel groups) -> (B, n_classes, h, w) float32, added to those logits. Inputs are normalised by fixed
    per-channel ``in_mean`` / ``in_std`` buffers (set when it is fitted), then (with ``stride`` 2: average-pooled
    2 x 2) 3x3 conv, ReLU, 3x3 conv with dilation 2, ReLU, 1x1 conv (with ``stride`` 2: upsampled bilinearly back).
    The last conv starts at zero, so a model with a fresh branch gives exactly the outputs of the model without it.
    With ``lower_only`` (a class branch of mode "lower", :data:`..config.BRANCH_MODES`) the output is ``min(y, 0)``
    before the upsampling: the branch can take its classes off pixels, never put them on new ones.
    Receptive field: 7 x 7 cells of its grid (3 on either side; with ``stride`` 2 about 8 mask cells on either side,
    with ``stride`` 4 about 16), inside the tiled decoder's halo (:mod:`.tiling`: 2 stride-32 cells = 32 cells at
    mask stride 2). Also the shape of ``cfg.class_branches``.

    Why: CamVid labels the sky seen through bare tree crowns pixel by pixel; the 1x1 read-out of v6 calls whole
    crowns "not sky" (MODEL_CARD.md, tenth session). A branch of the same shape fitted on v7's frozen features gains
    ~0.04 face skin on held-out CelebAMask training faces (eleventh session), hence ``sky_head_classes``; shared
    with the sky, it moved the sky on other photos (asphalt called sky), so the sky branch refines the sky alone
    (since recipe v8 at stride 4), and skin has a separate branch (``cfg.class_branches``, recipe v9), fitted with
    copy-paste scenes: fitted on CelebAMask close-ups alone it took the astronaut sample's face off skin (twelfth
    and thirteenth sessions).
    """

    def __init__(self, cin: int, hidden: int, stride: int = 1, n_out: int = 1, lower_only: bool = False) -> None:
        super().__init__()
        self.stride = stride
        self.lower_only = lower_only
        self.register_buffer("in_mean", torch.zeros(cin))
        self.register_buffer("in_std", torch.ones(cin))
        self.body = nn.Sequential(nn.Conv2d(cin, hidden, 3, 1, 1), nn.ReLU(),
                                  nn.Conv2d(hidden, hidden, 3, 1, 2, dilation=2), nn.ReLU(),
                                  nn.Conv2d(hidden, n_out, 1))
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)

    @property
    def last(self) -> nn.Conv2d:
        """The last (1x1) conv: its bias ``[j]`` shifts the logit of the j-th refined class by exactly its value."""
        return self.body[4]

    def hidden(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        """The hidden map before the read-out: normalisation, 3x3 conv, ReLU, dilated 3x3 conv, ReLU, of the channel
        groups ``pooled`` (already average-pooled by ``stride``) -> (B, hidden, h', w')."""
        return self.body[1:4](conv_of_concat(self.body[0], pooled, self.in_mean, self.in_std))

    def forward(self, feats: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """``feats``: the (B, cin, h, w) input, or the list of its channel groups (never concatenated here, see
        :func:`conv_of_concat`; average pooling commutes with the per-channel normalisation, so it runs first)."""
        parts = [feats] if torch.is_tensor(feats) else list(feats)
        size = parts[0].shape[-2:]
        if self.stride > 1:
            parts = [F.avg_pool2d(p, self.stride) for p in parts]
        return self.from_pooled(parts, size)

    def from_pooled(self, pooled: torch.Tensor | list[torch.Tensor], size) -> torch.Tensor:
        """:meth:`forward` from its input already average-pooled ``stride`` x ``stride`` (the tensor or its channel
        groups, (B, cin, h // stride, w // stride)), upsampled to ``size`` = (h, w); what a fit on cached pooled
        inputs runs (:mod:`.training.fit_sky_branch`)."""
        y = self.last(self.hidden([pooled] if torch.is_tensor(pooled) else list(pooled)))
        if self.lower_only:
            y = y - F.relu(y)  # min(y, 0): no gradient where y > 0, so such a branch is fitted both ways first
            # (fit_sky_branch --lower-only; fitted with the clamp, one step made y > 0 everywhere: MODEL_CARD.md)
        if self.stride == 1:
            return y
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class ConvDecoder(nn.Module):
    """U-Net-like decoder from the stride-32 projection to the output resolution.

    ``forward(p32, feats, image)`` -> mask features (B, mask_dim, H/s, W/s) float32 and semantic logits
    (B, n_sem, H/s, W/s). With ``mask_stride == 1`` the last stage (:class:`FullResStage`) uses a full-resolution
    skip computed from the input image itself (one 3x3 conv), so edges can follow the photo.
    """

    def __init__(self, cfg: HyperDETRConfig, chans: dict[str, int]) -> None:
        super().__init__()
        d16, d8, d4, d2 = cfg.decoder_dims
        self.mask_stride = cfg.mask_stride
        self.up16 = UpStage(cfg.hidden_dim, chans["s16"], d16)
        self.up8 = UpStage(d16, chans["s8"], d8)
        self.up4 = UpStage(d8, chans["s4"], d4)
        self.up2 = UpStage(d4, chans["s2"], d2)
        if cfg.mask_stride == 1:
            self.up1 = FullResStage(d2, cfg.mask_dim)
        else:
            self.out_proj = nn.Sequential(nn.Conv2d(d2, cfg.mask_dim, 1, bias=False), nn.BatchNorm2d(cfg.mask_dim),
                                          nn.ReLU(), ResidualDWBlock(cfg.mask_dim))
        self.sem_head = nn.Conv2d(cfg.mask_dim, len(cfg.semantic_classes), 1)
        self.sem_branch = None
        if cfg.sem_head_hidden:
            cin = cfg.mask_dim + (d2 if cfg.mask_stride == 2 else 0)
            self.sem_branch = nn.Sequential(nn.Conv2d(cin, cfg.sem_head_hidden, 3, 1, 1), nn.ReLU(),
                                            nn.Conv2d(cfg.sem_head_hidden, len(cfg.semantic_classes), 1))
            nn.init.zeros_(self.sem_branch[2].weight)  # starts as the 1x1 head alone (see HyperDETRConfig)
            nn.init.zeros_(self.sem_branch[2].bias)
        # residual branches: the sky branch (its own attribute, the checkpoints' key) and ``cfg.class_branches``
        feat_c = cfg.mask_dim + (d2 if cfg.mask_stride == 2 else 0)
        specs = cfg.branch_specs
        mods = [SkyBranch(feat_c + len(c), h, st, len(c), lower_only=mode == "lower") for c, h, st, mode in specs]
        self.sky_branch = mods.pop(0) if cfg.sky_head_hidden else None
        self.class_branches = nn.ModuleList(mods)
        #: per residual branch (the sky branch first), the channels of ``sem`` it reads and writes, in its classes'
        #: order
        self.branch_indices = [[list(cfg.semantic_classes).index(k) for k in c] for c, *_ in specs]

    def forward(self, p32: torch.Tensor, feats: dict[str, torch.Tensor], image: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.up16(p32, feats["s16"])
        x = self.up8(x, feats["s8"])
        x = self.up4(x, feats["s4"])
        d2 = self.up2(x, feats["s2"])
        x = self.up1(d2, image) if self.mask_stride == 1 else self.out_proj(d2)
        sem = self.static_logits(d2, x)
        if self.residual_branches:
            sem = self.add_branch_residuals(sem, d2, x)
        return x, sem

    def static_logits(self, d2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The semantic logits before the residual branches (what every branch reads): the 1x1 head of the mask
        features ``x``, plus the ``sem_head_hidden`` branch over the stride-2 features ``d2`` and ``x``."""
        sem = self.sem_head(x)
        if self.sem_branch is not None:
            h = conv_of_concat(self.sem_branch[0], [x] if self.mask_stride == 1 else [d2, x])
            sem = sem + self.sem_branch[2](self.sem_branch[1](h))
        return sem

    def add_branch_residuals(self, sem: torch.Tensor, d2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``sem`` with every residual branch's output added to the logits it refines.

        Every branch reads the logits as they are before any branch (``sem``), so the branches are independent of
        their order; a class refined by two branches (one of each mode, :class:`HyperDETRConfig`) gets the sum of
        their residuals. Branches with one stride run jointly (:func:`joint_branches`: one read-out conv, one
        upsampling), and the logits are written in one concatenation.
        """
        brs, idxs = self.residual_branches, self.branch_indices
        res, order = [], []
        for stride in dict.fromkeys(b.stride for b in brs):  # strides in branch order
            group = [j for j, b in enumerate(brs) if b.stride == stride]
            res.append(joint_branches([brs[j] for j in group],
                                      [self.branch_parts(sem, d2, x, idxs[j]) for j in group]))
            order += [k for j in group for k in idxs[j]]
        return _add_residual(sem, res[0] if len(res) == 1 else torch.cat(res, 1), order)

    @property
    def residual_branches(self) -> list[nn.Module]:
        """The residual branches, the sky branch first (same order as :attr:`branch_indices`)."""
        return ([self.sky_branch] if self.sky_branch is not None else []) + list(self.class_branches)

    def branch_parts(self, sem: torch.Tensor, d2: torch.Tensor, x: torch.Tensor, indices) -> list[torch.Tensor]:
        """The channel groups a residual branch reads, in order: stride-2 features (at mask stride 2), mask
        features, the logit of each class it refines (``sem`` channels ``indices``)."""
        logits = [sem[:, k:k + 1] for k in indices]
        return [x, *logits] if self.mask_stride == 1 else [d2, x, *logits]

    def sky_branch_input(self, sem: torch.Tensor, d2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, h, w): what the sky branch reads, :meth:`branch_parts` concatenated (what its fit caches)."""
        return torch.cat(self.branch_parts(sem, d2, x, self.branch_indices[0]), 1)


def joint_branches(brs: list[SkyBranch], parts: list[list[torch.Tensor]]) -> torch.Tensor:
    """The outputs of residual branches of one stride, computed together: (B, sum of their ``n_out``, h, w) float32,
    each branch's channels in turn, equal to ``torch.cat([b(p) for b, p in zip(brs, parts)], 1)`` up to float
    rounding.

    ``parts``: per branch, its channel groups (:meth:`ConvDecoder.branch_parts`; tensors shared between branches are
    pooled once). Each branch keeps its own normalisation and first two convs; their hidden maps are concatenated
    and read out by one 1x1 conv with a block-diagonal kernel (the other branches' weights are exact zeros), then
    upsampled once. Why: a second branch (a skin branch beside the sky branch) then adds one upsampling and one
    rewrite of the logits fewer; measured on 2 cores, ONNX Runtime: 0.1-0.6 ms of its ~1.2 ms (MODEL_CARD.md,
    thirteenth session).
    """
    stride = brs[0].stride
    if any(b.stride != stride for b in brs):
        raise ValueError("joint_branches needs branches of one stride")
    if len(brs) == 1:
        return brs[0](parts[0])
    size = parts[0][0].shape[-2:]
    pooled: dict[int, torch.Tensor] = {}

    def pool(p: torch.Tensor) -> torch.Tensor:
        if stride == 1:
            return p
        if id(p) not in pooled:
            pooled[id(p)] = F.avg_pool2d(p, stride)
        return pooled[id(p)]

    hidden = [b.hidden([pool(p) for p in ps]) for b, ps in zip(brs, parts)]
    widths = [h.shape[1] for h in hidden]
    rows = []  # the block-diagonal (sum of n_out, sum of hidden, 1, 1) kernel, built from exportable ops
    for j, b in enumerate(brs):
        w = b.last.weight
        before, after = sum(widths[:j]), sum(widths[j + 1:])
        rows.append(torch.cat(([w.new_zeros(w.shape[0], before, 1, 1)] if before else []) + [w]
                              + ([w.new_zeros(w.shape[0], after, 1, 1)] if after else []), 1))
    kernel = torch.cat(rows, 0)
    y = F.conv2d(torch.cat(hidden, 1), kernel, torch.cat([b.last.bias for b in brs]))
    if any(b.lower_only for b in brs):  # min(y, 0) on the lower-only branches' channels, as SkyBranch does
        lower = y.new_tensor([float(b.lower_only) for b in brs for _ in range(b.last.out_channels)])
        y = y - F.relu(y) * lower.view(1, -1, 1, 1)
    return y if stride == 1 else F.interpolate(y, size=size, mode="bilinear", align_corners=False)


def _add_residual(sem: torch.Tensor, r: torch.Tensor, indices) -> torch.Tensor:
    """``sem`` with ``r[:, j]`` added to channel ``indices[j]`` (every ``j`` naming a channel adds to it, in the order
    of ``j``); the other channels are sliced through untouched."""
    by_channel: dict[int, list[int]] = {}
    for j, k in enumerate(indices):
        by_channel.setdefault(k, []).append(j)
    out, start = [], 0
    for k in sorted(by_channel):
        if k > start:
            out.append(sem[:, start:k])  # untouched channels, sliced as one run
        c = sem[:, k:k + 1]
        for j in by_channel[k]:
            c = c + r[:, j:j + 1]
        out.append(c)
        start = k + 1
    if start < sem.shape[1]:
        out.append(sem[:, start:])
    return torch.cat(out, 1)


def branches(model) -> list[tuple[nn.Module, list[str]]]:
    """Every residual branch of ``model`` (the sky branch first) with the classes it refines."""
    names = model.cfg.semantic_classes
    dec = model.decoder
    return [(b, [names[k] for k in idx]) for b, idx in zip(dec.residual_branches, dec.branch_indices)]


def check_rows_free_of_branch(models, classes, action: str) -> None:
    """Raise ValueError if a residual branch of any of ``models`` reads the logit of one of ``classes``: a row
    exchanged or refitted under a fitted branch would change that branch's input (``action``: what the caller does
    to rows)."""
    read = {c for m in models for _, cs in branches(m) for c in cs}
    hit = [c for c in classes if c in read]
    if hit:
        raise ValueError(f"a residual branch (the sky branch, model.sky_head_classes, or model.class_branches) "
                         f"reads the logits of {hit}: {action} those rows before fitting the branch")


class HyperDETR(nn.Module):
    """The full model; see the module docstring for inputs and outputs."""

    def __init__(self, cfg: HyperDETRConfig) -> None:
        super().__init__()
        self.cfg = cfg = HyperDETRConfig.from_dict(cfg.to_dict())  # own copy: pruning updates it
        self.backbone = MobileNetV3Backbone(cfg.width_mult)
        chans = self.backbone.channels
        self.input_proj = nn.Conv2d(chans["s32"], cfg.hidden_dim, 1)
        self.position = PositionEmbeddingSine(cfg.hidden_dim // 2)
        self.transformer = Transformer(cfg.hidden_dim, cfg.nheads, cfg.enc_layers, cfg.active_dec_layers,
                                       cfg.dim_feedforward, cfg.dropout)
        self.query_embed = nn.Embedding(cfg.num_queries, cfg.hidden_dim)
        self.decoder = ConvDecoder(cfg, chans)
        self.head = HyperMaskHead(cfg.hidden_dim, cfg.mask_dim, coord_dim=COORD_DIM if cfg.mask_coords else 0)

    @property
    def num_dec_layers(self) -> int:
        return len(self.transformer.decoder)

    def prune_decoder(self, k: int) -> "HyperDETR":
        """Keep only the first ``k`` decoder layers (in place); outputs of those layers are unchanged."""
        if not 1 <= k <= self.num_dec_layers:
            raise ValueError(f"cannot keep {k} decoder layers of {self.num_dec_layers}")
        self.transformer.decoder = nn.ModuleList(list(self.transformer.decoder)[:k])
        self.cfg.keep_dec_layers = k
        return self

    def forward(self, x: torch.Tensor, scene_only: bool = False) -> dict[str, torch.Tensor | list]:
        feats = self.backbone(x)
        p32 = self.input_proj(feats["s32"])
        bands = getattr(self, "decoder_bands", 1)
        if bands > 1:  # spatially tiled conv decoder (lower peak memory), see .tiling
            mask_features, sem_logits = tiled_decode(self.decoder, p32, feats, x, bands, self.decoder_halo)
        else:
            mask_features, sem_logits = self.decoder(p32, feats, x)
        out: dict[str, torch.Tensor | list] = {"sem_logits": sem_logits}
        if scene_only:
            return out
        pos = self.position(p32)
        hs, _ = self.transformer(p32, pos, self.query_embed.weight)  # (L, B, N, C)
        if self.cfg.aux_loss:
            layers = range(hs.shape[0])
        else:
            layers = range(hs.shape[0] - 1, hs.shape[0])
        preds = [self.head(hs[i], mask_features) for i in layers]
        out["pred_logits"], out["pred_masks"] = preds[-1]
        if self.cfg.aux_loss:
            out["aux_outputs"] = [{"pred_logits": lg, "pred_masks": m} for lg, m in preds[:-1]]
        return out


def build_model(cfg: HyperDETRConfig | None = None) -> HyperDETR:
    """Build a randomly initialised HyperDETR (``cfg.keep_dec_layers`` decides how many decoder layers exist)."""
    return HyperDETR(cfg or HyperDETRConfig())
