"""Entropy models (probability) and entropy coding (constriction) of the latents.

Vocabulary as in constriction: *models* give probabilities, *coders* turn symbols into bits.

- :class:`FactorizedPrior`: the learned non-parametric density of the hyper-latents ``z``
  (Ballé et al. 2018, "Variational image compression with a scale hyperprior", appendix 6.1),
  one univariate density per channel, convolved with a unit-width uniform.
- :func:`gaussian_likelihood`: the conditional Gaussian of the latents ``y`` given the hyperprior
  (Minnen et al. 2018), again convolved with a unit-width uniform.
- :func:`scale_table`, :func:`gaussian_tables`, :func:`factorized_tables`: integer probability
  tables built once, at export, and stored with the weights. Coding never evaluates a network-
  dependent float CDF, so encoder and decoder see identical models on every machine.
- :class:`IndexedEncoder` / :class:`IndexedDecoder` (and the one-call :func:`encode_indexed` /
  :func:`decode_indexed`): code integer arrays whose every element selects one of those tables,
  with an escape code for symbols outside a table's range.

Training quantities are in nats/bits of the noisy latents: ``-log2(likelihood)`` summed over
elements is the rate in bits (the VAE's KL term up to a constant).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LIKELIHOOD_BOUND = 1e-9
SCALE_MIN, SCALE_MAX, SCALE_LEVELS = 0.11, 256.0, 64
PMF_BITS = 16            # every table's integer frequencies sum to 2**PMF_BITS
TAIL_MASS = 1e-9         # mass left outside a table's explicit range (goes to the escape symbol)


class _LowerBound(torch.autograd.Function):
    """``max(x, bound)`` whose gradient still flows where it pushes ``x`` upwards."""

    @staticmethod
    def forward(ctx, x, bound):
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        pass_through = (x >= ctx.bound) | (grad < 0)
        return grad * pass_through, None


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    return _LowerBound.apply(x, bound)


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def add_uniform_noise(x: torch.Tensor) -> torch.Tensor:
    """``x + u``, ``u ~ U(-1/2, 1/2)``: the reparameterised quantisation proxy of training."""
    return x + torch.empty_like(x).uniform_(-0.5, 0.5)


class FactorizedPrior(nn.Module):
    """Learned per-channel density of the hyper-latents ``z`` (Ballé et al. 2018, appendix 6.1).

    The cumulative of each channel's density is a small monotone network ``R -> R`` (filters
    ``(3, 3, 3)``), evaluated as logits. :meth:`likelihood` returns ``P(z - 1/2 < Z < z + 1/2)``
    for ``z`` of shape ``(B, C, h, w)``, same shape, values in ``(0, 1]``.
    """

    def __init__(self, channels: int, filters=(3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        dims = (1, *filters, 1)
        scale = init_scale ** (1.0 / (len(dims) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(dims) - 1):
            init = math.log(math.expm1(1.0 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(dims) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def cdf_logits(self, v: torch.Tensor) -> torch.Tensor:
        """Logits of the cumulative at points ``v`` of shape ``(C, 1, L)``; returns ``(C, 1, L)``."""
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases)):
            v = torch.matmul(F.softplus(matrix), v) + bias
            if i < len(self.factors):
                v = v + torch.tanh(self.factors[i]) * torch.tanh(v)
        return v

    def likelihood(self, z: torch.Tensor) -> torch.Tensor:
        B, C, h, w = z.shape
        v = z.transpose(0, 1).reshape(C, 1, -1)
        lower, upper = self.cdf_logits(v - 0.5), self.cdf_logits(v + 0.5)
        sign = -torch.sign(lower + upper).detach()   # evaluate in the stable tail
        lik = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        lik = lik.reshape(C, B, h, w).transpose(0, 1)
        return lower_bound(lik, LIKELIHOOD_BOUND)

    @torch.no_grad()
    def pmf(self, lo: int, hi: int) -> torch.Tensor:
        """Probabilities of the integers ``lo..hi`` per channel, ``(C, hi - lo + 1)`` float64."""
        C = self.matrices[0].shape[0]
        edges = torch.arange(lo, hi + 2, dtype=torch.float32) - 0.5
        logits = self.cdf_logits(edges.expand(C, 1, -1).contiguous())[:, 0].double()
        cdf = torch.sigmoid(logits)
        return (cdf[:, 1:] - cdf[:, :-1]).clamp_min(0)


def gaussian_likelihood(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``P(v - 1/2 < V < v + 1/2)`` for ``V ~ N(0, scale^2)``; any shape, values in ``(0, 1]``.

    Uses the lower tail (``erfc``) for both sides, which is accurate far from the mean.
    """
    v = torch.abs(values)
    inv = 1.0 / (scales * math.sqrt(2.0))
    lik = 0.5 * torch.erfc((v - 0.5) * inv) - 0.5 * torch.erfc((v + 0.5) * inv)
    return lower_bound(lik, LIKELIHOOD_BOUND)


def bits(likelihoods: torch.Tensor) -> torch.Tensor:
    """Total information content ``-sum log2 p`` in bits."""
    return -torch.log2(likelihoods).sum()


# ----------------------------------------------------------------------------- probability tables
def scale_table(levels: int = SCALE_LEVELS, lo: float = SCALE_MIN, hi: float = SCALE_MAX) -> np.ndarray:
    """The fixed, log-spaced Gaussian scales that coding snaps to, ``(levels,)`` float64."""
    return np.exp(np.linspace(math.log(lo), math.log(hi), levels))


def quantize_pmf(pmf: np.ndarray, bits_total: int = PMF_BITS) -> np.ndarray:
    """Integer frequencies summing to ``2**bits_total``, every entry >= 1 (``(L,)`` int64).

    The input ``pmf`` (``(L,)``, non-negative) may omit mass; the result is normalised exactly.
    Rounding residue is given to / taken from the largest entries, deterministically.
    """
    total = 1 << bits_total
    pmf = np.asarray(pmf, dtype=np.float64)
    if pmf.size >= total:
        raise ValueError(f"table of {pmf.size} entries does not fit {bits_total}-bit frequencies")
    freq = np.maximum(1, np.floor(pmf / pmf.sum() * (total - pmf.size)).astype(np.int64) + 1)
    residue = total - int(freq.sum())
    order = np.argsort(-freq, kind="stable")
    i = 0
    while residue != 0:
        j = order[i % len(order)]
        step = 1 if residue > 0 else -1
        if freq[j] + step >= 1:
            freq[j] += step
            residue -= step
        i += 1
    return freq


def _pack(tables: list[np.ndarray], offsets: list[int]) -> dict[str, np.ndarray]:
    """Concatenate tables (each ending with the escape frequency) into flat arrays."""
    lengths = np.array([len(t) for t in tables], dtype=np.int64)
    return {"freqs": np.concatenate(tables).astype(np.int64), "lengths": lengths,
            "offsets": np.asarray(offsets, dtype=np.int64)}


def gaussian_tables(scales: np.ndarray, tail_mass: float = TAIL_MASS) -> dict[str, np.ndarray]:
    """One integer table per scale of a zero-mean quantised Gaussian, plus an escape symbol.

    Table ``k`` covers the integers ``-R_k..R_k`` where ``R_k`` leaves at most ``tail_mass`` outside;
    its last entry is the escape frequency. Returns ``freqs`` (flat int64), ``lengths`` and
    ``offsets`` (``-R_k``), each ``(len(scales),)``.
    """
    from statistics import NormalDist
    tables, offsets = [], []
    for s in scales:
        radius = max(1, math.ceil(-NormalDist().inv_cdf(tail_mass / 2) * s - 0.5))
        k = np.arange(-radius, radius + 1, dtype=np.float64)
        cdf = np.array([NormalDist(0.0, s).cdf(e) for e in np.append(k - 0.5, radius + 0.5)])
        pmf = np.diff(cdf)
        tail = max(0.0, 1.0 - pmf.sum())
        tables.append(quantize_pmf(np.append(pmf, tail)))
        offsets.append(-radius)
    return _pack(tables, offsets)


def factorized_tables(prior: FactorizedPrior, tail_mass: float = TAIL_MASS,
                      search: int = 1024) -> dict[str, np.ndarray]:
    """One integer table per channel of the learned prior, built from its current parameters.

    Searches ``-search..search`` for each channel's range holding all but ``tail_mass``; the
    remainder becomes the escape frequency. Same layout as :func:`gaussian_tables`.
    """
    pmf = prior.pmf(-search, search).numpy()
    cdf = np.cumsum(pmf, axis=1)
    tables, offsets = [], []
    for c in range(pmf.shape[0]):
        lo = int(np.searchsorted(cdf[c], tail_mass / 2))
        hi = int(np.searchsorted(cdf[c], cdf[c, -1] - tail_mass / 2))
        hi = min(max(hi, lo), pmf.shape[1] - 1)
        p = pmf[c, lo:hi + 1]
        tail = max(0.0, 1.0 - float(p.sum()))
        tables.append(quantize_pmf(np.append(p, tail)))
        offsets.append(lo - search)
    return _pack(tables, offsets)


# ------------------------------------------------------------------------------------- coding
class EntropyCodingError(ValueError):
    """The compressed streams do not decode (damaged data or wrong tables)."""


class Tables:
    """A family of integer probability tables (layout of :func:`gaussian_tables`).

    Table ``k`` codes the integers ``offsets[k] .. offsets[k] + lengths[k] - 2``; its last entry
    is the escape symbol. The constriction models are built lazily and cached.
    """

    def __init__(self, freqs: np.ndarray, lengths: np.ndarray, offsets: np.ndarray):
        self.freqs = np.asarray(freqs, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        if self.lengths.min() < 2 or self.starts[-1] + self.lengths[-1] != len(self.freqs):
            raise ValueError("inconsistent probability tables")
        self._models: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.lengths)

    def model(self, k: int):
        import constriction
        if k not in self._models:
            f = self.freqs[self.starts[k]:self.starts[k] + self.lengths[k]]
            probs = f.astype(np.float64) / float(1 << PMF_BITS)   # exact dyadic probabilities
            self._models[k] = constriction.stream.model.Categorical(probs, perfect=False)
        return self._models[k]


def _zigzag_varints(values: list[int]) -> bytes:
    out = bytearray()
    for v in values:
        u = (v << 1) if v >= 0 else ((-v << 1) - 1)
        while True:
            byte = u & 0x7F
            u >>= 7
            if u:
                out.append(byte | 0x80)
            else:
                out.append(byte)
                break
    return bytes(out)


class EscapeReader:
    """Reads zigzag LEB128 varints of escaped symbol values, in coding order."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, count: int) -> np.ndarray:
        vals = np.empty(count, dtype=np.int64)
        for i in range(count):
            u, shift = 0, 0
            while True:
                if self.pos >= len(self.data) or shift > 63:
                    raise EntropyCodingError("escape stream is truncated or malformed")
                byte = self.data[self.pos]
                self.pos += 1
                u |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            vals[i] = (u >> 1) if not u & 1 else -((u + 1) >> 1)
        return vals

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise EntropyCodingError("escape stream has trailing bytes")


class IndexedEncoder:
    """Entropy-codes integer arrays, element ``i`` with table ``indexes[i]``, into one range-coded
    stream and one escape stream; several :meth:`encode` calls append in order (the slices of
    ``y``), and :class:`IndexedDecoder` reads them back with the same calls in the same order.

    In each call, elements are coded grouped by table (ascending table index, C order within a
    group), one vectorised constriction range-coder call per group. Symbols outside a table's
    range are coded as the escape symbol and their value is appended to the escape stream
    (zigzag LEB128), so encoding never fails.
    """

    def __init__(self, tables: Tables):
        import constriction
        self.tables = tables
        self.encoder = constriction.stream.queue.RangeEncoder()
        self.escaped: list[int] = []

    def encode(self, symbols: np.ndarray, indexes: np.ndarray) -> None:
        """Append ``symbols`` (integers, any shape) coded with the tables ``indexes`` (same shape)."""
        symbols = np.asarray(symbols, dtype=np.int64).ravel()
        indexes = np.asarray(indexes, dtype=np.int64).ravel()
        tables = self.tables
        for k in np.unique(indexes):
            values = symbols[indexes == k]
            local = values - tables.offsets[k]
            escape = int(tables.lengths[k]) - 1
            outside = (local < 0) | (local >= escape)
            if outside.any():
                self.escaped.extend(int(v) for v in values[outside])
                local = np.where(outside, escape, local)
            self.encoder.encode(local.astype(np.int32), tables.model(int(k)))

    def finish(self) -> tuple[bytes, bytes]:
        """``(range-coded bytes, escape bytes)`` of everything encoded."""
        return self.encoder.get_compressed().astype("<u4").tobytes(), _zigzag_varints(self.escaped)


def encode_indexed(symbols: np.ndarray, indexes: np.ndarray, tables: Tables) -> tuple[bytes, bytes]:
    """Entropy-code integers, element ``i`` with table ``indexes[i]`` (one
    :class:`IndexedEncoder` call). Returns ``(range-coded bytes, escape bytes)``."""
    encoder = IndexedEncoder(tables)
    encoder.encode(symbols, indexes)
    return encoder.finish()


class IndexedDecoder:
    """Inverse of :class:`IndexedEncoder`: :meth:`decode` with the encoder's ``indexes``, call by
    call, then :meth:`finish`. Escaped values come from ``escapes``. Raises
    :class:`EntropyCodingError` on damaged data."""

    def __init__(self, data: bytes, tables: Tables, escapes: EscapeReader):
        import constriction
        if len(data) % 4:
            raise EntropyCodingError("entropy-coded stream length is not a multiple of 4 bytes")
        self.tables, self.escapes = tables, escapes
        try:
            words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
            self.decoder = constriction.stream.queue.RangeDecoder(words)
        except Exception as exc:  # constriction raises on invalid compressed data
            raise EntropyCodingError(f"entropy-coded stream does not decode ({exc})") from None

    def decode(self, indexes: np.ndarray) -> np.ndarray:
        """int64 symbols shaped like ``indexes`` (the tables the encoder used)."""
        indexes = np.asarray(indexes, dtype=np.int64)
        flat = indexes.ravel()
        out = np.empty(flat.shape, dtype=np.int64)
        tables = self.tables
        try:
            for k in np.unique(flat):
                where = np.nonzero(flat == k)[0]
                local = np.asarray(self.decoder.decode(tables.model(int(k)), len(where)), dtype=np.int64)
                values = local + tables.offsets[k]
                escape = int(tables.lengths[k]) - 1
                hit = local == escape
                if hit.any():
                    values[hit] = self.escapes.read(int(hit.sum()))
                out[where] = values
        except EntropyCodingError:
            raise
        except Exception as exc:  # constriction raises on invalid compressed data
            raise EntropyCodingError(f"entropy-coded stream does not decode ({exc})") from None
        return out.reshape(indexes.shape)

    def finish(self) -> None:
        """Raises :class:`EntropyCodingError` if the stream holds data past the last symbol."""
        if not self.decoder.maybe_exhausted():
            raise EntropyCodingError("entropy-coded stream has data past its last symbol")


def decode_indexed(data: bytes, indexes: np.ndarray, tables: Tables,
                   escapes: EscapeReader) -> np.ndarray:
    """Inverse of :func:`encode_indexed`; ``indexes`` must equal the encoder's. Returns int64
    symbols shaped like ``indexes``. Raises :class:`EntropyCodingError` on damaged data."""
    decoder = IndexedDecoder(data, tables, escapes)
    out = decoder.decode(indexes)
    decoder.finish()
    return out
