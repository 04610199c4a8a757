"""Labelled side-by-side (and contact-sheet) images, for pasting into a chat, an issue or a slide.

:func:`side_by_side` puts display-encoded renders next to each other at a common height, each with its label in a bar
underneath, on a dark neutral background; :func:`contact_sheet` tiles many labelled thumbnails in a grid. Both return
uint8 ``(H, W, 3)`` RGB in the renders' own encoding (sRGB or Display P3: pixels are copied, not converted) so the
caller writes them with the output ICC profile of the renders.

Labels are drawn with Pillow's bundled scalable font (``ImageFont.load_default(size)``, Pillow >= 10.1), so no system
font is needed.

References: Pillow ImageDraw/ImageFont; OpenCV ``INTER_AREA`` for downscaling.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Dark neutral grey background (18 % grey would compete with the photos; this is ~L* 12).
BACKGROUND = (30, 30, 30)
LABEL_COLOUR = (225, 225, 225)


def to_uint8(display: np.ndarray) -> np.ndarray:
    """Float display-encoded RGB in [0, 1] -> uint8 (rounded); uint8 input is passed through."""
    a = np.asarray(display)
    if a.dtype == np.uint8:
        return a
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {a.shape}")
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _resize_to_height(img: np.ndarray, height: int) -> np.ndarray:
    h, w = img.shape[:2]
    if h == height:
        return img
    width = max(1, round(w * height / h))
    interp = cv2.INTER_AREA if height < h else cv2.INTER_LINEAR
    return cv2.resize(img, (width, height), interpolation=interp)


def _fit(img: np.ndarray, box_w: int, box_h: int) -> np.ndarray:
    h, w = img.shape[:2]
    f = min(box_w / w, box_h / h)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 or no FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _draw_label(canvas: Image.Image, text: str, x0: int, y0: int, width: int, bar_h: int, size: int) -> None:
    draw = ImageDraw.Draw(canvas)
    font = _font(size)
    # Shorten long labels with an ellipsis so they stay inside their column.
    t = text
    while t and draw.textlength(t, font=font) > width - 8:
        t = t[:-2] + "…" if len(t) > 2 else ""
    tw = draw.textlength(t, font=font)
    draw.text((x0 + (width - tw) / 2, y0 + bar_h / 2), t, fill=LABEL_COLOUR, font=font, anchor="lm")


def side_by_side(images: Sequence[np.ndarray], labels: Sequence[str], height: int = 720, gap: int = 8,
                 label_size: int | None = None) -> np.ndarray:
    """Renders next to each other at ``height`` pixels (never upscaled beyond the smallest input), labels below.

    Args:
        images: display-encoded RGB, float32 in [0, 1] or uint8, any sizes (each keeps its aspect ratio).
        labels: one per image.
        height: target image height in pixels; reduced to the smallest input height so nothing is upscaled.
        gap: pixels of background between and around images.
        label_size: font size in pixels (default: ~3.5 % of ``height``, at least 14).

    Returns:
        uint8 (H, W, 3) RGB.
    """
    if len(images) == 0:
        raise ValueError("side_by_side: no images given")
    if len(images) != len(labels):
        raise ValueError(f"side_by_side: {len(images)} images but {len(labels)} labels")
    ims = [to_uint8(im) for im in images]
    h = int(min(height, min(im.shape[0] for im in ims)))
    ims = [_resize_to_height(im, h) for im in ims]
    size = label_size or max(14, round(h * 0.035))
    bar = round(size * 1.9)
    total_w = sum(im.shape[1] for im in ims) + gap * (len(ims) + 1)
    total_h = h + bar + gap
    canvas = np.empty((total_h, total_w, 3), np.uint8)
    canvas[...] = BACKGROUND
    x = gap
    spans = []
    for im in ims:
        canvas[gap:gap + h, x:x + im.shape[1]] = im
        spans.append((x, im.shape[1]))
        x += im.shape[1] + gap
    pil = Image.fromarray(canvas)
    for (x0, w), text in zip(spans, labels):
        _draw_label(pil, str(text), x0, gap + h, w, bar, size)
    return np.asarray(pil)


def contact_sheet(images: Sequence[np.ndarray], labels: Sequence[str], columns: int = 4,
                  cell: int | tuple[int, int] = 320, gap: int = 8, label_size: int = 14) -> np.ndarray:
    """Thumbnails fitted in ``cell`` boxes (side, or (width, height)) on a ``columns``-wide grid, each labelled.

    Returns uint8 RGB. Labels should stick to Latin-1 characters (the bundled font has no Greek: write dE, not ΔE).
    """
    if len(images) == 0:
        raise ValueError("contact_sheet: no images given")
    if len(images) != len(labels):
        raise ValueError(f"contact_sheet: {len(images)} images but {len(labels)} labels")
    cell_w, cell_h = (cell, cell) if isinstance(cell, int) else (int(cell[0]), int(cell[1]))
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    bar = round(label_size * 1.9)
    cw, ch = cell_w + gap, cell_h + bar + gap
    canvas = np.empty((rows * ch + gap, columns * cw + gap, 3), np.uint8)
    canvas[...] = BACKGROUND
    boxes = []
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        t = to_uint8(im)
        if t.shape[1] > cell_w or t.shape[0] > cell_h or (t.shape[1] < cell_w and t.shape[0] < cell_h):
            t = _fit(t, cell_w, cell_h)
        x0, y0 = gap + c * cw, gap + r * ch
        ox, oy = (cell_w - t.shape[1]) // 2, (cell_h - t.shape[0]) // 2
        canvas[y0 + oy:y0 + oy + t.shape[0], x0 + ox:x0 + ox + t.shape[1]] = t
        boxes.append((x0, y0 + cell_h))
    pil = Image.fromarray(canvas)
    for (x0, y0), text in zip(boxes, labels):
        _draw_label(pil, str(text), x0, y0, cell_w, bar, label_size)
    return np.asarray(pil)


def write_rgb8(path: str | Path, rgb8: np.ndarray, meta: dict | None = None, quality: int = 92) -> Path:
    """Write a uint8 RGB image as PNG or JPEG (by suffix), via ``campipe.encode.write_image`` when available.

    ``meta`` (the render's frame.meta) lets the encoder embed the right ICC profile; without the encoder module the
    file is written with Pillow (untagged = sRGB by convention).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    fmt = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}.get(suffix)
    if fmt is None:
        raise ValueError(f"{path}: unsupported image type {suffix!r} (use .png, .jpg or .jpeg)")
    try:
        from .encode import write_image  # the lead's encoder (atomic write, ICC); optional at this layer
    except ImportError:
        write_image = None
    path.parent.mkdir(parents=True, exist_ok=True)
    if write_image is not None:
        # already quantised to 8 bit: no dither; quality only matters for JPEG
        write_image(path, rgb8.astype(np.float32) / 255.0, fmt=fmt, quality=quality, meta=meta or {},
                    overwrite=True, dither=0.0)
        return path
    tmp = path.with_name(f".{path.name}.tmp{suffix}")
    img = Image.fromarray(rgb8)
    if fmt == "jpeg":
        img.save(tmp, quality=quality, subsampling=0)
    else:
        img.save(tmp, compress_level=6)
    tmp.replace(path)
    return path
