"""Run a per-pixel operation over horizontal bands of a large image, on up to two threads.

Per-pixel stages (tone LUT, output transform, quantisation) on a 12 MP float32 frame are limited by memory traffic
and by first-touch page faults of fresh 144 MB temporaries. Working band by band keeps the temporaries small (they
stay in cache and are reused by the allocator) and lets NumPy/OpenCV, which release the GIL, use both cores.

``fn(r0, r1)`` must only read/write rows ``r0:r1`` of its arrays.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Callable

BAND_ROWS = 64


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1)), thread_name_prefix="campipe-band")


def for_each_band(height: int, fn: Callable[[int, int], None], rows: int = BAND_ROWS) -> None:
    """Call ``fn(r0, r1)`` for consecutive bands covering ``range(height)``; small images run inline."""
    bands = [(r, min(r + rows, height)) for r in range(0, height, rows)]
    if len(bands) <= 2 or (os.cpu_count() or 1) < 2:
        for r0, r1 in bands:
            fn(r0, r1)
        return
    for f in [_pool().submit(fn, r0, r1) for r0, r1 in bands]:
        f.result()


def all_finite(image) -> bool:
    """``np.isfinite(image).all()`` band by band (no full-size boolean temporary) for (H, ...) arrays."""
    import numpy as np

    if image.ndim < 2 or image.shape[0] <= 2 * BAND_ROWS:
        return bool(np.isfinite(image).all())
    bad: list[int] = []

    def band(r0: int, r1: int) -> None:
        if not np.isfinite(image[r0:r1]).all():
            bad.append(r0)

    for_each_band(image.shape[0], band)
    return not bad
