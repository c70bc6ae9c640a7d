"""The codecs under test: vaecodec and the classical codecs, each behind one small interface.

Every codec is an object with a ``name``, a quality sweep ``qualities``, ``encode(image,
quality) -> bytes`` (an RGB ``PIL.Image`` to a complete file, headers included) and
``decode(bytes) -> PIL.Image``; :data:`CODECS` is the registry, :func:`get_codec` makes one by
name or alias. A codec's library is imported only when it is first used (:meth:`Codec.load`).
"""
from __future__ import annotations

import io
from typing import Any, Sequence

import click
import numpy as np
from PIL import Image

DEFAULT_CODECS = ("vaecodec", "jpeg", "webp", "avif", "jpegxl", "jpeg2000")
REFINED = "vaecodec-refine"   # vaecodec --refine REFINE_STEPS, compared head to head as well
REFINE_STEPS = 60


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
            from .. import api, codec  # noqa: F401 - codec: torch and the model code load here
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
        out = api.decompress(api.compress(probe, 1.0, refine=min(1, self.refine_steps)))
        if out.size != probe.size:
            raise CodecUnavailable("vaecodec probe decoded to the wrong size")

    def version(self) -> str:
        return "vaecodec.codec (this repository)"

    def encode(self, image: Image.Image, quality) -> bytes:
        """What ``vaecodec.compress`` (and the CLI) writes for ``image``."""
        self.load()
        from .. import api
        return api.compress(image, float(quality), refine=self.refine_steps)

    def decode(self, data: bytes) -> Image.Image:
        """What ``vaecodec.decompress`` gives (a grey file by the SPEC's grey rule), as RGB."""
        self.load()
        from .. import api
        return api.decompress(data).convert("RGB")


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
