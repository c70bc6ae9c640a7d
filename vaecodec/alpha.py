"""The alpha plane of an RGBA or LA image as the bytes of a ``.vae`` file's alpha section.

The plane is stored losslessly and without its size (the file header has it): one method byte,
then

* 0 CONST: one byte, the value of every pixel;
* 1 RAW: a zlib stream of the plane, row-major;
* 2 SUB: a zlib stream of the plane with each row differenced left to right (mod 256);
* 3 UP: a zlib stream of the plane with each row minus the row above (mod 256).

:func:`encode_alpha` keeps whichever is smallest; :func:`decode_alpha` is told the size and
checks that the payload holds exactly that many samples. Only numpy and zlib are used.
"""
from __future__ import annotations

import zlib

import numpy as np

from .errors import ImageError, one_line

_ALPHA_CONST, _ALPHA_RAW, _ALPHA_SUB, _ALPHA_UP = 0, 1, 2, 3


def _check_plane(plane: object) -> np.ndarray:
    if not isinstance(plane, np.ndarray):
        raise ImageError(f"alpha plane must be a numpy array, not {type(plane).__name__}")
    if plane.ndim != 2 or plane.dtype != np.uint8:
        raise ImageError(
            f"alpha plane must be a 2-D uint8 array, got shape {plane.shape} dtype {plane.dtype}"
        )
    if plane.size == 0:
        raise ImageError("alpha plane is empty")
    return np.ascontiguousarray(plane)


def encode_alpha(plane: np.ndarray) -> bytes:
    """Losslessly compress an alpha plane.

    Args:
        plane: ``(H, W)`` ``uint8`` array, values 0 (transparent) .. 255 (opaque).

    Returns:
        Compressed bytes for :func:`decode_alpha` (2 bytes for a constant plane).
        ``H`` and ``W`` are *not* stored.

    Raises:
        ImageError: ``plane`` is not a non-empty 2-D uint8 array.
    """
    a = _check_plane(plane)
    first = a.flat[0]
    if (a == first).all():
        return bytes((_ALPHA_CONST, int(first)))
    sub = a.copy()
    sub[:, 1:] -= a[:, :-1]
    up = a.copy()
    up[1:] -= a[:-1]
    candidates = [
        bytes((method,)) + zlib.compress(arr.tobytes(), 9)
        for method, arr in ((_ALPHA_RAW, a), (_ALPHA_SUB, sub), (_ALPHA_UP, up))
    ]
    return min(candidates, key=len)


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ImageError(f"alpha plane {what} must be a positive integer, got {value!r}")
    return int(value)


def decode_alpha(data: bytes, height: int, width: int) -> np.ndarray:
    """Inverse of :func:`encode_alpha`.

    Args:
        data: bytes from :func:`encode_alpha` (any bytes-like object).
        height, width: the expected plane size (positive ints).

    Returns:
        A writable ``(height, width)`` ``uint8`` array, 0..255.

    Raises:
        ImageError: unknown method byte, corrupt zlib data, trailing bytes, or
            a payload that does not hold exactly ``height * width`` samples.
            Decompression stops at ``height * width + 1`` bytes, so a hostile
            payload cannot inflate into a huge buffer.
    """
    try:
        buf = bytes(memoryview(data))
    except TypeError:
        raise ImageError(f"alpha data must be bytes, not {type(data).__name__}") from None
    h = _positive_int(height, "height")
    w = _positive_int(width, "width")
    n = h * w
    if not buf:
        raise ImageError("corrupt alpha data: empty")
    method, payload = buf[0], buf[1:]
    if method == _ALPHA_CONST:
        if len(payload) != 1:
            raise ImageError(f"corrupt alpha data: constant plane with {len(payload)} value bytes")
        return np.full((h, w), payload[0], dtype=np.uint8)
    if method not in (_ALPHA_RAW, _ALPHA_SUB, _ALPHA_UP):
        raise ImageError(f"corrupt alpha data: unknown method {method}")

    dec = zlib.decompressobj()
    try:
        out = dec.decompress(payload, n)
        if len(out) == n and not dec.eof:
            if dec.decompress(dec.unconsumed_tail, 1):
                raise ImageError(f"alpha plane has more than {n} samples, expected {h}x{w} = {n}")
    except zlib.error as err:
        raise ImageError(f"corrupt alpha data: {one_line(err)}") from None
    if len(out) != n:
        raise ImageError(f"alpha plane has {len(out)} samples, expected {h}x{w} = {n}")
    if not dec.eof:
        raise ImageError("corrupt alpha data: truncated stream")
    if dec.unused_data:
        raise ImageError(f"corrupt alpha data: {len(dec.unused_data)} trailing bytes")

    a = np.frombuffer(out, dtype=np.uint8).reshape(h, w)
    if method == _ALPHA_SUB:
        a = np.cumsum(a, axis=1, dtype=np.uint8)  # wraps mod 256
    elif method == _ALPHA_UP:
        a = np.cumsum(a, axis=0, dtype=np.uint8)
    else:
        a = a.copy()
    return a
