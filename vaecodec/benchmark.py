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
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import click
import numpy as np
from PIL import Image

from . import metrics

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CODECS = ("vaecodec", "jpeg", "webp", "avif", "jpegxl", "jpeg2000")
ANCHOR = "jpeg"  # BD metrics are relative to this codec
SUBJECT = "vaecodec"  # and the head-to-head table compares this one with each other codec
REFINED = "vaecodec-refine"   # vaecodec --refine REFINE_STEPS, compared head to head as well
REFINE_STEPS = 60
BPP_TARGETS = (0.25, 0.5, 1.0)  # rates (bpp) at which the report reads each curve's PSNR
IMAGE_SUFFIXES = {".png", ".ppm", ".pnm", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".webp"}
# scikit-image's bundled colour photographs, used when no dataset directory is available
SKIMAGE_SAMPLES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry",
                   "hubble_deep_field")


def notice(message: str) -> None:
    """One line on stderr."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Codecs


class CodecUnavailable(RuntimeError):
    """The codec's library (or model) is not available here."""


class Codec:
    """A codec under test.

    ``name`` is the registry key, ``label`` the display name, ``qualities`` the sweep (each value
    is passed to :meth:`encode`). ``threads`` is the number of threads the codec may use.
    """

    name: str = ""
    label: str = ""
    qualities: tuple = ()
    settings: str = ""

    def __init__(self, threads: int = 1):
        self.threads = max(1, int(threads))
        self._loaded = False

    # -- availability --------------------------------------------------------------------------
    def _load(self) -> None:
        """Import the library; raise :class:`CodecUnavailable` (or ImportError) if missing."""

    def load(self) -> None:
        if not self._loaded:
            self._load()
            self._loaded = True

    def unavailable_reason(self) -> str | None:
        """``None`` when usable, else a one-line reason."""
        try:
            self.load()
        except Exception as exc:  # any failure to set the codec up means "skip it"
            return f"{type(exc).__name__}: {exc}".splitlines()[0]
        return None

    def version(self) -> str:
        """Library and version, for the report."""
        return ""

    @property
    def description(self) -> str:
        parts = [p for p in (self.version(), self.settings) if p]
        return "; ".join(parts)

    # -- coding --------------------------------------------------------------------------------
    def encode(self, image: Image.Image, quality) -> bytes:
        """Encode an RGB image at ``quality`` to the bytes of a complete file."""
        raise NotImplementedError

    def decode(self, data: bytes) -> Image.Image:
        """Decode file bytes to an RGB image."""
        self.load()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")


class PillowCodec(Codec):
    """A codec reached through ``PIL.Image.save(format=...)`` with per-quality options."""

    format = ""

    def save_options(self, quality) -> dict[str, Any]:
        raise NotImplementedError

    def encode(self, image: Image.Image, quality) -> bytes:
        self.load()
        buf = io.BytesIO()
        image.save(buf, format=self.format, **self.save_options(quality))
        return buf.getvalue()


def _pillow_feature_version(feature: str) -> str:
    from PIL import features
    return features.version(feature) or "?"


class JpegCodec(PillowCodec):
    name, label, format = "jpeg", "JPEG", "JPEG"
    qualities = (5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95)
    settings = "baseline, 4:2:0, quality 5..95"

    def _load(self) -> None:
        from PIL import features
        if not features.check("jpg"):
            raise CodecUnavailable("Pillow was built without JPEG support")

    def version(self) -> str:
        from PIL import features
        lib = "libjpeg-turbo" if features.check("libjpeg_turbo") else "libjpeg"
        ver = _pillow_feature_version("libjpeg_turbo" if lib == "libjpeg-turbo" else "jpg")
        return f"Pillow {Image.__version__}, {lib} {ver}"

    def save_options(self, quality) -> dict[str, Any]:
        return {"quality": int(quality), "subsampling": "4:2:0"}


class WebPCodec(PillowCodec):
    name, label, format = "webp", "WebP", "WEBP"
    qualities = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
    settings = "lossy, method 6, quality 5..95"

    def _load(self) -> None:
        from PIL import features
        if not features.check("webp"):
            raise CodecUnavailable("Pillow was built without WebP support")

    def version(self) -> str:
        return f"Pillow {Image.__version__}, libwebp {_pillow_feature_version('webp')}"

    def save_options(self, quality) -> dict[str, Any]:
        return {"quality": int(quality), "method": 6, "lossless": False}


class AvifCodec(PillowCodec):
    name, label, format = "avif", "AVIF", "AVIF"
    qualities = (10, 20, 30, 40, 50, 60, 70, 80, 90)
    settings = "4:4:4, speed 6, quality 10..90"
    speed = 6
    subsampling = "4:4:4"

    def _load(self) -> None:
        from PIL import features
        self._builtin = bool(features.check("avif"))
        if not self._builtin:
            try:
                import pillow_avif  # noqa: F401  (registers the AVIF plugin)
            except ImportError as exc:
                raise CodecUnavailable("Pillow lacks AVIF and pillow-avif-plugin is not "
                                       "installed") from exc
        self._advanced = None
        if self._builtin:
            from PIL import _avif
            if _avif.encoder_codec_available("aom"):
                self._codec = "aom"
                self._advanced = {"tune": "psnr"}  # aom's default tune is perceptual
            else:
                self._codec = "auto"
        else:
            self._codec = "auto"

    def version(self) -> str:
        try:
            self.load()
        except Exception:
            return ""
        if self._builtin:
            from PIL import _avif
            return (f"Pillow {Image.__version__}, libavif {_avif.libavif_version} "
                    f"({_avif.codec_versions()})" + (", tune=psnr" if self._advanced else ""))
        import importlib.metadata as md
        return f"pillow-avif-plugin {md.version('pillow-avif-plugin')}"

    def save_options(self, quality) -> dict[str, Any]:
        opts: dict[str, Any] = {"quality": int(quality), "speed": self.speed,
                                "subsampling": self.subsampling, "max_threads": self.threads}
        if self._builtin:
            opts["codec"] = self._codec
            if self._advanced:
                opts["advanced"] = self._advanced
        return opts


class JpegXLCodec(Codec):
    name, label = "jpegxl", "JPEG XL"
    qualities = (10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
    settings = "effort 7, quality 10..95 (libjxl's quality-to-distance mapping)"
    effort = 7

    def _load(self) -> None:
        try:
            import pillow_jxl  # noqa: F401  (registers the JXL plugin)
            self._backend = "pillow-jxl-plugin"
        except ImportError:
            try:
                import imagecodecs
            except ImportError as exc:
                raise CodecUnavailable("neither pillow-jxl-plugin nor imagecodecs is "
                                       "installed") from exc
            if not imagecodecs.JPEGXL.available:
                raise CodecUnavailable("imagecodecs was built without JPEG XL") from None
            self._backend = "imagecodecs"

    def version(self) -> str:
        try:
            self.load()
        except Exception:
            return ""
        import importlib.metadata as md
        if self._backend == "pillow-jxl-plugin":
            return f"pillow-jxl-plugin {md.version('pillow-jxl-plugin')} (libjxl)"
        import imagecodecs
        return f"imagecodecs {imagecodecs.__version__} ({imagecodecs.jpegxl_version()})"

    def encode(self, image: Image.Image, quality) -> bytes:
        self.load()
        if self._backend == "pillow-jxl-plugin":
            buf = io.BytesIO()
            image.save(buf, format="JXL", quality=int(quality), effort=self.effort,
                       num_threads=self.threads)
            return buf.getvalue()
        import imagecodecs
        return bytes(imagecodecs.jpegxl_encode(np.asarray(image), level=int(quality),
                                               effort=self.effort, numthreads=self.threads))

    def decode(self, data: bytes) -> Image.Image:
        self.load()
        if self._backend == "pillow-jxl-plugin":
            return super().decode(data)
        import imagecodecs
        arr = imagecodecs.jpegxl_decode(data, numthreads=self.threads)
        return Image.fromarray(arr).convert("RGB")


class Jpeg2000Codec(PillowCodec):
    name, label, format = "jpeg2000", "JPEG 2000", "JPEG2000"
    # compression ratios against 24-bit RGB: bpp ≈ 24 / ratio, from 0.1 to 3 bpp
    qualities = (240, 160, 120, 96, 64, 48, 32, 24, 16, 12, 8)
    settings = ("irreversible 9/7 wavelet, MCT, 1 layer, quality = compression ratio "
                "240..8 (about 24/ratio bpp), raw codestream")

    def _load(self) -> None:
        from PIL import features
        if not features.check("jpg_2000"):
            raise CodecUnavailable("Pillow was built without OpenJPEG (JPEG 2000)")

    def version(self) -> str:
        return f"Pillow {Image.__version__}, OpenJPEG {_pillow_feature_version('jpg_2000')}"

    def save_options(self, quality) -> dict[str, Any]:
        return {"quality_mode": "rates", "quality_layers": [float(quality)],
                "irreversible": True, "mct": 1, "no_jp2": True}


class HeicCodec(PillowCodec):
    name, label, format = "heic", "HEIC", "HEIF"
    qualities = (10, 20, 30, 40, 50, 60, 70, 80, 90)
    settings = "x265, 4:2:0, quality 10..90"

    def _load(self) -> None:
        try:
            import pillow_heif
        except ImportError as exc:
            raise CodecUnavailable("pillow-heif is not installed") from exc
        pillow_heif.register_heif_opener()
        pillow_heif.options.DECODE_THREADS = self.threads
        if not pillow_heif.libheif_info().get("encoders", {}).get("x265"):
            raise CodecUnavailable("pillow-heif has no HEVC (x265) encoder")

    def version(self) -> str:
        try:
            self.load()
        except Exception:
            return ""
        import pillow_heif
        info = pillow_heif.libheif_info()
        return (f"pillow-heif {pillow_heif.__version__}, libheif {info.get('libheif')}, "
                f"{info.get('HEIF')}")

    def save_options(self, quality) -> dict[str, Any]:
        return {"quality": int(quality)}


class VaeCodec(Codec):
    name, label = "vaecodec", "vaecodec"
    qualities = (1, 2, 3, 4, 5, 6, 7, 8)
    settings = "quality 1..8"
    refine_steps = 0   # encoder-side latent refinement (vaecodec.refine) per encode

    def _load(self) -> None:
        try:
            from . import codec
        except ImportError as exc:
            raise CodecUnavailable(f"vaecodec.codec cannot be imported ({exc})") from exc
        try:
            import torch
            torch.set_num_threads(self.threads)
        except Exception:  # noqa: BLE001 - torch missing shows up in the probe below
            pass
        # Probe (and warm up: the model is loaded once per process, with its float entropy
        # model when refining) on a tiny image, so missing weights become a skip notice and
        # model loading is not timed as encoding.
        probe = Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8))
        out = codec.decode(codec.encode(probe, quality=1.0, refine=min(1, self.refine_steps)))
        if out.size != probe.size:
            raise CodecUnavailable("vaecodec probe decoded to the wrong size")

    def version(self) -> str:
        return "vaecodec.codec (this repository)"

    def encode(self, image: Image.Image, quality) -> bytes:
        self.load()
        from . import codec
        return codec.encode(image, quality=float(quality), refine=self.refine_steps)

    def decode(self, data: bytes) -> Image.Image:
        self.load()
        from . import codec
        return codec.decode(data).convert("RGB")


class VaeCodecRefined(VaeCodec):
    """vaecodec with encoder-side latent refinement (:mod:`vaecodec.refine`): same decoder and
    files, slower encoding. Not in the default list: with :data:`REFINE_STEPS` = 60 it encoded
    about 45× slower on Kodak (42 s against 0.94 s an image on one thread)."""
    name, label = REFINED, f"vaecodec --refine {REFINE_STEPS}"
    settings = f"quality 1..8, {REFINE_STEPS} steps of latent refinement (SGA)"
    refine_steps = REFINE_STEPS


CODECS: dict[str, type[Codec]] = {c.name: c for c in (
    VaeCodec, VaeCodecRefined, JpegCodec, WebPCodec, AvifCodec, JpegXLCodec, Jpeg2000Codec, HeicCodec)}
ALIASES = {"jpg": "jpeg", "jxl": "jpegxl", "j2k": "jpeg2000", "jp2": "jpeg2000",
           "heif": "heic", "vae": "vaecodec"}


def parse_codecs(codecs: str | Sequence[str], option: str = "--codecs") -> list[str]:
    """Canonical codec names from a comma list or a sequence; :class:`click.BadParameter`
    (naming ``option``) on an unknown name. Duplicates are dropped, order kept."""
    items = codecs.split(",") if isinstance(codecs, str) else list(codecs)
    names: list[str] = []
    for item in items:
        key = item.strip().lower()
        if not key:
            continue
        key = ALIASES.get(key, key)
        if key not in CODECS:
            raise click.BadParameter(
                f"unknown codec {item.strip()!r}; choose from {', '.join(CODECS)}",
                param_hint=f"'{option}'")
        if key not in names:
            names.append(key)
    if not names:
        raise click.BadParameter("no codec given", param_hint=f"'{option}'")
    return names


def get_codec(name: str, threads: int = 1) -> Codec:
    """A fresh codec object for a registry name (or alias)."""
    return CODECS[parse_codecs([name])[0]](threads=threads)


# --------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class ImageSource:
    """An image to benchmark: a file, or a scikit-image sample by function name."""
    name: str
    path: str | None = None
    skimage: str | None = None

    def load(self) -> Image.Image:
        if self.path is not None:
            with Image.open(self.path) as im:
                return im.convert("RGB")
        import skimage.data
        arr = getattr(skimage.data, self.skimage)()
        return Image.fromarray(np.asarray(arr)[..., :3]).convert("RGB")


def pixel_digest(image: Image.Image) -> str:
    """SHA-256 (hex) of an RGB image's size and pixels: what a stored measurement was made on."""
    h = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    h.update(np.asarray(image.convert("RGB"), dtype=np.uint8).tobytes())
    return h.hexdigest()


def default_dataset() -> Path | None:
    """Kodak at ``../shared/data/kodak`` (from the current directory) or
    ``<repo>/../shared/data/kodak``, when present; else ``None`` (scikit-image samples)."""
    for candidate in (Path.cwd() / ".." / "shared" / "data" / "kodak",
                      REPO_ROOT.parent / "shared" / "data" / "kodak"):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def dataset_images(dataset: Path | None,
                   limit: int | None = None) -> tuple[str, list[ImageSource]]:
    """The dataset's name and its images (sorted by file name), at most ``limit`` of them.

    ``dataset=None`` means scikit-image's sample photographs. A missing directory or one without
    images raises :class:`click.UsageError`.
    """
    if dataset is None:
        sources = [ImageSource(n, skimage=n) for n in SKIMAGE_SAMPLES]
        name = "skimage"
    else:
        dataset = Path(dataset)
        if not dataset.is_dir():
            raise click.UsageError(f"dataset directory not found: {dataset}")
        files = sorted(p for p in dataset.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise click.UsageError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {dataset}")
        sources = [ImageSource(p.stem, path=str(p)) for p in files]
        name = dataset.resolve().name
    if limit is not None:
        if limit < 1:
            raise click.UsageError("--limit must be at least 1")
        sources = sources[:limit]
    return name, sources


# --------------------------------------------------------------------------------------------
# Measuring


def measure(codec: Codec, image: Image.Image, quality) -> dict[str, Any]:
    """Encode and decode ``image`` at ``quality``: file size in bytes, bpp, PSNR-RGB (dB),
    MS-SSIM, encoding and decoding wall time (seconds, ``time.perf_counter``)."""
    t0 = time.perf_counter()
    data = codec.encode(image, quality)
    t1 = time.perf_counter()
    recon = codec.decode(data)
    t2 = time.perf_counter()
    if recon.size != image.size:
        raise RuntimeError(f"{codec.name} decoded {recon.size}, expected {image.size}")
    width, height = image.size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # small images: MS-SSIM NaN, noted
        msssim = metrics.ms_ssim_rgb(image, recon)
    return {
        "bytes": len(data),
        "bpp": metrics.bpp(len(data), height, width),
        "psnr-rgb": metrics.psnr_rgb(image, recon),
        "ms-ssim-rgb": msssim,
        "encoding_time": t1 - t0,
        "decoding_time": t2 - t1,
    }


_WORKER_CODECS: dict[str, Codec] = {}


def _init_worker(threads: int) -> None:
    """Process-pool initializer: limit every library to ``threads`` threads."""
    # torch (MS-SSIM, vaecodec) is imported later and reads OMP_NUM_THREADS then
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


def _run_task(source: ImageSource, codec_name: str, threads: int) -> dict[str, Any]:
    """Benchmark one image with one codec over its whole sweep (runs in a worker or inline)."""
    key = f"{codec_name}/{threads}"
    codec = _WORKER_CODECS.get(key)
    if codec is None:
        codec = _WORKER_CODECS[key] = get_codec(codec_name, threads=threads)
    records: list[dict[str, Any]] = []
    try:
        codec.load()
        image = source.load()
        width, height = image.size
        digest = pixel_digest(image)
        for quality in codec.qualities:
            rec = {"image": source.name, "codec": codec.name, "quality": quality,
                   "width": width, "height": height, "sha256": digest}
            rec.update(measure(codec, image, quality))
            records.append(rec)
    except Exception as exc:  # report and go on with the other images/codecs
        return {"records": records,
                "error": f"{codec_name} on {source.name}: {type(exc).__name__}: {exc}"}
    return {"records": records, "error": None}


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else float("nan")


def aggregate(records: list[dict[str, Any]], codec: Codec) -> dict[str, Any]:
    """Per-quality means over images of bpp, PSNR-RGB (dB), MS-SSIM and times (s), in
    CompressAI's layout, points ordered by increasing mean bpp."""
    points = []
    for quality in codec.qualities:
        rows = [r for r in records if r["codec"] == codec.name and r["quality"] == quality]
        if not rows:
            continue
        points.append({
            "quality": quality,
            "bytes": _mean([r["bytes"] for r in rows]),
            "bpp": _mean([r["bpp"] for r in rows]),
            "psnr-rgb": _mean([r["psnr-rgb"] for r in rows]),
            # NaN unless defined for every image (too small ones have none), so that the mean
            # is always over the same images as bpp and PSNR
            "ms-ssim-rgb": float(np.mean([r["ms-ssim-rgb"] for r in rows])),
            "encoding_time": _mean([r["encoding_time"] for r in rows]),
            "decoding_time": _mean([r["decoding_time"] for r in rows]),
            "images": len(rows),
        })
    points.sort(key=lambda p: p["bpp"])
    keys = ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")
    return {
        "name": codec.label,
        "codec": codec.name,
        "description": codec.description,
        "qualities": [p["quality"] for p in points],
        "images": [p["images"] for p in points],
        "mean_bytes": [p["bytes"] for p in points],
        "results": {k: [p[k] for p in points] for k in keys},
    }


def _msssim_db(values: Sequence[float]) -> list[float]:
    # NaN (or None, as results.json stores NaN) where MS-SSIM was undefined (tiny images)
    return [metrics.ms_ssim_db(v) if v is not None and v == v else float("nan") for v in values]


def summarize(entries: list[dict[str, Any]], anchor: str = ANCHOR) -> dict[str, Any]:
    """BD-rate (%) and BD-PSNR (dB) against ``anchor`` (PSNR-RGB; also BD-rate on MS-SSIM in dB)
    and PSNR (dB) at :data:`BPP_TARGETS` bpp for every codec's mean curve."""
    ref = next((e for e in entries if e["codec"] == anchor), None)
    bd: dict[str, dict[str, float]] = {}
    at: dict[str, dict[str, float]] = {}
    for e in entries:
        r = e["results"]
        at[e["codec"]] = {str(t): metrics.psnr_at_bpp(r["bpp"], r["psnr-rgb"], t)
                          for t in BPP_TARGETS}
        if ref is None:
            continue
        rr = ref["results"]
        bd[e["codec"]] = _bd(rr, r)
    return {"anchor": anchor if ref is not None else None, "bd": bd, "psnr_at_bpp": at,
            "head_to_head": head_to_head(entries),
            "head_to_head_refined": head_to_head(entries, REFINED)}


def head_to_head(entries: list[dict[str, Any]], subject: str = SUBJECT) -> dict[str, dict]:
    """BD-rate (%) and BD-PSNR (dB) of ``subject`` against every other codec directly, over the
    rate range the two curves share (PSNR-RGB; also BD-rate on MS-SSIM in dB). Anchored
    BD-rates (each codec vs JPEG, each over its own overlap with JPEG) cannot be subtracted to
    rank two codecs; these can.
    ``{}`` when ``subject`` was not run."""
    test = next((e["results"] for e in entries if e["codec"] == subject), None)
    if test is None:
        return {}
    return {e["codec"]: _bd(e["results"], test) for e in entries if e["codec"] != subject}


def _bd(ref: dict[str, Any], test: dict[str, Any]) -> dict[str, float]:
    """Bjøntegaard deltas of the ``test`` curve against the ``ref`` curve: BD-rate (%) and
    BD-PSNR (dB) on PSNR-RGB, and BD-rate (%) on MS-SSIM in dB (NaN when a curve has none)."""
    out = {"bd_rate_psnr_pct": metrics.bd_rate(ref["bpp"], ref["psnr-rgb"],
                                               test["bpp"], test["psnr-rgb"]),
           "bd_psnr_db": metrics.bd_psnr(ref["bpp"], ref["psnr-rgb"],
                                         test["bpp"], test["psnr-rgb"]),
           "bd_rate_msssim_pct": float("nan")}
    if "ms-ssim-rgb" in ref and "ms-ssim-rgb" in test:
        out["bd_rate_msssim_pct"] = metrics.bd_rate(ref["bpp"], _msssim_db(ref["ms-ssim-rgb"]),
                                                    test["bpp"], _msssim_db(test["ms-ssim-rgb"]))
    return out


# --------------------------------------------------------------------------------------------
# Outputs


def _json_safe(obj):
    """NaN/inf -> None so the JSON is standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def _fmt(value, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def write_plots(entries: list[dict[str, Any]], out: Path, dataset_name: str) -> list[Path]:
    """``rd-psnr.png`` (PSNR-RGB vs bpp) and ``rd-msssim.png`` (MS-SSIM in dB vs bpp)."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    paths = []
    max_bpp = max((max(e["results"]["bpp"]) for e in entries if e["results"]["bpp"]), default=1.0)
    xmax = min(max_bpp * 1.03, 3.0)
    for metric, fname, ylabel in (
            ("psnr-rgb", "rd-psnr.png", "PSNR-RGB [dB]"),
            ("ms-ssim-rgb", "rd-msssim.png", "MS-SSIM [dB]  (−10·log10(1 − MS-SSIM))")):
        fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
        ys_visible: list[float] = []
        for e in entries:
            x = np.asarray(e["results"]["bpp"], dtype=float)
            y = np.asarray(e["results"][metric], dtype=float)
            if metric == "ms-ssim-rgb":
                y = np.asarray(_msssim_db(list(y)), dtype=float)
            ok = np.isfinite(x) & np.isfinite(y)
            if not ok.any():
                continue
            ax.plot(x[ok], y[ok], marker="o", markersize=3, linewidth=1.5, label=e["name"])
            ys_visible += list(y[ok & (x <= xmax)])
        if ys_visible:
            lo, hi = min(ys_visible), max(ys_visible)
            pad = 0.04 * (hi - lo or 1.0)
            ax.set_ylim(lo - pad, hi + pad)
            ax.legend(loc="lower right")
        else:
            ax.text(0.5, 0.5, "no finite values\n(MS-SSIM needs images of at least 161×161 px)",
                    ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(0, xmax)
        ax.set_xlabel("bits per pixel [bpp]")
        ax.set_ylabel(ylabel)
        ax.set_title(f"Rate-distortion on {dataset_name}")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = out / fname
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(path: Path, meta: dict[str, Any], entries: list[dict[str, Any]],
                 summary: dict[str, Any], skipped: dict[str, str], errors: list[str]) -> None:
    """``report.md``: settings, BD tables against the anchor, PSNR at fixed rates, per-quality
    tables."""
    earlier = [m for m in meta.get("measured", []) if m != meta["date"]]
    lines = [f"# Rate-distortion benchmark: {meta['dataset']}", ""]
    lines += [f"- images: {meta['num_images']} ({meta['dataset_path']})",
              f"- date: {meta['date']}; machine: {meta['machine']}"
              + (f"; measurements reused from {', '.join(earlier)}" if earlier else ""),
              f"- threads per codec: {meta['threads']}; parallel jobs: {meta['jobs']}"
              + (" (times with several jobs share the CPU and are noisier)"
                 if meta["jobs"] > 1 else ""),
              "- bpp = 8·file bytes (headers included) / (H·W); PSNR-RGB over all RGB values "
              "(peak 255, capped at 100 dB); per-quality values are means over images; "
              "BD metrics use these mean curves (PCHIP interpolation).", ""]
    if meta.get("msssim_note"):
        lines += [f"- note: {meta['msssim_note']}", ""]
    lines += ["## Codecs", "", "| codec | library and settings |", "| --- | --- |"]
    lines += [f"| {e['name']} | {e['description']} |" for e in entries]
    lines += [f"| {name} | skipped: {reason} |" for name, reason in skipped.items()]
    lines.append("")
    anchor = summary["anchor"]
    if anchor:
        anchor_label = next(e["name"] for e in entries if e["codec"] == anchor)
        lines += [f"## Bjøntegaard deltas against {anchor_label}", "",
                  "Negative BD-rate = fewer bits than the anchor at equal quality; "
                  "positive BD-PSNR = higher PSNR at equal rate. `–` = the curves do not overlap.",
                  "", "| codec | BD-rate PSNR [%] | BD-PSNR [dB] | BD-rate MS-SSIM [%] |",
                  "| --- | ---: | ---: | ---: |"]
        for e in entries:
            b = summary["bd"][e["codec"]]
            lines.append(f"| {e['name']} | {_fmt(b['bd_rate_psnr_pct'], 1, True)} | "
                         f"{_fmt(b['bd_psnr_db'], 2, True)} | "
                         f"{_fmt(b['bd_rate_msssim_pct'], 1, True)} |")
        lines.append("")
    else:
        lines += [f"_No BD tables: the anchor codec ({ANCHOR}) was not run._", ""]
    for key, codec in (("head_to_head", SUBJECT), ("head_to_head_refined", REFINED)):
        if not summary.get(key):
            continue
        subject = next(e["name"] for e in entries if e["codec"] == codec)
        lines += [f"## {subject} head to head", "",
                  f"Bjøntegaard deltas of {subject} against each codec directly, over the rates "
                  f"the two curves share (negative BD-rate = {subject} needs fewer bits). The "
                  "anchored table above measures each codec against JPEG over its own overlap "
                  "with JPEG, so its rows cannot be subtracted to rank two codecs.", "",
                  f"| {subject} vs | BD-rate PSNR [%] | BD-PSNR [dB] | BD-rate MS-SSIM [%] |",
                  "| --- | ---: | ---: | ---: |"]
        for e in entries:
            b = summary[key].get(e["codec"])
            if b is not None:
                lines.append(f"| {e['name']} | {_fmt(b['bd_rate_psnr_pct'], 1, True)} | "
                             f"{_fmt(b['bd_psnr_db'], 2, True)} | "
                             f"{_fmt(b['bd_rate_msssim_pct'], 1, True)} |")
        lines.append("")
    targets = [str(t) for t in BPP_TARGETS]
    lines += ["## PSNR-RGB at fixed rates", "",
              "Interpolated on each mean curve; `–` = outside the codec's rate range.", "",
              "| codec | " + " | ".join(f"{t} bpp [dB]" for t in targets) + " |",
              "| --- |" + " ---: |" * len(targets)]
    for e in entries:
        at = summary["psnr_at_bpp"][e["codec"]]
        lines.append(f"| {e['name']} | " + " | ".join(_fmt(at[t]) for t in targets) + " |")
    lines.append("")
    lines += ["## Per-quality results", ""]
    for e in entries:
        r = e["results"]
        lines += [f"### {e['name']}", "",
                  "| quality | mean bytes | bpp | PSNR-RGB [dB] | MS-SSIM | encode [ms] | "
                  "decode [ms] |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for i, q in enumerate(e["qualities"]):
            lines.append(f"| {q} | {_fmt(e['mean_bytes'][i], 0)} | {_fmt(r['bpp'][i], 3)} | "
                         f"{_fmt(r['psnr-rgb'][i])} | {_fmt(r['ms-ssim-rgb'][i], 4)} | "
                         f"{_fmt(1000 * r['encoding_time'][i], 1)} | "
                         f"{_fmt(1000 * r['decoding_time'][i], 1)} |")
        lines.append("")
    if errors:
        lines += ["## Errors", ""] + [f"- {err}" for err in errors] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Driver


def previous_records(out: Path, keep: Sequence[str]) -> dict[tuple[str, str], list[dict]]:
    """Measurements of an earlier run in ``out`` (``per-image.json``) for the codecs in ``keep``,
    keyed by ``(codec, image)``; ``{}`` when there is none. Each record says when and with how
    many parallel jobs it was measured (``measured``, ``jobs``); records written before they
    did take those of the run that stored them."""
    path = Path(out) / "per-image.json"
    if not path.exists():
        return {}
    stored = json.loads(path.read_text(encoding="utf-8"))
    meta = stored.get("meta", {})
    grouped: dict[tuple[str, str], list[dict]] = {}
    for r in stored.get("records", []):
        if r.get("codec") in keep:   # JSON stored NaN as null
            r = {k: (math.nan if v is None else v) for k, v in r.items()}
            r.setdefault("measured", meta.get("date", "unknown date"))
            r.setdefault("jobs", meta.get("jobs", 1))
            grouped.setdefault((r["codec"], r["image"]), []).append(r)
    return grouped


def _still_valid(records: list[dict], digest: str, size: tuple[int, int]) -> bool:
    """Whether stored ``records`` were measured on the image whose pixels hash to ``digest``
    (records older than the digest field: on an image of the same ``(width, height)``)."""
    for r in records:
        if "sha256" in r:
            if r["sha256"] != digest:
                return False
        elif (r.get("width"), r.get("height")) != size:
            return False
    return True


def run_benchmark(dataset: Path | None, codecs: list[str] | str, out: Path, jobs: int = 1,
                  limit: int | None = None, threads: int = 1,
                  progress: bool = True, reuse: Sequence[str] = ()) -> dict[str, Any]:
    """Run the benchmark and write its outputs (see the module docstring) into ``out``.

    ``dataset``: a directory of images, or ``None`` for scikit-image's sample photographs.
    ``codecs``: registry names (or a comma list); unavailable ones are skipped with a notice.
    ``jobs``: worker processes, parallel over images; ``limit``: use only the first N images;
    ``threads``: threads each codec may use (1 keeps timings comparable); ``reuse``: codecs
    whose measurements from an earlier run in ``out`` are kept instead of measured again.

    Returns ``{"dataset", "images", "results" (the ``results.json`` list), "bd", "psnr_at_bpp",
    "anchor", "skipped" ({name: reason}), "errors", "files" ({kind: path})}``. Raises
    :class:`click.UsageError` on an unknown codec or a missing/empty dataset directory, and
    :class:`click.ClickException` (writing nothing) when every measurement failed.
    """
    try:
        names = parse_codecs(codecs)
    except click.BadParameter as exc:
        raise click.UsageError(exc.format_message()) from exc
    if jobs < 1:
        raise click.UsageError("--jobs must be at least 1")
    dataset_name, sources = dataset_images(dataset, limit)

    available: list[Codec] = []
    skipped: dict[str, str] = {}
    for name in names:
        codec = get_codec(name, threads=threads)
        reason = codec.unavailable_reason()
        if reason is None:
            available.append(codec)
        else:
            skipped[name] = reason
            notice(f"skipping {name}: {reason}")
    if not available:
        raise click.UsageError("none of the requested codecs is available here")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kept = previous_records(out, reuse)
    for src in sources:
        stale = [c.name for c in available if (c.name, src.name) in kept]
        if stale:
            image = src.load()
            digest = pixel_digest(image)
            for name in stale:
                if _still_valid(kept[(name, src.name)], digest, image.size):
                    for r in kept[(name, src.name)]:
                        r["sha256"] = digest
                else:
                    notice(f"measuring {name} on {src.name} again: the stored measurement "
                           "was made on a different image")
                    del kept[(name, src.name)]
    if reuse and not kept:
        notice(f"nothing to reuse in {out / 'per-image.json'}: measuring every codec")
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results: list[dict[str, Any]] = [{"records": kept[(c.name, src.name)], "error": None}
                                     for src in sources for c in available
                                     if (c.name, src.name) in kept]
    tasks = [(src, codec.name) for src in sources for codec in available
             if (codec.name, src.name) not in kept]
    from tqdm import tqdm
    bar = tqdm(total=len(tasks), desc="benchmark", unit="task", disable=not progress or not tasks,
               file=sys.stderr)
    try:
        if jobs == 1:
            import torch  # MS-SSIM runs in torch: hold it to the same thread budget
            torch.set_num_threads(threads)
            for codec in available:  # reuse the already-loaded codec objects
                _WORKER_CODECS[f"{codec.name}/{threads}"] = codec
            for src, name in tasks:
                bar.set_postfix_str(f"{name} {src.name}", refresh=False)
                results.append(_run_task(src, name, threads))
                bar.update()
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed
            ctx = multiprocessing.get_context("spawn")  # no fork of a threaded parent
            with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                                     initargs=(threads,)) as pool:
                futures = [pool.submit(_run_task, src, name, threads) for src, name in tasks]
                for fut in as_completed(futures):
                    results.append(fut.result())
                    bar.update()
    finally:
        bar.close()

    records = [r for res in results for r in res["records"]]
    for r in records:
        r.setdefault("measured", now)   # fresh measurements; reused ones keep theirs
        r.setdefault("jobs", jobs)
    order = {s.name: i for i, s in enumerate(sources)}
    records.sort(key=lambda r: (names.index(r["codec"]), order[r["image"]], str(r["quality"])))
    errors = [res["error"] for res in results if res["error"]]
    for err in errors:
        notice(f"error: {err}")

    entries = [aggregate(records, c) for c in available]
    entries = [e for e in entries if e["results"]["bpp"]]
    if errors and not entries:   # keep an earlier report in ``out`` rather than an empty one
        raise click.ClickException("nothing was measured (every codec failed, see the errors "
                                   "above); no files written")
    summary = summarize(entries)

    small = [r["image"] for r in records
             if min(r["width"], r["height"]) < metrics.MS_SSIM_MIN_SIDE]
    meta = {
        "dataset": dataset_name,
        "dataset_path": (str(Path(dataset).resolve()) if dataset is not None
                         else "scikit-image samples"),
        "num_images": len(sources),
        "images": [s.name for s in sources],
        "date": now,
        "measured": sorted({r["measured"] for r in records}),
        "machine": (f"{platform.machine()}, {os.cpu_count()} CPUs, "
                    f"Python {platform.python_version()}"),
        "threads": threads,
        "jobs": max((r["jobs"] for r in records), default=jobs),   # of the timings shown
        "msssim_note": (f"MS-SSIM is NaN for {len(set(small))} image(s) smaller than "
                        f"{metrics.MS_SSIM_MIN_SIDE} px on a side" if small else ""),
    }

    files = {
        "results": out / "results.json",
        "per_image_json": out / "per-image.json",
        "per_image_csv": out / "per-image.csv",
        "report": out / "report.md",
    }
    files["results"].write_text(json.dumps(_json_safe(entries), indent=2), encoding="utf-8")
    files["per_image_json"].write_text(
        json.dumps(_json_safe({"meta": meta, "records": records}), indent=2), encoding="utf-8")
    columns = ["image", "codec", "quality", "width", "height", "bytes", "bpp", "psnr-rgb",
               "ms-ssim-rgb", "encoding_time", "decoding_time"]
    with open(files["per_image_csv"], "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: r[k] for k in columns} for r in records)
    write_report(files["report"], meta, entries, summary, skipped, errors)
    plots = write_plots(entries, out, dataset_name)
    files["rd_psnr"], files["rd_msssim"] = plots

    return {
        "dataset": dataset_name,
        "images": meta["images"],
        "results": entries,
        "anchor": summary["anchor"],
        "bd": summary["bd"],
        "psnr_at_bpp": summary["psnr_at_bpp"],
        "head_to_head": summary["head_to_head"],
        "head_to_head_refined": summary["head_to_head_refined"],
        "skipped": skipped,
        "errors": errors,
        "files": {k: str(v) for k, v in files.items()},
    }


#: The files :func:`run_benchmark` writes into its output folder.
RESULT_FILES = ("results.json", "per-image.json", "per-image.csv", "report.md", "rd-psnr.png",
                "rd-msssim.png")


def _parse_codecs_option(ctx, param, value):
    if param.name == "reuse" and not value:
        return []
    return parse_codecs(value, option=param.opts[0])


@click.command("benchmark", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dataset", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None,
              help="Directory of images (PNG, PPM, BMP, TIFF, ...). Default: "
                   "../shared/data/kodak from the current directory or <repo>/../shared/data/"
                   "kodak when present, else scikit-image's sample photographs.")
@click.option("--codecs", default=",".join(DEFAULT_CODECS), show_default=True,
              callback=_parse_codecs_option,
              help=f"Comma list of codecs: {', '.join(CODECS)} (aliases: "
                   f"{', '.join(f'{a}={n}' for a, n in ALIASES.items())}). Unavailable ones are "
                   "skipped with a notice.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory. Default: benchmarks/results/<dataset name>.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes, parallel over images (timings get noisier).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N images (sorted by file name).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Threads each codec may use (1 keeps encode/decode times comparable).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--reuse", default="", metavar="CODECS", callback=_parse_codecs_option,
              help="Comma list of codecs whose per-image results already in OUT are kept "
                   "(e.g. the classical codecs when only the vaecodec weights changed); the "
                   "rest of OUT's results are rewritten.")
@click.option("-f", "--force", is_flag=True,
              help="Overwrite the results of an earlier run in OUT (refused without it, "
                   "unless --reuse names codecs to keep from them).")
def benchmark_command(dataset: Path | None, codecs: list[str], out: Path | None, jobs: int,
                      limit: int | None, threads: int, quiet: bool, reuse: list[str],
                      force: bool) -> None:
    """Rate-distortion benchmark of vaecodec against JPEG, WebP, AVIF, JPEG XL and JPEG 2000.

    For every image and quality it measures the real file size (bpp), PSNR-RGB (dB), MS-SSIM
    and encode/decode times (s); it writes results.json (CompressAI's plotting layout),
    per-image.json/.csv, report.md (BD-rate and BD-PSNR against JPEG and of vaecodec head to
    head against each codec, PSNR at 0.25/0.5/1 bpp, per-quality tables), rd-psnr.png and
    rd-msssim.png.

    Example: vaecodec benchmark --codecs jpeg,webp,avif --limit 4 --jobs 2
    """
    if dataset is None:
        dataset = default_dataset()
    name = dataset.resolve().name if dataset is not None else "skimage"
    if out is None:
        out = Path("benchmarks") / "results" / name
    earlier = [f for f in RESULT_FILES if (Path(out) / f).exists()]
    if earlier and not force and not reuse:
        raise click.ClickException(
            f"{out} holds the results of an earlier run ({', '.join(earlier)}); use --force to "
            "overwrite them, --reuse CODECS to keep some, or another --out")
    result = run_benchmark(dataset, codecs, out, jobs=jobs, limit=limit, threads=threads,
                           progress=not quiet, reuse=reuse)
    click.echo(f"{len(result['images'])} images, codecs: "
               f"{', '.join(e['name'] for e in result['results'])}")
    if result["anchor"]:
        for e in result["results"]:
            b = result["bd"][e["codec"]]
            click.echo(f"  {e['name']:<10} BD-rate {_fmt(b['bd_rate_psnr_pct'], 1, True):>7} %  "
                       f"BD-PSNR {_fmt(b['bd_psnr_db'], 2, True):>6} dB  (vs JPEG)")
    for key, subject in (("head_to_head", SUBJECT), ("head_to_head_refined", REFINED)):
        for e in result["results"]:
            b = result[key].get(e["codec"])
            if b is not None and e["codec"] != ANCHOR:
                click.echo(f"  {subject} vs {e['name']:<10} BD-rate "
                           f"{_fmt(b['bd_rate_psnr_pct'], 1, True):>7} %  "
                           f"BD-PSNR {_fmt(b['bd_psnr_db'], 2, True):>6} dB  (head to head)")
    click.echo(f"wrote {result['files']['report']} and results.json, plots in {out}")


__all__ = ["Codec", "CODECS", "DEFAULT_CODECS", "CodecUnavailable", "ImageSource",
           "aggregate", "benchmark_command", "dataset_images", "default_dataset", "get_codec",
           "head_to_head", "measure", "parse_codecs", "run_benchmark", "summarize"]
