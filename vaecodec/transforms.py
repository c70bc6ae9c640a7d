"""Analysis, synthesis and hyper transforms of the mean-scale hyperprior.

Architecture of Minnen, Ballé & Toderici 2018, "Joint Autoregressive and Hierarchical Priors for
Learned Image Compression" (the mean-scale hyperprior, without the context model), built on the
scale hyperprior of Ballé, Minnen, Singh, Hwang & Johnston 2018, "Variational image compression
with a scale hyperprior". GDN is from Ballé, Laparra & Simoncelli 2016, "Density modeling of
images using a generalized normalization transformation".

Optionally (``blocks > 0``) the analysis and synthesis transforms get residual bottleneck
blocks at 1/4 and 1/8 resolution, as in He, Yang, Peng, Ma, Qin & Wang 2022, "ELIC: Efficient
Learned Image Compression with Unevenly Grouped Space-Channel Contextual Adaptive Coding"; they
start as the identity, so they can be added to a trained model without changing its function.

Shapes (N filters, M latent channels, image ``(B, 3, H, W)`` with H, W multiples of 64):

- analysis ``g_a``:        ``(B, 3, H, W)``       -> ``y`` ``(B, M, H/16, W/16)``
- synthesis ``g_s``:       ``(B, M, H/16, W/16)`` -> ``x_hat`` ``(B, 3, H, W)``
- hyper-analysis ``h_a``:  ``(B, M, H/16, W/16)`` -> ``z`` ``(B, N, H/64, W/64)``
- hyper-synthesis ``h_s``: ``(B, N, H/64, W/64)`` -> ``(B, 2M, H/16, W/16)`` (mean, scale parameter)

The hyper-synthesis uses only convolutions and ReLU so that it can be evaluated exactly in
integer arithmetic at coding time (see :mod:`vaecodec.integer`).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class GDN(nn.Module):
    """Generalized divisive normalization (Ballé et al. 2016), or its inverse (IGDN).

    ``y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)`` (GDN) or ``x_i * sqrt(...)`` (IGDN).
    ``beta`` and ``gamma`` are kept non-negative by a square reparameterisation.
    Input and output shape ``(B, C, H, W)``.
    """

    def __init__(self, channels: int, inverse: bool = False, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self.beta_sqrt = nn.Parameter(torch.ones(channels))
        self.gamma_sqrt = nn.Parameter(torch.eye(channels) * gamma_init**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.beta_sqrt**2 + 1e-6
        gamma = self.gamma_sqrt**2
        norm = F.conv2d(x * x, gamma[:, :, None, None], beta)
        return x * torch.sqrt(norm) if self.inverse else x * torch.rsqrt(norm)


def conv(cin: int, cout: int, kernel: int = 5, stride: int = 2) -> nn.Conv2d:
    """'Same'-padded convolution that downsamples by ``stride``."""
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)


def deconv(cin: int, cout: int, kernel: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    """Transposed convolution that upsamples by exactly ``stride``."""
    return nn.ConvTranspose2d(cin, cout, kernel, stride=stride, padding=kernel // 2,
                              output_padding=stride - 1)


def subpixel_kernel(weight: torch.Tensor, stride: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """The convolution kernel equivalent to a transposed convolution of :func:`deconv`'s kind.

    ``weight`` ``(C, C', K, K)`` (odd ``K``, padding ``K // 2``, output padding ``stride - 1``)
    -> ``(kernel, padding)``: ``kernel`` ``(stride²·C', C, T, T)`` whose output channel
    ``stride²·c + stride·a + b`` is output phase ``(a, b)`` (row ``stride·i + a``, column
    ``stride·j + b``) of channel ``c``, to be applied to the input zero-padded by ``padding``
    ``(left, right, top, bottom)`` and followed by a pixel shuffle. Only values are copied
    (and zeros added), so integer weights stay the same integers.
    """
    k, s, p = weight.shape[-1], stride, weight.shape[-1] // 2
    # tap t of phase a reads input row i + t + lo and kernel row a + p - s·(t + lo)
    lo = min(-((p + a - k + 1) // -s) for a in range(s))   # ceil division
    hi = max((p + a) // s for a in range(s))
    taps = hi - lo + 1
    index = torch.tensor([[a + p - s * (t + lo) for t in range(taps)] for a in range(s)])
    index = torch.where((index >= 0) & (index < k), index, k)   # k: a zero row/column
    padded = F.pad(weight.detach(), (0, 1, 0, 1))
    sub = padded[:, :, index][..., index]   # (C, C', s, taps, s, taps): (a, t_row, b, t_col)
    sub = sub.permute(1, 2, 4, 0, 3, 5).reshape(weight.shape[1] * s * s, weight.shape[0], taps, taps)
    return sub, (-lo, hi, -lo, hi)


class SubpixelConvTranspose2d(nn.ConvTranspose2d):
    """A transposed convolution of :func:`deconv`'s kind (odd kernel ``K``, stride ``s``,
    padding ``K // 2``, output padding ``s - 1``: ``(B, C, H, W)`` -> ``(B, C', sH, sW)``),
    computed as an ordinary convolution with ``s²·C'`` output channels followed by a pixel
    shuffle (Shi et al. 2016, "Real-Time Single Image and Video Super-Resolution Using an
    Efficient Sub-Pixel Convolutional Neural Network"): output phase ``(a, b)`` (row ``s·i + a``,
    column ``s·j + b``) is channel ``s²·c + s·a + b`` of the convolution. The same function up
    to float rounding; only the summation order and some zero taps differ (a 5x5 stride-2
    kernel becomes 3x3 on each of 4 phases: 36 taps for 25).

    Its parameters are those of the transposed convolution (same names, shapes and values, so
    the ``state_dict`` is unchanged); the convolution's weights are derived from them when
    built (:meth:`from_transposed`) and again whenever the parameters were changed in place.
    """

    @classmethod
    def from_transposed(cls, layer: nn.ConvTranspose2d) -> "SubpixelConvTranspose2d":
        """The same layer (it shares ``layer``'s parameter tensors) computed as convolution and
        pixel shuffle. Raises ``ValueError`` for a transposed convolution not of :func:`deconv`'s
        kind (even, non-square or dilated kernel, groups, other padding)."""
        k, s = layer.kernel_size[0], layer.stride[0]
        if (layer.kernel_size != (k, k) or layer.stride != (s, s) or k % 2 == 0
                or layer.padding != (k // 2, k // 2) or layer.output_padding != (s - 1, s - 1)
                or layer.dilation != (1, 1) or layer.groups != 1 or layer.padding_mode != "zeros"):
            raise ValueError(f"not a 'same' transposed convolution with an odd square kernel: {layer}")
        new = cls(layer.in_channels, layer.out_channels, k, stride=s, padding=k // 2,
                  output_padding=s - 1, bias=layer.bias is not None)
        new.weight, new.bias = layer.weight, layer.bias
        new._derive()
        return new

    def _key(self) -> tuple:
        return tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in (self.weight, self.bias)
                     if p is not None)

    @torch.no_grad()
    def _derive(self) -> None:
        sub, self.subpixel_padding = subpixel_kernel(self.weight, self.stride[0])
        layout = torch.channels_last if self.weight.is_contiguous(memory_format=torch.channels_last) \
            and not self.weight.is_contiguous() else torch.contiguous_format
        self.subpixel_weight = sub.contiguous(memory_format=layout)
        self.subpixel_bias = None if self.bias is None else self.bias.detach().repeat_interleave(
            self.stride[0] ** 2)
        self.subpixel_key = self._key()

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if output_size is not None:
            raise ValueError("output_size is not supported: the output is exactly stride times the input")
        if self.subpixel_key != self._key():   # parameters changed (load_state_dict, .to(...))
            self._derive()
        left, right, top, bottom = self.subpixel_padding
        if (left, top) == (right, bottom):
            y = F.conv2d(x, self.subpixel_weight, self.subpixel_bias, padding=left)
        else:
            y = F.conv2d(F.pad(x, self.subpixel_padding), self.subpixel_weight, self.subpixel_bias)
        return F.pixel_shuffle(y, self.stride[0])


class ResidualBottleneck(nn.Module):
    """ELIC's residual bottleneck block: ``x + conv1x1(relu(conv3x3(relu(conv1x1(x)))))`` with
    ``channels // 2`` channels inside. Shape-preserving ``(B, C, H, W)``. The last convolution
    starts at zero, so a new block is the identity until trained."""

    def __init__(self, channels: int):
        super().__init__()
        mid = channels // 2
        self.net = nn.Sequential(conv(channels, mid, 1, 1), nn.ReLU(inplace=True), conv(mid, mid, 3, 1),
                                 nn.ReLU(inplace=True), conv(mid, channels, 1, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def _with_blocks(layers: list[nn.Module], after: tuple[int, ...], channels: int, blocks: int) -> nn.Sequential:
    """``nn.Sequential`` of ``layers`` named ``"0"``, ``"1"``, ... as a plain one would be (so
    weights of a model without blocks still load), with ``blocks`` residual bottleneck blocks
    (``"res{i}_{k}"``) after each layer index in ``after``."""
    named = []
    for i, layer in enumerate(layers):
        named.append((str(i), layer))
        if i in after:
            named += [(f"res{i}_{k}", ResidualBottleneck(channels)) for k in range(blocks)]
    return nn.Sequential(OrderedDict(named))


def analysis_transform(N: int, M: int, blocks: int = 0) -> nn.Sequential:
    """``g_a``: four 5x5 stride-2 convolutions with GDN; ``(B,3,H,W)`` -> ``(B,M,H/16,W/16)``;
    ``blocks`` residual bottleneck blocks after the GDNs at 1/4 and 1/8 resolution."""
    return _with_blocks([conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M)],
                        (3, 5), N, blocks)


def synthesis_transform(N: int, M: int, blocks: int = 0) -> nn.Sequential:
    """``g_s``: four 5x5 stride-2 transposed convolutions with IGDN; mirror of ``g_a``
    (``blocks`` residual bottleneck blocks after the IGDNs at 1/8 and 1/4 resolution)."""
    return _with_blocks([deconv(M, N), GDN(N, inverse=True), deconv(N, N), GDN(N, inverse=True),
                         deconv(N, N), GDN(N, inverse=True), deconv(N, 3)], (1, 3), N, blocks)


def hyper_analysis_transform(N: int, M: int) -> nn.Sequential:
    """``h_a``: ``(B,M,h,w)`` -> ``z`` ``(B,N,h/4,w/4)`` (Minnen et al. 2018, no absolute value)."""
    return nn.Sequential(conv(M, N, 3, 1), nn.LeakyReLU(inplace=True), conv(N, N),
                         nn.LeakyReLU(inplace=True), conv(N, N))


def hyper_synthesis_transform(N: int, M: int) -> nn.Sequential:
    """``h_s``: ``z_hat`` ``(B,N,h/4,w/4)`` -> ``(B,2M,h,w)``: per-latent mean and scale parameter.

    Convolutions and ReLU only, so that :func:`vaecodec.integer.IntegerHyperSynthesis.from_float`
    can turn it into an exact fixed-point network.
    """
    return nn.Sequential(deconv(N, M), nn.ReLU(inplace=True), deconv(M, M * 3 // 2),
                         nn.ReLU(inplace=True), conv(M * 3 // 2, 2 * M, 3, 1))



def slice_transform(cin: int, hidden: int, cout: int) -> nn.Sequential:
    """A network of the channel-wise autoregressive entropy model (Minnen & Singh 2020,
    "Channel-wise autoregressive entropy models for learned image compression"), used twice
    per slice of ``y``:

    - *channel context*: the hyperprior's mean and log-scale of the slice plus the already
      decoded slices ``y_hat`` -> corrections of that mean and log-scale;
    - *latent residual prediction*: the slice's hyperprior mean plus the decoded slices so far
      -> a correction of the slice's quantisation error (decoder side, float only).

    ``(B, cin, h, w)`` -> ``(B, cout, h, w)``: three 3x3 convolutions with ReLU, so that the
    context runs exactly in integers at coding time (:mod:`vaecodec.integer`). The last layer
    starts at zero, so a new network changes nothing until trained.
    """
    net = nn.Sequential(conv(cin, hidden, 3, 1), nn.ReLU(inplace=True), conv(hidden, hidden, 3, 1),
                        nn.ReLU(inplace=True), conv(hidden, cout, 3, 1))
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def run_tiled(transform, x: torch.Tensor, scale: int, core: int, margin: int, inverse: bool = False,
              out_channels: int | None = None) -> torch.Tensor:
    """``transform(x)`` computed window by window, so memory is bounded by one window.

    ``x`` is ``(1, C, H, W)``. The analysis transform (``inverse=False``) maps ``H`` to
    ``H / scale``; the synthesis transform (``inverse=True``) maps ``H`` to ``H * scale``. The
    input is cut into cores of ``core`` elements (a multiple of ``scale`` for the analysis),
    each run with ``margin`` more elements of real input on every side that has some (zero
    padding only at the image border, as for the whole image), and only the core's part of the
    output is kept. With ``margin`` at least the transform's receptive-field radius (about 55
    pixels, 3.5 latents, for this package's 5x5 stride-2 transforms with residual blocks), the
    result equals the untiled transform up to float rounding; an input that fits in one window
    is computed exactly as ``transform(x)``. ``out_channels``: channels of the output (default
    those of the first window's output).
    """
    h, w = x.shape[2:]
    if h <= core + 2 * margin and w <= core + 2 * margin:
        return transform(x)
    out = None
    for top in range(0, h, core):
        for left in range(0, w, core):
            t0, l0 = max(0, top - margin), max(0, left - margin)
            b1, r1 = min(h, top + core + margin), min(w, left + core + margin)
            y = transform(x[:, :, t0:b1, l0:r1])
            ch, cw = min(core, h - top), min(core, w - left)
            if inverse:
                rows = slice((top - t0) * scale, (top - t0 + ch) * scale)
                cols = slice((left - l0) * scale, (left - l0 + cw) * scale)
                dest = (slice(top * scale, (top + ch) * scale), slice(left * scale, (left + cw) * scale))
            else:
                rows = slice((top - t0) // scale, (top - t0 + ch) // scale)
                cols = slice((left - l0) // scale, (left - l0 + cw) // scale)
                dest = (slice(top // scale, (top + ch) // scale), slice(left // scale, (left + cw) // scale))
            if out is None:
                size = (h * scale, w * scale) if inverse else (h // scale, w // scale)
                out = y.new_empty((x.shape[0], out_channels or y.shape[1], *size))
            out[:, :, dest[0], dest[1]] = y[:, :, rows, cols]
            del y
    return out
