"""Rate control: the quality that meets a target file size, bit rate or PSNR.

The gain units make quality continuous (1.000 to 8.000 in thousandths), and file size grows with
it, so the encoder bisects on the quality: each probe codes the image (reusing the analysis
transform's output, which does not depend on the quality, so a probe costs about half an
encode), and the search keeps

- for ``size``/``bpp``: the largest file not above the target;
- for ``psnr``: the smallest file whose decoded PSNR (RGB, 0..255) is at or above the target.

A target below what quality 1 gives, or above what quality 8 gives, returns the file of the
closest end with ``reached=False`` (never an endless search): at most :data:`PROBES` plain
probes, then with ``refine`` at most :data:`REFINE_PROBES` refined ones in a narrow bracket
(refinement makes files ~8 % smaller at the same PSNR, so the refined quality sits a little
above the plain one).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .errors import CodecError

PROBES = 11          # plain probes: the bracket [1, 8] shrinks to 7/2**9 < 0.014 quality
REFINE_PROBES = 5    # refined probes in a bracket of 1.25 around the plain answer
TARGETS = ("size", "bpp", "psnr")


@dataclass(frozen=True)
class Result:
    """The file rate control chose.

    Attributes:
        data: the ``.vae`` bytes.
        quality: the quality it was coded at (1.0 to 8.0, in thousandths).
        reached: False when the target was out of reach and the closest end was taken.
        psnr: its decoded PSNR in dB (``psnr`` targets only, else None).
    """

    data: bytes
    quality: float
    reached: bool
    psnr: float | None = None


def parse_size(text: str) -> int:
    """``"20000"``, ``"20k"``, ``"1.5M"``, ``"64KiB"`` -> bytes (k = 1000, M = 1000**2, KiB =
    1024, MiB = 1024**2). Raises ``ValueError`` for anything else or a size below 1 byte."""
    units = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2,
             "kib": 1024, "mib": 1024**2}
    t = text.strip().lower()
    number = t.rstrip("kmibKMIB")
    unit = t[len(number):]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise ValueError(f"{text!r} is not a size (e.g. 20000, 20k, 1.5M)") from None
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"{text!r} is not a size of at least 1 byte")
    return int(value)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays of the same shape (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def search(encode, decode, rgb: np.ndarray, target: str, value: float, refine: int = 0) -> Result:
    """Code ``rgb`` (``(H, W, 3)`` uint8) at the quality that meets ``target`` (``"size"`` in
    bytes, ``"bpp"`` in bits per pixel, ``"psnr"`` in dB) of ``value``.

    ``encode(quality, refine) -> bytes`` codes the image (reusing its analysis transform when
    ``refine`` is 0); ``decode(data) -> (H, W, 3) uint8`` decodes it (PSNR targets only).
    Raises :class:`CodecError` for an unknown target or a value that is not positive."""
    if target not in TARGETS:
        raise CodecError(f"unknown rate-control target {target!r}; use one of {', '.join(TARGETS)}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not (math.isfinite(value) and value > 0):   # numbers.Real: numpy's numbers too
        raise CodecError(f"the {target} target must be a positive number, got {value!r}")
    pixels = rgb.shape[0] * rgb.shape[1]
    limit = value if target == "size" else value * pixels / 8 if target == "bpp" else None

    def measure(q: float, steps: int) -> tuple[bytes, float | None, bool]:
        data = encode(q, steps)
        if limit is not None:
            return data, None, len(data) <= limit
        db = psnr(decode(data), rgb)
        return data, db, db >= value

    def bisect(lo: float, hi: float, probes: int, steps: int, best):
        """Bisect [lo, hi] in thousandths; ``best`` is the (quality, data, db) found so far
        that meets the target (for size: the largest such, for psnr: the smallest)."""
        for _ in range(probes):
            if hi - lo <= 0.001:
                break
            q = round((lo + hi) / 2, 3)
            data, db, ok = measure(q, steps)
            if ok == (limit is not None):   # size: fits, so go up; psnr: too low, so go up
                lo = q
            else:
                hi = q
            if ok:
                best = _better(best, (q, data, db), limit is not None)
        return best

    # the ends first: a target out of reach takes the closest end
    low = measure(1.0, 0)
    if limit is not None and not low[2]:
        return _finish(measure, 1.0, refine, low, False)
    high = measure(8.0, 0)
    if limit is None and not high[2]:
        return _finish(measure, 8.0, refine, high, False)
    if limit is not None and high[2]:
        return _finish(measure, 8.0, refine, high, True)
    if limit is None and low[2]:
        return _finish(measure, 1.0, refine, low, True)
    start = (1.0, low[0], low[1]) if limit is not None else (8.0, high[0], high[1])
    q, data, db = bisect(1.0, 8.0, PROBES, 0, start)
    if not refine:
        return Result(data, q, True, db)
    # refined files are smaller at the same quality: search a little above the plain answer,
    # from the end of the bracket that meets the target
    lo, hi = max(1.0, q - 0.25), min(8.0, q + 1.0)
    anchor = lo if limit is not None else hi
    data, db, ok = measure(anchor, refine)
    if not ok:   # rare: the bracket misses on the safe side too; take the range's end
        end = 1.0 if limit is not None else 8.0
        data, db, ok = measure(end, refine)
        return Result(data, end, ok, db)
    best = bisect(lo, hi, REFINE_PROBES, refine, (anchor, data, db))
    return Result(best[1], best[0], True, best[2])


def _better(best, candidate, size_target: bool):
    """Of two files that meet the target, the one rate control prefers: for a size or bpp
    target the larger quality, for a PSNR target the smaller."""
    if best is None:
        return candidate
    if size_target:
        return candidate if candidate[0] > best[0] else best
    return candidate if candidate[0] < best[0] else best


def _finish(measure, q: float, refine: int, probe, reached: bool) -> Result:
    """The file at an end of the quality range (refined when asked; whether the refined file
    meets the target is measured again)."""
    if refine:
        data, db, reached = measure(q, refine)
        return Result(data, q, reached, db)
    return Result(probe[0], q, reached, probe[1])
