"""HyperDETR configuration: one dataclass shared by the model, the checkpoint format, training and inference.

The config is stored verbatim in every checkpoint (``to_dict``), so a checkpoint can rebuild its model with nothing
else. ``keep_dec_layers`` is a *load-time* option: it prunes the transformer decoder to its first ``k`` layers
(trained with per-layer supervision, every layer is a valid predictor), so 6 -> 2 needs no retraining.

References: DETR (Carion et al. 2020, facebookresearch/detr ``main.py`` arguments), MobileNetV3 (Howard et al. 2019).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

#: Static (scene) channels predicted by the convolutional decoder, in output order.
DEFAULT_SEMANTIC_CLASSES = ("sky", "person", "hair", "skin", "teeth", "glasses")



#: how a class branch (``HyperDETRConfig.class_branches``) moves its classes' logits: both ways, or only lower them
BRANCH_MODES = ("both", "lower")


def _branch_entry(e) -> tuple:
    """One ``class_branches`` entry, normalised: ``(classes, hidden, stride)``, or with ``"lower"`` as a fourth item
    (the default mode "both" is not stored, so configs written before modes existed read back unchanged)."""
    e = tuple(e)
    if len(e) not in (3, 4):
        raise ValueError(f"class_branches entry {e}: expected (classes, hidden, stride[, mode])")
    mode = str(e[3]) if len(e) == 4 else "both"
    if mode not in BRANCH_MODES:
        raise ValueError(f"class_branches entry {e}: mode must be one of {BRANCH_MODES}, got {mode!r}")
    head = (tuple(e[0]), int(e[1]), int(e[2]))
    return head if mode == "both" else (*head, mode)


def branch_mode(e) -> str:
    """The mode (:data:`BRANCH_MODES`) of one normalised ``class_branches`` entry: its fourth item, else "both"."""
    return e[3] if len(e) == 4 else "both"


@dataclass
class HyperDETRConfig:
    """Architecture hyper-parameters of :class:`campipe.segmentation.model.HyperDETR`.

    Attributes:
        width_mult: MobileNetV3-Large width multiplier (channels rounded to multiples of 8, as torchvision).
        num_queries: N learned object queries (person instances).
        hidden_dim: transformer width (also the channel count of the projected stride-32 feature map).
        nheads: attention heads (``hidden_dim`` must be divisible by it).
        dim_feedforward: transformer FFN width.
        enc_layers: transformer encoder layers over the stride-32 tokens.
        dec_layers: transformer decoder layers (every layer can produce outputs).
        keep_dec_layers: if set, only the first k decoder layers are built/used (pruning at load time).
        mask_dim: channels of the mask-feature map (= weights of each query's dynamic 1x1 conv).
        input_size: (H, W) network input; both divisible by 32.
        mask_stride: 1 or 2; masks are produced at ``input_size / mask_stride``.
        semantic_classes: names of the static channels (``sem_logits`` order).
        aux_loss: return per-layer outputs of the earlier kept decoder layers in ``aux_outputs``.
        dropout: transformer dropout (training only).
        decoder_dims: channels of the U-Net decoder stages at strides 16, 8, 4, 2 (stride 1 uses ``mask_dim``).
        mask_coords: append 5 fixed coordinate channels (x, y, x^2, y^2, xy over the canvas, in [-1, 1]) to the
            mask features the dynamic 1x1 convs read, so a query can place its person (CondInst's relative
            coordinates, in their simplest form); each query then has ``mask_dim + 5`` weights + 1 bias. Off in the
            shipped weights.
        sem_head_hidden: 0 = the static logits are one 1x1 conv of the mask features; > 0 adds a residual branch
            (3x3 conv of the decoder's stride-2 features and the mask features to ``sem_head_hidden`` channels, ReLU,
            1x1 conv to the classes) whose last conv starts at zero, so weights of a 1x1-head model load into it
            with identical outputs and training starts from them.
        sky_head_hidden: 0 = no sky branch; > 0 adds :class:`..model.SkyBranch`: a residual refinement of the sky
            logit alone from the decoder's stride-2 features, the mask features and the sky logit itself (fixed input
            normalisation, 3x3 conv, ReLU, dilated 3x3 conv, ReLU, 1x1 conv to one channel, the last conv starting at
            zero), so every other output is exactly the model's without it. Needs ``"sky"`` among
            ``semantic_classes``. Fitted on a frozen model by :mod:`.training.fit_sky_branch`.
        sky_head_stride: 1 = the sky branch runs at the mask resolution; 2 (4) = on its inputs average-pooled 2 x 2
            (4 x 4), its output upsampled bilinearly (a quarter (a sixteenth) of the cost).
        sky_head_classes: the classes the sky branch refines, ``"sky"`` first (default: the sky alone). With more,
            the branch also reads each one's logit and writes a residual to each (one output channel per class; the
            cost hardly changes); every class not listed stays exactly the model's without the branch.
        class_branches: further residual branches of the same shape, each ``(classes, hidden, stride)`` with stride
            1, 2 or 4 (e.g. ``((("skin",), 32, 4),)``), each reading the same features and its own classes' logits
            and writing to those only. Fitted on a frozen model by ``fit_sky_branch --extra``. Why a separate branch:
            sharing the sky branch moved the sky (MODEL_CARD.md, eleventh session). An entry may name a fourth item,
            its mode (:data:`BRANCH_MODES`): ``"lower"`` makes the branch's residual ``min(r, 0)``, so it can only
            lower its classes' logits (take a class off pixels, never put it on new ones); ``"both"`` (the default,
            stored as a 3-item entry) adds ``r`` as it is. A class is refined by at most one branch of each mode
            (the sky branch is of mode "both"): with two, both read the logit before any branch and their residuals
            add up (a lower-only branch beside a class's fitted branch takes off what that one leaves wrongly on).
    """

    width_mult: float = 1.5
    num_queries: int = 4
    hidden_dim: int = 128
    nheads: int = 4
    dim_feedforward: int = 512
    enc_layers: int = 3
    dec_layers: int = 6
    keep_dec_layers: int | None = None
    mask_dim: int = 16
    input_size: tuple[int, int] = (384, 512)
    mask_stride: int = 1
    semantic_classes: tuple[str, ...] = DEFAULT_SEMANTIC_CLASSES
    aux_loss: bool = False
    dropout: float = 0.0
    decoder_dims: tuple[int, int, int, int] = (96, 64, 48, 32)
    mask_coords: bool = False
    sem_head_hidden: int = 0
    sky_head_hidden: int = 0
    sky_head_stride: int = 1
    sky_head_classes: tuple[str, ...] = ("sky",)
    class_branches: tuple = ()

    def __post_init__(self) -> None:
        self.input_size = tuple(int(v) for v in self.input_size)  # type: ignore[assignment]
        self.semantic_classes = tuple(self.semantic_classes)
        self.decoder_dims = tuple(int(v) for v in self.decoder_dims)  # type: ignore[assignment]
        if len(self.input_size) != 2 or any(v <= 0 or v % 32 for v in self.input_size):
            raise ValueError(f"input_size must be (H, W) with both divisible by 32, got {self.input_size}")
        if self.mask_stride not in (1, 2):
            raise ValueError(f"mask_stride must be 1 or 2, got {self.mask_stride}")
        if self.hidden_dim % self.nheads:
            raise ValueError(f"hidden_dim={self.hidden_dim} is not divisible by nheads={self.nheads}")
        if self.num_queries < 1 or self.dec_layers < 1:
            raise ValueError("num_queries and dec_layers must be >= 1")
        if self.keep_dec_layers is not None and not 1 <= self.keep_dec_layers <= self.dec_layers:
            raise ValueError(f"keep_dec_layers must be in 1..{self.dec_layers}, got {self.keep_dec_layers}")
        if self.sem_head_hidden < 0:
            raise ValueError(f"sem_head_hidden must be >= 0, got {self.sem_head_hidden}")
        if self.sky_head_hidden < 0:
            raise ValueError(f"sky_head_hidden must be >= 0, got {self.sky_head_hidden}")
        if self.sky_head_stride not in (1, 2, 4):
            raise ValueError(f"sky_head_stride must be 1, 2 or 4, got {self.sky_head_stride}")
        self.sky_head_classes = tuple(self.sky_head_classes)
        if self.sky_head_hidden and "sky" not in self.semantic_classes:
            raise ValueError(f"sky_head_hidden needs a 'sky' class, got {self.semantic_classes}")
        bad = [c for c in self.sky_head_classes if c not in self.semantic_classes]
        if self.sky_head_hidden and (not self.sky_head_classes or self.sky_head_classes[0] != "sky" or bad
                                     or len(set(self.sky_head_classes)) != len(self.sky_head_classes)):
            raise ValueError(f"sky_head_classes must start with 'sky' and list distinct semantic classes, got "
                             f"{self.sky_head_classes}")
        self.class_branches = tuple(_branch_entry(e) for e in self.class_branches)
        seen = {"both": list(self.sky_head_classes) if self.sky_head_hidden else [], "lower": []}
        for c, h, st, *mode in self.class_branches:
            taken = seen[mode[0] if mode else "both"]
            if not c or any(k not in self.semantic_classes or k in taken for k in c) or len(set(c)) != len(c) \
                    or h <= 0 or st not in (1, 2, 4):
                raise ValueError(f"class_branches entry {(c, h, st, *mode)}: classes must be distinct semantic "
                                 f"classes not refined by another branch of the same mode, hidden > 0, stride 1, 2 "
                                 f"or 4")
            taken += list(c)
        if len(self.decoder_dims) != 4:
            raise ValueError("decoder_dims needs 4 values (strides 16, 8, 4, 2)")

    @property
    def branch_specs(self) -> list[tuple[tuple[str, ...], int, int, str]]:
        """Every residual branch as ``(classes, hidden, stride, mode)``, the sky branch first (mode "both")."""
        sky = ([(tuple(self.sky_head_classes), self.sky_head_hidden, self.sky_head_stride, "both")]
               if self.sky_head_hidden else [])
        return sky + [(e[0], e[1], e[2], branch_mode(e)) for e in self.class_branches]

    @property
    def active_dec_layers(self) -> int:
        """Number of decoder layers actually built and run."""
        return self.keep_dec_layers if self.keep_dec_layers is not None else self.dec_layers

    @property
    def output_size(self) -> tuple[int, int]:
        """(H, W) of ``sem_logits`` / ``pred_masks``."""
        return self.input_size[0] // self.mask_stride, self.input_size[1] // self.mask_stride

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["semantic_classes"] = list(self.semantic_classes)
        d["decoder_dims"] = list(self.decoder_dims)
        d["sky_head_classes"] = list(self.sky_head_classes)
        d["class_branches"] = [[list(e[0]), *e[1:]] for e in self.class_branches]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HyperDETRConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown HyperDETRConfig keys: {', '.join(unknown)}")
        return cls(**d)
