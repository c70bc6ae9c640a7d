"""The mean-scale hyperprior VAE with a channel-wise autoregressive entropy model and gain units.

Model: Minnen, Ballé & Toderici 2018, "Joint Autoregressive and Hierarchical Priors for Learned
Image Compression" (mean-scale hyperprior, no spatial context model), with the channel context
of Minnen & Singh 2020, "Channel-wise autoregressive entropy models for learned image
compression": ``y`` is split into ``slices`` groups of channels, coded one after another; each
slice's Gaussian mean and scale are the hyperprior's, corrected by a small network that also sees
the slices already decoded, and a latent residual prediction (LRP) network reduces each slice's
quantisation error before the synthesis transform. ``slices=1`` is the plain mean-scale
hyperprior. With ``checkerboard``, each slice is itself coded in two halves (He et al. 2021,
"Checkerboard Context Model for Efficient Learned Image Compression"): the *anchors* (positions
with even row + column) under the parameters above, then the other half with its mean and scale
corrected by a *spatial context* network that sees the slice's decoded anchors. ``blocks``
adds ELIC's residual bottleneck blocks to the analysis and synthesis transforms
(:mod:`vaecodec.transforms`).
Rate control: Cui et al. 2021, "Asymmetric Gained Deep Image Compression With Continuous Rate
Adaptation": per quality level a gain vector scales ``y`` before quantisation and
an inverse gain rescales ``y_hat`` before the synthesis transform; fractional qualities
interpolate neighbouring gains geometrically.

As a VAE: the analysis transform is the encoder (the posterior is a unit-width uniform centred on
``y``, sampled by adding uniform noise, the reparameterisation trick); the hyperprior is the prior
of ``y``; the rate term ``-log2 p(y~ | z~) - log2 p(z~)`` is the KL term; MSE is the distortion.

Image tensors are ``(B, 3, H, W)`` in ``[0, 1]`` with ``H`` and ``W`` multiples of :data:`STRIDE`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .entropy import (SCALE_MIN, FactorizedPrior, add_uniform_noise, gaussian_likelihood,
                      lower_bound, ste_round)
from .integer import CONTEXT_MAX
from .transforms import (analysis_transform, hyper_analysis_transform, hyper_synthesis_transform, run_tiled,
                         slice_transform, synthesis_transform)

STRIDE = 64  # total downsampling of y (16) times z (4)
SLICES = 4   # channel slices of y in a new model (Minnen & Singh 2020 use 10 of M=320)
# coding runs the analysis and synthesis transforms in windows of 1024 px plus 64 px of context
# on each side (their receptive-field radius is about 55 px), so memory stays bounded by one
# window whatever the image size, while the latents are those of the whole image
WINDOW, WINDOW_MARGIN = 1024, 64
SYNTHESIS_WINDOW = 768
MAX_BLOCKS = 16   # residual blocks per transform stage (ELIC uses 3)
CONTEXT_CLAMP = float(CONTEXT_MAX)   # |input| bound of the slice networks (the exact path's)

# Rate-distortion trade-offs of the 8 integer quality levels (MSE on 0..255 pixel values);
# the λ ladder of CompressAI's pretrained hyperprior models, spanning ~0.1-2 bpp on Kodak once
# trained to convergence. A less trained model spends more bits at each λ; the shipped weights
# record their own ladder (``lambdas``), and ``vaecodec train --lambdas`` changes it.
LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)


def check_lambdas(lambdas, count: int = len(LAMBDAS)) -> tuple[float, ...]:
    """A λ ladder as floats; raises ``ValueError`` unless ``lambdas`` is a sequence (not a
    string) of ``count`` numbers, positive, finite in float32 and strictly increasing."""
    if isinstance(lambdas, (str, bytes)):
        raise ValueError(f"λ values must be a sequence of numbers, got the string {lambdas!r}")
    try:
        values = tuple(float(v) for v in lambdas)
    except (TypeError, ValueError):
        raise ValueError(f"λ values must be numbers, got {lambdas!r}") from None
    if len(values) != count:
        raise ValueError(f"expected {count} λ values, got {len(values)}")
    if not all(1e-30 < v < 1e30 for v in values):   # also refuses NaN; float32 keeps these
        raise ValueError("λ values must be positive finite numbers (between 1e-30 and 1e30)")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError("λ values must be positive and strictly increasing")
    return values


def anchor_mask(h: int, w: int, device=None) -> torch.Tensor:
    """``(1, 1, h, w)`` bool: the checkerboard's anchor positions (row + column even)."""
    rows = torch.arange(h, device=device)[:, None]
    cols = torch.arange(w, device=device)[None, :]
    return ((rows + cols) % 2 == 0)[None, None]


def _corrected_non_anchors(mean, log_scale, d_mean, d_log_scale) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean + d_mean`` and ``log_scale + d_log_scale`` at the checkerboard's non-anchor
    positions; the anchors keep ``mean`` and ``log_scale`` unchanged (float and exact path)."""
    keep = anchor_mask(*mean.shape[2:], mean.device)
    return torch.where(keep, mean, mean + d_mean), torch.where(keep, log_scale, log_scale + d_log_scale)


def _mixed(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Training quantisation of ``v = y - mean``: noisy for the rate, rounded (straight
    through) for the synthesis."""
    return add_uniform_noise(v), ste_round(v)


def _rounded(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coding-time quantisation of ``v = y - mean``: rounded for both."""
    r = torch.round(v)
    return r, r


@dataclass
class ForwardOutput:
    """Training forward pass: reconstruction ``(B,3,H,W)`` and likelihoods of ``y`` and ``z``."""
    x_hat: torch.Tensor
    y_likelihoods: torch.Tensor
    z_likelihoods: torch.Tensor


class MeanScaleHyperprior(nn.Module):
    """Mean-scale hyperprior with gain units and a channel context over ``slices`` slices of
    ``y``. ``N`` filters, ``M`` latent channels (a multiple of ``slices``), ``blocks`` residual
    blocks per stage of the transforms (0 to :data:`MAX_BLOCKS`); raises ``ValueError``
    otherwise."""

    def __init__(self, N: int = 128, M: int = 192, lambdas=LAMBDAS, slices: int = SLICES,
                 checkerboard: bool = False, blocks: int = 0):
        super().__init__()
        if slices < 1 or M % slices:
            raise ValueError(f"M={M} latent channels do not split into {slices} slices")
        if not 0 <= blocks <= MAX_BLOCKS:
            raise ValueError(f"blocks must be 0 to {MAX_BLOCKS}, got {blocks}")
        self.N, self.M, self.slices, self.checkerboard = N, M, slices, bool(checkerboard)
        self.blocks = blocks
        ms = M // slices
        # checkerboard: per slice, its mean and log-scale plus its decoded anchors -> corrections
        # of the mean and log-scale of its non-anchors
        self.spatial = nn.ModuleList(slice_transform(3 * ms, N // 2, 2 * ms)
                                     for _ in range(slices if checkerboard else 0))
        # slice i: context from its hyperprior mean and log-scale and slices 0..i-1 (none for
        # slice 0, whose parameters are the hyperprior's); LRP from its mean and slices 0..i
        self.context = nn.ModuleList(slice_transform((2 + i) * ms, N, 2 * ms) for i in range(1, slices))
        self.lrp = nn.ModuleList(slice_transform((2 + i) * ms, N, ms)
                                 for i in range(slices if slices > 1 else 0))
        self.register_buffer("lambdas", torch.tensor(lambdas, dtype=torch.float32))
        self.g_a = analysis_transform(N, M, blocks)
        self.g_s = synthesis_transform(N, M, blocks)
        self.h_a = hyper_analysis_transform(N, M)
        self.h_s = hyper_synthesis_transform(N, M)
        self.prior = FactorizedPrior(N)
        # Gains in the log domain, initialised at the high-rate optimum step ∝ 1/sqrt(λ).
        init = 0.5 * torch.log(self.lambdas / self.lambdas[len(lambdas) // 2])
        self.log_gain = nn.Parameter(init[:, None].repeat(1, M))
        self.log_inv_gain = nn.Parameter(-init[:, None].repeat(1, M))

    @property
    def architecture(self) -> dict:
        """The constructor's shape arguments: ``N``, ``M``, ``slices``, ``checkerboard``, ``blocks``
        (as :func:`vaecodec.train.saved_architecture` reads them from a checkpoint)."""
        return {"N": self.N, "M": self.M, "slices": self.slices, "checkerboard": self.checkerboard,
                "blocks": self.blocks}

    @property
    def num_qualities(self) -> int:
        return len(self.lambdas)

    @torch.no_grad()
    def set_lambdas(self, lambdas) -> None:
        """Replace the λ ladder (one λ per quality level, increasing, MSE on 0..255 values).

        Each changed level's log-gain moves by ½·log(λ_new/λ_old) (the high-rate optimum
        quantisation step scales as 1/sqrt(λ)), so training continues near the new rate.
        Raises ``ValueError`` if the count differs from ``num_qualities`` or the values are not
        positive and strictly increasing.
        """
        new = torch.tensor(check_lambdas(lambdas, self.num_qualities), dtype=torch.float32)
        shift = 0.5 * torch.log(new / self.lambdas.cpu()).to(self.log_gain.device)
        self.log_gain.add_(shift[:, None])
        self.log_inv_gain.sub_(shift[:, None])
        self.lambdas.copy_(new.to(self.lambdas.device))

    def gains(self, quality: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gain and inverse gain ``(M,)`` for ``quality`` in ``[1, num_qualities]``.

        Integer qualities select a trained level; fractional ones interpolate neighbours
        geometrically (linearly in the log domain). Raises ``ValueError`` outside the range.
        """
        q = float(quality)
        if not 1 <= q <= self.num_qualities:
            raise ValueError(f"quality must be between 1 and {self.num_qualities}, got {quality}")
        lo = min(int(math.floor(q)), self.num_qualities - 1)
        t = q - lo
        log_g = (1 - t) * self.log_gain[lo - 1] + t * self.log_gain[lo]
        log_ig = (1 - t) * self.log_inv_gain[lo - 1] + t * self.log_inv_gain[lo]
        return torch.exp(log_g), torch.exp(log_ig)

    def lmbda(self, quality: float) -> float:
        """λ (MSE on 0..255 values) of ``quality`` in ``[1, num_qualities]``: the ladder's value at
        integer qualities, geometric interpolation in between (as :meth:`gains` interpolates).
        Raises ``ValueError`` outside the range."""
        q = float(quality)
        if not 1 <= q <= self.num_qualities:
            raise ValueError(f"quality must be between 1 and {self.num_qualities}, got {quality}")
        lo = min(int(math.floor(q)), self.num_qualities - 1)
        t = q - lo
        a, b = float(self.lambdas[lo - 1]), float(self.lambdas[lo])
        return math.exp((1 - t) * math.log(a) + t * math.log(b))

    def slice_parameters(self, i: int, mean: torch.Tensor, log_scale: torch.Tensor,
                         decoded: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-scale of slice ``i`` of ``y`` (each ``(B, M/slices, h, w)``), float path.

        ``mean``, ``log_scale``: the hyperprior's for that slice; ``decoded``: ``y_hat`` of
        slices ``0..i-1``. Slice 0 keeps the hyperprior's parameters.
        """
        if i == 0:
            return mean, log_scale
        inputs = torch.cat([mean, log_scale, *decoded], 1).clamp(-CONTEXT_CLAMP, CONTEXT_CLAMP)
        d_mean, d_log_scale = self.context[i - 1](inputs).float().chunk(2, 1)
        return mean + d_mean, log_scale + d_log_scale

    def spatial_parameters(self, i: int, mean: torch.Tensor, log_scale: torch.Tensor,
                           anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-scale of slice ``i`` (each ``(B, M/slices, h, w)``) with the checkerboard
        context's corrections at the non-anchor positions, float path. ``mean``, ``log_scale``:
        from :meth:`slice_parameters`; ``anchors``: the slice's ``y_hat`` at the anchor
        positions, zero elsewhere. Anchor positions keep ``mean`` and ``log_scale``."""
        inputs = torch.cat([mean, log_scale, anchors], 1).clamp(-CONTEXT_CLAMP, CONTEXT_CLAMP)
        return _corrected_non_anchors(mean, log_scale, *self.spatial[i](inputs).float().chunk(2, 1))

    def residual(self, i: int, mean: torch.Tensor, decoded: list[torch.Tensor]) -> torch.Tensor | float:
        """Latent residual prediction for slice ``i``: a correction in ``(-1/2, 1/2)`` added to
        its ``y_hat`` before synthesis, from the slice's hyperprior ``mean`` and ``decoded``
        (``y_hat`` of slices ``0..i``). ``0.0`` without slices."""
        if not len(self.lrp):
            return 0.0
        inputs = torch.cat([mean, *decoded], 1)
        # in place where no gradient is kept (coding): the same values, one temporary less
        inputs = inputs.clamp(-CONTEXT_CLAMP, CONTEXT_CLAMP) if torch.is_grad_enabled() \
            else inputs.clamp_(-CONTEXT_CLAMP, CONTEXT_CLAMP)
        return 0.5 * torch.tanh(self.lrp[i](inputs).float())

    def latents(self, y: torch.Tensor, hyper: torch.Tensor, noisy: bool = False,
                quantize=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantise ``y`` ``(B, M, h, w)`` slice by slice under the hyperprior's parameters
        ``hyper`` (``h_s`` output, ``(B, 2M, h, w)``: means then log-scales).

        Returns the synthesis input (``y_hat`` plus latent residual prediction) and the
        likelihoods of ``y`` (``(B, M, h, w)`` each). ``noisy``: training (likelihoods of
        ``y`` plus uniform noise, straight-through rounding, Minnen & Singh 2020's mixed
        quantisation); otherwise deterministic rounding, as the coder sees it. ``quantize``,
        if given, replaces both: a function of ``v = y - mean`` returning the value whose
        likelihood counts and the value the synthesis sees (as ``value + mean``), e.g. the
        soft rounding of :mod:`vaecodec.refine`.
        """
        custom = quantize is not None
        if not custom:
            quantize = _mixed if noisy else _rounded
        mean_h, log_scale_h = hyper.float().chunk(2, 1)
        y = y.float()
        decoded, refined, likelihoods = [], [], []
        for i, (y_i, m_h, l_h) in enumerate(zip(y.chunk(self.slices, 1), mean_h.chunk(self.slices, 1),
                                                 log_scale_h.chunk(self.slices, 1))):
            mean, log_scale = self.slice_parameters(i, m_h, l_h, decoded)
            if self.checkerboard:   # anchors first: their mean is the same under the corrections
                anchor = anchor_mask(*y_i.shape[2:], y_i.device)
                # the built-in roundings of the anchors come out the same again below (and
                # draw no noise here); a custom quantiser's draw is kept for the anchors
                counted_a, seen_a = quantize(y_i - mean) if custom else (None, ste_round(y_i - mean))
                mean, log_scale = self.spatial_parameters(i, mean, log_scale, (seen_a + mean) * anchor)
            counted, seen = quantize(y_i - mean)
            if self.checkerboard and custom:
                counted, seen = torch.where(anchor, counted_a, counted), torch.where(anchor, seen_a, seen)
            scale = lower_bound(torch.exp(log_scale.clamp(max=6.0)), SCALE_MIN)
            likelihoods.append(gaussian_likelihood(counted, scale))
            y_hat = seen + mean
            decoded.append(y_hat)
            refined.append(y_hat + self.residual(i, m_h, decoded))
        return torch.cat(refined, 1), torch.cat(likelihoods, 1)

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> ForwardOutput:
        """Training pass with per-sample integer quality ``level`` (``(B,)`` long, 0-based).

        Rate uses additive uniform noise; the synthesis, hyper-synthesis and channel context
        see rounded values through the straight-through estimator (mixed quantisation).
        """
        gain = torch.exp(self.log_gain[level])[:, :, None, None]
        inv_gain = torch.exp(self.log_inv_gain[level])[:, :, None, None]
        y = self.g_a(x) * gain
        z = self.h_a(y)
        z_likelihoods = self.prior.likelihood(add_uniform_noise(z).float())
        y_hat, y_likelihoods = self.latents(y, self.h_s(ste_round(z)), noisy=True)
        x_hat = self.g_s(y_hat * inv_gain)
        return ForwardOutput(x_hat, y_likelihoods, z_likelihoods)

    # ------------------------------------------------------------------ coding (exported model)
    # ``self.coding`` (vaecodec.weights.CodingModels) is attached by vaecodec.weights.load.

    def exact_slice_parameters(self, i: int, mean: torch.Tensor, log_scale: torch.Tensor,
                               decoded: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Coding-time mean and log-scale of slice ``i`` of ``y`` (each ``(1, M/slices, h, w)``,
        float64), from the exact hyper-synthesis's float64 ``mean`` and ``log_scale`` (all ``M``
        channels) and the slices ``decoded`` so far (float32). Exact integer network and one
        float64 addition: identical on every machine."""
        from .integer import context_input
        part = slice(i * self.M // self.slices, (i + 1) * self.M // self.slices)
        mean, log_scale = mean[:, part], log_scale[:, part]
        if i > 0:
            d_mean, d_log_scale = self.coding.context[i - 1](
                context_input([mean, log_scale, *decoded])).chunk(2, 1)
            mean, log_scale = mean + d_mean, log_scale + d_log_scale
        return mean, log_scale

    def exact_spatial_parameters(self, i: int, mean: torch.Tensor, log_scale: torch.Tensor,
                                 anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Coding-time version of :meth:`spatial_parameters`: float64 ``mean`` and ``log_scale``
        of :meth:`exact_slice_parameters` with the exact checkerboard context's corrections at
        the non-anchor positions; ``anchors``: the slice's ``y_hat`` (float32) at the anchors,
        zero elsewhere."""
        from .integer import context_input
        return _corrected_non_anchors(mean, log_scale,
                                      *self.coding.spatial[i](context_input([mean, log_scale, anchors])).chunk(2, 1))

    def _halves(self, shape) -> list[torch.Tensor]:
        """Positions of a slice ``shape`` ``(1, M/slices, h, w)`` in coding order, as bool
        masks of that shape: everything at once, or with ``checkerboard`` the anchors, then the
        rest (whose parameters :meth:`exact_spatial_parameters` corrects in between)."""
        if not self.checkerboard:
            return [torch.ones(shape, dtype=torch.bool)]
        anchor = anchor_mask(*shape[2:]).expand(shape)
        return [anchor, ~anchor]

    @torch.no_grad()
    def analyse(self, x: torch.Tensor, quality: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The analysis transforms' latents of image ``x`` ``(B, 3, H, W)`` in ``[0, 1]`` (H, W
        multiples of 64) at ``quality`` in ``[1, num_qualities]``: gained ``y``
        ``(B, M, H/16, W/16)`` and ``z = h_a(y)`` ``(B, N, H/64, W/64)``, neither rounded.
        Raises ``ValueError`` for a quality outside the range."""
        gain, _ = self.gains(quality)
        y = self.analysis(x) * gain.detach()[:, None, None]
        return y, self.h_a(y)

    def analysis(self, x: torch.Tensor) -> torch.Tensor:
        """``g_a(x)`` for coding: ``(1, 3, H, W)`` -> ``(1, M, H/16, W/16)``, computed in windows
        of :data:`WINDOW` px with :data:`WINDOW_MARGIN` px of context
        (:func:`vaecodec.transforms.run_tiled`); an image of at most 1152 px a side in one go."""
        return run_tiled(self.g_a, x, 16, WINDOW, WINDOW_MARGIN)

    def synthesis(self, y: torch.Tensor) -> torch.Tensor:
        """``g_s(y)`` for coding: ``(1, M, h, w)`` -> ``(1, 3, 16h, 16w)``; ``y`` of an image of
        at most 1152 px a side in one go (as :meth:`analysis`), larger ones in windows of
        :data:`SYNTHESIS_WINDOW` px with :data:`WINDOW_MARGIN` px of context."""
        whole = (WINDOW + 2 * WINDOW_MARGIN) // 16
        if y.shape[2] <= whole and y.shape[3] <= whole:   # as the analysis: in one go
            return self.g_s(y)
        # smaller windows than the analysis': the synthesis' activations at full resolution
        # dominate a decoder's peak memory
        return run_tiled(self.g_s, y, 16, SYNTHESIS_WINDOW // 16, WINDOW_MARGIN // 16, inverse=True)

    def compress(self, x: torch.Tensor, quality: float) -> dict:
        """Image ``(1, 3, H, W)`` in ``[0, 1]`` (H, W multiples of 64) -> the coded streams of
        :meth:`code_latents` for the analysis transforms' latents (:meth:`analyse`). Refined
        latents (:func:`vaecodec.refine.refine_latents`) go to :meth:`code_latents` directly,
        as :func:`vaecodec.codec.compress_array` does."""
        return self.code_latents(*self.analyse(x, quality))

    @torch.no_grad()
    def code_latents(self, y: torch.Tensor, z: torch.Tensor) -> dict:
        """Entropy-code gained latents ``y`` ``(1, M, h, w)`` and ``z`` ``(1, N, h/4, w/4)`` (as
        :meth:`analyse` or :func:`vaecodec.refine.refine_latents` give them; rounded here).

        Returns ``{"z_shape", "y_shape", "z_stream", "y_stream", "escapes"}``. ``z`` is rounded
        and coded with the per-channel tables; ``y`` slice by slice (with ``checkerboard``, each
        slice's anchors, then its other half) as ``round(y - mean)`` with the table of its
        snapped scale, both from :meth:`exact_slice_parameters` and
        :meth:`exact_spatial_parameters`. Needs the exported coding models (``self.coding``).
        """
        from .entropy import IndexedEncoder, encode_indexed
        from .integer import Z_MAX
        z_hat = torch.round(z).clamp(-Z_MAX, Z_MAX)
        channel = torch.arange(z_hat.shape[1])[None, :, None, None].expand_as(z_hat)
        z_stream, z_esc = encode_indexed(z_hat.long().numpy(), channel.numpy(), self.coding.z_tables)
        mean_h, log_scale_h = self.coding.h_s.parameters(z_hat)
        encoder = IndexedEncoder(self.coding.y_tables)
        decoded = []
        for i, y_i in enumerate(y.chunk(self.slices, 1)):
            mean, log_scale = self.exact_slice_parameters(i, mean_h, log_scale_h, decoded)
            y_hat = torch.zeros_like(y_i)
            for half, where in enumerate(self._halves(y_i.shape)):
                if half:   # the non-anchors: parameters corrected from the anchors' y_hat
                    mean, log_scale = self.exact_spatial_parameters(i, mean, log_scale, y_hat)
                m32, index = mean.float(), self.coding.h_s.scale_index(log_scale)
                symbols = torch.round(y_i - m32).clamp(-2**20, 2**20)
                encoder.encode(symbols[where].long().numpy(), index[where].numpy())
                y_hat = torch.where(where, symbols + m32, y_hat)
            decoded.append(y_hat)
        y_stream, y_esc = encoder.finish()
        return {"z_shape": tuple(z_hat.shape[2:]), "y_shape": tuple(y.shape[2:]),
                "z_stream": z_stream, "y_stream": y_stream, "escapes": z_esc + y_esc}

    @torch.no_grad()
    def _decode(self, streams: dict) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        from .entropy import EntropyCodingError, EscapeReader, IndexedDecoder, decode_indexed
        zh, zw = streams["z_shape"]
        yh, yw = streams["y_shape"]
        if (yh, yw) != (4 * zh, 4 * zw):
            raise EntropyCodingError(f"latent shapes {streams['y_shape']} and {streams['z_shape']} disagree")
        escapes = EscapeReader(streams["escapes"])
        channel = np.broadcast_to(np.arange(self.N)[None, :, None, None], (1, self.N, zh, zw))
        z_hat = torch.from_numpy(decode_indexed(streams["z_stream"], channel, self.coding.z_tables, escapes))
        mean_h, log_scale_h = self.coding.h_s.parameters(z_hat.double())
        decoder = IndexedDecoder(streams["y_stream"], self.coding.y_tables, escapes)
        decoded = []
        shape = (1, self.M // self.slices, yh, yw)
        for i in range(self.slices):
            mean, log_scale = self.exact_slice_parameters(i, mean_h, log_scale_h, decoded)
            y_hat = torch.zeros(shape)
            for half, where in enumerate(self._halves(shape)):
                if half:
                    mean, log_scale = self.exact_spatial_parameters(i, mean, log_scale, y_hat)
                m32, index = mean.float(), self.coding.h_s.scale_index(log_scale)
                symbols = torch.zeros(shape)
                symbols[where] = torch.from_numpy(decoder.decode(index[where].numpy())).clamp(-2**20, 2**20).float()
                y_hat = torch.where(where, symbols + m32, y_hat)
            decoded.append(y_hat)
        decoder.finish()
        escapes.finish()
        return z_hat, decoded, mean_h.float()

    @torch.no_grad()
    def decode_latents(self, streams: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Entropy-decode the streams of :meth:`compress` to ``z_hat`` ``(1, N, h, w)`` and
        ``y_hat`` ``(1, M, 4h, 4w)`` (gained domain, before latent residual prediction).
        Everything here is exact integer or table arithmetic, identical on every machine.
        Raises :class:`vaecodec.entropy.EntropyCodingError` if the streams are inconsistent."""
        z_hat, decoded, _ = self._decode(streams)
        return z_hat, torch.cat(decoded, 1)

    @torch.no_grad()
    def decompress(self, streams: dict, quality: float) -> torch.Tensor:
        """Inverse of :meth:`compress`: streams -> ``x_hat`` ``(1, 3, 16*h_y, 16*w_y)`` in [0, 1].

        Raises :class:`vaecodec.entropy.EntropyCodingError` if the streams are inconsistent.
        """
        _, inv_gain = self.gains(quality)
        _, decoded, mean_h = self._decode(streams)
        means = mean_h.chunk(self.slices, 1)
        y_hat = torch.cat([d + self.residual(i, means[i], decoded[:i + 1]) for i, d in enumerate(decoded)], 1)
        del decoded, means, mean_h   # a large image's latents: free what synthesis does not need
        return self.synthesis(y_hat.mul_(inv_gain[:, None, None])).clamp_(0, 1)
