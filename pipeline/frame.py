"""The one internal image representation that flows through every campipe stage.

A :class:`Frame` is float32 **linear** RGB in campipe's working space (linear Rec.2020 primaries, D65 white; see
:mod:`campipe.colour`), shape ``(H, W, 3)``, scene-referred (1.0 = diffuse white after exposure; values above 1.0 are
legal highlights), plus the soft semantic masks and the metadata gathered at decode.

Conversions happen only at decode (camera/encoded RGB -> working space), at the segmentation input (a downscaled
display-referred copy) and at encode (working space -> output space). Every stage in between reads and writes
``frame.image`` in this representation.

References: fast-openISP (one module per stage, frame passed along), DETR panoptic outputs (mask dictionary).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Names of the semantic (scene) mask channels a segmentation stage may fill.
SEMANTIC_CLASSES = ("sky", "person", "hair", "skin", "teeth", "glasses")


@dataclass
class PersonInstance:
    """One detected person: soft mask float32 (H, W) in [0, 1] at the frame's resolution, and a score in [0, 1]."""

    mask: np.ndarray
    score: float


@dataclass
class Frame:
    """Image + masks + metadata.

    Attributes:
        image: float32 (H, W, 3), linear working-space RGB (Rec.2020 primaries, D65), >= 0, unbounded above.
        masks: name -> float32 (H, W) soft mask in [0, 1], same H, W as ``image``. Keys from :data:`SEMANTIC_CLASSES`.
        persons: person instances sorted by descending score (at most 4 by default).
        meta: decode metadata (camera, exposure, ISO, white balance, source path, EXIF bytes, noise model, ...).
        display: set by the output-transform stage: float32 (H, W, 3) display-encoded RGB in [0, 1] in
            ``meta['output_space']`` ('srgb' or 'display-p3'); ``None`` before that stage.
        timings: stage name -> seconds, filled by the pipeline runner.
    """

    image: np.ndarray
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    persons: list[PersonInstance] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    display: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        img = np.asarray(self.image)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"Frame.image must be (H, W, 3), got {img.shape}")
        if img.dtype != np.float32:
            img = img.astype(np.float32)
        self.image = img

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def copy(self) -> "Frame":
        """Deep copy of arrays (metadata dict shallow-copied)."""
        return Frame(
            image=self.image.copy(),
            masks={k: v.copy() for k, v in self.masks.items()},
            persons=[PersonInstance(p.mask.copy(), p.score) for p in self.persons],
            meta=dict(self.meta),
            display=None if self.display is None else self.display.copy(),
            timings=dict(self.timings),
        )
