"""Edge-aware mask upsampling with the (fast) guided filter, box filters via ``cv2.boxFilter`` (O(N), vectorised).

``guided_upsample(masks_lo, guide_hi, radius, eps)``: the linear coefficients ``a, b`` of the guided filter
(q = a * I + b within each window) are solved at the mask's low resolution against a downscaled guide, averaged,
upsampled bilinearly to the guide's resolution and applied to the full-resolution guide. Output edges therefore
follow the photo (hair strands, glasses rims), not the network's 384x512 grid. This is He & Sun's "fast guided
filter"; with equal resolutions it is exactly the guided filter of He et al.

Inputs/outputs:
    masks_lo: float32 (h, w) or (h, w, K) soft masks in [0, 1]
    guide_hi: float32 (H, W) guide, display-referred luminance (e.g. sRGB-encoded gray) in [0, 1]
    returns float32 (H, W) or (H, W, K) in [0, 1]

References: He, Sun, Tang, "Guided Image Filtering" (ECCV 2010 / TPAMI 2013); He & Sun, "Fast Guided Filter"
(arXiv:1505.00996, 2015).
"""
from __future__ import annotations

import cv2
import numpy as np

_MAX_CV_CHANNELS = 4  # cv2.resize / boxFilter are safest with <= 4 channels per call


def _box(x: np.ndarray, r: int) -> np.ndarray:
    """Normalised box mean with a (2r+1)^2 window, reflected borders; works per channel."""
    k = 2 * r + 1
    if x.ndim == 3 and x.shape[2] > _MAX_CV_CHANNELS:
        return np.concatenate([_box(x[..., i:i + _MAX_CV_CHANNELS], r) for i in range(0, x.shape[2], 4)], axis=2)
    out = cv2.boxFilter(x, cv2.CV_32F, (k, k), normalize=True, borderType=cv2.BORDER_REFLECT)
    return out.reshape(x.shape)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Plain gray-guide guided filter (same resolution). guide (H, W), src (H, W) or (H, W, K); float32 out."""
    a, b = _coefficients(guide.astype(np.float32, copy=False), src.astype(np.float32, copy=False), radius, eps)
    g = guide[..., None] if src.ndim == 3 else guide
    return (a * g + b).astype(np.float32, copy=False)


def _coefficients(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean-filtered linear coefficients (mean_a, mean_b) of the guided filter."""
    g = guide[..., None] if src.ndim == 3 else guide
    mean_i = _box(guide, r)
    var_i = _box(guide * guide, r) - mean_i * mean_i
    if src.ndim == 3:
        mean_i, var_i = mean_i[..., None], var_i[..., None]
    mean_p = _box(src, r)
    cov_ip = _box(g * src, r) - mean_i * mean_p
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return _box(a, r), _box(b, r)


def guided_upsample(masks_lo: np.ndarray, guide_hi: np.ndarray, radius: int = 2, eps: float = 1e-3) -> np.ndarray:
    """Upsample soft masks (h, w) or (h, w, K) to the guide's resolution, edge-aware (fast guided filter); see
    module docstring. Same layout out as in; the work is done by :func:`guided_upsample_khw`.

    Args:
        radius: window radius in *low-resolution* pixels (1-4 is typical).
        eps: regularisation (guide-variance units, guide in [0, 1]); larger = smoother, closer to bilinear.
    """
    m = np.asarray(masks_lo, dtype=np.float32)
    if m.ndim == 2:
        return guided_upsample_khw(m[None], guide_hi, radius, eps)[0]
    return np.ascontiguousarray(guided_upsample_khw(m.transpose(2, 0, 1), guide_hi, radius, eps).transpose(1, 2, 0))


def guided_upsample_khw(masks_khw: np.ndarray, guide_hi: np.ndarray, radius=2, eps=1e-3) -> np.ndarray:
    """Guided upsampling of a (K, h, w) stack of soft masks to the guide's (H, W): contiguous (K, H, W) float32.

    ``radius`` / ``eps``: one window for every plane, or a sequence of K (one per plane: classes with their own
    windows, :data:`campipe.segmentation.postprocess.CLASS_GUIDE`); planes sharing a window get their coefficients
    in one pass. Memory-lean for large guides: the guide is shrunk once, the coefficients are computed at low
    resolution, then every plane is upsampled and applied on its own (two threads over all K planes), writing straight
    into the preallocated output: no (H, W, K) temporaries (at 12 MP and K = 10 those are 480 MB each)."""
    from concurrent.futures import ThreadPoolExecutor

    if guide_hi.ndim != 2:
        raise ValueError(f"guide must be (H, W), got {guide_hi.shape}")
    k, h, w = masks_khw.shape
    rs = [int(r) for r in np.broadcast_to(np.asarray(radius), (k,))]
    es = [float(e) for e in np.broadcast_to(np.asarray(eps, np.float64), (k,))]
    guide_hi = np.ascontiguousarray(guide_hi, dtype=np.float32)
    H, W = guide_hi.shape
    hwk = np.ascontiguousarray(np.asarray(masks_khw, np.float32).transpose(1, 2, 0))
    guide_lo = cv2.resize(guide_hi, (w, h), interpolation=cv2.INTER_AREA) if (h, w) != (H, W) else guide_hi
    mean_a = np.empty((h, w, k), np.float32)
    mean_b = np.empty((h, w, k), np.float32)
    for win in dict.fromkeys(zip(rs, es)):
        idx = [i for i in range(k) if (rs[i], es[i]) == win]
        src = hwk[..., idx] if len(idx) > 1 else hwk[..., idx[0]]
        a, b = _coefficients(guide_lo, src, *win)
        mean_a[..., idx] = a.reshape(h, w, len(idx))
        mean_b[..., idx] = b.reshape(h, w, len(idx))
    out = np.empty((k, H, W), np.float32)

    def one(i: int) -> None:
        a = np.ascontiguousarray(mean_a[..., i])
        b = np.ascontiguousarray(mean_b[..., i])
        if (h, w) != (H, W):
            a = cv2.resize(a, (W, H), interpolation=cv2.INTER_LINEAR)
            b = cv2.resize(b, (W, H), interpolation=cv2.INTER_LINEAR)
        cv2.multiply(a, guide_hi, dst=a)
        cv2.add(a, b, dst=out[i])
        np.clip(out[i], 0.0, 1.0, out=out[i])

    with ThreadPoolExecutor(max_workers=2) as ex:
        list(ex.map(one, range(k)))
    return out


def guided_upsample_colour_khw(masks_khw: np.ndarray, rgb_hi: np.ndarray, radius: int = 2,
                               eps: float = 3e-3) -> np.ndarray:
    """Guided upsampling with a *colour* guide (He et al. 2010, section 3.5: q = a . I + b with a 3-vector ``a``
    per window, ``a = (Sigma + eps U)^-1 cov(I, p)``): edges between regions of equal luminance but different colour
    (hair against a background of its brightness, sky against pale foliage) are kept too.

    masks_khw float32 (K, h, w) in [0, 1]; rgb_hi float32 (H, W, 3) display-referred RGB in [0, 1]; returns
    contiguous (K, H, W) float32 in [0, 1]. The 3x3 systems are solved in closed form (adjugate) at the mask's
    resolution, as in :func:`guided_upsample_khw`. With a gray guide (R = G = B) it equals the gray filter with
    ``eps / 3``."""
    from concurrent.futures import ThreadPoolExecutor

    if rgb_hi.ndim != 3 or rgb_hi.shape[2] != 3:
        raise ValueError(f"colour guide must be (H, W, 3), got {rgb_hi.shape}")
    k, h, w = masks_khw.shape
    rgb_hi = np.ascontiguousarray(rgb_hi, dtype=np.float32)
    H, W = rgb_hi.shape[:2]
    g = cv2.resize(rgb_hi, (w, h), interpolation=cv2.INTER_AREA) if (h, w) != (H, W) else rgb_hi
    p = np.ascontiguousarray(np.asarray(masks_khw, np.float32).transpose(1, 2, 0))
    r = radius
    mean_i = _box(g, r)
    pairs = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    m2 = _box(np.stack([g[..., i] * g[..., j] for i, j in pairs], axis=2), r)
    s = [m2[..., n] - mean_i[..., i] * mean_i[..., j] + (eps if i == j else 0.0) for n, (i, j) in enumerate(pairs)]
    s11, s12, s13, s22, s23, s33 = s
    c11, c12, c13 = s22 * s33 - s23 * s23, s13 * s23 - s12 * s33, s12 * s23 - s13 * s22
    c22, c23, c33 = s11 * s33 - s13 * s13, s12 * s13 - s11 * s23, s11 * s22 - s12 * s12
    inv_det = 1.0 / (s11 * c11 + s12 * c12 + s13 * c13)  # > 0: Sigma + eps U is positive definite
    inv = np.stack([c11, c12, c13, c12, c22, c23, c13, c23, c33], axis=-1).reshape(h, w, 3, 3)
    inv *= inv_det[..., None, None]
    mean_p = _box(p, r)  # (h, w, K)
    mean_ip = _box(np.concatenate([g[..., c:c + 1] * p for c in range(3)], axis=2), r).reshape(h, w, 3, k)
    cov_ip = mean_ip - mean_i[..., :, None] * mean_p[..., None, :]
    a = np.einsum("hwij,hwjk->hwik", inv, cov_ip, optimize=True).astype(np.float32)  # (h, w, 3, K)
    b = mean_p - np.einsum("hwi,hwik->hwk", mean_i, a, optimize=True)
    mean_a = _box(np.ascontiguousarray(a.reshape(h, w, 3 * k)), r).reshape(h, w, 3, k)
    mean_b = _box(np.ascontiguousarray(b, dtype=np.float32), r).reshape(h, w, k)
    out = np.empty((k, H, W), np.float32)

    def up(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return cv2.resize(x, (W, H), interpolation=cv2.INTER_LINEAR) if (h, w) != (H, W) else x.copy()

    def one(i: int) -> None:
        acc = up(mean_b[..., i])
        for c in range(3):
            ac = up(mean_a[..., c, i])
            cv2.multiply(ac, rgb_hi[..., c], dst=ac)
            cv2.add(acc, ac, dst=acc)
        np.clip(acc, 0.0, 1.0, out=out[i])

    with ThreadPoolExecutor(max_workers=2) as ex:
        list(ex.map(one, range(k)))
    return out
