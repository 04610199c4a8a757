"""Sensor-noise model for the effects: read it from metadata or estimate it from the image, and synthesise grain.

Model: heteroscedastic Gaussian, ``variance = a * signal + b`` in linear normalised units (signal 1.0 = white
level after black subtraction). ``a`` is the shot-noise (photon) gain, ``b`` the read-noise floor. The sensor
simulator writes ``a``/``b`` into the DNG and decode copies them to ``frame.meta["noise"]``; the model is applied to
the working-space image as is (white balance and the colour matrix change the noise per channel by a factor of order
one; the effects only need the level, so that approximation is documented rather than corrected).

When no model is in the metadata it is estimated from the image: the Immerkaer (1996) fast noise-variance operator
(the 3x3 kernel [[1,-2,1],[-2,4,-2],[1,-2,1]] cancels smooth signal up to second order) gives a per-pixel noise
magnitude; robust (median) statistics per brightness bin give variance(signal), and a non-negative least-squares
line through them gives (a, b). Demosaiced noise is spatially correlated, which makes the operator underestimate by a
constant factor; that is acceptable for setting filter strengths.

References: Foi et al., "Practical Poissonian-Gaussian noise modeling and fitting for single-image raw-data",
IEEE TIP 2008; J. Immerkaer, "Fast Noise Variance Estimation", CVIU 64(2), 1996.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import cv2
import numpy as np

_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


@dataclass(frozen=True)
class NoiseModel:
    """variance = a * signal + b (linear normalised units); ``source`` says where it came from."""

    a: float
    b: float
    source: str = "metadata"

    def variance(self, signal: np.ndarray) -> np.ndarray:
        """Per-pixel noise variance, float32, for a linear signal array (clipped at 0)."""
        v = np.maximum(signal, np.float32(0.0), dtype=np.float32)
        v *= np.float32(self.a)
        v += np.float32(self.b)
        return v

    def sigma(self, signal: np.ndarray) -> np.ndarray:
        """Per-pixel noise standard deviation, float32."""
        v = self.variance(signal)
        return np.sqrt(v, out=v) if isinstance(v, np.ndarray) else np.sqrt(v)


def estimate_noise_model(img: np.ndarray, bins: int = 12, max_pixels: int = 2_000_000) -> NoiseModel:
    """Estimate (a, b) from a float32 linear (H, W, 3) or (H, W) image; see the module docstring.

    Large images are estimated on a central crop of at most ``max_pixels`` pixels (noise statistics do not need the
    whole frame, and a crop keeps the noise at full resolution, unlike downsampling).
    """
    x = np.asarray(img, np.float32)
    if x.ndim == 3:
        h, w = x.shape[:2]
    else:
        h, w = x.shape
    if h * w > max_pixels:
        s = int(np.sqrt(max_pixels))
        y0, x0 = max(0, (h - s) // 2), max(0, (w - s) // 2)
        x = x[y0:y0 + s, x0:x0 + s]
    chans = [x[..., c] for c in range(x.shape[2])] if x.ndim == 3 else [x]
    sig_list, var_list = [], []
    for ch in chans:
        ch = np.ascontiguousarray(ch)
        resp = np.abs(cv2.filter2D(ch, -1, _IMMERKAER, borderType=cv2.BORDER_REFLECT))[1:-1, 1:-1]
        mean = cv2.blur(ch, (3, 3))[1:-1, 1:-1]
        # Gaussian noise: resp ~ N(0, 36 sigma^2) (the kernel's L2 norm is 6), so |resp| / 6 is |N(0, sigma^2)|.
        sig_list.append(mean.ravel())
        var_list.append(resp.ravel() / 6.0)
    s = np.concatenate(sig_list)
    r = np.concatenate(var_list)
    ok = (s > 0.0) & (s < 0.95)
    s, r = s[ok], r[ok]
    if s.size < 64:
        return NoiseModel(0.0, 1e-6, "estimated (too few pixels)")
    edges = np.quantile(s, np.linspace(0.0, 1.0, bins + 1))
    xs, ys = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (s >= lo) & (s <= hi)
        if sel.sum() < 32:
            continue
        # The median is robust to the textured pixels that inflate the response; median|N(0, 1)| = 0.6745.
        sd = np.median(r[sel]) / 0.6745
        xs.append(np.median(s[sel]))
        ys.append(sd * sd)
    if len(xs) < 2:
        v = float(ys[0]) if ys else 1e-6
        return NoiseModel(0.0, v, "estimated")
    A = np.stack([np.asarray(xs), np.ones(len(xs))], axis=1)
    coef, *_ = np.linalg.lstsq(A, np.asarray(ys), rcond=None)
    a, b = float(coef[0]), float(coef[1])
    if a < 0:
        a, b = 0.0, float(np.median(ys))
    if b < 0:
        b = 0.0
        a = float(np.sum(np.asarray(xs) * np.asarray(ys)) / max(np.sum(np.asarray(xs) ** 2), 1e-12))
    return NoiseModel(max(a, 0.0), max(b, 1e-10), "estimated")


def noise_model_from_meta(meta: Mapping[str, Any] | None, img: np.ndarray | None = None) -> NoiseModel:
    """Noise model from ``meta["noise"]`` or, failing that, estimated from ``img``.

    Accepted metadata: keys ``a`` and ``b``, or ``profile`` = the DNG NoiseProfile tag ``[S, O, ...]`` (variance =
    S * x + O per colour plane; the first pair is used, planes are near-identical in practice).
    Raises ValueError when neither a model nor an image is available, or the model is invalid.
    """
    nd = (meta or {}).get("noise") or {}
    ab = None
    if isinstance(nd, Mapping):
        if "a" in nd and "b" in nd and nd["a"] is not None and nd["b"] is not None:
            ab = (nd["a"], nd["b"])
        elif nd.get("profile") is not None:
            prof = list(np.ravel(np.asarray(nd["profile"], dtype=np.float64)))
            if len(prof) >= 2:
                ab = (prof[0], prof[1])
    if ab is not None:
        a, b = float(ab[0]), float(ab[1])
        if not (np.isfinite(a) and np.isfinite(b)) or a < 0 or b < 0:
            raise ValueError(f"meta['noise'] has an invalid noise model a={a!r}, b={b!r} (need finite, >= 0)")
        return NoiseModel(a, b, "metadata")
    if img is None:
        raise ValueError("no noise model in meta['noise'] (keys 'a', 'b') and no image to estimate it from")
    return estimate_noise_model(img)


def add_grain(img: np.ndarray, model: NoiseModel, weight: np.ndarray, seed: int = 0) -> np.ndarray:
    """Return ``img + weight * N(0, model.variance(img))`` per channel (float32, new array).

    ``weight`` float32 (H, W) in [0, 1]: the fraction of the original noise *standard deviation* to re-add (1 where
    an area was fully smoothed, 0 where it kept its own grain). Deterministic for a given ``seed``.
    """
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    noise *= model.sigma(img)
    noise *= weight[..., None]
    out = img + noise
    np.maximum(out, 0.0, out=out)
    return out
