"""Growing a trained model's latent channels ``M`` without changing what it computes.

At M=192 every latent channel of the shipped model carries over a bit per latent at the top
quality, so high rates are short of channels (CompressAI's pretrained hyperpriors switch to
M=320 for their top qualities). :func:`widen_state` turns the state of a trained
``MeanScaleHyperprior(N, M)`` into one of ``MeanScaleHyperprior(N, M_new)`` (same ``N`` and
``slices``, ``M_new > M``) that computes the same function, so ``vaecodec train --init`` can
continue training a wider model instead of starting over (function-preserving growth as in
Chen, Goodfellow & Shlens 2016, "Net2Net: Accelerating Learning via Knowledge Transfer").

Layout: each of the ``slices`` slices keeps its ``M/slices`` channels first and gets
``(M_new - M)/slices`` new ones after them; every tensor axis that lists latent channels (the
analysis output, the synthesis input, gains, the hyper-synthesis means and log-scales, the
inputs and outputs of the context, LRP and checkerboard networks) is a run of such per-slice
chunks and is mapped chunk by chunk. The hyper-synthesis' hidden layers (``M`` and ``3M/2``
wide) get new units appended.

Why the function is unchanged: the analysis transform's new output rows are zero, so the new
latents are ``y = 0``; their hyperprior mean is 0 and their scale the smallest of the scale table
(new output rows of the hyper-synthesis are zero, with bias ``log SCALE_MIN`` for the
log-scales), so ``y_hat = 0`` and they cost almost nothing to code; every network that reads
latent channels has zero weights on the new inputs (hyper-analysis, context, LRP, checkerboard)
or reads ``y_hat = 0`` (synthesis), and the new outputs of the context, LRP and checkerboard
networks are zero. What starts training: the synthesis transform's weights on the new inputs
keep the new model's random initialisation, so the distortion gradient reaches the new
latents through the straight-through rounding and differs from channel to channel.
"""
from __future__ import annotations

import math

import torch

from .entropy import SCALE_MIN

LATENT, HIDDEN = "latent", "hidden"   # how an axis grows: per-slice chunks, or appended units
ZERO, FRESH = "zero", "fresh"         # what the new positions hold: zeros, or the new model's init


def latent_channels(state: dict[str, torch.Tensor]) -> int | None:
    """``M`` of the model whose ``state_dict`` is ``state`` (from its gains); ``None`` if absent."""
    gain = state.get("log_gain")
    return int(gain.shape[1]) if gain is not None and gain.dim() == 2 else None


def _growth(model) -> dict[str, tuple[tuple[int, str, str], ...]]:
    """``state_dict`` key -> ``(axis, layout, new positions)`` for every tensor of ``model``
    (a ``MeanScaleHyperprior``) whose shape depends on ``M``; gains are handled apart."""
    last_a = list(model.g_a._modules)[-1]
    spec = {
        f"g_a.{last_a}.weight": ((0, LATENT, ZERO),), f"g_a.{last_a}.bias": ((0, LATENT, ZERO),),
        "g_s.0.weight": ((0, LATENT, FRESH),),          # ConvTranspose2d: (in, out, k, k)
        "h_a.0.weight": ((1, LATENT, ZERO),),
        "h_s.0.weight": ((1, HIDDEN, FRESH),), "h_s.0.bias": ((0, HIDDEN, FRESH),),
        "h_s.2.weight": ((0, HIDDEN, ZERO), (1, HIDDEN, FRESH)), "h_s.2.bias": ((0, HIDDEN, FRESH),),
        "h_s.4.weight": ((0, LATENT, ZERO), (1, HIDDEN, ZERO)), "h_s.4.bias": ((0, LATENT, ZERO),),
    }
    for name in ("context", "lrp", "spatial"):
        for k in range(len(getattr(model, name))):
            spec[f"{name}.{k}.0.weight"] = ((1, LATENT, ZERO),)
            spec[f"{name}.{k}.4.weight"] = ((0, LATENT, ZERO),)
            spec[f"{name}.{k}.4.bias"] = ((0, LATENT, ZERO),)
    return spec


def _chunked(length: int, chunk: int, new_chunk: int) -> torch.Tensor:
    """New positions of an axis of ``length`` entries made of ``chunk``-long runs, each grown
    to ``new_chunk`` with the old entries first."""
    i = torch.arange(length)
    return (i // chunk) * new_chunk + i % chunk


def _place(old: torch.Tensor, fresh: torch.Tensor, axes, chunk: int, new_chunk: int) -> torch.Tensor:
    """``fresh`` (the new shape) with ``old`` copied to its mapped positions and the new
    positions of every ``ZERO`` axis zeroed."""
    out = fresh.detach().cpu().clone()
    index = [torch.arange(n) for n in old.shape]
    for axis, layout, new in axes:
        if layout == LATENT:
            index[axis] = _chunked(old.shape[axis], chunk, new_chunk)
        if new == ZERO:
            kept = torch.zeros(out.shape[axis], dtype=torch.bool)
            kept[index[axis]] = True
            out.index_fill_(axis, (~kept).nonzero().flatten(), 0.0)
    grid = [ix.reshape([-1 if a == d else 1 for a in range(old.dim())]) for d, ix in enumerate(index)]
    out[tuple(grid)] = old.detach().cpu().to(out.dtype)
    return out


def widen_state(state: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """``state`` (a ``state_dict`` of a model with ``M`` latent channels) laid out for ``model``
    (``M_new = model.M`` channels, same ``N`` and ``slices``), computing the same function; see
    the module docstring. Keys ``model`` lacks or ``state`` lacks (networks a ``--init`` adds)
    are left to :func:`vaecodec.train.load_state`. Returns ``state`` itself when ``M`` is
    already ``model.M``. Raises ``ValueError`` when ``model`` has fewer channels than ``state``
    or ``M`` does not split into ``model.slices`` slices."""
    M, M_new, slices = latent_channels(state), model.M, model.slices
    if M is None or M == M_new:
        return state
    if M > M_new or M % slices:
        raise ValueError(f"cannot widen a model with M={M} latent channels to M={M_new} in "
                         f"{slices} slices (M can only grow, by whole channels per slice)")
    chunk, new_chunk = M // slices, M_new // slices
    fresh = model.state_dict()
    out = dict(state)
    for key, axes in _growth(model).items():
        if key in state and key in fresh:
            out[key] = _place(state[key], fresh[key], axes, chunk, new_chunk)
    bias = "h_s.4.bias"   # new log-scales (second half) at the scale table's smallest scale
    if bias in out:
        old_positions = _chunked(2 * M, chunk, new_chunk)
        new = torch.ones(2 * M_new, dtype=torch.bool)
        new[old_positions] = False
        new[:M_new] = False
        out[bias][new] = math.log(SCALE_MIN)
    for key in ("log_gain", "log_inv_gain"):   # new channels: the level's mean gain
        old = state[key].detach().cpu()
        grown = old.mean(1, keepdim=True).repeat(1, M_new)
        grown[:, _chunked(M, chunk, new_chunk)] = old
        out[key] = grown
    return out
