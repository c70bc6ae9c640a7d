"""Exact fixed-point hyper-synthesis and channel context: the same entropy parameters on every
machine.

Why: the decoder must reproduce the encoder's probability model bit for bit. A float network can
differ by one ulp between CPUs, thread counts, BLAS or GPU kernels; one ulp can move a scale across
a table boundary and derail the rest of the entropy decode (the failure described by Ballé,
Johnston & Minnen 2019, "Integer networks for data compression with latent-variable models").

How: after training, every layer of ``h_s`` and of the channel-context networks (convolutions and
ReLU only; :func:`quantize_network`) is converted to integers:
weights ``round(w * 2**wb)`` with ``|w_int| <= 2**13``, biases at the accumulator's scale, and
activations kept with ``ACT_BITS`` fractional bits, clamped to ``[0, 2**24]``. Each layer computes
``acc = conv(x_int, w_int) + b_int`` and ``x_next = min(floor(max(acc, 0) / 2**shift), 2**24)``.

Every operand is an integer and every product and partial sum stays below ``2**53`` in magnitude
(inputs ``<= 2**24``, weights ``<= 2**13``, fan-in ``<= 2**13``), so evaluating the convolutions
in float64 is *exact*, whatever the summation order, blocking, FMA use or thread count: the result
is the unique mathematical integer. Division by a power of two and ``floor`` are exact too.
The convolutions run on the CPU as exact int8 matrix products (:mod:`vaecodec.exactconv`; the
three networks 1.3 to 1.5x faster per Kodak image than float64), or in float64 where this
machine has no fast exact int8 product (PyTorch has no Winograd/FFT path for float64); both give
the same integers.

Outputs: ``h_s`` gives the mean and log-scale of ``y`` as ``acc / 2**frac`` (exact float64). A
channel-context network takes those of its slice and the slices already decoded, as integers
``round(clamp(v, ±2**11) * 2**8)`` (:func:`context_input`), and adds its own ``acc / 2**frac``
(one correctly rounded float64 addition). The mean is then rounded to float32, and the scale
index is the number of thresholds ``<= log-scale``: the log-scale snapped to the nearest entry
of the scale table, decided by exact comparisons.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from . import exactconv
from .transforms import run_tiled
from torch import nn

ACT_BITS = 12          # fractional bits of hidden activations
ACT_MAX = 2 ** 24      # activation clamp (value 4096.0)
WEIGHT_MAX_BITS = 13   # |w_int| <= 2**13
Z_MAX = 2 ** 12        # |z_hat| clamp at the network input


CONTEXT_FRAC = 8        # fractional bits of the channel context's inputs
CONTEXT_MAX = 2 ** 11   # |input| clamp of the channel context (model.CONTEXT_CLAMP)


def _layers(net: nn.Sequential) -> list[nn.Module]:
    return [m for m in net if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def quantize_network(net: nn.Sequential, frac_in: int = 0) -> dict[str, torch.Tensor]:
    """Integer tensors of ``net`` (convolutions and ReLU only) for :class:`IntegerNetwork`.

    ``frac_in``: fractional bits of the integer input. Returns per layer ``layer{i}.weight``
    (int32, ``|w| <= 2**13``) and ``layer{i}.bias`` (int64, at the accumulator's scale), and
    ``shift``, ``frac``, ``transposed``, ``stride`` (int64, one entry per layer).
    Raises ``ValueError`` when a weight is too large for the format.
    """
    out: dict[str, torch.Tensor] = {}
    layers = _layers(net)
    shifts, fracs = [], []
    for i, layer in enumerate(layers):
        w = layer.weight.detach().double()
        # at most 30 fractional bits: an all-zero (untrained) layer stays representable
        wb = min(30, WEIGHT_MAX_BITS - math.ceil(math.log2(float(w.abs().max()) + 1e-30)))
        out[f"layer{i}.weight"] = torch.round(w * 2.0**wb).to(torch.int32)
        acc_frac = frac_in + wb
        out[f"layer{i}.bias"] = torch.round(layer.bias.detach().double() * 2.0**acc_frac).to(torch.int64)
        fracs.append(acc_frac)
        if i < len(layers) - 1:
            if acc_frac < ACT_BITS:
                raise ValueError("weights too large for the fixed-point format")
            shifts.append(acc_frac - ACT_BITS)
            frac_in = ACT_BITS
        else:
            shifts.append(0)
    out["shift"] = torch.tensor(shifts, dtype=torch.int64)
    out["frac"] = torch.tensor(fracs, dtype=torch.int64)
    out["transposed"] = torch.tensor([1 if isinstance(m, nn.ConvTranspose2d) else 0 for m in layers],
                                     dtype=torch.int64)
    out["stride"] = torch.tensor([m.stride[0] for m in layers], dtype=torch.int64)
    return out


def quantize_hyper_synthesis(h_s: nn.Sequential, log_scales: np.ndarray) -> dict[str, torch.Tensor]:
    """Integer tensors of ``h_s`` for :class:`IntegerHyperSynthesis` (stored with the weights):
    those of :func:`quantize_network` (input ``z_hat``, an integer) plus ``scale_thresholds``
    (int64): the midpoints of ``log_scales`` (natural logs of the scale table ``(L,)``) at the
    last layer's scale."""
    out = quantize_network(h_s, frac_in=0)
    mid = (log_scales[1:] + log_scales[:-1]) / 2
    out["scale_thresholds"] = torch.from_numpy(np.round(mid * 2.0 ** int(out["frac"][-1]))).to(torch.int64)
    return out


class IntegerNetwork:
    """Evaluates a network quantised by :func:`quantize_network` exactly.

    Input: integers (float64 tensor) with the quantisation's ``frac_in`` fractional bits, each
    ``|x| <= 2**24``. Output: the last layer's accumulator divided by ``2**frac``, an exact
    float64 (the accumulator stays below ``2**53``).
    """

    def __init__(self, tensors: dict[str, torch.Tensor]):
        n = len(tensors["shift"])
        self.weights = [tensors[f"layer{i}.weight"].double() for i in range(n)]
        self.biases = [tensors[f"layer{i}.bias"].double() for i in range(n)]
        self.shift = [int(s) for s in tensors["shift"]]
        self.frac = [int(f) for f in tensors["frac"]]
        self.transposed = [bool(t) for t in tensors["transposed"]]
        self.stride = [int(s) for s in tensors["stride"]]
        self._int8: list[exactconv.Layer] | None = None   # built on first use

    def accumulate(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's integer accumulator (float64) for integer input ``x``, computed in
        windows (:func:`vaecodec.transforms.run_tiled`: float64 convolutions unfold their
        input, so one window of the whole image could take gigabytes). Every value is an exact
        integer, so the windows give exactly the whole-image result."""
        up = 1
        for transposed, stride in zip(self.transposed, self.stride):
            up *= stride if transposed else 1
        core, margin = (24, 3) if up > 1 else (96, 4)   # input elements; margin > receptive field
        return run_tiled(self._accumulate, x, up, core, margin, inverse=True)

    def _accumulate(self, x: torch.Tensor) -> torch.Tensor:
        if exactconv.available():
            return torch.stack([self._accumulate_int8(image) for image in x])
        return self._accumulate_float64(x)

    def _accumulate_float64(self, x: torch.Tensor) -> torch.Tensor:
        """The reference method: float64 convolutions, exact below ``2**53``."""
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            k = w.shape[-1]
            if self.transposed[i]:
                s = self.stride[i]
                x = F.conv_transpose2d(x, w, b, stride=s, padding=k // 2, output_padding=s - 1)
            else:
                x = F.conv2d(x, w, b, stride=self.stride[i], padding=k // 2)
            if i < last:
                x = self._activation(x, i)
        return x

    def _activation(self, acc: torch.Tensor, i: int) -> torch.Tensor:
        """Layer ``i``'s output from its accumulator ``acc`` (float64 integers):
        ``min(floor(max(acc, 0) / 2**shift), ACT_MAX)``, exact."""
        return torch.floor(acc.clamp_min(0) * 2.0 ** -self.shift[i]).clamp_max(ACT_MAX)

    def _accumulate_int8(self, x: torch.Tensor) -> torch.Tensor:
        """The same integers from int8 matrix products (:mod:`vaecodec.exactconv`): ``x``
        ``(C, H, W)`` -> ``(C', H', W')`` float64."""
        if self._int8 is None:
            self._int8 = [exactconv.prepare(w, b, t, s) for w, b, t, s in
                          zip(self.weights, self.biases, self.transposed, self.stride)]
        x = x.permute(1, 2, 0)   # channels last
        last = len(self._int8) - 1
        for i, layer in enumerate(self._int8):
            x = exactconv.conv(x, layer).to(torch.float64)   # exact: below 2**53
            if i < last:
                x = self._activation(x, i)
        return x.permute(2, 0, 1)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """The output for integer input ``x``: accumulator over ``2**frac``, exact float64."""
        return self.accumulate(x).mul_(2.0 ** -self.frac[-1])   # exact; in place: no second copy

    __call__ = value


class IntegerHyperSynthesis(IntegerNetwork):
    """Evaluates the quantised ``h_s`` exactly. Built from :func:`quantize_hyper_synthesis`."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__(tensors)
        self.thresholds = tensors["scale_thresholds"].double()

    def __call__(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z_hat`` ``(B, N, h, w)`` integers -> mean ``(B, M, 4h, 4w)`` float32 and scale
        index ``(B, M, 4h, 4w)`` int64 in ``[0, len(scale table) - 1]``."""
        mean, log_scale = self.parameters(z_hat)
        return mean.float(), self.scale_index(log_scale)

    def parameters(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z_hat`` ``(B, N, h, w)`` -> mean and log-scale of ``y`` ``(B, M, 4h, 4w)``, each
        the exact float64 value of the fixed-point result."""
        x = z_hat.detach().to("cpu", torch.float64).round().clamp(-Z_MAX, Z_MAX)
        mean, log_scale = self.value(x).chunk(2, dim=1)
        return mean, log_scale

    def scale_index(self, log_scale: torch.Tensor) -> torch.Tensor:
        """Index ``(same shape, int64)`` of the scale-table entry nearest ``log_scale``
        (float64): the number of thresholds ``<= log_scale``; exact comparisons of float64
        values (the thresholds are the integers ``scale_thresholds`` over ``2**frac``)."""
        return torch.bucketize(log_scale, self.thresholds * 2.0 ** -self.frac[-1], right=True)


def context_input(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Channel-concatenate ``tensors`` ``(B, C_i, h, w)`` (float) into the integer input of a
    channel-context network: ``round(clamp(v, ±CONTEXT_MAX) * 2**CONTEXT_FRAC)`` as float64.
    Rounding of a float is exact, so equal inputs give equal integers on every machine."""
    x = torch.cat([t.to("cpu", torch.float64) for t in tensors], 1)
    # in place: for a whole large image each temporary would be hundreds of megabytes
    return x.clamp_(-CONTEXT_MAX, CONTEXT_MAX).mul_(2.0 ** CONTEXT_FRAC).round_()
