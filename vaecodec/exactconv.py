"""Exact integer convolutions on the processor's int8 matrix units.

:mod:`vaecodec.integer` defines its networks' arithmetic over the integers: each layer's
accumulator is the exact sum of integer products. Any method that computes that sum exactly gives
the same bits. The reference method is float64 convolution, which is exact because every partial
sum stays below ``2**53``, but float64 runs at about a quarter of float32's speed. This module
computes the same sums with int8 matrix products that accumulate in int32 (``torch._int_mm``:
AVX-512 VNNI, AMX or ARM dot-product instructions; 5-9x float64's multiply-accumulates per
second on a Zen 4; with 4 to 6 digit products per multiply-accumulate and the passes that split,
gather and recombine, the networks run 1.3 to 1.5x faster than in float64):

- every weight ``w`` (``|w| <= 2**13``) is split into balanced base-128 digits
  ``w = w0 + 128·w1`` with ``w0, w1`` in ``[-64, 64]``;
- every input ``x`` (``|x| <= 2**24``) into balanced base-256 digits
  ``x = x0 + 256·x1 + 256²·x2 + ...`` with each digit in ``[-128, 127]``, as many digits as the
  largest input of the tensor needs (one decision per tensor, made from exact integers, so the
  same on every machine);
- one int8 product per pair of digits, over reduction lengths ``K <= 2**13``: each int32 sum is
  below ``128·64·2**13 = 2**26`` in magnitude, so it never overflows, and a processor that adds
  pairs of u8·s8 products in int16 (x86 without VNNI) cannot saturate either
  (``2·255·64 < 2**15``);
- the digit products are recombined in int64: ``acc = Σ C_ij · 256**i · 128**j``, exactly.

Convolutions become matrix products over their taps (the input's ``K = k·k·C`` neighbours of each
output position, channels last); a transposed convolution first becomes an ordinary one plus a
pixel shuffle (:func:`vaecodec.transforms.subpixel_kernel`), which only moves integers.

Before the first use, :func:`available` checks this machine's int8 product against exact sums
(closed form, or float64 where that is exact) on adversarial inputs (the extreme digits, the
longest reduction) and times it against float64's; where the product is missing, not exact or not fast (PyTorch's scalar fallback), the
networks keep the float64 method. ``VAECODEC_EXACT=float64`` in the
environment forces the float64 method.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .transforms import subpixel_kernel

X_BASE = 256         # balanced digits of inputs: [-128, 127]
W_BASE = 128         # balanced digits of weights: [-64, 64]
MAX_REDUCTION = 2 ** 13   # longest reduction the check covers (the format's fan-in bound)
MIN_SPEEDUP = 4           # the int8 product's speed over float64's that makes the method pay
ENV = "VAECODEC_EXACT"    # "float64": always use the float64 method

_lock = threading.Lock()
_available: bool | None = None
_reference = 0   # how many float64_reference() blocks are open


def _int_mm_exact() -> bool:
    """Whether ``torch._int_mm`` computes exact int32 sums of int8 products here, for the
    digit ranges and reduction lengths this module uses: constant operands at the extremes
    (each sum known in closed form), alternating extremes (adjacent products of opposite sign,
    as processors without VNNI add pairs in int16) and random digits (checked against float64,
    exact for these sums below ``2**27``)."""
    k = MAX_REDUCTION
    try:
        cases = [(torch.full((8, k), a, dtype=torch.int8), torch.full((k, 8), b, dtype=torch.int8), a * b * k)
                 for a, b in ((127, 64), (-128, -64), (127, -64), (-128, 64))]   # largest of each sign
        alternating = torch.tensor([127, -128], dtype=torch.int8).repeat(k // 2)
        cases.append((alternating.repeat(5, 1), torch.full((k, 3), 64, dtype=torch.int8), -64 * k // 2))
        g = torch.Generator().manual_seed(0)
        x = torch.randint(-128, 128, (37, 2592), generator=g, dtype=torch.int8)
        w = torch.randint(-64, 65, (2592, 19), generator=g, dtype=torch.int8)
        cases.append((x, w, (x.double() @ w.double()).long()))
        for a, b, expected in cases:
            got = torch._int_mm(a, b)
            if got.dtype != torch.int32 or not torch.equal(got.long(), torch.as_tensor(expected).expand(got.shape)):
                return False
        return True
    except Exception:   # no int8 product on this build or processor
        return False


def _int_mm_fast() -> bool:
    """Whether ``torch._int_mm`` runs on fast kernels here: at least :data:`MIN_SPEEDUP` times
    float64's matrix product on a network-sized product (best of 5 each; about 10x on a Zen 4
    with one thread). Without such kernels (no oneDNN, or a processor it has no int8 kernel for) PyTorch
    falls back to a scalar loop about 100x slower than float64, and the 4 to 6 digit products
    per multiply-accumulate would lose to float64."""
    a = torch.ones(384, 1152, dtype=torch.int8)
    b = torch.ones(1152, 256, dtype=torch.int8)
    a64, b64 = a.double(), b.double()

    def best(f) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
        return min(times)
    return best(lambda: torch._int_mm(a, b)) * MIN_SPEEDUP < best(lambda: a64 @ b64)


def available() -> bool:
    """Whether exact int8 convolution is used on this machine now: once per process, its int8
    product must prove exact (:func:`_int_mm_exact`) and fast (:func:`_int_mm_fast`); never
    while oneDNN is switched off (``torch.backends.mkldnn.flags(enabled=False)``), when
    :data:`ENV` is ``float64``, or inside :func:`float64_reference`. Either way the results
    are the same integers; only the speed differs."""
    global _available
    with _lock:
        if _available is None:
            # on one thread: on busy cores, waiting for a descheduled second thread costs
            # milliseconds per product, which would blur the timing and slow the check
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                _available = (os.environ.get(ENV, "").lower() != "float64" and torch.backends.mkldnn.enabled
                              and _int_mm_exact() and _int_mm_fast())
            finally:
                torch.set_num_threads(threads)
        return _available and not _reference and torch.backends.mkldnn.enabled


@contextmanager
def float64_reference():
    """Inside this block, the exact networks use the float64 method: the same results, for
    tests and benchmarks that compare the two."""
    global _reference
    with _lock:
        _reference += 1
    try:
        yield
    finally:
        with _lock:
            _reference -= 1


def balanced_digits(x: torch.Tensor, base: int, top: int) -> list[torch.Tensor]:
    """``x`` (float64 integers, any shape) -> int8 tensors ``d_i`` of the same shape with
    ``x = Σ d_i · base**i``: every digit in ``[-base/2, base/2 - 1]`` but the last, which is in
    ``[-base/2, top]``; at least one digit, and only as many as the largest ``|x|`` needs.
    Exact: every step is a float64 operation on integers below ``2**53``."""
    half, out = base // 2, []
    while x.numel() and (float(x.max()) > top or float(x.min()) < -half):
        q = torch.floor((x + half) * (1.0 / base))
        out.append((x - q * base).to(torch.int8))
        x = q
    out.append(x.to(torch.int8))
    return out


@dataclass
class Layer:
    """One convolution prepared for :func:`conv`: ``weight`` ``(K, D·O)`` int8 (the ``D``
    weight digits side by side, taps in ``(row, column, channel)`` order), ``bias`` ``(O,)``
    int64 at the accumulator's scale, the kernel size, stride, zero padding
    ``(left, right, top, bottom)`` and the pixel-shuffle factor (1: none)."""

    weight: torch.Tensor
    digits: int
    bias: torch.Tensor
    kernel: int
    stride: int
    padding: tuple[int, int, int, int]
    shuffle: int


def prepare(weight: torch.Tensor, bias: torch.Tensor, transposed: bool, stride: int) -> Layer:
    """A layer of :class:`vaecodec.integer.IntegerNetwork` for :func:`conv`.

    ``weight``: integers (any dtype), ``(O, C, k, k)`` for a convolution with 'same' padding
    ``k // 2``, ``(C, O, k, k)`` for a transposed convolution of
    :func:`vaecodec.transforms.deconv`'s kind; ``bias`` ``(O,)`` integers. Raises
    ``ValueError`` for a weight over ``2**13`` in magnitude or a reduction over ``2**13``.
    """
    weight = weight.to(torch.float64)
    bias = bias.to(torch.int64)
    k = weight.shape[-1]
    if transposed:
        weight, padding = subpixel_kernel(weight, stride)
        bias, shuffle, stride, k = bias.repeat_interleave(stride * stride), stride, 1, weight.shape[-1]
    else:
        padding, shuffle = (k // 2,) * 4, 1
    out_channels = weight.shape[0]
    matrix = weight.permute(2, 3, 1, 0).reshape(-1, out_channels)   # (k·k·C, O)
    if matrix.shape[0] > MAX_REDUCTION or float(weight.abs().max()) > 2 ** 13:
        raise ValueError("layer outside the exact int8 range (|w| <= 2**13, k·k·C <= 2**13)")
    digits = balanced_digits(matrix, W_BASE, W_BASE // 2)
    return Layer(torch.cat(digits, 1).contiguous(), len(digits), bias, k, stride, padding, shuffle)


def conv(x: torch.Tensor, layer: Layer) -> torch.Tensor:
    """The exact accumulator of ``layer`` on ``x``.

    ``x`` ``(H, W, C)`` float64 integers with ``|x| <= 2**24`` (channels last) ->
    ``(H', W', O)`` int64: for each output, the bias plus the sum of the products of the
    weights with the zero-padded input, exactly (as :func:`torch.nn.functional.conv2d` or
    ``conv_transpose2d`` over the integers would give it).
    """
    k, s = layer.kernel, layer.stride
    left, right, top, bottom = layer.padding
    h, w, c = x.shape
    rows, cols = (h + top + bottom - k) // s + 1, (w + left + right - k) // s + 1
    positions = rows * cols
    x_digits = balanced_digits(x, X_BASE, X_BASE // 2 - 1)
    n = len(x_digits)
    padded = torch.zeros(n, h + top + bottom, w + left + right, c, dtype=torch.int8)
    for i, digit in enumerate(x_digits):
        padded[i, top:top + h, left:left + w] = digit
    d, r, q, one = padded.stride()
    # (digit, row, column, tap row, (tap column, channel)): each output's k·k·C inputs, one
    # copy of k runs of k·C contiguous bytes (adjacent columns, channels last)
    columns = padded.as_strided((n, rows, cols, k, k * c), (d, s * r, s * q, r, one))
    # copied into a fresh (rows, K) matrix with standard strides: a reshaped view can have
    # overlapping rows (one output column), which the int8 product reads wrongly, and
    # .contiguous() keeps some such views (a single row) as they are
    matrix = torch.empty(n * positions, k * k * c, dtype=torch.int8)
    matrix.view(n, rows, cols, k, k * c).copy_(columns)
    products = torch._int_mm(matrix, layer.weight)
    out_channels = layer.bias.shape[0]
    products = products.view(n, positions, layer.digits, out_channels)
    acc = layer.bias.expand(positions, out_channels).clone()   # int64
    for i in range(n):
        for j in range(layer.digits):   # in place: int32 products added to the int64 sums, exactly
            acc.add_(products[i, :, j], alpha=X_BASE ** i * W_BASE ** j)
    acc = acc.view(rows, cols, out_channels)
    if layer.shuffle > 1:   # channel s²·c + s·a + b is output phase (a, b) of channel c
        acc = F.pixel_shuffle(acc.permute(2, 0, 1)[None], layer.shuffle)[0].permute(1, 2, 0)
    return acc
