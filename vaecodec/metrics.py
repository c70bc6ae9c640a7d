"""Image-quality and rate metrics for the rate-distortion benchmark.

All metrics compare 8-bit RGB images (``uint8`` arrays of shape ``(H, W, 3)`` or RGB
``PIL.Image`` objects) at their original size:

* :func:`psnr_rgb` — PSNR in dB over all RGB values, peak 255, capped at :data:`PSNR_CAP` dB.
* :func:`ms_ssim_rgb` — MS-SSIM (Wang et al. 2003, 5 scales, unitless in ``[0, 1]``) through
  ``pytorch_msssim`` with ``data_range=255``; ``NaN`` for images too small for 5 scales.
* :func:`bpp` — bits per pixel of a file of ``n`` bytes (headers included) for an ``H×W`` image.

The Bjøntegaard metrics (:func:`bd_rate`, :func:`bd_psnr`) compare two rate-distortion curves
given as matching lists of bits per pixel and PSNR in dB; :func:`psnr_at_bpp` reads a curve at a
given rate.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

PSNR_CAP = 100.0  # dB; the value reported for identical images (MSE 0)

# Smallest side MS-SSIM accepts with its default 11-px window and 5 scales: the image is halved
# 4 times and the coarsest scale must still be wider than the window, (11 - 1) * 2**4 = 160 px.
MS_SSIM_MIN_SIDE = 161


def _as_array(image) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 array from an RGB PIL image or an array."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {arr.shape}")
    return arr


def _check_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_array(a), _as_array(b)
    if a.shape != b.shape:
        raise ValueError(f"image sizes differ: {a.shape} vs {b.shape}")
    return a, b


def mse_rgb(original, reconstruction) -> float:
    """Mean squared error over all RGB values, on the 0..255 scale (units: squared 8-bit levels)."""
    a, b = _check_pair(original, reconstruction)
    diff = a.astype(np.float64) - b.astype(np.float64)
    return float(np.mean(diff * diff))


def psnr_from_mse(mse: float, peak: float = 255.0) -> float:
    """PSNR in dB, ``10·log10(peak² / mse)``, capped at :data:`PSNR_CAP` dB (also for MSE 0)."""
    if mse <= 0:
        return PSNR_CAP
    return min(PSNR_CAP, 10.0 * math.log10(peak * peak / mse))


def psnr_rgb(original, reconstruction) -> float:
    """PSNR-RGB in dB: MSE over all three channels of 8-bit values, peak 255, capped at 100 dB."""
    return psnr_from_mse(mse_rgb(original, reconstruction))


def ms_ssim_rgb(original, reconstruction) -> float:
    """MS-SSIM over RGB (unitless, 1 = identical) via ``pytorch_msssim.ms_ssim``, data range 255.

    Returns ``NaN`` (with a :class:`RuntimeWarning`) when a side is shorter than
    :data:`MS_SSIM_MIN_SIDE` (161) pixels, the smallest size the 5-scale MS-SSIM is defined for:
    a single-scale SSIM in its place would be a different metric and mislead an average.
    """
    a, b = _check_pair(original, reconstruction)
    h, w = a.shape[:2]
    if min(h, w) < MS_SSIM_MIN_SIDE:
        warnings.warn(f"MS-SSIM needs both sides >= {MS_SSIM_MIN_SIDE} px, image is {w}x{h}: "
                      "reporting NaN", RuntimeWarning, stacklevel=2)
        return float("nan")
    import torch
    from pytorch_msssim import ms_ssim

    def to_tensor(x: np.ndarray) -> torch.Tensor:
        # float32: 4x faster than float64 and within 1e-6 of it on 8-bit images
        return torch.from_numpy(np.array(x, dtype=np.float32)).permute(2, 0, 1)[None]

    with torch.no_grad():
        value = ms_ssim(to_tensor(a), to_tensor(b), data_range=255, size_average=True)
    return float(value)


def ms_ssim_db(value: float) -> float:
    """MS-SSIM on a dB scale, ``-10·log10(1 - value)`` (for plots; ``inf`` for 1)."""
    if not value < 1:
        return float("inf") if value == 1 else float("nan")
    return -10.0 * math.log10(1.0 - value)


def bpp(num_bytes: int, height: int, width: int) -> float:
    """Bits per pixel: ``8 · num_bytes / (height · width)`` for the original image size."""
    return 8.0 * num_bytes / (height * width)


# --------------------------------------------------------------------------------------------
# Monotone piecewise cubic interpolation (PCHIP)


class Pchip:
    """Monotone piecewise cubic Hermite interpolant of ``(x, y)`` with strictly increasing ``x``.

    Uses :class:`scipy.interpolate.PchipInterpolator` when scipy is installed; otherwise an
    equivalent implementation of the same algorithm (Fritsch–Butland derivatives with the
    three-point end conditions of Moler's ``pchip``, as scipy does). :meth:`integrate` is exact.
    """

    def __init__(self, x: Sequence[float], y: Sequence[float], use_scipy: bool | None = None):
        self.x = np.asarray(x, dtype=np.float64)
        self.y = np.asarray(y, dtype=np.float64)
        if self.x.ndim != 1 or self.x.shape != self.y.shape or len(self.x) < 2:
            raise ValueError("need matching 1-D x and y with at least 2 points")
        if not np.all(np.diff(self.x) > 0):
            raise ValueError("x must be strictly increasing")
        self._scipy = None
        if use_scipy is not False:
            try:
                from scipy.interpolate import PchipInterpolator
            except ImportError:
                if use_scipy:
                    raise
            else:
                self._scipy = PchipInterpolator(self.x, self.y, extrapolate=False)
        if self._scipy is None:
            self.d = self._derivatives(self.x, self.y)

    @staticmethod
    def _derivatives(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        h = np.diff(x)
        m = np.diff(y) / h
        n = len(x)
        d = np.zeros(n)
        if n == 2:
            d[:] = m[0]
            return d
        # Interior: weighted harmonic mean of the neighbouring slopes, 0 at a local extremum.
        for k in range(1, n - 1):
            if m[k - 1] * m[k] <= 0:
                d[k] = 0.0
            else:
                w1 = 2 * h[k] + h[k - 1]
                w2 = h[k] + 2 * h[k - 1]
                d[k] = (w1 + w2) / (w1 / m[k - 1] + w2 / m[k])

        def edge(h0, h1, m0, m1):
            dd = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
            if np.sign(dd) != np.sign(m0):
                return 0.0
            if np.sign(m0) != np.sign(m1) and abs(dd) > abs(3 * m0):
                return 3 * m0
            return dd

        d[0] = edge(h[0], h[1], m[0], m[1])
        d[-1] = edge(h[-1], h[-2], m[-1], m[-2])
        return d

    def _eval(self, t: np.ndarray) -> np.ndarray:
        x, y, d = self.x, self.y, self.d
        k = np.clip(np.searchsorted(x, t, side="right") - 1, 0, len(x) - 2)
        h = x[k + 1] - x[k]
        s = (t - x[k]) / h
        h00 = (1 + 2 * s) * (1 - s) ** 2
        h10 = s * (1 - s) ** 2
        h01 = s * s * (3 - 2 * s)
        h11 = s * s * (s - 1)
        return h00 * y[k] + h10 * h * d[k] + h01 * y[k + 1] + h11 * h * d[k + 1]

    def __call__(self, t) -> np.ndarray:
        """Values at ``t``; ``NaN`` outside ``[x[0], x[-1]]``."""
        t = np.asarray(t, dtype=np.float64)
        if self._scipy is not None:
            return np.asarray(self._scipy(t), dtype=np.float64)
        out = np.full(t.shape, np.nan)
        inside = (t >= self.x[0]) & (t <= self.x[-1])
        out[inside] = self._eval(t[inside])
        return out

    def integrate(self, a: float, b: float) -> float:
        """Exact integral over ``[a, b]``, which must lie inside ``[x[0], x[-1]]``."""
        if self._scipy is not None:
            return float(self._scipy.integrate(a, b))
        if a > b:
            return -self.integrate(b, a)
        # Simpson's rule is exact for a cubic, so apply it on each piece of [a, b].
        cuts = np.concatenate(([a], self.x[(self.x > a) & (self.x < b)], [b]))
        total = 0.0
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            # The interpolant is continuous, so its values at the knots are those of either piece.
            f = self._eval(np.array([lo, 0.5 * (lo + hi), hi]))
            total += (hi - lo) / 6.0 * (f[0] + 4 * f[1] + f[2])
        return float(total)


# --------------------------------------------------------------------------------------------
# Bjøntegaard metrics


def _curve(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Finite points sorted by ``x``; ``y`` averaged over repeated ``x``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError("rate and distortion lists differ in length")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    ux, inverse = np.unique(x, return_inverse=True)
    uy = np.bincount(inverse, weights=y) / np.bincount(inverse)
    return ux, uy


def _log(values: Sequence[float]) -> np.ndarray:
    """Natural log; non-positive values become -inf/NaN (dropped by :func:`_curve`)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.asarray(values, dtype=np.float64))


def bd_rate(rate_ref: Sequence[float], psnr_ref: Sequence[float],
            rate_test: Sequence[float], psnr_test: Sequence[float]) -> float:
    """Bjøntegaard delta rate in percent: the average rate change of ``test`` against ``ref``
    at equal quality (negative = ``test`` needs fewer bits).

    Rates are in any common unit (e.g. bpp), PSNR in dB. Log-rate is interpolated as a function
    of PSNR with a monotone piecewise cubic (PCHIP) per curve, both integrated over the PSNR
    interval the curves share, and ``exp(mean difference) - 1`` is reported. ``NaN`` when the
    curves have fewer than 2 usable points or do not overlap.
    """
    gap = _mean_gap(psnr_ref, _log(rate_ref), psnr_test, _log(rate_test))
    return float((math.exp(gap) - 1.0) * 100.0)


def _mean_gap(x_ref, y_ref, x_test, y_test) -> float:
    """Mean of ``y_test(x) - y_ref(x)`` over the shared ``x`` interval, each curve interpolated
    with PCHIP; ``NaN`` with fewer than 2 usable points or no overlap."""
    x1, y1 = _curve(x_ref, y_ref)
    x2, y2 = _curve(x_test, y_test)
    if len(x1) < 2 or len(x2) < 2:
        return float("nan")
    lo, hi = max(x1[0], x2[0]), min(x1[-1], x2[-1])
    if not hi > lo:
        return float("nan")
    return float((Pchip(x2, y2).integrate(lo, hi) - Pchip(x1, y1).integrate(lo, hi)) / (hi - lo))


def bd_psnr(rate_ref: Sequence[float], psnr_ref: Sequence[float],
            rate_test: Sequence[float], psnr_test: Sequence[float]) -> float:
    """Bjøntegaard delta PSNR in dB: the average PSNR gain of ``test`` over ``ref`` at equal rate.

    PSNR is interpolated as a function of log-rate (PCHIP) over the shared rate interval.
    ``NaN`` when the curves have fewer than 2 usable points or do not overlap.
    """
    return _mean_gap(_log(rate_ref), psnr_ref, _log(rate_test), psnr_test)


def psnr_at_bpp(rates: Sequence[float], psnrs: Sequence[float], target: float) -> float:
    """PSNR in dB of a curve at ``target`` bpp, by PCHIP in log-rate; ``NaN`` outside the curve."""
    r, p = _curve(_log(rates), psnrs)
    if len(r) == 0 or not target > 0:
        return float("nan")
    t = math.log(target)
    if len(r) == 1:
        return float(p[0]) if t == r[0] else float("nan")
    return float(Pchip(r, p)(np.array([t]))[0])
