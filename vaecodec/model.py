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

This module is what training differentiates; coding with the trained model (exact integer
entropy model, tables, streams) is :mod:`vaecodec.coder`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .entropy import (SCALE_MIN, FactorizedPrior, add_uniform_noise, gaussian_likelihood,
                      lower_bound, ste_round)
from .integer import CONTEXT_MAX
from .transforms import (analysis_transform, hyper_analysis_transform, hyper_synthesis_transform,
                         slice_transform, synthesis_transform)

STRIDE = 64  # total downsampling of y (16) times z (4)
SLICES = 4   # channel slices of y in a new model (Minnen & Singh 2020 use 10 of M=320)
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


def gain_shift(old, new) -> torch.Tensor:
    """``(Q,)`` float32: how far each quality level's log-gain moves (and its log inverse gain
    the other way) when its λ changes from ``old`` to ``new`` (each ``Q`` λ values):
    ½·log(λ_new/λ_old), as the high-rate optimum quantisation step scales as 1/sqrt(λ)."""
    return 0.5 * torch.log(torch.as_tensor(new, dtype=torch.float32) / torch.as_tensor(old, dtype=torch.float32))


def anchor_mask(h: int, w: int, device=None) -> torch.Tensor:
    """``(1, 1, h, w)`` bool: the checkerboard's anchor positions (row + column even)."""
    rows = torch.arange(h, device=device)[:, None]
    cols = torch.arange(w, device=device)[None, :]
    return ((rows + cols) % 2 == 0)[None, None]


def corrected_non_anchors(mean, log_scale, d_mean, d_log_scale) -> tuple[torch.Tensor, torch.Tensor]:
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

        Each changed level's log-gain moves by :func:`gain_shift` (½·log(λ_new/λ_old)), so
        training continues near the new rate.
        Raises ``ValueError`` if the count differs from ``num_qualities`` or the values are not
        positive and strictly increasing.
        """
        new = torch.tensor(check_lambdas(lambdas, self.num_qualities), dtype=torch.float32)
        shift = gain_shift(self.lambdas.cpu(), new).to(self.log_gain.device)
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
        return corrected_non_anchors(mean, log_scale, *self.spatial[i](inputs).float().chunk(2, 1))

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
