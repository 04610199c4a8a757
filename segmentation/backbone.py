"""MobileNetV3-Large backbone (width multiplier configurable, default 1.5) returning multi-scale features.

Layer layout follows torchvision's ``mobilenet_v3_large(...).features`` (``features.0`` stem, ``features.1..15``
inverted-residual blocks, ``features.16`` the final 1x1 conv; block internals ``block.0`` expand / ``block.1``
depthwise / ``block.2`` squeeze-excitation / last = project), so torchvision-style state-dict keys map 1:1 for
width 1.0.
The classifier is dropped. Channels are rounded with torchvision's ``_make_divisible(c * width_mult, 8)``.

Outputs (``forward`` returns a dict, every tensor float32):
    ``"s2"``  (B, C2, H/2,  W/2)  after features.1   (C2 = 24 at width 1.5)
    ``"s4"``  (B, C4, H/4,  W/4)  after features.3   (40)
    ``"s8"``  (B, C8, H/8,  W/8)  after features.6   (64)
    ``"s16"`` (B, C16, H/16, W/16) after features.12 (168)
    ``"s32"`` (B, C32, H/32, W/32) after features.16 (1440)
Channel counts are available in ``Backbone.channels``.

References: Howard et al., "Searching for MobileNetV3" (ICCV 2019); torchvision/models/mobilenetv3.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` without going below 90% of ``v`` (torchvision rule)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + optional activation; indices 0/1/2 as torchvision's Conv2dNormActivation."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.ReLU) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(cout, eps=0.001, momentum=0.01)]
        if act is not None:
            layers.append(act(inplace=True) if act in (nn.ReLU, nn.Hardswish) else act())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """SE block with ReLU and hard-sigmoid gating (torchvision's SElayer for MobileNetV3)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = self.fc2(F.relu(self.fc1(s)))
        return x * F.hardsigmoid(s)


@dataclass(frozen=True)
class BlockSpec:
    cin: int
    kernel: int
    expanded: int
    cout: int
    use_se: bool
    act: str  # "RE" (ReLU) or "HS" (hard-swish)
    stride: int


class InvertedResidual(nn.Module):
    """MobileNetV3 bneck: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project (+ residual if shapes match)."""

    def __init__(self, s: BlockSpec) -> None:
        super().__init__()
        act = nn.Hardswish if s.act == "HS" else nn.ReLU
        layers: list[nn.Module] = []
        if s.expanded != s.cin:
            layers.append(ConvBNAct(s.cin, s.expanded, 1, act=act))
        layers.append(ConvBNAct(s.expanded, s.expanded, s.kernel, s.stride, groups=s.expanded, act=act))
        if s.use_se:
            layers.append(SqueezeExcitation(s.expanded, make_divisible(s.expanded // 4, 8)))
        layers.append(ConvBNAct(s.expanded, s.cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_res = s.stride == 1 and s.cin == s.cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_res else y


#: torchvision's MobileNetV3-Large bneck table at width 1.0:
#: (in, kernel, expanded, out, SE, activation, stride)
_LARGE = (
    (16, 3, 16, 16, False, "RE", 1),
    (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2),
    (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1),
    (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2),
    (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1),
)

#: feature index (in ``features``) after which each scale is tapped
_TAPS = {"s2": 1, "s4": 3, "s8": 6, "s16": 12, "s32": 16}


class MobileNetV3Backbone(nn.Module):
    """MobileNetV3-Large feature extractor; see module docstring for the output dict."""

    def __init__(self, width_mult: float = 1.5) -> None:
        super().__init__()
        md = lambda c: make_divisible(c * width_mult, 8)  # noqa: E731
        specs = [BlockSpec(md(i), k, md(e), md(o), se, a, s) for i, k, e, o, se, a, s in _LARGE]
        stem = md(16)
        layers: list[nn.Module] = [ConvBNAct(3, stem, 3, 2, act=nn.Hardswish)]
        layers += [InvertedResidual(s) for s in specs]
        last_in = specs[-1].cout
        layers.append(ConvBNAct(last_in, 6 * last_in, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        out_ch = {i: (stem if i == 0 else specs[i - 1].cout if i <= len(specs) else 6 * last_in)
                  for i in range(len(layers))}
        self.channels = {name: out_ch[idx] for name, idx in _TAPS.items()}
        self._tap_at = {idx: name for name, idx in _TAPS.items()}
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            name = self._tap_at.get(i)
            if name is not None:
                out[name] = x
        return out
