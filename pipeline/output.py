"""Output transform and quantisation.

* ``output`` stage: display-linear working RGB (Rec.2020 primaries) -> output primaries (sRGB or Display P3, both
  D65, so no chromatic adaptation) -> clip to gamut -> sRGB transfer function (both spaces use it), into
  ``frame.display`` (float32 (H, W, 3) in [0, 1]). The transfer function goes through a 2^20-entry LUT
  (max error < 1 code at 16 bits).
* ``dither`` stage: records the dither amount; :func:`quantize` applies triangular-PDF noise of ``amount`` LSB
  before rounding to 8 bits (against banding in smooth gradients such as skies). 16-bit outputs are not dithered.

References: IEC 61966-2-1 (sRGB), SMPTE EG 432-1 (Display P3), Lipshitz, Wannamaker & Vanderkooy,
"Quantization and Dither: A Theoretical Survey" (1992) for TPDF dither.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from . import colour as cc
from .bands import for_each_band
from .frame import Frame
from .registry import register_stage


def output_transform(image: np.ndarray, space: str = "srgb", out: np.ndarray | None = None) -> np.ndarray:
    """Pure function: float32 display-linear working RGB (H, W, 3) -> float32 encoded RGB in [0, 1] in ``space``.

    ``out`` (optional, float32 (H, W, 3), may be ``image`` itself) receives the result instead of a new array.
    Full-size images go in 64-row bands on two threads: the matrix is applied straight into ``out`` and the transfer
    function is encoded there in place, with one small per-band scratch (no full-size temporaries).
    """
    if space not in cc.OUTPUT_SPACES:
        raise ValueError(f"output.space must be one of {', '.join(cc.OUTPUT_SPACES)}, got {space!r}")
    image = np.ascontiguousarray(image, dtype=np.float32)
    m = cc.working_to_output(space)
    if image.ndim != 3:
        res = cc.srgb_encode(cc.apply_matrix(image, m))
        if out is not None:
            out[...] = res
            return out
        return res
    import cv2

    if out is None:
        out = np.empty_like(image)
    elif out.shape != image.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("output_transform: out must be a C-contiguous float32 array of the image's shape")
    m32 = np.asarray(m, np.float32)

    def band(r0: int, r1: int) -> None:
        dst = out[r0:r1]
        cv2.transform(image[r0:r1], m32, dst=dst)  # per pixel: safe when out is image
        cc.srgb_encode_fast(dst, out=dst, scratch=np.empty_like(dst))

    for_each_band(image.shape[0], band)  # bands on two threads: small temporaries, both cores
    return out


@register_stage("output", requires=("linear",), provides=("display",), params={"space": "srgb"})
def output_stage(frame: Frame, space: str) -> Frame:
    """Working space -> display-encoded sRGB / Display P3 in frame.display."""
    if frame.meta.pop("_output_in_place", False):
        # the caller only wants the rendered image (campipe.api.process(keep_linear=False)): encode in the linear
        # buffer itself instead of a second full-size one; frame.image is then the display image
        frame.display = output_transform(frame.image, space, out=frame.image)
        frame.image = frame.display
        frame.meta["linear_released"] = True
    else:
        frame.display = output_transform(frame.image, space)
    frame.meta["output_space"] = space
    return frame


@lru_cache(maxsize=4)
def _tpdf_tile(size: int = 256, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((size, size, 3), dtype=np.float32) - rng.random((size, size, 3), dtype=np.float32))


def quantize(display: np.ndarray, bits: int = 8, dither: float = 0.0, bgr: bool = False) -> np.ndarray:
    """float32 [0, 1] (H, W, 3) -> uint8 (bits=8) or uint16 (bits=16), with ``dither`` LSB of TPDF noise at 8 bits.

    The noise is a fixed seeded 256x256 tile (deterministic output; no per-render RNG cost). ``bgr=True`` (8 bits)
    writes the channels in OpenCV's B, G, R order (for cv2 encoders; the same values as ``[..., ::-1]``)."""
    if bits not in (8, 16):
        raise ValueError("bits must be 8 or 16")
    import cv2

    display = np.ascontiguousarray(display, dtype=np.float32)
    if bits == 8:
        h, w = display.shape[:2]
        out = np.empty(display.shape, np.uint8)
        tile = _tpdf_tile() if dither > 0 else None
        t = 256

        def band(r0: int, r1: int) -> None:
            x = display[r0:r1]
            if tile is None:
                q = cv2.convertScaleAbs(np.maximum(x, 0), alpha=255.0)
                out[r0:r1] = q if not bgr else cv2.cvtColor(q, cv2.COLOR_RGB2BGR)
                return
            # rows r0:r1 of the tiled TPDF pattern (bands are 64 rows, the tile 256: one slice, no wrap)
            tr0 = r0 % t
            noise_rows = tile[tr0:tr0 + (r1 - r0)] if tr0 + (r1 - r0) <= t else np.concatenate(
                [tile[tr0:], tile[:(r1 - r0) - (t - tr0)]])
            noise = np.tile(noise_rows, (1, -(-w // t), 1))[:, :w]
            # x*255 + dither*noise, rounded and saturated to [0, 255] in the same pass
            if bgr:
                q = cv2.addWeighted(x, 255.0, noise, float(dither), 0.0, dtype=cv2.CV_8U)
                cv2.cvtColor(q, cv2.COLOR_RGB2BGR, dst=out[r0:r1])
            else:
                cv2.addWeighted(x, 255.0, noise, float(dither), 0.0, dst=out[r0:r1], dtype=cv2.CV_8U)

        for_each_band(h, band)
        return out
    x = display * np.float32(65535.0)
    x += np.float32(0.5)
    np.clip(x, 0, 65535.0, out=x)
    return x.astype(np.uint16)


@register_stage("dither", requires=("display",), params={"amount": 1.0})
def dither_stage(frame: Frame, amount: float) -> Frame:
    """8-bit TPDF dither amount (LSB) applied when the output is quantised to 8 bits."""
    if amount < 0:
        raise ValueError("dither.amount must be >= 0")
    frame.meta["dither"] = amount
    return frame
