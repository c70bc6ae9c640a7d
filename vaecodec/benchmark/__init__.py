"""Rate-distortion benchmark of vaecodec against JPEG, WebP, AVIF, JPEG XL, JPEG 2000 (and HEIC).

Every codec is an object with a ``name``, a quality sweep ``qualities``, ``encode(image,
quality) -> bytes`` (an RGB ``PIL.Image`` to a complete file, headers included) and
``decode(bytes) -> PIL.Image``. The classical codecs go through Pillow and its plugins:

========== ================================================================================
jpeg       Pillow's libjpeg-turbo, baseline, 4:2:0 chroma subsampling, quality 5..95
webp       Pillow's libwebp, lossy, ``method=6`` (slowest/best), quality 5..95
avif       Pillow's built-in libavif (aom encoder, dav1d decoder), 4:4:4, ``tune=psnr``,
           speed 6, quality 10..90 (``pillow-avif-plugin`` when Pillow lacks AVIF)
jpegxl     ``pillow-jxl-plugin`` (libjxl), effort 7, quality 10..95 (else ``imagecodecs``)
jpeg2000   Pillow's OpenJPEG, irreversible 9/7 wavelet with the colour transform (``mct=1``),
           one layer at a fixed compression ratio 240..8 (about 0.1..3 bpp), raw ``.j2k``
heic       ``pillow-heif`` (libheif, x265), 4:2:0, quality 10..90 — not in the default list
vaecodec   :func:`vaecodec.codec.encode` / :func:`vaecodec.codec.decode`, quality 1..8
vaecodec-  the same with :data:`REFINE_STEPS` steps of encoder-side latent refinement
refine     (:mod:`vaecodec.refine`): same decoder, slower encoding — not in the default list
========== ================================================================================

A codec whose library is missing (or, for vaecodec, whose module or weights are missing) is
skipped with a one-line notice on stderr. All codecs run single-threaded by default
(``threads=1``) so that encoding/decoding times compare like for like.

Per image and quality the benchmark records the file size in bytes, bits per pixel (bpp,
``8·bytes/(H·W)`` of the original size), PSNR-RGB in dB, MS-SSIM, and encoding and decoding
wall time in seconds. Per quality it averages over images (mean bpp, mean PSNR, as in the
literature), and from those mean curves computes the Bjøntegaard BD-rate (percent) and BD-PSNR
(dB) of every codec against JPEG, and the PSNR at 0.25, 0.5 and 1 bpp.

Outputs in the output directory:

- ``results.json``: a list with one entry per codec in CompressAI's plotting layout,
  ``{"name", "description", "codec", "qualities", "results": {"bpp", "psnr-rgb", "ms-ssim-rgb",
  "encoding_time", "decoding_time"}}``, points ordered by increasing bpp;
- ``per-image.json`` and ``per-image.csv``: every (image, codec, quality) measurement;
- ``report.md``: BD tables (against JPEG, and vaecodec and vaecodec-refine head to head),
  PSNR at fixed rates, per-quality tables;
- ``rd-psnr.png`` and ``rd-msssim.png``: the rate-distortion curves.

Command line: ``vaecodec benchmark`` (:data:`benchmark_command`) or ``python benchmarks/rd.py``.

Modules, in the order a run uses them: :mod:`.codecs` (the codecs under test),
:mod:`.images` (the dataset), :mod:`.measure` (one codec on one image, and the means),
:mod:`.report` (BD tables, report.md, plots), :mod:`.run` (the driver, :func:`run_benchmark`)
and :mod:`.command` (the click command). :mod:`vaecodec.cli` imports this package only when
the ``benchmark`` command runs.
"""
from __future__ import annotations

from .codecs import (ALIASES, CODECS, DEFAULT_CODECS, REFINE_STEPS, REFINED, AvifCodec, Codec,
                     CodecUnavailable, HeicCodec, Jpeg2000Codec, JpegCodec, JpegXLCodec,
                     PillowCodec, VaeCodec, VaeCodecRefined, WebPCodec, get_codec, parse_codecs)
from .command import benchmark_command
from .images import ImageSource, dataset_images, default_dataset, pixel_digest
from .measure import aggregate, measure
from .report import ANCHOR, BPP_TARGETS, SUBJECT, head_to_head, summarize, write_plots, write_report
from .run import previous_records, run_benchmark

__all__ = ["ALIASES", "ANCHOR", "BPP_TARGETS", "CODECS", "DEFAULT_CODECS", "REFINED", "REFINE_STEPS",
           "SUBJECT", "AvifCodec", "Codec", "CodecUnavailable", "HeicCodec", "ImageSource",
           "Jpeg2000Codec", "JpegCodec", "JpegXLCodec", "PillowCodec", "VaeCodec", "VaeCodecRefined",
           "WebPCodec", "aggregate", "benchmark_command", "dataset_images", "default_dataset",
           "get_codec", "head_to_head", "measure", "parse_codecs", "pixel_digest",
           "previous_records", "run_benchmark", "summarize", "write_plots", "write_report"]
