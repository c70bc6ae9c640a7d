"""Encoder-side latent refinement: better latents for the same decoder.

Yang, Bamler & Mandt 2020, "Improving Inference for Neural Image Compression" (NeurIPS).
The analysis transform predicts ``y`` and the hyper-analysis ``z`` in one pass, for every image
alike; what it predicts is not the best pair of latents for a given image (the *amortisation
gap*). The decoder reads whatever integers the file holds, so the encoder may search, per
image, for the ``y`` and ``z`` whose rounded values cost the least rate + λ·distortion under
the model itself. Starting from the analysis transform's latents, :func:`refine_latents` runs
a few Adam steps on

    bits(z_hat) + bits(y_hat | z_hat)  (per pixel)  +  λ · MSE(x, g_s(y_hat)) · 255²,

the training loss of :mod:`vaecodec.train` at the quality's λ. Rounding is made differentiable
by *stochastic Gumbel annealing* (SGA, the paper's section 3.2): each latent is drawn softly
between its floor and its ceiling, with the nearer integer the likelier, and a temperature that
falls from 0.5 to 0.05 over the steps turns the soft draw into plain rounding by the end.

The decoder and the file format do not change: a refined file is an ordinary ``.vae`` file.
Refinement costs one synthesis pass forward and backward per step (about 1.5-2 s per step for
a megapixel on two CPU cores, in bf16 autocast where the CPU computes bf16 natively, after a
start-up of a few seconds in which oneDNN prepares its kernels), so it is an option
(``vaecodec compress --refine STEPS``). Latents of up to 1024 px a side are refined in one
piece (about 2 GB of memory at 1024x1024); a larger image's latents, one set for the whole
image as plain coding has, window by window (:func:`_windowed_backward`: memory for one
window, 2.0 GiB peak for a whole 12-megapixel encode). The random draws
come from a generator seeded per call, so an encode is reproducible on a given machine.
"""
from __future__ import annotations

import numbers

import torch

from .entropy import bits
from .hardware import native_bf16

TAU_START, TAU_END = 0.5, 0.05   # SGA temperature schedule (exponential in the step)
STEP_BUDGET = 0.3                # Adam's learning rate x steps (gained latent units)
MAX_LEARNING_RATE = 0.01
SEED = 0
# Latents up to this many a side (1024 px) are refined in one piece; larger ones (the
# whole-image latents of a large photo) in windows of WINDOW_CORE latents (768 px) with context
# around them: ENTROPY_MARGIN latents for the hyper-synthesis and slice networks, then
# SYNTHESIS_MARGIN (64 px, past the synthesis transform's receptive-field radius) for g_s.
# The core and both margins are multiples of 4 latents, so every window starts and ends on
# the grid of z (one z for 4x4 latents).
WHOLE_LATENTS = 64
WINDOW_CORE, ENTROPY_MARGIN, SYNTHESIS_MARGIN = 48, 8, 4


def learning_rate(steps: int) -> float:
    """Adam's learning rate for a refinement of ``steps`` steps: ``STEP_BUDGET / steps``, at
    most :data:`MAX_LEARNING_RATE` (0.01 for 30 steps or fewer, 0.005 for 60, 0.003 for 100).

    Tuned on the training folder's validation split (4 images, 320x448 crops, qualities 1, 3,
    5 and 7; BD-rate against the analysis transform's own latents): 30 steps at 0.01 -6.3 %,
    60 at 0.005 -7.2 %, 100 at 0.003 -7.7 %; 30 steps at 0.02 falling to 0.002 did worse (-5.2 %).
    """
    return min(MAX_LEARNING_RATE, STEP_BUDGET / max(1, steps))


def sga_round(v: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stochastic Gumbel annealing's soft rounding of ``v`` (any shape, float).

    Each element becomes ``floor(v) + w``, ``w`` in ``[0, 1]`` a Gumbel-softmax draw between
    its floor (weight 0) and its ceiling (weight 1), whose logits ``-atanh(distance)/tau`` make
    the nearer integer likelier; as ``tau`` goes to 0 the draw becomes ``round(v)``. The
    gradient flows through ``w``.
    """
    floor = torch.floor(v)
    frac = (v - floor).clamp(1e-4, 1 - 1e-4)
    logits = torch.stack([-torch.atanh(frac), -torch.atanh(1 - frac)]) / tau
    uniform = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1 - 1e-10)))
    return floor + torch.softmax(logits + gumbel, 0)[1]


def _unit(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 in ``[0, 1]``: uint8 divided by 255 (as the codec converts pixels), a
    float tensor as it is."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def temperature(step: int, steps: int) -> float:
    """SGA temperature at ``step`` of ``steps``: from :data:`TAU_START` down to :data:`TAU_END`."""
    return TAU_START * (TAU_END / TAU_START) ** (step / max(1, steps - 1))


def refine_latents(coder, x: torch.Tensor, quality: float, steps: int,
                   lr: float | None = None, seed: int = SEED,
                   progress=None, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents ``y`` ``(1, M, H/16, W/16)`` and ``z`` ``(1, N, H/64, W/64)`` (gained, not yet
    rounded) for image ``x`` ``(1, 3, H, W)``, float in ``[0, 1]`` or uint8 in ``0..255`` (the
    same latents either way; as uint8 a large image takes a quarter of the memory while its
    latents are refined window by window, each window made float for its step), at
    ``quality``, after ``steps`` steps of SGA refinement (``steps=0``: the analysis
    transform's own). ``size``: ``(h, w)`` of the image inside ``x`` (the rest is padding up
    to a multiple of 64): distortion is measured, and the rate counted per pixel, over that
    part only (default: all of ``x``); a size that is not two whole numbers from 1 to ``x``'s
    height and width raises ``ValueError``. ``lr``: Adam's learning rate (default
    :func:`learning_rate` of ``steps``).

    ``coder`` is a :class:`vaecodec.coder.Coder` whose float model has its float entropy model
    (hyper-synthesis, factorized prior, context networks) loaded, see
    :func:`vaecodec.weights.load` with ``refine=True``; raises ``ValueError`` for one loaded
    without it. ``progress()`` is called after each step. The model's parameters are not changed.
    If the loss or the latents stop being finite (damaged float weights), the analysis
    transform's latents are returned instead.
    """
    size = tuple(x.shape[2:]) if size is None else tuple(size)
    if len(size) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                 and 0 < v <= n for v, n in zip(size, x.shape[2:])):
        raise ValueError(f"size must be (h, w), two whole numbers from 1 to the "
                         f"{tuple(x.shape[2:])} of x, got {size!r}")
    if steps > 0 and not coder.can_refine:
        raise ValueError("refinement needs the float entropy model: load the weights with refine=True")
    y, z = coder.analyse(_unit(x), quality)
    if steps <= 0:
        return y, z
    model = coder.model   # the float model that the steps differentiate
    inv_gain = model.gains(quality)[1].detach()[:, None, None]
    y, z = y.clone().requires_grad_(True), z.clone().requires_grad_(True)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    start = (y.detach().clone(), z.detach().clone())
    try:
        with torch.enable_grad():
            finite = _descend(model, x, y, z, inv_gain, model.lmbda(quality), steps,
                              learning_rate(steps) if lr is None else lr, seed,
                              progress, size)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    # a non-finite loss (e.g. damaged float weights) must not turn into a garbage file
    return (y.detach(), z.detach()) if finite else start


def _descend(model, x, y, z, inv_gain, lmbda, steps, lr, seed, progress, size) -> bool:
    """The Adam steps of :func:`refine_latents` on the leaf tensors ``y`` and ``z``, in place;
    ``False`` (and stops) as soon as the loss or the latents are not finite."""
    bf16 = native_bf16(torch.device("cpu"))   # about 1.7x faster per step, same file sizes
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam([y, z], lr=lr)
    h, w = size
    pixels, x = h * w, x[:, :, :h, :w]   # the padding is not part of the image
    windowed = max(y.shape[2:]) > WHOLE_LATENTS
    if not windowed:
        x = _unit(x)
    for step in range(steps):
        tau = temperature(step, steps)

        def soft(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            drawn = sga_round(v, tau, generator)   # counted for the rate and seen by g_s alike
            return drawn, drawn

        optimizer.zero_grad(set_to_none=True)
        z_tilde = sga_round(z, tau, generator)
        if windowed:
            loss = _windowed_backward(model, x, y, z_tilde, inv_gain, lmbda, soft, bf16)
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y_in, y_likelihoods = model.latents(y, model.h_s(z_tilde), quantize=soft)
                # NHWC: oneDNN's bf16 kernels need no layout copies (2.2x faster steps, same result)
                x_hat = model.g_s((y_in * inv_gain).contiguous(memory_format=torch.channels_last))
                x_hat = x_hat[:, :, :h, :w].float()
            rate = (bits(model.prior.likelihood(z_tilde)) + bits(y_likelihoods)) / pixels
            loss = rate + lmbda * 255.0 ** 2 * torch.mean((x_hat - x) ** 2)
            if torch.isfinite(loss):
                loss.backward()
        if not torch.isfinite(loss):
            return False
        optimizer.step()
        if progress:
            progress()
    return bool(torch.isfinite(y).all() and torch.isfinite(z).all())


def _windowed_backward(model, x: torch.Tensor, y: torch.Tensor, z_tilde: torch.Tensor,
                       inv_gain: torch.Tensor, lmbda: float, soft, bf16: bool) -> torch.Tensor:
    """One step's loss of :func:`refine_latents` (the same objective) for latents too large to
    differentiate in one piece, its gradient accumulated into ``y.grad`` and ``z.grad``.
    ``x``: the image without its padding, float in ``[0, 1]`` or uint8 (made float per window).

    The latents are cut into cores of :data:`WINDOW_CORE` latents; each core is computed with
    :data:`ENTROPY_MARGIN` + :data:`SYNTHESIS_MARGIN` latents of context around it (the
    hyper-synthesis from the matching part of ``z_tilde``, then the slice networks, then the
    synthesis transform on the core plus :data:`SYNTHESIS_MARGIN`), and counts the rate of the
    core's latents and the squared error of the core's pixels only. Each window's loss is
    differentiated on its own, so memory holds one window's activations whatever the image
    size. The soft roundings are drawn per window (a latent in a margin is drawn again in each
    window that sees it), so the loss is an estimate of the same expected loss; ``z_tilde``
    is drawn once for the whole image. Returns the loss (a scalar, float64; not finite if any
    part was not, and then nothing is differentiated further).
    """
    if (WINDOW_CORE % 4) or ((ENTROPY_MARGIN + SYNTHESIS_MARGIN) % 4):
        raise ValueError("refinement windows and margins must be multiples of 4 latents (one z)")
    h, w = x.shape[2:]
    rows, cols = y.shape[2:]
    pixels, scale = h * w, lmbda * 255.0 ** 2 / x.numel()
    z_in = z_tilde.detach().requires_grad_(True)
    margin = ENTROPY_MARGIN + SYNTHESIS_MARGIN
    z_rate = bits(model.prior.likelihood(z_tilde)) / pixels
    total = z_rate.detach().double()
    for top in range(0, rows, WINDOW_CORE):
        for left in range(0, cols, WINDOW_CORE):
            # the window, in latents; a multiple of 4 (one z) from the image's corner
            t0, l0 = max(0, top - margin), max(0, left - margin)
            b1, r1 = min(rows, top + WINDOW_CORE + margin), min(cols, left + WINDOW_CORE + margin)
            ch, cw = min(WINDOW_CORE, rows - top), min(WINDOW_CORE, cols - left)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                hyper = model.h_s(z_in[:, :, t0 // 4:b1 // 4, l0 // 4:r1 // 4])
                y_in, likelihoods = model.latents(y[:, :, t0:b1, l0:r1], hyper, quantize=soft)
            core = (slice(None), slice(None), slice(top - t0, top - t0 + ch), slice(left - l0, left - l0 + cw))
            loss = bits(likelihoods[core]) / pixels
            y0, x0 = top * 16, left * 16   # the core's pixels inside the image
            y1, x1 = min(h, (top + ch) * 16), min(w, (left + cw) * 16)
            if y0 < h and x0 < w:   # else a window of padding: rate only
                s0, e0 = max(t0, top - SYNTHESIS_MARGIN), min(b1, top + ch + SYNTHESIS_MARGIN)
                s1, e1 = max(l0, left - SYNTHESIS_MARGIN), min(r1, left + cw + SYNTHESIS_MARGIN)
                part = y_in[:, :, s0 - t0:e0 - t0, s1 - l0:e1 - l0] * inv_gain
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    x_hat = model.g_s(part.contiguous(memory_format=torch.channels_last))
                x_hat = x_hat[:, :, y0 - s0 * 16:y1 - s0 * 16, x0 - s1 * 16:x1 - s1 * 16].float()
                loss = loss + scale * ((x_hat - _unit(x[:, :, y0:y1, x0:x1])) ** 2).sum()
            if not torch.isfinite(loss):
                return loss.detach().double()
            loss.backward()
            total += loss.detach().double()
    if torch.isfinite(total):
        # the z rate, and z's share of every window's loss, through the one draw of z_tilde
        (z_rate + (z_tilde * z_in.grad).sum()).backward()
    return total
