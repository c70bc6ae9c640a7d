"""The mean-scale hyperprior VAE with gain units for continuous rate control.

Model: Minnen, Ballé & Toderici 2018, "Joint Autoregressive and Hierarchical Priors for Learned
Image Compression" (mean-scale hyperprior, no context model). Rate control: Cui et al. 2021,
"Asymmetric Gained Deep Image Compression With Continuous Rate Adaptation": per quality level a
gain vector scales ``y`` before quantisation and an inverse gain rescales ``y_hat`` before the
synthesis transform; fractional qualities interpolate neighbouring gains geometrically.

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
from .transforms import (analysis_transform, hyper_analysis_transform, hyper_synthesis_transform,
                         synthesis_transform)

STRIDE = 64  # total downsampling of y (16) times z (4)

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


@dataclass
class ForwardOutput:
    """Training forward pass: reconstruction ``(B,3,H,W)`` and likelihoods of ``y`` and ``z``."""
    x_hat: torch.Tensor
    y_likelihoods: torch.Tensor
    z_likelihoods: torch.Tensor


class MeanScaleHyperprior(nn.Module):
    """Mean-scale hyperprior with gain units. ``N`` filters, ``M`` latent channels."""

    def __init__(self, N: int = 128, M: int = 192, lambdas=LAMBDAS):
        super().__init__()
        self.N, self.M = N, M
        self.register_buffer("lambdas", torch.tensor(lambdas, dtype=torch.float32))
        self.g_a = analysis_transform(N, M)
        self.g_s = synthesis_transform(N, M)
        self.h_a = hyper_analysis_transform(N, M)
        self.h_s = hyper_synthesis_transform(N, M)
        self.prior = FactorizedPrior(N)
        # Gains in the log domain, initialised at the high-rate optimum step ∝ 1/sqrt(λ).
        init = 0.5 * torch.log(self.lambdas / self.lambdas[len(lambdas) // 2])
        self.log_gain = nn.Parameter(init[:, None].repeat(1, M))
        self.log_inv_gain = nn.Parameter(-init[:, None].repeat(1, M))

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

    def entropy_parameters(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-scale of ``y`` (each ``(B, M, h, w)``) from ``z_hat`` (float path)."""
        mean, log_scale = self.h_s(z_hat).chunk(2, dim=1)
        return mean, log_scale

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> ForwardOutput:
        """Training pass with per-sample integer quality ``level`` (``(B,)`` long, 0-based).

        Rate uses additive uniform noise; the synthesis and hyper-synthesis see rounded values
        through the straight-through estimator (mixed quantisation, Minnen & Singh 2020).
        """
        gain = torch.exp(self.log_gain[level])[:, :, None, None]
        inv_gain = torch.exp(self.log_inv_gain[level])[:, :, None, None]
        y = self.g_a(x) * gain
        z = self.h_a(y)
        z_likelihoods = self.prior.likelihood(add_uniform_noise(z).float())
        mean, log_scale = self.entropy_parameters(ste_round(z))
        mean, scale = mean.float(), lower_bound(torch.exp(log_scale.float().clamp(max=6.0)), SCALE_MIN)
        y = y.float()
        y_likelihoods = gaussian_likelihood(add_uniform_noise(y) - mean, scale)
        y_hat = ste_round(y - mean) + mean
        x_hat = self.g_s(y_hat * inv_gain)
        return ForwardOutput(x_hat, y_likelihoods, z_likelihoods)

    # ------------------------------------------------------------------ coding (exported model)
    # ``self.coding`` (vaecodec.weights.CodingModels) is attached by vaecodec.weights.load.

    @torch.no_grad()
    def compress(self, x: torch.Tensor, quality: float) -> dict:
        """Image ``(1, 3, H, W)`` in ``[0, 1]`` (H, W multiples of 64) -> coded streams.

        Returns ``{"z_shape", "y_shape", "z_stream", "y_stream", "escapes"}``. ``z`` is rounded
        and coded with the per-channel tables; ``y`` is coded as ``round(y - mean)`` with the
        table of its snapped scale, both parameters from the exact integer hyper-synthesis.
        """
        from .entropy import encode_indexed
        from .integer import Z_MAX
        gain, _ = self.gains(quality)
        y = self.g_a(x) * gain[:, None, None]
        z_hat = torch.round(self.h_a(y)).clamp(-Z_MAX, Z_MAX)
        channel = torch.arange(z_hat.shape[1])[None, :, None, None].expand_as(z_hat)
        z_stream, z_esc = encode_indexed(z_hat.long().numpy(), channel.numpy(), self.coding.z_tables)
        mean, index = self.coding.h_s(z_hat)
        y_symbols = torch.round(y - mean).clamp(-2**20, 2**20).long()
        y_stream, y_esc = encode_indexed(y_symbols.numpy(), index.numpy(), self.coding.y_tables)
        return {"z_shape": tuple(z_hat.shape[2:]), "y_shape": tuple(y.shape[2:]),
                "z_stream": z_stream, "y_stream": y_stream, "escapes": z_esc + y_esc}

    @torch.no_grad()
    def decode_latents(self, streams: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Entropy-decode the streams of :meth:`compress` to ``z_hat`` ``(1, N, h, w)`` and
        ``y_hat`` ``(1, M, 4h, 4w)`` (gained domain). Everything here is exact integer or
        table arithmetic, identical on every machine. Raises
        :class:`vaecodec.entropy.EntropyCodingError` if the streams are inconsistent."""
        from .entropy import EntropyCodingError, EscapeReader, decode_indexed
        zh, zw = streams["z_shape"]
        yh, yw = streams["y_shape"]
        if (yh, yw) != (4 * zh, 4 * zw):
            raise EntropyCodingError(f"latent shapes {streams['y_shape']} and {streams['z_shape']} disagree")
        escapes = EscapeReader(streams["escapes"])
        channel = np.broadcast_to(np.arange(self.N)[None, :, None, None], (1, self.N, zh, zw))
        z_hat = torch.from_numpy(decode_indexed(streams["z_stream"], channel, self.coding.z_tables, escapes))
        mean, index = self.coding.h_s(z_hat.double())
        y_symbols = decode_indexed(streams["y_stream"], index.numpy(), self.coding.y_tables, escapes)
        escapes.finish()
        y_hat = torch.from_numpy(y_symbols).clamp(-2**20, 2**20).float() + mean
        return z_hat, y_hat

    @torch.no_grad()
    def decompress(self, streams: dict, quality: float) -> torch.Tensor:
        """Inverse of :meth:`compress`: streams -> ``x_hat`` ``(1, 3, 16*h_y, 16*w_y)`` in [0, 1].

        Raises :class:`vaecodec.entropy.EntropyCodingError` if the streams are inconsistent.
        """
        _, inv_gain = self.gains(quality)
        _, y_hat = self.decode_latents(streams)
        return self.g_s(y_hat * inv_gain[:, None, None]).clamp_(0, 1)
