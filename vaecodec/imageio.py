"""Image files in and out of the codec: any image Pillow reads, to RGB and back.

The codec itself only ever sees a ``(H, W, 3)`` ``uint8`` RGB array.  This
module does everything around that:

* :func:`read_image` opens any image Pillow can read, applies the EXIF
  orientation, and reduces it to an RGB array plus an :class:`ImageMeta`
  that records what is needed to give the user back an image of the same
  kind (grey or colour, alpha plane, ICC profile) and one-line notices about
  anything that was changed on the way (16-bit reduced to 8 bits, CMYK
  converted, palette expanded, ...). The alpha plane is kept as the bytes of
  :func:`vaecodec.alpha.encode_alpha`.
* :func:`to_image` turns a decoded RGB array and the metadata back into a
  :class:`PIL.Image.Image` of the original mode.
* :func:`write_image` encodes an image in the format its file name's
  extension selects and writes it atomically
  (:func:`vaecodec.fileio.atomic_write_bytes`).

Every user-facing failure is an :class:`ImageError` whose message is a single
line that names the file concerned.

Only the standard library, numpy and Pillow are used (no torch).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import threading
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from .alpha import decode_alpha, encode_alpha
from .errors import ImageError, one_line
from .fileio import PathLike, atomic_write_bytes, display_name, os_reason, resolve_target

__all__ = [
    "ImageError",
    "ImageMeta",
    "MAX_PIXELS",
    "MODES",
    "WRITE_FORMATS",
    "read_image",
    "read_image_bytes",
    "read_pil",
    "to_image",
    "write_image",
    "check_output_mode",
    "encode_png",
]

#: Largest image (in pixels, width * height) :func:`read_image` accepts by default.
#: 2**30 pixels is 3 GiB as 8-bit RGB, already far beyond what the codec can
#: handle comfortably; anything bigger is treated as a decompression bomb.
MAX_PIXELS = 1 << 30

#: The modes an :class:`ImageMeta` can ask :func:`to_image` to restore.
MODES = ("RGB", "L", "RGBA", "LA")

#: Output extensions accepted by :func:`write_image` and the Pillow format used.
WRITE_FORMATS = {
    ".png": "PNG",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
}

# Pillow plugins never used for reading: EPS runs Ghostscript on the input.
_UNSAFE_READ_FORMATS = frozenset({"EPS"})

# JPEG output settings (lossy; the user is told).
_JPEG_QUALITY = 95
# zlib level of PNG output. A decoded image is lossy already, and decompress is where its time
# goes: on Kodak's kodim23, Pillow's default level 6 took 0.28 s and 561 kB, level 1 0.046 s
# (6x faster) and 620 kB (+11 %), level 3 0.084 s and 600 kB. Level 1 saves a third of a
# decode; run the PNG through an optimiser (oxipng, zopflipng) when its size matters.
PNG_LEVEL = 1


@dataclass
class ImageMeta:
    """What :func:`read_image` learnt about an image besides its RGB pixels.

    Attributes:
        mode: the mode :func:`to_image` restores, one of :data:`MODES`:
            ``"RGB"``, ``"L"`` (grey), ``"RGBA"`` or ``"LA"`` (grey + alpha).
        alpha: the alpha plane as produced by :func:`encode_alpha` (lossless),
            or ``None`` when the image has no alpha.  Required for ``"RGBA"``
            and ``"LA"``, must be ``None`` for ``"RGB"`` and ``"L"``.
        icc_profile: raw ICC profile bytes to embed on output, or ``None``.
            Only kept when it describes the restored colour space (an RGB
            profile for RGB/RGBA, a grey one for L/LA).
        notices: one-line, human-readable notes about lossy or surprising
            conversions done while reading (e.g. ``"16-bit image coded at 8
            bits"``).  Empty when the image was taken as is.
        exif: the EXIF metadata (camera, date, GPS, ...) as a TIFF-structured
            block without the ``Exif\\0\\0`` prefix and without the orientation
            tag (the orientation is applied to the pixels), or ``None``.
        xmp: the XMP packet (UTF-8 XML bytes), or ``None``.
    """

    mode: str
    alpha: bytes | None = None
    icc_profile: bytes | None = None
    notices: list[str] = field(default_factory=list)
    exif: bytes | None = None
    xmp: bytes | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ImageError(
                f"unsupported image mode {self.mode!r}; expected one of {', '.join(MODES)}"
            )


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def _icc_colour_space(icc: bytes) -> str | None:
    """The data colour space signature of an ICC profile (``"RGB"``, ``"GRAY"``,
    ``"CMYK"``, ``"Lab"``, ...) or ``None`` when it is not a valid profile header."""
    if len(icc) < 128 or icc[36:40] != b"acsp":
        return None
    return icc[16:20].decode("latin-1").strip()


def _icc_family(mode: str) -> str:
    return "GRAY" if mode in ("L", "LA") else "RGB"


# --------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------

_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _pillow_limits(max_pixels: int) -> Iterator[None]:
    """Make Pillow's own decompression-bomb check use ``max_pixels``.

    Pillow raises DecompressionBombError above ``2 * Image.MAX_IMAGE_PIXELS``
    and warns above ``Image.MAX_IMAGE_PIXELS``; the global is swapped for the
    duration of the read (under a lock) and the warning is silenced, so our
    single cap applies to every check Pillow does internally (e.g. GIF frames).
    """
    with _LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max(1, (max_pixels + 1) // 2)
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _read_formats() -> list[str]:
    Image.init()
    return [f for f in Image.ID if f not in _UNSAFE_READ_FORMATS]


def _tile_rawmode(im: Image.Image) -> str:
    """The raw (on-disk) pixel layout Pillow will decode from, before load()."""
    try:
        args = im.tile[0].args if im.tile else None
    except (AttributeError, IndexError, TypeError):
        return ""
    if isinstance(args, tuple) and args:
        args = args[0]
    return args if isinstance(args, str) else ""


# "RGB;16B", "RGBA;16L", "LA;16B", ...: 16 bits per *channel* (unlike BMP's
# "BGR;16", which is 16 bits per pixel).
_SIXTEEN_BIT_RAWMODE = re.compile(r"^(RGB|RGBA|RGBX|LA|RGBa);16[BLN]?$")


def _is_16bit_colour(im: Image.Image, rawmode: str) -> bool:
    """Whether an 8-bit-per-channel Pillow image came from 16-bit samples."""
    if _SIXTEEN_BIT_RAWMODE.match(rawmode):
        return True
    tags = getattr(im, "tag_v2", None)  # TIFF BitsPerSample
    if tags is not None:
        try:
            bits = tags.get(258)
            if isinstance(bits, int):
                bits = (bits,)
            if bits and max(int(b) for b in bits) > 8:
                return True
        except (TypeError, ValueError):
            pass
    return False


def _scale16(values: np.ndarray) -> np.ndarray:
    """16-bit samples (0..65535, any integer dtype) -> uint8 with rounding:
    ``(v + 128) // 257`` == ``round(v * 255 / 65535)``."""
    v = np.clip(values.astype(np.int64), 0, 65535)
    return ((v + 128) // 257).astype(np.uint8)


def _colour_key_alpha(
    values: np.ndarray, key: object, shift: int = 0
) -> np.ndarray | None:
    """Alpha plane (0 where ``values`` equals the colour key, 255 elsewhere) for a
    tRNS-style single transparent colour, or None if ``key`` is not usable.

    ``values`` is (H, W) for grey or (H, W, 3) for RGB; ``shift`` right-shifts a
    16-bit key to compare it against values that Pillow already truncated to 8 bits.
    """
    try:
        if values.ndim == 2:
            k = int(key) >> shift  # type: ignore[call-overload]
            mask = values == k
        else:
            k3 = np.array([int(c) >> shift for c in key], dtype=np.int64)  # type: ignore[union-attr]
            if k3.shape != (values.shape[2],):
                return None
            mask = (values == k3).all(axis=2)
    except (TypeError, ValueError):
        return None
    return np.where(mask, 0, 255).astype(np.uint8)


def _convert_cmyk(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, str]:
    """CMYK -> RGB, through the embedded ICC profile when there is a usable one."""
    if icc is not None and _icc_colour_space(icc) == "CMYK":
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            out = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
            if out is not None and out.mode == "RGB":
                return out, "CMYK image converted to sRGB using its ICC profile"
        except Exception:  # noqa: BLE001 - any LittleCMS failure: fall back
            pass
    return im.convert("RGB"), "CMYK image converted to RGB"


def _convert_lab(im: Image.Image) -> tuple[Image.Image, str]:
    try:
        from PIL import ImageCms

        out = ImageCms.profileToProfile(
            im, ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), outputMode="RGB"
        )
        if out is not None and out.mode == "RGB":
            return out, "Lab image converted to sRGB"
    except Exception as err:  # noqa: BLE001
        raise ImageError(f"cannot convert the Lab image to RGB: {one_line(err)}") from None
    raise ImageError("cannot convert the Lab image to RGB")


def _float_to_grey(values: np.ndarray) -> tuple[np.ndarray, str]:
    v = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if v.size and v.min() >= 0.0 and v.max() <= 1.0:
        return np.rint(v * 255.0).astype(np.uint8), (
            "32-bit float image coded at 8 bits (values 0..1 scaled to 0..255)"
        )
    return np.rint(np.clip(v, 0.0, 255.0)).astype(np.uint8), (
        "32-bit float image coded at 8 bits (values clipped to 0..255)"
    )


def _normalise(
    im: Image.Image, icc: bytes | None, rawmode: str, notices: list[str]
) -> tuple[np.ndarray, str, np.ndarray | None, bytes | None]:
    """Reduce a loaded Pillow image to (grey (H, W) or RGB (H, W, 3) uint8,
    restored mode, alpha (H, W) uint8 or None, icc profile or None)."""
    mode = im.mode
    key = im.info.get("transparency")
    sixteen = _is_16bit_colour(im, rawmode)
    sixteen_notice = "16-bit image coded at 8 bits"
    key_notice = "transparent colour key converted to an alpha channel"

    if mode in ("RGB", "RGBX"):
        rgb = np.array(im.convert("RGB") if mode == "RGBX" else im)
        if sixteen:
            notices.append(sixteen_notice)
        alpha = None
        if key is not None:
            alpha = _colour_key_alpha(rgb, key, shift=8 if sixteen else 0)
            if alpha is not None:
                notices.append(key_notice)
        return rgb, ("RGB" if alpha is None else "RGBA"), alpha, icc

    if mode in ("RGBA", "RGBa"):
        arr = np.array(im.convert("RGBA") if mode == "RGBa" else im)
        if sixteen:
            notices.append(sixteen_notice)
        if rawmode.startswith("LA"):
            # Pillow opens 16-bit grey+alpha PNGs as RGBA (R == G == B).
            return arr[..., 0].copy(), "LA", arr[..., 3].copy(), icc
        return arr[..., :3].copy(), "RGBA", arr[..., 3].copy(), icc

    if mode in ("L", "1"):
        grey = np.array(im if mode == "L" else im.convert("L"))
        if mode == "1":
            notices.append("1-bit image coded as 8-bit grey (it decodes as grey, mode L)")
        alpha = None
        if key is not None:
            alpha = _colour_key_alpha(grey, key)
            if alpha is not None:
                notices.append(key_notice)
        return grey, ("L" if alpha is None else "LA"), alpha, icc

    if mode in ("LA", "La"):
        arr = np.array(im if mode == "LA" else im.convert("LA"))
        return arr[..., 0].copy(), "LA", arr[..., 1].copy(), icc

    if mode.startswith("I;16"):
        raw = np.array(im)
        notices.append(sixteen_notice)
        alpha = None
        if key is not None:
            alpha = _colour_key_alpha(raw, key)
            if alpha is not None:
                notices.append(key_notice)
        return _scale16(raw), ("L" if alpha is None else "LA"), alpha, icc

    if mode == "I":
        raw = np.array(im)
        notices.append("32-bit integer image coded at 8 bits (values 0..65535 scaled to 0..255)")
        return _scale16(raw), "L", None, icc

    if mode == "F":
        grey, note = _float_to_grey(np.array(im))
        notices.append(note)
        return grey, "L", None, icc

    if mode in ("P", "PA"):
        transparent = mode == "PA" or im.has_transparency_data
        arr = np.array(im.convert("RGBA" if transparent else "RGB"))
        if transparent:
            notices.append("palette image expanded to RGBA")
            return arr[..., :3].copy(), "RGBA", arr[..., 3].copy(), icc
        notices.append("palette image expanded to RGB")
        return arr, "RGB", None, icc

    if mode == "CMYK":
        out, note = _convert_cmyk(im, icc)
        notices.append(note)
        return np.array(out), "RGB", None, None  # the ICC described CMYK

    if mode == "LAB":
        out, note = _convert_lab(im)
        notices.append(note)
        return np.array(out), "RGB", None, None

    if mode in ("YCbCr", "HSV"):
        notices.append(f"{mode} image converted to RGB")
        return np.array(im.convert("RGB")), "RGB", None, (icc if mode == "YCbCr" else None)

    # Anything else Pillow can convert (rare raw modes).
    target = "RGBA" if im.has_transparency_data else "RGB"
    try:
        arr = np.array(im.convert(target))
    except (ValueError, OSError) as err:
        raise ImageError(f"unsupported image mode {mode} ({one_line(err)})") from None
    notices.append(f"{mode} image converted to {target}")
    if target == "RGBA":
        return arr[..., :3].copy(), "RGBA", arr[..., 3].copy(), icc
    return arr, "RGB", None, icc


def read_image(path: PathLike, *, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, ImageMeta]:
    """Read an image file as the codec's RGB input.

    Args:
        path: the file to read (str, bytes or path-like).
        max_pixels: refuse images with more than this many pixels (width *
            height); defaults to :data:`MAX_PIXELS` (2**30).

    Returns:
        ``(rgb, meta)`` where ``rgb`` is a C-contiguous, writable ``(H, W, 3)``
        ``uint8`` array in 0..255 (grey images have the grey value replicated in
        all three channels) and ``meta`` is the :class:`ImageMeta` needed by
        :func:`to_image` to restore the original mode (``"RGB"``, ``"L"``,
        ``"RGBA"`` or ``"LA"``), alpha and ICC profile.  ``H`` and ``W`` are
        the dimensions *after* applying the EXIF orientation.

    Conversions (each reported in ``meta.notices`` where information changes):
        16-bit grey -> 8 bits with rounding ``(v + 128) // 257``; 16-bit RGB(A)
        -> 8 bits (Pillow itself keeps only the high byte of those); palette ->
        RGB or RGBA; a tRNS colour key -> alpha plane; CMYK -> RGB (through its
        ICC profile when possible; the CMYK profile is dropped); Lab/HSV/YCbCr
        -> RGB; 32-bit integer (``I``) -> 0..65535 scaled to 8 bits; float
        (``F``) -> 0..1 scaled or 0..255 clipped; multi-frame files -> first
        frame only.  An ICC profile that does not describe the restored colour
        space (RGB for RGB/RGBA, grey for L/LA) is dropped with a notice.

    Raises:
        ImageError: missing file, directory, non-regular or empty file,
            unreadable file, not an image, zero-size image, too many pixels,
            corrupt/truncated data, or an unsupported mode.  The message is one
            line and names the file.
    """
    name = display_name(path)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise ImageError(f"no such file: {name}") from None
    except OSError as err:
        raise ImageError(f"cannot read {name}: {os_reason(err)}") from None
    except ValueError:  # e.g. an embedded NUL byte
        raise ImageError(f"invalid file name: {name}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{name} is a directory, not an image")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"{name} is not a regular file")
    if st.st_size == 0:
        raise ImageError(f"{name} is empty")
    return _decode_image(path, name, max_pixels)


def read_image_bytes(data: bytes, name: str = "standard input", *,
                     max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, ImageMeta]:
    """:func:`read_image` for an image file's bytes already in memory (e.g. read from a pipe);
    ``name`` stands for the file in messages. Same result, conversions and
    :class:`ImageError` refusals (empty data: ``"standard input is empty"``)."""
    if not data:
        raise ImageError(f"{name} is empty")
    return _decode_image(io.BytesIO(data), name, max_pixels)


def _decode_image(source, name: str, max_pixels: int) -> tuple[np.ndarray, ImageMeta]:
    """The decoding half of :func:`read_image`: ``source`` is a path or a binary file object."""
    if max_pixels < 1:
        raise ValueError("max_pixels must be positive")

    too_large = f"{name} is too large (more than {max_pixels} pixels); refusing to decode it"
    with _pillow_limits(max_pixels):
        try:
            im = Image.open(source, formats=_read_formats())
        except Image.DecompressionBombError:
            raise ImageError(too_large) from None
        except UnidentifiedImageError:
            raise ImageError(f"{name} is not an image Pillow can read") from None
        except OSError as err:
            raise ImageError(f"cannot read {name}: {os_reason(err)}") from None
        except Exception as err:  # noqa: BLE001 - plugin bugs on hostile input
            raise ImageError(f"{name} is not an image Pillow can read ({one_line(err)})") from None

        with im:
            if im.format == "VAE":   # readable since vaecodec registers its Pillow plugin
                raise ImageError(f"{name} is a .vae file already; decompress it (coding it again "
                                 "would lose quality a second time)")
            width, height = im.size
            if width <= 0 or height <= 0:
                raise ImageError(f"{name} has zero size ({width}x{height})")
            if width * height > max_pixels:
                raise ImageError(
                    f"{name} is too large ({width}x{height} = {width * height} pixels, "
                    f"limit {max_pixels}); refusing to decode it"
                )
            notices: list[str] = []
            try:
                n_frames = int(getattr(im, "n_frames", 1))
            except Exception:  # noqa: BLE001 - counting frames parses the file
                n_frames = 1
            if n_frames > 1:
                notices.append(f"multi-frame image ({n_frames} frames): only the first frame is coded")
                with contextlib.suppress(Exception):
                    im.seek(0)
            rawmode = _tile_rawmode(im)
            icc = im.info.get("icc_profile") or None
            try:
                im.load()
            except Image.DecompressionBombError:
                raise ImageError(too_large) from None
            except MemoryError:
                raise ImageError(f"not enough memory to read {name}") from None
            except Exception as err:  # noqa: BLE001 - decoder errors of every kind
                raise ImageError(f"{name} is corrupt or truncated ({one_line(err)})") from None
            # The ICC profile may live after the pixel data (PNG chunks).
            icc = im.info.get("icc_profile") or icc
            return _to_codec_input(im, name, icc, rawmode, notices, in_place=True)


def read_pil(image: Image.Image, name: str = "image", *,
             max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, ImageMeta]:
    """:func:`read_image` for a Pillow image already open (e.g. given to the Python API or to
    ``Image.save``): the same result, conversions and notices, with the EXIF orientation
    applied to a copy (``image`` itself is only loaded, not changed). Of a multi-frame image
    the current frame is taken. ``name`` stands for the image in messages.

    Raises:
        ImageError: as :func:`read_image` (zero size, too many pixels, unreadable pixel data,
            an unsupported mode).
    """
    if not isinstance(image, Image.Image):
        raise ImageError(f"{name} is not a Pillow image ({type(image).__name__})")
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(f"{name} has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(f"{name} is too large ({width}x{height} = {width * height} pixels, "
                         f"limit {max_pixels})")
    notices: list[str] = []
    rawmode = _tile_rawmode(image)
    try:
        image.load()
    except MemoryError:
        raise ImageError(f"not enough memory to read {name}") from None
    except Exception as err:  # noqa: BLE001 - decoder errors of every kind
        raise ImageError(f"{name} is corrupt or truncated ({one_line(err)})") from None
    return _to_codec_input(image, name, image.info.get("icc_profile") or None, rawmode, notices,
                           in_place=False)


def _to_codec_input(im: Image.Image, name: str, icc: bytes | None, rawmode: str,
                    notices: list[str], in_place: bool) -> tuple[np.ndarray, ImageMeta]:
    """The shared end of :func:`read_image` and :func:`read_pil` for a loaded image: EXIF
    orientation applied (to ``im`` itself with ``in_place``, else to a copy), mode, alpha and
    ICC profile normalised."""
    try:
        if in_place:
            ImageOps.exif_transpose(im, in_place=True)
        else:
            im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - malformed EXIF must not stop us
        notices.append("unreadable EXIF data ignored (orientation not applied)")
    exif, xmp = _metadata(im, notices)

    try:
        pixels, mode, alpha, icc = _normalise(im, icc, rawmode, notices)
    except ImageError as err:
        raise ImageError(f"{name}: {err}") from None
    except MemoryError:
        raise ImageError(f"not enough memory to read {name}") from None

    if icc is not None:
        space = _icc_colour_space(icc)
        if space is None:
            notices.append("invalid ICC profile dropped")
            icc = None
        elif space != _icc_family(mode):
            notices.append(f"ICC profile for {space} does not match the {mode} image; dropped")
            icc = None

    if pixels.ndim == 2:
        rgb = np.repeat(pixels[:, :, None], 3, axis=2)
    else:
        rgb = np.ascontiguousarray(pixels, dtype=np.uint8)
    meta = ImageMeta(
        mode=mode,
        alpha=None if alpha is None else encode_alpha(alpha),
        icc_profile=icc,
        notices=notices,
        exif=exif,
        xmp=xmp,
    )
    return rgb, meta


EXIF_PREFIX = b"Exif\x00\x00"   # how JPEG's APP1 and Pillow's info["exif"] start


def _metadata(im: Image.Image, notices: list[str]) -> tuple[bytes | None, bytes | None]:
    """The EXIF block (without its ``Exif\\0\\0`` prefix and without the orientation tag,
    which has been applied) and the XMP packet of ``im``, each ``None`` when absent. Raw bytes
    are kept as read unless the orientation tag has to go."""
    exif = None
    raw = im.info.get("exif")
    if isinstance(raw, (bytes, bytearray)) and raw:
        try:
            tags = im.getexif()
            if 0x0112 in tags:   # orientation: applied to the pixels, so not kept
                del tags[0x0112]
                raw = tags.tobytes()
            exif = bytes(raw[len(EXIF_PREFIX):] if raw.startswith(EXIF_PREFIX) else raw) or None
        except Exception:  # noqa: BLE001 - malformed EXIF must not stop us
            notices.append("unreadable EXIF data dropped")
    xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    return exif, (bytes(xmp) if isinstance(xmp, (bytes, bytearray)) and xmp else None)


# --------------------------------------------------------------------------
# back to an image
# --------------------------------------------------------------------------


def to_image(rgb: np.ndarray, meta: ImageMeta) -> Image.Image:
    """Build the output image from the decoded RGB array and the metadata.

    Args:
        rgb: ``(H, W, 3)`` ``uint8`` array (0..255) as decoded by the codec.
        meta: the :class:`ImageMeta` recorded by :func:`read_image`.

    Returns:
        A Pillow image of mode ``meta.mode``.  For ``"L"``/``"LA"`` the grey
        value is the rounded mean of the three channels (the decoded RGB of a
        grey image may differ slightly per channel); for ``"RGBA"``/``"LA"``
        the alpha plane is decoded exactly.  ``meta.icc_profile``, if any, is
        put in ``image.info["icc_profile"]``.

    Raises:
        ImageError: bad ``rgb`` shape/dtype, a missing or wrong-size alpha
            plane, or an alpha plane given for a mode without alpha.
    """
    if not isinstance(meta, ImageMeta):
        raise ImageError(f"meta must be an ImageMeta, not {type(meta).__name__}")
    if meta.mode not in MODES:
        raise ImageError(f"unsupported image mode {meta.mode!r}")
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        desc = f"shape {rgb.shape} dtype {rgb.dtype}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ImageError(f"decoded image must be an (H, W, 3) uint8 array, got {desc}")
    h, w = rgb.shape[:2]
    if h == 0 or w == 0:
        raise ImageError(f"decoded image has zero size ({w}x{h})")

    has_alpha = meta.mode in ("RGBA", "LA")
    if has_alpha and meta.alpha is None:
        raise ImageError(f"image mode {meta.mode} needs an alpha plane, but none was stored")
    if not has_alpha and meta.alpha is not None:
        raise ImageError(f"image mode {meta.mode} has no alpha, but an alpha plane was stored")

    if meta.mode in ("L", "LA"):
        total = rgb.astype(np.uint16).sum(axis=2)
        colour = ((total + 1) // 3).astype(np.uint8)  # == round(total / 3); no ties possible
    else:
        colour = np.ascontiguousarray(rgb)

    if has_alpha:
        alpha = decode_alpha(meta.alpha, h, w)  # type: ignore[arg-type]
        if colour.ndim == 2:
            arr = np.stack([colour, alpha], axis=2)
        else:
            arr = np.concatenate([colour, alpha[:, :, None]], axis=2)
    else:
        arr = colour

    image = Image.fromarray(np.ascontiguousarray(arr))
    if image.mode != meta.mode:  # pragma: no cover - fromarray inference guard
        image = image.convert(meta.mode)
    if meta.icc_profile:
        image.info["icc_profile"] = meta.icc_profile
    if meta.exif:
        image.info["exif"] = EXIF_PREFIX + meta.exif
    if meta.xmp:
        image.info["xmp"] = meta.xmp
    return image


# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------


def check_output_mode(path: PathLike, mode: str) -> None:
    """Refuse writing an image of Pillow ``mode`` to ``path`` when the format its extension
    selects cannot store it (transparency in JPEG or BMP), so a caller can refuse before doing
    the work that makes the image. Unknown extensions are left to :func:`write_image`.

    Raises:
        ImageError: ``"cannot write X: JPEG cannot store transparency; use .png, .webp or .tif"``.
    """
    ext = os.path.splitext(os.fsdecode(os.fspath(path)))[1].lower()
    fmt = WRITE_FORMATS.get(ext)
    if fmt in ("JPEG", "BMP") and mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        raise ImageError(
            f"cannot write {display_name(path)}: {fmt} cannot store transparency; use .png, .webp or .tif"
        )


def write_image(
    path: PathLike, image: Image.Image, icc_profile: bytes | None, force: bool = False, *,
    jpeg_quality: int = _JPEG_QUALITY, webp_quality: int | None = None,
) -> list[str]:
    """Encode ``image`` in the format given by the extension of ``path`` and
    write it atomically (see :func:`atomic_write_bytes`).

    Formats: ``.png``, ``.tif``/``.tiff`` (deflate), ``.webp`` (lossless,
    exact RGB under transparent pixels; lossy at ``webp_quality`` 0-100 when
    given), ``.bmp`` and ``.jpg``/``.jpeg`` (lossy, ``jpeg_quality`` 1-100,
    default 95, no chroma subsampling).  ``icc_profile`` (not
    ``image.info``) decides the embedded profile; it is embedded for PNG,
    TIFF, WebP and JPEG and dropped (with a notice) for BMP or when it does not
    match the colour space written.  WebP has no grey modes, so L/LA are
    written as RGB/RGBA.

    Returns:
        One-line notices for the user (e.g. JPEG is lossy); may be empty.

    Raises:
        ImageError: unknown extension (the message lists the supported ones),
            transparency requested for JPEG or BMP, encoder failure, or any
            of the :func:`atomic_write_bytes` refusals.  Nothing is left on
            disk when it fails.
    """
    name = display_name(path)
    ext = os.path.splitext(os.fsdecode(os.fspath(path)))[1].lower()
    fmt = WRITE_FORMATS.get(ext)
    if fmt is None:
        shown = f"'{ext}'" if ext else "no extension"
        raise ImageError(
            f"cannot write {name}: unknown image extension ({shown}); "
            f"use one of {', '.join(WRITE_FORMATS)}"
        )
    if not isinstance(image, Image.Image):
        raise ImageError(f"cannot write {name}: not a Pillow image ({type(image).__name__})")
    resolve_target(path, force)  # fail fast, before encoding
    check_output_mode(path, image.mode)
    data, notices = _encode(image, fmt, icc_profile, name, jpeg_quality, webp_quality)
    atomic_write_bytes(path, data, force=force)
    return notices


def _encode(image: Image.Image, fmt: str, icc_profile: bytes | None, name: str,
            jpeg_quality: int = _JPEG_QUALITY, webp_quality: int | None = None) -> tuple[bytes, list[str]]:
    """``image`` as a file of Pillow format ``fmt`` with the options and profile rules of
    :func:`write_image`; returns the bytes and the notices."""
    if not isinstance(image, Image.Image):
        raise ImageError(f"cannot write {name}: not a Pillow image ({type(image).__name__})")
    notices: list[str] = []
    mode = image.mode
    if fmt == "WEBP" and mode in ("L", "LA"):
        image = image.convert("RGB" if mode == "L" else "RGBA")
        notices.append(f"WebP has no greyscale mode; {mode} image written as {image.mode}")

    icc = icc_profile or None
    if icc is not None:
        if fmt == "BMP":
            notices.append("BMP cannot carry an ICC profile; profile dropped")
            icc = None
        elif image.mode in MODES and _icc_colour_space(icc) != _icc_family(image.mode):
            notices.append(f"ICC profile does not match the {image.mode} image written; profile dropped")
            icc = None

    params: dict[str, object] = {}
    if fmt != "BMP":
        params["icc_profile"] = icc  # explicit None also stops image.info's profile
    exif, xmp = image.info.get("exif"), image.info.get("xmp")
    if fmt == "BMP" and (exif or xmp):
        notices.append("BMP cannot carry EXIF or XMP metadata; dropped")
    elif fmt != "BMP":
        if exif:
            params["exif"] = exif
        if xmp and fmt == "PNG":
            from PIL.PngImagePlugin import PngInfo
            info = PngInfo()
            info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8", "replace"))
            params["pnginfo"] = info
        elif xmp and fmt == "TIFF":
            params["tiffinfo"] = {700: xmp}   # XMP's TIFF tag
        elif xmp:
            params["xmp"] = xmp
    if fmt == "PNG":
        params["compress_level"] = PNG_LEVEL
    elif fmt == "TIFF" and features.check_codec("libtiff"):
        params["compression"] = "tiff_deflate"
    elif fmt == "WEBP" and webp_quality is None:
        params.update(lossless=True, exact=True)
    elif fmt == "WEBP":
        params.update(lossless=False, quality=int(webp_quality), exact=True)
        notices.append(f"WebP output is lossy (re-encoded at quality {int(webp_quality)})")
    elif fmt == "JPEG":
        params.update(quality=int(jpeg_quality), subsampling=0)
        notices.append(f"JPEG output is lossy (re-encoded at quality {int(jpeg_quality)})")

    buf = io.BytesIO()
    try:
        if fmt == "TIFF" and "exif" in params:
            # libtiff refuses EXIF with sub-IFDs (GPS, Exif IFD), and Pillow takes either EXIF
            # or tiffinfo: TIFF keeps the XMP and drops the EXIF, with a notice
            params.pop("exif")
            notices.append("TIFF output does not keep EXIF metadata; use .png, .jpg or .webp to keep it")
        image.save(buf, format=fmt, **params)
    except MemoryError:
        raise ImageError(f"not enough memory to encode {name}") from None
    except Exception as err:  # noqa: BLE001 - encoder errors of every kind
        raise ImageError(f"cannot encode {name} as {fmt}: {one_line(err)}") from None
    return buf.getvalue(), notices


def encode_png(image: Image.Image, icc_profile: bytes | None) -> tuple[bytes, list[str]]:
    """The PNG file :func:`write_image` would write for ``image`` (e.g. for standard output),
    and its notices. Raises :class:`ImageError` as :func:`write_image` does."""
    return _encode(image, "PNG", icc_profile, "standard output")


