"""Build ICC v4 display profiles (matrix/TRC) for campipe's output spaces: sRGB and Display P3.

Both are RGB -> PCS-XYZ (D50) profiles with the sRGB piecewise transfer function (parametric curve type 3),
colorants Bradford-adapted from D65 to D50 and a ``chad`` tag, as ICC.1:2010 (v4.3) specifies. The matrices come
from colour-science (via campipe._matrices); no profile file is shipped or downloaded.

References: ICC.1:2010-12 (profile format), IEC 61966-2-1, SMPTE EG 432-1, Apple's Display P3 profile (same
construction).
"""
from __future__ import annotations

import struct
from functools import lru_cache

import numpy as np

from . import colour as cc

_D50 = np.array([0.9642, 1.0, 0.8249])
_D65 = np.array([0.95047, 1.0, 1.08883])
_NAMES = {"srgb": "sRGB IEC61966-2.1 (campipe)", "display-p3": "Display P3 (campipe)"}


def _s15f16(v: float) -> bytes:
    return struct.pack(">i", int(round(v * 65536.0)))


def _xyz_tag(xyz) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15f16(x) for x in xyz)


def _mluc(text: str) -> bytes:
    s = text.encode("utf-16-be")
    return b"mluc\0\0\0\0" + struct.pack(">II", 1, 12) + b"enUS" + struct.pack(">II", len(s), 28) + s


def _para_srgb() -> bytes:
    g, a, b, c, d = 2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045
    return b"para\0\0\0\0" + struct.pack(">HH", 3, 0) + b"".join(_s15f16(x) for x in (g, a, b, c, d))


def _sf32(m: np.ndarray) -> bytes:
    return b"sf32\0\0\0\0" + b"".join(_s15f16(x) for x in m.ravel())


@lru_cache(maxsize=None)
def icc_profile(space: str = "srgb") -> bytes:
    """ICC v4.3 profile bytes for 'srgb' or 'display-p3'."""
    from . import _matrices as M

    to_xyz = cc.rgb_to_xyz(space)
    chad = np.asarray(M.BRADFORD_D65_TO_D50, dtype=np.float64)
    m50 = chad @ to_xyz
    trc = _para_srgb()
    tags = [
        (b"desc", _mluc(_NAMES[space])),
        (b"cprt", _mluc("No copyright, use freely")),
        (b"wtpt", _xyz_tag(_D50)),
        (b"chad", _sf32(chad)),
        (b"rXYZ", _xyz_tag(m50[:, 0])),
        (b"gXYZ", _xyz_tag(m50[:, 1])),
        (b"bXYZ", _xyz_tag(m50[:, 2])),
        (b"rTRC", trc),
        (b"gTRC", trc),
        (b"bTRC", trc),
    ]
    table, data = [], b""
    offset = 128 + 4 + 12 * len(tags)
    shared: dict[bytes, int] = {}
    for sig, body in tags:
        if body in shared:  # TRCs share one element, as in common profiles
            table.append((sig, shared[body], len(body)))
            continue
        while (offset + len(data)) % 4:
            data += b"\0"
        pos = offset + len(data)
        shared[body] = pos
        table.append((sig, pos, len(body)))
        data += body
    while len(data) % 4:
        data += b"\0"
    tag_table = struct.pack(">I", len(tags)) + b"".join(struct.pack(">4sII", s, o, n) for s, o, n in table)
    size = 128 + len(tag_table) + len(data)
    header = (struct.pack(">I", size) + b"\0\0\0\0" + bytes([4, 0x30, 0, 0]) + b"mntrRGB XYZ "
              + struct.pack(">6H", 2026, 1, 1, 0, 0, 0) + b"acsp" + b"\0\0\0\0" + b"\0" * 4 + b"\0" * 8
              + b"\0" * 8 + struct.pack(">I", 0) + b"".join(_s15f16(x) for x in _D50) + b"\0\0\0\0"
              + b"\0" * 16 + b"\0" * 28)
    assert len(header) == 128, len(header)
    return header + tag_table + data
