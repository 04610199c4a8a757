"""Pre- and post-processing around the network: letterbox to the input size, raw outputs -> soft masks and instances.

Pre-processing (:func:`letterbox`, :func:`normalize`): display-referred sRGB float32 (H, W, 3) in [0, 1] is resized
with aspect ratio kept (INTER_AREA when shrinking) to fit the network's (h, w) and centred on a canvas padded with the
normalisation mean (i.e. 0 after normalisation). Any size and orientation works; portrait photos get side bands.

Post-processing (:func:`decode_outputs`): logits -> probabilities (sigmoid for the static channels and instance
masks, softmax over [person, no-object] times the mask quality for the instance score, as in MaskFormer), crop of the
padding, instance selection (score >= threshold, no empty masks, duplicates suppressed, sorted by score, at most
``max_persons``), a framing-aware person offset (:class:`PersonFraming`: a stricter person threshold when the subject
fills the frame), then :func:`upsample_masks` to the image's resolution
(edge-aware guided filter against the full-resolution guide, or bilinear). :func:`upsample_classes` does it for a
stack of named masks with each class's own guided-filter window (:data:`CLASS_GUIDE`): the default window (radius 2,
eps 1e-3) averages teeth away (the inner mouth is bright teeth *and* dark tongue, which one linear model of the
luminance in a 5 x 5 window cannot keep while leaving out the mid-gray lips), and hair gains from a wider one.

Optional horizontal-flip test-time augmentation (:func:`flip_canvas`, :func:`merge_flip`): the network also runs on
the mirrored canvas and the static channels' logits are averaged with the mirrored-back ones (instances come from the
unflipped canvas alone: query order is not flip-stable). Mirroring the whole canvas, padding included, keeps the
letterbox geometry exact, and at any mask stride that divides the width an output column maps onto the mirrored one.

All masks are float32 in [0, 1]; scores float in [0, 1].

References: DETR ``PostProcessPanoptic`` / ``PostProcessSegm`` (facebookresearch/detr models/segmentation.py);
B. Cheng et al., "Per-Pixel Classification is Not All You Need for Semantic Segmentation" (MaskFormer, NeurIPS 2021)
and Mask2Former's ``instance_inference`` (instance score = class probability x mean mask probability inside the mask);
YOLO-style letterboxing.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .guided_filter import guided_upsample_khw


@dataclass(frozen=True)
class Letterbox:
    """Where the image sits on the network canvas: content (h, w) at offset (top, left) on a canvas (H, W)."""

    canvas_hw: tuple[int, int]
    content_hw: tuple[int, int]
    offset: tuple[int, int]
    source_hw: tuple[int, int]

    def crop(self, arr: np.ndarray, stride: int = 1) -> np.ndarray:
        """Crop a (..., H/stride, W/stride) array to the content region (rounded outwards)."""
        top, left = self.offset[0] / stride, self.offset[1] / stride
        bot = (self.offset[0] + self.content_hw[0]) / stride
        right = (self.offset[1] + self.content_hw[1]) / stride
        t, l_ = int(np.floor(top)), int(np.floor(left))
        b, r = int(np.ceil(bot)), int(np.ceil(right))
        return arr[..., t:max(b, t + 1), l_:max(r, l_ + 1)]


def letterbox(img: np.ndarray, size_hw: tuple[int, int], fill: tuple[float, float, float]
              ) -> tuple[np.ndarray, Letterbox]:
    """Fit float32 (H, W, 3) into ``size_hw`` keeping the aspect ratio; pad with ``fill``. Returns (canvas, info)."""
    H, W = img.shape[:2]
    th, tw = size_hw
    s = min(th / H, tw / W)
    ch, cw = max(1, min(th, round(H * s))), max(1, min(tw, round(W * s)))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(img, dtype=np.float32), (cw, ch), interpolation=interp)
    canvas = np.empty((th, tw, 3), np.float32)
    canvas[:] = np.asarray(fill, np.float32)
    top, left = (th - ch) // 2, (tw - cw) // 2
    canvas[top:top + ch, left:left + cw] = resized
    return canvas, Letterbox((th, tw), (ch, cw), (top, left), (H, W))


def normalize(canvas: np.ndarray, mean, std) -> np.ndarray:
    """(H, W, 3) float32 sRGB in [0, 1] -> (1, 3, H, W) float32 normalised network input."""
    x = (canvas - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    # numerically stable for large |x| (exp overflow warnings otherwise)
    return (0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float32)))).astype(np.float32)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


#: default IoU above which a lower-scoring person instance is dropped as a duplicate of a higher-scoring one
DEFAULT_DEDUP_IOU = 0.8
#: guided-filter upsampling defaults (window radius in network-resolution pixels, regularisation), as campipe runs it
DEFAULT_GUIDE_RADIUS = 2
DEFAULT_GUIDE_EPS = 1e-3
#: classes upsampled with another guided-filter window (radius, eps) than the default; chosen on the training split
#: (``python benchmarks/seg_diagnostics.py upsample --limit 120``: 120 training photos per set, pooled IoU after
#: the colour refinements; adopted where the mean over the sets labelling the class gains >= 0.002): teeth 0.719 ->
#: 0.745 (radius 1, eps 1e-2), hair 0.670 -> 0.674 (CelebAMask / Figaro1k / LFW, radius 6, eps 1e-3). Person (and
#: its instances), skin, glasses and sky keep the default (best alternatives within 0.001 on the training photos).
CLASS_GUIDE: dict[str, tuple[int, float]] = {"teeth": (1, 1e-2), "hair": (6, 1e-3)}
#: mask upsampling modes to the image's resolution: edge-aware (guided filter against the photo) or plain bilinear
REFINE_MODES = ("guided", "bilinear")
#: instances whose binary mask covers less than this fraction of the image are dropped
DEFAULT_MIN_AREA = 5e-4


@dataclass(frozen=True)
class PersonFraming:
    """Framing-aware person threshold: a logit offset subtracted from the person channel and the kept person
    instances when the subject is large in the frame.

    The calibration (:mod:`.training.calibrate`) fits ONE person threshold on the training split, a compromise
    between close-up portraits and full-body people: the shipped v6 weights call a pixel person from probability
    0.241, which Penn-Fudan's thin, partly occluded pedestrians need, while on close-ups the same low threshold paints
    the uncertain backdrop around the head as person. Here the fraction ``a`` of the (cropped) frame whose person
    channel is >= 0.5 measures the framing; the offset ramps linearly from 0 at ``a <= low`` to ``offset`` at
    ``a >= high``: ``p' = sigmoid(logit(p) - offset * clip((a - low) / (high - low), 0, 1))``.

    Chosen on the TRAINING split (``python benchmarks/seg_diagnostics.py framing --limit 120``: 120 CelebAMask, 99
    Penn-Fudan and 120 CamVid training photos, plus 222 half-length crops of those Penn-Fudan people, v6 weights, whose
    person outputs v7's are bit for bit (v7 adds a sky branch only),
    campipe's whole person post-processing; pooled person IoU): with offset 1.5, CelebAMask 0.912 -> 0.923 while
    Penn-Fudan (subjects cover 3-35 % of the frame) and CamVid stay exactly as they were. On the labelled photos any
    ramp between 0.35 and 0.7 scores within 0.0001 (no photo lies between the framings: CelebAMask faces cover
    51-100 %); the half-length crops (2-83 %, median 36 %) lose 0.016 with a ramp at 0.35-0.55 and nothing with
    0.5-0.7, which is why the ramp sits there.
    """

    low: float = 0.5
    high: float = 0.7
    offset: float = 1.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.low < self.high <= 1.0:
            raise ValueError(f"need 0 <= low < high <= 1, got low={self.low}, high={self.high}")

    @staticmethod
    def share(person_prob: np.ndarray) -> float:
        """The framing measure ``a``: fraction of the person channel probability (h, w) that is >= 0.5."""
        return float(np.count_nonzero(person_prob >= 0.5)) / max(int(person_prob.size), 1)

    def __call__(self, person_prob: np.ndarray) -> float:
        """Logit offset (>= 0) for one photo's person channel probability (h, w) in [0, 1]."""
        a = self.share(person_prob)
        return float(self.offset) * min(max((a - self.low) / (self.high - self.low), 0.0), 1.0)


#: campipe's default framing rule (``None`` in :func:`decode_outputs` switches it off)
DEFAULT_PERSON_FRAMING = PersonFraming()


def flip_canvas(x: np.ndarray) -> np.ndarray:
    """Network input (B, 3, H, W) mirrored left-right (a contiguous copy), for :func:`merge_flip`."""
    return np.ascontiguousarray(x[..., ::-1])


def merge_flip(outputs: dict[str, np.ndarray], flipped: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flip test-time augmentation: ``outputs`` of the canvas with ``sem_logits`` replaced by the mean of its
    logits and the mirrored-back ``sem_logits`` of the network run on :func:`flip_canvas` of it (B, K, h, w). The
    instance outputs (``pred_logits``, ``pred_masks``) are the unflipped canvas's. Returns a new dict."""
    a, b = outputs["sem_logits"], flipped["sem_logits"]
    if a.shape != b.shape:
        raise ValueError(f"sem_logits shapes differ: {a.shape} vs {b.shape}")
    out = dict(outputs)
    out["sem_logits"] = ((a + b[..., ::-1]) * np.float32(0.5)).astype(np.float32, copy=False)
    return out


@dataclass
class RawMasks:
    """Masks at network resolution, cropped to the content: static (K, h, w) and instances (M, h, w), in [0, 1]."""

    semantic: np.ndarray
    classes: tuple[str, ...]
    instances: np.ndarray
    scores: np.ndarray


def suppress_duplicates(mask_logits: np.ndarray, order: list[int], iou_threshold: float = 0.8) -> list[int]:
    """Mask non-maximum suppression: walk ``order`` (indices by descending score) and drop an instance whose binary
    mask (logit > 0) overlaps an already kept one with IoU > ``iou_threshold`` (several queries answering for the
    same person). mask_logits: (N, h, w)."""
    kept: list[int] = []
    bins = {}
    for i in order:
        b = mask_logits[i] > 0
        area = int(b.sum())
        dup = False
        for j in kept:
            inter = int(np.logical_and(b, bins[j]).sum())
            union = area + int(bins[j].sum()) - inter
            if union > 0 and inter / union > iou_threshold:
                dup = True
                break
        if not dup:
            kept.append(i)
            bins[i] = b
    return kept


def mask_quality(mask_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per instance: (mean probability inside its binary mask, fraction of pixels in the binary mask).

    ``mask_logits`` (N, h, w) -> two float32 (N,) arrays. The mean probability is MaskFormer's "mask score" (0 for an
    empty mask): a confident, crisp mask scores near 1, a faint or speckled one near 0.5.
    """
    n = mask_logits.shape[0]
    flat = mask_logits.reshape(n, -1)
    b = flat > 0
    area = b.sum(1)
    prob_in = np.where(b, sigmoid(flat), 0.0).sum(1)
    quality = np.where(area > 0, prob_in / np.maximum(area, 1), 0.0).astype(np.float32)
    return quality, (area / max(flat.shape[1], 1)).astype(np.float32)


def decode_outputs(outputs: dict[str, np.ndarray], box: Letterbox, classes, *, mask_stride: int = 1,
                   score_threshold: float = 0.5, max_persons: int = 4,
                   dedup_iou: float | None = DEFAULT_DEDUP_IOU, mask_score: bool = True,
                   min_area: float = DEFAULT_MIN_AREA,
                   person_framing: PersonFraming | None = DEFAULT_PERSON_FRAMING) -> RawMasks:
    """Network outputs of ONE image (batch index 0) -> cropped probabilities and selected instances.

    Instance score: the query's person probability (softmax over [person, no-object]), times its mask quality
    (:func:`mask_quality`, MaskFormer's instance score) when ``mask_score``; instances scoring below
    ``score_threshold`` or whose binary mask covers less than ``min_area`` of the image are dropped (an empty mask is
    never reported as a person).

    ``dedup_iou``: drop an instance whose mask overlaps a higher-scoring one by more than this IoU
    (:func:`suppress_duplicates`; the pruned 2-layer model can answer the same person with several queries);
    ``None`` keeps every query above ``score_threshold``.

    ``person_framing``: the framing-aware person offset (:class:`PersonFraming`) applied to the ``person`` channel
    and the kept instances (after their selection); ``None``: the probabilities as the network gives them.

    outputs: ``sem_logits`` (1, K, h, w); optionally ``pred_logits`` (1, N, 2) and ``pred_masks`` (1, N, h, w).
    """
    sem = box.crop(sigmoid(outputs["sem_logits"][0]), mask_stride)
    if "pred_logits" in outputs and max_persons > 0:
        scores = softmax(outputs["pred_logits"][0], -1)[:, 0]
        if mask_score or min_area > 0:
            quality, area = mask_quality(box.crop(outputs["pred_masks"][0], mask_stride))
            if mask_score:
                scores = scores * quality
            if min_area > 0:
                scores = np.where(area >= min_area, scores, 0.0)
        order = np.argsort(-scores, kind="stable")
        cands = [int(i) for i in order if scores[i] >= score_threshold and scores[i] > 0]
        if dedup_iou is not None:
            cands = suppress_duplicates(outputs["pred_masks"][0], cands, dedup_iou)
        keep = cands[:max_persons]
        inst = box.crop(sigmoid(outputs["pred_masks"][0][keep]), mask_stride) if keep else \
            np.zeros((0,) + sem.shape[1:], np.float32)
        sc = scores[keep].astype(np.float32)
    else:
        keep, inst, sc = [], np.zeros((0,) + sem.shape[1:], np.float32), np.zeros(0, np.float32)
    if person_framing is not None and "person" in classes:
        pi = list(classes).index("person")
        d = person_framing(sem[pi])
        if d > 0:
            sem[pi] = box.crop(sigmoid(outputs["sem_logits"][0][pi:pi + 1] - np.float32(d)), mask_stride)[0]
            if keep:
                inst = box.crop(sigmoid(outputs["pred_masks"][0][keep] - np.float32(d)), mask_stride)
    return RawMasks(sem.astype(np.float32), tuple(classes), inst.astype(np.float32), sc)


def guide_params(name: str, radius: int | None = None, eps: float | None = None) -> tuple[int, float]:
    """Guided-filter (radius, eps) for class ``name``: explicit values win, else :data:`CLASS_GUIDE`, else the
    defaults (person instances are upsampled as "person")."""
    r, e = CLASS_GUIDE.get(name, (DEFAULT_GUIDE_RADIUS, DEFAULT_GUIDE_EPS))
    return (int(r if radius is None else radius), float(e if eps is None else eps))


def upsample_classes(stack_khw: np.ndarray, names, out_hw: tuple[int, int], guide: np.ndarray | None = None,
                     radius: int | None = None, eps: float | None = None) -> list[np.ndarray]:
    """Like :func:`upsample_masks` for a stack of masks named ``names`` (one class name per plane), each upsampled
    with its class's window (:func:`guide_params`; ``radius``/``eps`` given apply to every plane). Returns a list of
    K float32 (H, W) planes in [0, 1] (views of one (K, H, W) array), in the stack's order; bilinear for every plane
    when ``guide`` is None."""
    names = list(names)
    if len(names) != stack_khw.shape[0]:
        raise ValueError(f"{len(names)} names for {stack_khw.shape[0]} masks")
    if not names:
        return []
    wins = [guide_params(n, radius, eps) for n in names]
    return list(upsample_masks(stack_khw, out_hw, guide, [r for r, _ in wins], [e for _, e in wins]))


def upsample_masks(stack_khw: np.ndarray, out_hw: tuple[int, int], guide: np.ndarray | None = None,
                   radius=DEFAULT_GUIDE_RADIUS, eps=DEFAULT_GUIDE_EPS) -> np.ndarray:
    """(K, h, w) masks -> (K, H, W) float32 in [0, 1]; guided by ``guide`` (H, W) if given, else bilinear.
    ``radius`` / ``eps``: one guided-filter window, or one per plane (sequences of K)."""
    k = stack_khw.shape[0]
    H, W = out_hw
    if k == 0:
        return np.zeros((0, H, W), np.float32)
    if guide is not None:
        if guide.shape != (H, W):
            raise ValueError(f"guide has shape {guide.shape}, expected {(H, W)}")
        return guided_upsample_khw(stack_khw, guide, radius, eps)
    hwk = np.ascontiguousarray(stack_khw.transpose(1, 2, 0))
    chunks = [cv2.resize(hwk[..., i:i + 4], (W, H), interpolation=cv2.INTER_LINEAR).reshape(H, W, -1)
              for i in range(0, k, 4)]
    up = np.clip(np.concatenate(chunks, axis=2), 0.0, 1.0).reshape(H, W, k)
    return np.ascontiguousarray(up.transpose(2, 0, 1), dtype=np.float32)
