"""The Python API: images in, ``.vae`` bytes out, and back.

    import vaecodec
    data = vaecodec.compress("photo.png", quality=4.5)      # bytes of a .vae file
    image = vaecodec.decompress(data)                       # a PIL.Image.Image
    vaecodec.info(data).bpp

These carry exactly what the command line carries (it calls them): alpha (stored losslessly),
grey, the ICC profile, the EXIF orientation (applied before coding), 16-bit and other modes
converted to 8 bits with a notice (a :class:`VaecodecWarning` here), the same size limits and
the same refusals, raised as :class:`CodecError` (a ``ValueError``) with a one-line message.

Models are loaded once per process and shared; compressing from several threads at once gives
the same bytes as one thread (a lock serialises the model loading, and coding does not change
the model).
"""
from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import bitstream
from .errors import CodecError

__all__ = ["compress", "decompress", "info", "FileInfo", "CodecError", "VaecodecWarning"]

_LOAD_LOCK = threading.Lock()


class VaecodecWarning(UserWarning):
    """A lossy or surprising conversion of the input (e.g. a 16-bit image coded at 8 bits)."""


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors whose message is meant for the user, turned into :class:`CodecError`."""
    from .entropy import EntropyCodingError
    from .errors import ImageError
    from .releases import ReleaseError
    from .weights import WeightsError
    return (bitstream.BitstreamError, ImageError, ReleaseError, WeightsError, EntropyCodingError)


def _as_codec_error(exc: Exception) -> CodecError:
    return exc if isinstance(exc, CodecError) else CodecError(str(exc))


def read(image, name: str | None = None):
    """Any accepted input as the codec's ``(rgb, meta)`` (:func:`vaecodec.imageio.read_image`):
    a path (str or path-like), the bytes of an image file, a PIL image, or a uint8 numpy array
    ``(H, W)`` (grey), ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA). Raises :class:`CodecError`."""
    from PIL import Image
    from . import imageio
    try:
        if isinstance(image, (str, os.PathLike)):
            return imageio.read_image(image)
        if isinstance(image, (bytes, bytearray, memoryview)):
            return imageio.read_image_bytes(bytes(image), name or "image data")
        if isinstance(image, Image.Image):
            return imageio.read_pil(image, name or "image")
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
                raise CodecError(f"expected a uint8 array of shape (H, W), (H, W, 3) or (H, W, 4), "
                                 f"got {image.dtype} {image.shape}")
            if 0 in image.shape[:2]:
                raise CodecError(f"image {image.shape[1]}x{image.shape[0]} is empty")
            return imageio.read_pil(Image.fromarray(np.ascontiguousarray(image)), name or "array")
    except _user_errors() as exc:
        raise _as_codec_error(exc) from None
    raise CodecError(f"expected a path, image file bytes, a PIL image or a numpy array, "
                     f"got {type(image).__name__}")


METADATA = ("icc", "exif", "xmp")   # what --metadata / metadata= can keep (alpha always stays)


def metadata_kinds(metadata: str | None) -> frozenset[str]:
    """``"all"`` (the default), ``"none"``, or a comma-separated list of ``icc``, ``exif``, ``xmp``
    (as cwebp's ``-metadata``) -> the set kept. Raises :class:`CodecError` for anything else."""
    text = "all" if metadata is None else str(metadata).strip().lower()
    if text == "all":
        return frozenset(METADATA)
    if text == "none":
        return frozenset()
    kinds = frozenset(k.strip() for k in text.split(","))
    if not kinds or not kinds <= set(METADATA):
        raise CodecError(f"metadata must be all, none or a list of {', '.join(METADATA)}, got {metadata!r}")
    return kinds


def sections(meta, metadata: str | None = "all") -> tuple:
    """The container sections that carry ``meta``'s alpha plane and, as ``metadata`` selects
    (:func:`metadata_kinds`), its ICC profile, EXIF and XMP."""
    keep = metadata_kinds(metadata)
    out = []
    if meta.icc_profile and "icc" in keep:
        out.append(bitstream.Section(bitstream.SECTION_ICC, meta.icc_profile))
    if meta.alpha is not None:
        out.append(bitstream.Section(bitstream.SECTION_ALPHA, meta.alpha))
    if getattr(meta, "exif", None) and "exif" in keep:
        out.append(bitstream.Section(bitstream.SECTION_EXIF, meta.exif))
    if getattr(meta, "xmp", None) and "xmp" in keep:
        out.append(bitstream.Section(bitstream.SECTION_XMP, meta.xmp))
    return tuple(out)


def encoder(model: str | None = None, refine: int = 0, weights: str | os.PathLike | None = None):
    """The loaded model that :func:`compress` codes with: release ``model`` (default: the
    newest), or the training export in ``weights``. Raises :class:`CodecError`."""
    from . import codec
    try:
        with _LOAD_LOCK:
            return codec.get_model(str(weights) if weights else None, refine=bool(refine), release=model)
    except _user_errors() as exc:
        raise _as_codec_error(exc) from None


def compress_read(rgb: np.ndarray, meta, quality: float = 4.0, *, refine: int = 0,
                  model: str | None = None, weights=None, progress=None, metadata: str = "all") -> bytes:
    """:func:`compress` for an input already read with :func:`read` (the command line prints
    ``meta.notices`` itself). ``progress(n)`` is called :func:`vaecodec.codec.work_units`
    times. Raises :class:`CodecError`."""
    from . import codec
    h, w = rgb.shape[:2]
    codec.check_size(h, w)
    kept = sections(meta, metadata)
    loaded = encoder(model, refine, weights)
    try:
        return codec.compress_array(rgb, quality, mode=meta.mode, sections=kept,
                                    model=loaded, progress=progress, refine=refine)
    except _user_errors() as exc:
        raise _as_codec_error(exc) from None


def compress_to_target(rgb: np.ndarray, meta, target: str, value: float, *, refine: int = 0,
                       model: str | None = None, weights=None, metadata: str = "all"):
    """Rate control (:mod:`vaecodec.ratecontrol`) for an input read with :func:`read`: the file
    at the quality that meets ``target`` (``"size"`` in bytes, ``"bpp"``, ``"psnr"`` in dB) of
    ``value``. Returns a :class:`vaecodec.ratecontrol.Result` (bytes, chosen quality, whether
    the target was reached). Raises :class:`CodecError`."""
    from . import codec, ratecontrol
    codec.check_size(*rgb.shape[:2])
    kept = sections(meta, metadata)
    loaded = encoder(model, refine, weights)
    cache: dict = {}

    def encode(quality: float, steps: int) -> bytes:
        return codec.compress_array(rgb, quality, mode=meta.mode, sections=kept,
                                    model=loaded, refine=steps, analysis=cache)

    def decode(data: bytes) -> np.ndarray:
        return codec.decompress_array(data, model=loaded).rgb

    try:
        return ratecontrol.search(encode, decode, rgb, target, value, refine)
    except _user_errors() as exc:
        raise _as_codec_error(exc) from None


def compress(image, quality: float | None = None, *, refine: int = 0, model: str | None = None,
             size: int | str | None = None, bpp: float | None = None, psnr: float | None = None,
             metadata: str = "all") -> bytes:
    """Compress an image into the bytes of a ``.vae`` file.

    Args:
        image: a path (str or path-like) or the bytes of an image file Pillow reads (PNG,
            JPEG, TIFF, WebP, ...), a ``PIL.Image.Image``, or a uint8 numpy array of shape
            ``(H, W)`` (grey), ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA), values 0..255.
            1x1 to 2**30 pixels, at most 131072 per side.
        quality: 1 (smallest file, ~0.1 bpp on Kodak) to 8 (best, ~1.6 bpp), fractions
            allowed (stored in thousandths); default 4 (~0.65 bpp).
        refine: steps of encoder-side latent refinement (0 to 1000; Yang et al. 2020): 30 make
            files ~8 % smaller at the same PSNR for ~20x the encoding time.
        model: the model release to code with (e.g. ``"2026.12"``); default the newest.
        size, bpp, psnr: rate control instead of ``quality`` (at most one): the largest file
            of at most ``size`` bytes (an int, or text such as ``"20k"``, ``"1.5M"``) or
            ``bpp`` bits per pixel, or the smallest file whose decoded PSNR (RGB) is at least
            ``psnr`` dB. The quality is searched by bisection (``info(data).quality`` tells
            which); a target out of reach gives the closest file and a
            :class:`VaecodecWarning`.
        metadata: which metadata to keep besides the pixels and alpha: ``"all"`` (default),
            ``"none"``, or a comma-separated list of ``icc``, ``exif``, ``xmp``. EXIF is kept
            without its orientation tag (the orientation is applied to the pixels).

    Returns:
        The file's bytes; :func:`decompress` restores the image (same size and mode, alpha
        exact, ICC profile carried; pixels lossy).

    Raises:
        CodecError: unreadable or unsupported input, a size out of range, a quality or
            refine value out of range, an unknown release or one without a shipped encoder.

    Warns:
        VaecodecWarning: for each lossy or surprising conversion of the input (16-bit to 8,
            CMYK to RGB, a dropped ICC profile, ...).
    """
    metadata_kinds(metadata)   # refused before any work
    targets = {k: v for k, v in (("size", size), ("bpp", bpp), ("psnr", psnr)) if v is not None}
    if len(targets) > 1:
        raise CodecError(f"give at most one of size, bpp and psnr, got {', '.join(targets)}")
    if targets and quality is not None:
        raise CodecError(f"give quality or {next(iter(targets))}, not both")
    quality = 4.0 if quality is None else quality
    rgb, meta = read(image)
    for notice in meta.notices:
        warnings.warn(notice, VaecodecWarning, stacklevel=2)
    if not targets:
        return compress_read(rgb, meta, quality, refine=refine, model=model, metadata=metadata)
    target, value = next(iter(targets.items()))
    if target == "size" and isinstance(value, str):
        from .ratecontrol import parse_size
        try:
            value = parse_size(value)
        except ValueError as exc:
            raise CodecError(str(exc)) from None
    result = compress_to_target(rgb, meta, target, value, refine=refine, model=model,
                                metadata=metadata)
    if not result.reached:
        warnings.warn(f"the {target} target {value} is out of reach; coded at quality "
                      f"{result.quality:g}, the closest", VaecodecWarning, stacklevel=2)
    return result.data


def decoder(header: bitstream.Header, weights=None):
    """The loaded model that decodes a file with ``header``: the release it names, or the
    training export in ``weights``. Raises :class:`CodecError` (e.g. for a release this
    vaecodec does not have)."""
    from . import codec
    try:
        with _LOAD_LOCK:
            return codec.decoder_for(header, codec.get_model(str(weights), encoder=False) if weights else None)
    except _user_errors() as exc:
        raise _as_codec_error(exc) from None


def decode(data, *, weights=None, progress=None):
    """:func:`decompress` with the command line's extras: ``weights`` (a training export folder
    instead of the release the file names) and ``progress(n)``, called once per tile. Returns
    ``(image, header)``. Raises :class:`CodecError`."""
    from . import codec, imageio
    try:
        data = bytes(data)
        model = decoder(bitstream.peek_header(data), weights)
        decoded = codec.decompress_array(data, model=model, progress=progress)
        found = {s.kind: s.data for s in decoded.sections}
        meta = imageio.ImageMeta(mode=decoded.header.mode, alpha=found.get(bitstream.SECTION_ALPHA),
                                 icc_profile=found.get(bitstream.SECTION_ICC),
                                 exif=found.get(bitstream.SECTION_EXIF), xmp=found.get(bitstream.SECTION_XMP))
        return imageio.to_image(decoded.rgb, meta), decoded.header
    except TypeError:
        raise CodecError(f"expected the bytes of a .vae file, got {type(data).__name__}") from None
    except _user_errors() as exc:
        raise _as_codec_error(exc) from None


def decompress(data):
    """Decompress a ``.vae`` file (its bytes, or a path) into a ``PIL.Image.Image``.

    The image has the original's size and mode (``"RGB"``, ``"L"``, ``"RGBA"`` or ``"LA"``;
    alpha exact), its ICC profile in ``image.info["icc_profile"]``, and the EXIF and XMP it
    kept in ``image.info["exif"]`` and ``image.info["xmp"]`` (``image.save`` writes them back). It is decoded with the
    model release the file names, so files of every release vaecodec shipped keep decoding.

    Raises:
        CodecError: the data is not a ``.vae`` file, is damaged (checksum), truncated, of a
            newer format, or of a model release this vaecodec does not have (the message
            names it: a newer vaecodec decodes it).
    """
    if isinstance(data, (str, os.PathLike)):
        try:
            data = Path(data).read_bytes()
        except OSError as exc:
            raise CodecError(f"cannot read {data}: {exc.strerror or exc}") from None
    return decode(data)[0]


@dataclass(frozen=True)
class FileInfo:
    """What the header of a ``.vae`` file says (:func:`info`).

    Attributes:
        width, height: the image size in pixels.
        mode: ``"RGB"``, ``"L"``, ``"RGBA"`` or ``"LA"``.
        quality: the quality it was coded at, 1.0 to 8.0.
        bytes: the file's size in bytes.
        bpp: bits per pixel of the whole file (``8 * bytes / (width * height)``).
        tiles: the number of tiles coded.
        release: the model release that made it (``""`` for a format 1 file or one coded with
            a training export; its fingerprint names its weights).
        fingerprint: the weights' fingerprint, 16 hex digits.
        format: the container format version.
        sections: the kinds of sections held (``"ICC profile"``, ``"alpha"``, ``"EXIF"``,
            ``"XMP"``, and ``"layout"`` for a thin image folded before coding, format 3).
    """

    width: int
    height: int
    mode: str
    quality: float
    bytes: int
    bpp: float
    tiles: int
    release: str
    fingerprint: str
    format: int
    sections: tuple[str, ...]


SECTION_NAMES = {bitstream.SECTION_ICC: "ICC profile", bitstream.SECTION_ALPHA: "alpha",
                 bitstream.SECTION_EXIF: "EXIF", bitstream.SECTION_XMP: "XMP",
                 bitstream.SECTION_LAYOUT: "layout"}


def info(data) -> FileInfo:
    """The header of the ``.vae`` file ``data`` (bytes, or a path) as a :class:`FileInfo`,
    without decoding (cheap: no model is loaded). Raises :class:`CodecError` for a file that is
    not a valid ``.vae`` file."""
    try:
        if isinstance(data, (str, os.PathLike)):
            data = Path(data).read_bytes()
        c = bitstream.unpack(bytes(data))
    except OSError as exc:
        raise CodecError(f"cannot read {data}: {exc.strerror or exc}") from None
    except bitstream.BitstreamError as exc:
        raise CodecError(str(exc)) from None
    h = c.header
    return FileInfo(width=h.width, height=h.height, mode=h.mode, quality=h.quality_milli / 1000,
                    bytes=len(data), bpp=8 * len(data) / (h.width * h.height), tiles=len(c.tiles),
                    release=h.release, fingerprint=h.fingerprint.hex(), format=data[4],
                    sections=tuple(SECTION_NAMES.get(s.kind, str(s.kind)) for s in c.sections))
