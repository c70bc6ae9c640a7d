"""The coder: everything encoding and decoding need from a trained model, mirrored.

Coding follows the model of :mod:`vaecodec.model` (Minnen, Ballé & Toderici 2018's mean-scale
hyperprior; Minnen & Singh 2020's channel slices with latent residual prediction; He et al.
2021's checkerboard context; Cui et al. 2021's gain units), with one difference that makes it a
*codec*: the entropy model runs as exact integer networks (:mod:`vaecodec.integer`), so the
decoder derives the same probabilities as the encoder on every machine (Ballé, Johnston &
Minnen 2019), and the probabilities come from tables built at export
(:mod:`vaecodec.entropy`). The float transforms (analysis, hyper-analysis, synthesis, LRP,
gains) are those of the trained :class:`~vaecodec.model.MeanScaleHyperprior`.

:func:`vaecodec.weights.load` builds a :class:`Coder`. :meth:`Coder.compress` returns the stream
dict that :meth:`Coder.decompress` takes; :meth:`Coder.code_latents` and
:meth:`Coder.decode_latents` mirror each other step for step:

1. ``z_hat = round(z)``, coded with one table per channel (the learned factorized prior);
2. the exact hyper-synthesis gives every latent's mean and log-scale;
3. slice by slice (and, with the checkerboard, anchors first), the exact channel and spatial
   context networks correct them; ``round(y - mean)`` is coded with the table of the scale
   nearest the log-scale;
4. decoding adds the mean back, then the latent residual prediction, the inverse gain and the
   synthesis transform rebuild the image.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .entropy import Tables
from .hardware import native_bf16, release_free_memory
from .integer import IntegerHyperSynthesis, IntegerNetwork, Z_MAX, context_input
from torch import nn

from .model import MeanScaleHyperprior, anchor_mask, corrected_non_anchors
from .transforms import SubpixelConvTranspose2d, run_tiled

# The analysis and synthesis transforms run in windows of 1024 px plus 64 px of context on each
# side (their receptive-field radius is about 55 px), so memory stays bounded by one window
# whatever the image size, while the latents are those of the whole image. The synthesis uses
# smaller windows: its activations at full resolution dominate a decoder's peak memory.
WINDOW, WINDOW_MARGIN = 1024, 64
SYNTHESIS_WINDOW = 768
# Above this many latent positions (a 1024x1024 image), entropy coding and decoding give freed
# memory back to the system before each half of each slice (in the slice and spatial
# parameters both use), before coding starts and before the decoder's synthesis
# (:func:`_release`): an 8K photo's refined encode peaked at 3.4-3.5 GiB without, 2.4-3.1 GiB
# with (RSS, benchmarks/tiles-refine.md).
RELEASE_LATENTS = 64 * 64


def _release(latents: torch.Tensor) -> None:
    """:func:`vaecodec.hardware.release_free_memory` when ``latents`` ``(1, C, h, w)`` cover
    more than :data:`RELEASE_LATENTS` positions. A large image's coding steps each allocate and
    free hundreds of megabytes, of other sizes from step to step: each step starts from a heap
    whose free pages went back to the system, so holes of earlier sizes do not add up."""
    if latents.shape[2] * latents.shape[3] > RELEASE_LATENTS:
        release_free_memory()


def coding_layout(model: MeanScaleHyperprior) -> MeanScaleHyperprior:
    """Make ``model``'s synthesis transform run the way decoding on a CPU runs it fastest
    (``benchmarks/speed.md``): its weights in channels-last (NHWC) layout, which oneDNN's
    convolutions use natively, and its last transposed convolution (3 output channels, which
    oneDNN computes slowly) as a convolution and pixel shuffle
    (:class:`vaecodec.transforms.SubpixelConvTranspose2d`). The parameters and the
    ``state_dict`` stay as stored; ``g_s`` computes the same function up to float rounding
    (decoded pixels within the README's ±1). In place, idempotent; returns ``model``. Training
    never runs it.

    The analysis transform stays as stored: channels-last made it 1.15x faster on a Kodak image
    but raised the peak memory of an 8K image's encode by about 0.4 GiB."""
    if type(model.g_s[-1]) is nn.ConvTranspose2d:
        model.g_s[-1] = SubpixelConvTranspose2d.from_transposed(model.g_s[-1])
    model.g_s.to(memory_format=torch.channels_last)
    return model


@dataclass(eq=False, repr=False)
class Coder:
    """A trained model ready to code: float transforms plus the exact entropy model.

    Attributes:
        model: the float :class:`~vaecodec.model.MeanScaleHyperprior` whose analysis,
            hyper-analysis and synthesis transforms, LRP networks and gains coding runs; with
            ``can_refine``, also its float entropy model, which :mod:`vaecodec.refine`
            differentiates (coding itself never runs it).
        h_s: the exact hyper-synthesis (:class:`vaecodec.integer.IntegerHyperSynthesis`).
        context: the exact channel-context networks of slices 1.. of ``y``.
        spatial: the exact checkerboard-context networks, one per slice (empty without).
        z_tables, y_tables: probability tables of ``z`` (one per channel) and of ``y`` (one per
            scale-table entry), built at export.
        fingerprint: the 8 bytes written into every file, identifying the decoder weights.
        release: the release ID written into files (``""`` for an export that is no release).
        steps: training steps of the weights.
        can_refine: whether the float entropy model is loaded (for ``--refine``).
    """

    model: MeanScaleHyperprior
    h_s: IntegerHyperSynthesis
    context: list[IntegerNetwork]
    z_tables: Tables
    y_tables: Tables
    fingerprint: bytes
    spatial: list[IntegerNetwork] = field(default_factory=list)
    release: str = ""
    steps: int = 0
    can_refine: bool = False

    def __post_init__(self):
        coding_layout(self.model).eval()

    def __repr__(self) -> str:
        return (f"Coder(release={self.release!r}, fingerprint={self.fingerprint.hex()}, N={self.N}, "
                f"M={self.M}, slices={self.slices}, checkerboard={self.checkerboard}, "
                f"blocks={self.blocks}, steps={self.steps}, can_refine={self.can_refine})")

    # ------------------------------------------------------------------ shape and rate levels
    @property
    def N(self) -> int:
        """Channels of ``z``."""
        return self.model.N

    @property
    def M(self) -> int:
        """Channels of ``y``."""
        return self.model.M

    @property
    def slices(self) -> int:
        return self.model.slices

    @property
    def checkerboard(self) -> bool:
        return self.model.checkerboard

    @property
    def blocks(self) -> int:
        """Residual blocks per stage of the analysis and synthesis transforms."""
        return self.model.blocks

    @property
    def num_qualities(self) -> int:
        return self.model.num_qualities

    def gains(self, quality: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Gain and inverse gain ``(M,)`` at ``quality`` (:meth:`MeanScaleHyperprior.gains`)."""
        return self.model.gains(quality)

    def lmbda(self, quality: float) -> float:
        """λ of ``quality`` (:meth:`MeanScaleHyperprior.lmbda`)."""
        return self.model.lmbda(quality)

    # ------------------------------------------------------------------ float transforms
    def analysis(self, x: torch.Tensor) -> torch.Tensor:
        """``g_a(x)``: ``(1, 3, H, W)`` -> ``(1, M, H/16, W/16)`` (H, W multiples of 64), computed
        in windows of :data:`WINDOW` px with
        :data:`WINDOW_MARGIN` px of context
        (:func:`vaecodec.transforms.run_tiled`): memory bounded by one window whatever the
        image size, the latents those of the whole image. At most 1152 px a side in one go.

        Where the processor computes bfloat16 natively (:func:`vaecodec.hardware.native_bf16`),
        the analysis runs in bf16 autocast, as in training: 1.6x faster on a Zen 4 and 0.5 %
        smaller files at equal PSNR on the validation split than float32
        (``benchmarks/speed.md``). Only the encoder's choice of latents depends on it; decoding
        does not. Returns float32."""
        bf16 = native_bf16(x.device)
        x = x.contiguous()   # one layout, one set of kernels: the same latents however x was made
        with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            return run_tiled(self.model.g_a, x, 16, WINDOW, WINDOW_MARGIN).float()

    @torch.no_grad()
    def latents(self, analysed: torch.Tensor, quality: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Gained ``y = g_a(x) · gain`` and ``z = h_a(y)`` from the :meth:`analysis` output
        ``analysed`` ``(1, M, h, w)`` at ``quality``; neither rounded. The analysis does not
        depend on the quality, so rate control computes it once and calls this per probe."""
        gain, _ = self.gains(quality)
        y = analysed * gain.detach()[:, None, None]
        return y, self.model.h_a(y)

    def analyse(self, x: torch.Tensor, quality: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``x`` ``(1, 3, H, W)`` in ``[0, 1]`` (H, W multiples of 64) -> gained ``y``
        ``(1, M, H/16, W/16)`` and ``z`` ``(1, N, H/64, W/64)`` at ``quality`` in ``[1, 8]``,
        not rounded. Raises ``ValueError`` for a quality outside the range."""
        return self.latents(self.analysis(x), quality)

    def synthesis(self, y: torch.Tensor) -> torch.Tensor:
        """``g_s(y)``: ``(1, M, h, w)`` -> ``(1, 3, 16h, 16w)``; an image of at most 1152 px a
        side in one go (as :meth:`analysis`), larger ones in windows of
        :data:`SYNTHESIS_WINDOW` px with 64 px of context: the synthesis'
        activations at full resolution dominate a decoder's peak memory. Computed, and
        returned, in channels-last layout (:func:`coding_layout`)."""
        y = y.contiguous(memory_format=torch.channels_last)
        whole = (WINDOW + 2 * WINDOW_MARGIN) // 16
        with torch.no_grad():
            if y.shape[2] <= whole and y.shape[3] <= whole:
                return self.model.g_s(y)
            return run_tiled(self.model.g_s, y, 16, SYNTHESIS_WINDOW // 16, WINDOW_MARGIN // 16,
                             inverse=True)

    # ------------------------------------------------------------------ exact entropy model
    def slice_parameters(self, i: int, mean: torch.Tensor, log_scale: torch.Tensor,
                         decoded: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-scale of slice ``i`` of ``y`` (each ``(1, M/slices, h, w)``, float64),
        from the exact hyper-synthesis's float64 ``mean`` and ``log_scale`` (all ``M``
        channels) and the slices ``decoded`` so far (float32): the exact channel-context
        network's correction and one float64 addition, identical on every machine. Slice 0
        keeps the hyperprior's parameters."""
        _release(mean)   # each slice's networks: a step of coding of its own
        part = slice(i * self.M // self.slices, (i + 1) * self.M // self.slices)
        mean, log_scale = mean[:, part], log_scale[:, part]
        if i > 0:
            d_mean, d_log_scale = self.context[i - 1](context_input([mean, log_scale, *decoded])).chunk(2, 1)
            mean, log_scale = mean + d_mean, log_scale + d_log_scale
        return mean, log_scale

    def spatial_parameters(self, i: int, mean: torch.Tensor, log_scale: torch.Tensor,
                           anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The float64 ``mean`` and ``log_scale`` of :meth:`slice_parameters` with the exact
        checkerboard context's corrections at the non-anchor positions; ``anchors``: the
        slice's ``y_hat`` (float32) at the anchors, zero elsewhere."""
        _release(mean)
        corrections = self.spatial[i](context_input([mean, log_scale, anchors])).chunk(2, 1)
        return corrected_non_anchors(mean, log_scale, *corrections)

    def _halves(self, shape) -> list[torch.Tensor]:
        """Positions of a slice ``shape`` ``(1, M/slices, h, w)`` in coding order, as bool masks
        of that shape: all at once, or with the checkerboard the anchors, then the rest (whose
        parameters :meth:`spatial_parameters` corrects in between)."""
        if not self.checkerboard:
            return [torch.ones(shape, dtype=torch.bool)]
        anchor = anchor_mask(*shape[2:]).expand(shape)
        return [anchor, ~anchor]

    # ------------------------------------------------------------------ encode
    def compress(self, x: torch.Tensor, quality: float) -> dict:
        """Image ``(1, 3, H, W)`` in ``[0, 1]`` (H, W multiples of 64) -> the streams of
        :meth:`code_latents` for the analysis transforms' latents. Refined latents
        (:func:`vaecodec.refine.refine_latents`) go to :meth:`code_latents` directly."""
        return self.code_latents(*self.analyse(x, quality))

    @torch.no_grad()
    def code_latents(self, y: torch.Tensor, z: torch.Tensor) -> dict:
        """Entropy-code gained latents ``y`` ``(1, M, h, w)`` and ``z`` ``(1, N, h/4, w/4)``
        (rounded here).

        Returns ``{"z_shape", "y_shape", "z_stream", "y_stream", "escapes"}`` (shapes in latent
        elements, streams as bytes): what :meth:`decompress` takes. ``z`` is coded with the
        per-channel tables; ``y`` slice by slice (with the checkerboard, each slice's anchors,
        then its other half) as ``round(y - mean)`` with the table of its snapped scale.
        """
        from .entropy import IndexedEncoder, encode_indexed
        y, z = y.contiguous(), z.contiguous()   # the transforms' channels-last layout stops here
        _release(y)   # refinement's or the analysis transform's holes
        z_hat = torch.round(z).clamp(-Z_MAX, Z_MAX)
        channel = torch.arange(z_hat.shape[1])[None, :, None, None].expand_as(z_hat)
        z_stream, z_esc = encode_indexed(z_hat.long().numpy(), channel.numpy(), self.z_tables)
        mean_h, log_scale_h = self.h_s.parameters(z_hat)
        encoder = IndexedEncoder(self.y_tables)
        decoded = []
        for i, y_i in enumerate(y.chunk(self.slices, 1)):
            mean, log_scale = self.slice_parameters(i, mean_h, log_scale_h, decoded)
            y_hat = torch.zeros_like(y_i)
            for half, where in enumerate(self._halves(y_i.shape)):
                if half:   # the non-anchors: parameters corrected from the anchors' y_hat
                    mean, log_scale = self.spatial_parameters(i, mean, log_scale, y_hat)
                m32, index = mean.float(), self.h_s.scale_index(log_scale)
                symbols = torch.round(y_i - m32).clamp(-2**20, 2**20)
                encoder.encode(symbols[where].long().numpy(), index[where].numpy())
                y_hat = torch.where(where, symbols + m32, y_hat)
            decoded.append(y_hat)
        y_stream, y_esc = encoder.finish()
        return {"z_shape": tuple(z_hat.shape[2:]), "y_shape": tuple(y.shape[2:]),
                "z_stream": z_stream, "y_stream": y_stream, "escapes": z_esc + y_esc}

    # ------------------------------------------------------------------ decode
    @torch.no_grad()
    def _decode(self, streams: dict) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """The mirror of :meth:`code_latents`: ``z_hat``, the slices of ``y_hat`` and the
        hyperprior means (float32, for the LRP)."""
        from .entropy import EntropyCodingError, EscapeReader, IndexedDecoder, decode_indexed
        zh, zw = streams["z_shape"]
        yh, yw = streams["y_shape"]
        if (yh, yw) != (4 * zh, 4 * zw):
            raise EntropyCodingError(f"latent shapes {streams['y_shape']} and {streams['z_shape']} disagree")
        escapes = EscapeReader(streams["escapes"])
        channel = np.broadcast_to(np.arange(self.N)[None, :, None, None], (1, self.N, zh, zw))
        z_hat = torch.from_numpy(decode_indexed(streams["z_stream"], channel, self.z_tables, escapes))
        mean_h, log_scale_h = self.h_s.parameters(z_hat.double())
        decoder = IndexedDecoder(streams["y_stream"], self.y_tables, escapes)
        decoded = []
        shape = (1, self.M // self.slices, yh, yw)
        for i in range(self.slices):
            mean, log_scale = self.slice_parameters(i, mean_h, log_scale_h, decoded)
            y_hat = torch.zeros(shape)
            for half, where in enumerate(self._halves(shape)):
                if half:
                    mean, log_scale = self.spatial_parameters(i, mean, log_scale, y_hat)
                m32, index = mean.float(), self.h_s.scale_index(log_scale)
                symbols = torch.zeros(shape)
                symbols[where] = torch.from_numpy(decoder.decode(index[where].numpy())).clamp(-2**20, 2**20).float()
                y_hat = torch.where(where, symbols + m32, y_hat)
            decoded.append(y_hat)
        decoder.finish()
        escapes.finish()
        return z_hat, decoded, mean_h.float()

    def decode_latents(self, streams: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Entropy-decode the streams of :meth:`compress` to ``z_hat`` ``(1, N, h, w)`` and
        ``y_hat`` ``(1, M, 4h, 4w)`` (gained domain, before latent residual prediction). Exact
        integer and table arithmetic, identical on every machine. Raises
        :class:`vaecodec.entropy.EntropyCodingError` if the streams are inconsistent."""
        z_hat, decoded, _ = self._decode(streams)
        return z_hat, torch.cat(decoded, 1)

    @torch.no_grad()
    def decompress(self, streams: dict, quality: float) -> torch.Tensor:
        """Inverse of :meth:`compress`: streams -> ``x_hat`` ``(1, 3, 16·h_y, 16·w_y)`` in
        ``[0, 1]``. Raises :class:`vaecodec.entropy.EntropyCodingError` if the streams are
        inconsistent."""
        _, inv_gain = self.gains(quality)
        _, decoded, mean_h = self._decode(streams)
        means = mean_h.chunk(self.slices, 1)
        y_hat = torch.cat([d + self.model.residual(i, means[i], decoded[:i + 1])
                           for i, d in enumerate(decoded)], 1)
        del decoded, means, mean_h   # a large image's latents: free what synthesis does not need
        _release(y_hat)   # the entropy decoding's holes, before synthesis allocates
        return self.synthesis(y_hat.mul_(inv_gain[:, None, None])).clamp_(0, 1)
