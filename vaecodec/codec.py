"""Images <-> ``.vae`` bytes: padding, tiling, side data, and the container.

``compress_array``/``decompress_array`` mirror each other:

0. A thin image, whose padding to a multiple of 64 would at least double the pixels coded (a
   20000x1 line would be coded as 20032x64), is first folded into a near-square one
   (:func:`fold_layout`, :func:`fold`): cut along its long side into strips, stacked along its
   short side; the file records the fold in a layout section (format version 3) and the
   decoder unfolds (:func:`unfold`). Every other image is coded as it is.
1. The image (``(H, W, 3)`` uint8 RGB; grey is replicated to 3 channels) is edge-padded to a
   multiple of 64 and coded as one set of latents (one ``z``, one ``y``) up to
   :data:`WHOLE_MAX_PIXELS`: the analysis and synthesis transforms, and refinement, run in
   overlapping windows cropped to their receptive field (:mod:`vaecodec.coder`,
   :mod:`vaecodec.refine`), so memory stays bounded whatever the size. A larger image is cut
   into a grid of :data:`TILE`-pixel tiles overlapping by :data:`OVERLAP` pixels, each coded
   independently (its own ``z`` and ``y``). The latents come from
   :func:`vaecodec.refine.refine_latents` (the analysis transforms' own without refinement
   steps), which the model entropy-codes (:meth:`vaecodec.coder.Coder.code_latents`).
2. The decoder reconstructs every tile, crops the padding, and blends overlapping tiles with
   linear ramps so no seam shows, then unfolds a folded image; the output has exactly the
   input's height and width.

Alpha planes and ICC profiles travel losslessly as container sections (:mod:`vaecodec.bitstream`).
"""
from __future__ import annotations

import functools
import hashlib
import math
import numbers
from dataclasses import dataclass, field

import numpy as np
import torch

from . import bitstream
from .errors import CodecError   # re-exported: an image that cannot be coded, a file that does not fit
from .model import STRIDE
from .refine import refine_latents

TILE = 1024
OVERLAP = 64
WHOLE_MAX_PIXELS = 1 << 25   # 33.5 megapixels (8K UHD is 33.2): one set of latents up to this
MAX_REFINE = 1000   # refinement steps




def get_model(weights_dir: str | None = None, encoder: bool = True, refine: bool = False,
              release: str | None = None):
    """The :class:`vaecodec.coder.Coder` to code with, loaded once per process (see
    :func:`vaecodec.weights.load`).

    ``weights_dir``: an export folder (``--weights``); else ``release``: the ID of a shipped
    model release (:mod:`vaecodec.releases`); else ``$VAECODEC_WEIGHTS`` or the newest release.
    Raises :class:`CodecError` for an unknown release, or one whose encoder is not shipped when
    ``encoder`` is asked for (naming the releases that can encode), and
    :class:`vaecodec.weights.WeightsError` for missing or damaged weights.
    """
    if weights_dir is None and release is None:
        from .weights import default_weights_dir
        weights_dir = str(default_weights_dir())
    elif weights_dir is None:
        from . import releases
        try:
            found = releases.find(release)
        except releases.ReleaseError as exc:
            raise CodecError(str(exc)) from None
        if encoder and not found.can_encode:
            raise CodecError(f"this vaecodec decodes model release {release} but cannot encode with "
                             f"it; releases that can encode: {', '.join(releases.encoders()) or 'none'}")
        weights_dir = str(found.folder)
    return _load(weights_dir, encoder, refine)


@functools.lru_cache(maxsize=8)
def _load(weights_dir: str | None, encoder: bool, refine: bool):
    from . import weights
    return weights.load(weights_dir, encoder=encoder, refine=refine)


def decoder_for(header: "bitstream.Header", model=None):
    """The model that decodes a file with ``header``: ``model`` if given (its fingerprint must
    be the file's), else the shipped release the file names (:func:`vaecodec.releases.for_header`).

    Raises:
        BitstreamError: ``model``'s weights are not the file's.
        ReleaseError: (a ``ValueError``) no shipped release decodes the file, e.g. one made by a
            newer vaecodec; the message names the file's release.
    """
    if model is not None:
        if header.fingerprint != model.fingerprint:
            raise bitstream.BitstreamError(
                f"file was made with other model weights (fingerprint {header.fingerprint.hex()}"
                + (f", release {header.release}" if header.release else "")
                + f"; these weights are {model.fingerprint.hex()})")
        return model
    from . import releases
    return get_model(release=releases.for_header(header).id, encoder=False)


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles ``(top, left, h, w)`` covering the image, in raster order.

    ``tile == 0`` means one tile. Otherwise tiles start every ``tile - overlap`` pixels and the
    last row/column is clipped at the image border. Encoder and decoder derive the same grid.
    """
    if tile == 0:
        return [(0, 0, height, width)]
    return [(t, l, min(tile, height - t), min(tile, width - l))
            for t in bitstream.tile_starts(height, tile, overlap)
            for l in bitstream.tile_starts(width, tile, overlap)]


def _ramp(length: int, start_overlap: int, end_overlap: int) -> np.ndarray:
    """Blending weights along one axis of a tile: linear ramps over the overlaps, 1 elsewhere."""
    w = np.ones(length, dtype=np.float32)
    if start_overlap:
        w[:start_overlap] = (np.arange(start_overlap) + 0.5) / start_overlap
    if end_overlap:
        w[length - end_overlap:] = np.minimum(w[length - end_overlap:],
                                              (np.arange(end_overlap)[::-1] + 0.5) / end_overlap)
    return w


def _pad_to_stride(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[2:]
    ph, pw = (-h) % STRIDE, (-w) % STRIDE
    if ph or pw:
        # edge replication; done as index gathering so any size (even 1 pixel) works
        rows = torch.arange(h + ph).clamp_max(h - 1)
        cols = torch.arange(w + pw).clamp_max(w - 1)
        x = x[:, :, rows][:, :, :, cols]
    return x


def _ceil_sqrt(n: int) -> int:
    """The smallest integer whose square is at least ``n`` (``n >= 1``)."""
    return math.isqrt(n - 1) + 1


def _padded(n: int) -> int:
    """``n`` rounded up to a multiple of the latent stride (64)."""
    return -(-n // STRIDE) * STRIDE


def fold_layout(height: int, width: int) -> "bitstream.Layout | None":
    """How the encoder folds an ``height x width`` image before coding (SPEC.md, "Thin
    images"), or None when it codes the image as it is.

    With ``s`` the short side and ``n`` the long side, an image is folded when ``s < 64`` and
    folding at least halves the padded area coded: the strip length ``L`` is the smallest
    multiple of 64 whose square is at least ``height * width`` (so the folded image is near
    square), ``k = ceil(n / L)`` strips make a folded image ``L`` long and ``k * s`` across,
    and the image is folded when ``2 * ceil64(k * s) * L <= 64 * ceil64(n)``. An image with
    both sides at least 64 px (every photo) is never folded. Pure integer arithmetic: a
    decoder derives the same layout and refuses a file holding another.
    """
    short, long = min(height, width), max(height, width)
    if short >= STRIDE:
        return None
    strip = _padded(_ceil_sqrt(height * width))
    strips = -(-long // strip)
    if 2 * _padded(strips * short) * strip > STRIDE * _padded(long):
        return None
    return bitstream.Layout(axis=0 if width > height else 1, strip_length=strip)


def coded_size(height: int, width: int, layout: "bitstream.Layout | None") -> tuple[int, int]:
    """``(height, width)`` in pixels of the image the latents code: the folded image for a
    ``layout`` (:meth:`vaecodec.bitstream.Layout.coded_size`), else the image's own size."""
    return (height, width) if layout is None else layout.coded_size(height, width)


def fold(rgb: np.ndarray, layout: "bitstream.Layout") -> np.ndarray:
    """The folded image the latents code, ``(*coded_size(H, W, layout), C)``, for ``rgb``
    ``(H, W, C)``. Axis 0: folded pixel ``(j*H + r, c)`` is ``rgb[r, min(j*L + c, W - 1)]``
    for strip ``j``, ``L`` the strip length (the last strip's tail repeats the image's last
    column); axis 1 is the same with rows and columns exchanged."""
    if layout.axis == 1:
        return np.ascontiguousarray(fold(rgb.transpose(1, 0, 2), bitstream.Layout(0, layout.strip_length))
                                    .transpose(1, 0, 2))
    height, width = rgb.shape[:2]
    length = layout.strip_length
    strips = -(-width // length)
    cols = np.minimum(np.arange(strips * length), width - 1)
    strip = rgb[:, cols].reshape(height, strips, length, -1)
    return np.ascontiguousarray(strip.transpose(1, 0, 2, 3).reshape(strips * height, length, -1))


def unfold(coded: np.ndarray, height: int, width: int, layout: "bitstream.Layout") -> np.ndarray:
    """The ``(height, width, C)`` image whose :func:`fold` is ``coded``
    (``(*coded_size(height, width, layout), C)``): the strips laid end to end again, the last
    strip's tail dropped. Axis 0: pixel ``(r, x)`` is ``coded[(x // L) * height + r, x % L]``."""
    if layout.axis == 1:
        return np.ascontiguousarray(unfold(coded.transpose(1, 0, 2), width, height,
                                           bitstream.Layout(0, layout.strip_length)).transpose(1, 0, 2))
    length = layout.strip_length
    strips = coded.shape[0] // height
    line = coded.reshape(strips, height, length, -1).transpose(1, 0, 2, 3).reshape(height, strips * length, -1)
    return np.ascontiguousarray(line[:, :width])


def _geometry(height: int, width: int, refine: int = 0) -> tuple[int, int]:
    """``(tile_size, tile_overlap)`` the encoder writes: one tile, the latents of the whole
    image, up to :data:`WHOLE_MAX_PIXELS`: its transforms, entropy model and refinement
    (:mod:`vaecodec.refine`) run in windows, so memory stays bounded; independent tiles of
    :data:`TILE` px overlapping by :data:`OVERLAP` for larger images. ``refine`` (steps) does
    not change the geometry (vaecodec 0.3.0 and earlier tiled refined images over :data:`TILE`
    px a side)."""
    if height * width > WHOLE_MAX_PIXELS:   # then a side is over TILE px
        return TILE, OVERLAP
    return 0, 0


def _geometry_allowed(height: int, width: int, tile_size: int, tile_overlap: int) -> bool:
    """Whether a decoder accepts a file tiled this way (SPEC.md, "Tiles and padding"): one
    tile up to :data:`WHOLE_MAX_PIXELS`; independent tiles of :data:`TILE` px overlapping by
    :data:`OVERLAP` for images over :data:`TILE` px a side (as vaecodec 0.1.0 coded every such
    image)."""
    if (tile_size, tile_overlap) == (0, 0):
        return height * width <= WHOLE_MAX_PIXELS
    return (tile_size, tile_overlap) == (TILE, OVERLAP) and (height > TILE or width > TILE)


def check_size(height: int, width: int) -> None:
    """Refuse an image size a ``.vae`` file cannot hold (each side 1..:data:`bitstream.MAX_SIDE`
    px, at most :data:`bitstream.MAX_PIXELS` pixels), before any coding work.

    Raises:
        CodecError: one-line message naming the limit.
    """
    if height == 0 or width == 0:
        raise CodecError(f"image {width}x{height} is empty")
    problem = bitstream.size_problem(height, width)
    if problem:
        raise CodecError(f"image {width}x{height} is too large for a .vae file: {problem}")


def _check_mode(mode: str, sections, height: int, width: int) -> None:
    """Refuse a ``mode`` the file could not restore: unknown, or with alpha but no alpha
    section that decodes to a ``height x width`` plane (so no file is written that
    :func:`decompress_array` would refuse)."""
    if mode not in bitstream.MODES:
        raise CodecError(f"mode must be one of {', '.join(bitstream.MODES)}, got {mode!r}")
    alpha = [s for s in sections if getattr(s, "kind", None) == bitstream.SECTION_ALPHA]
    if mode in bitstream.ALPHA_MODES:
        if not alpha:
            raise CodecError(f"mode {mode} needs an alpha section (vaecodec.alpha.encode_alpha)")
        from .alpha import decode_alpha
        try:
            decode_alpha(alpha[0].data, height, width)
        except ValueError as exc:
            raise CodecError(f"the alpha section does not hold a {width}x{height} plane: {exc}") from None


def tile_count(height: int, width: int, refine: int = 0) -> int:
    """Number of tiles :func:`compress_array` codes an ``height x width`` image in (of its
    folded image when it is thin, see :func:`fold_layout`)."""
    h, w = coded_size(height, width, fold_layout(height, width))
    return len(tile_grid(h, w, *_geometry(h, w, refine)))


def file_tile_count(header: "bitstream.Header", sections: tuple = ()) -> int:
    """Number of tiles a file with ``header`` and ``sections`` (its layout section, if any,
    gives the size of the image coded) holds, for a progress bar; 1 when its layout or tiling
    is not one a decoder accepts (:func:`decompress_array` then refuses it; nothing is
    allocated for a crafted header's millions of tiles)."""
    try:
        layout = bitstream.layout_of(sections)
    except bitstream.BitstreamError:
        return 1
    if layout is not None and layout != fold_layout(header.height, header.width):
        return 1
    h, w = coded_size(header.height, header.width, layout)
    if not _geometry_allowed(h, w, header.tile_size, header.tile_overlap):
        return 1
    return len(tile_grid(h, w, header.tile_size, header.tile_overlap))


def work_units(height: int, width: int, refine: int = 0) -> int:
    """How often :func:`compress_array` calls ``progress(1)`` for an ``height x width`` image:
    per tile, each refinement step and the coding."""
    return tile_count(height, width, refine) * (refine + 1)


def compress_array(rgb: np.ndarray, quality: float = 4.0, mode: str = "RGB",
                   sections: tuple = (), model=None, progress=None, refine: int = 0,
                   analysis: dict | None = None) -> bytes:
    """Code an ``(H, W, 3)`` uint8 RGB array into ``.vae`` bytes.

    ``quality`` in ``[1, 8]`` (fractional allowed, stored in thousandths); ``mode`` is the mode
    to restore on decode ("RGB", "L", "RGBA", "LA"); ``sections`` are :class:`bitstream.Section`
    side data (never a layout section: a thin image is folded, and its layout section written,
    by the codec itself, see :func:`fold_layout`; the file is then format version 3, every
    other file version 2). ``refine``: steps of encoder-side latent refinement
    (:mod:`vaecodec.refine`; the model must be loaded with ``refine=True``), 0 for none.
    ``progress(n)`` is called after each refinement step and each coded tile,
    :func:`work_units` times in all. ``analysis``: a dict that keeps each tile's analysis
    transform output (``g_a(x)``, which does not depend on the quality) between calls for the
    same image and model, so that coding it again at other qualities (rate control) skips the
    analysis transform; the file is the same as without it. Used only when ``refine`` is 0.
    Raises :class:`CodecError` (also for a size a ``.vae`` file cannot hold, see
    :func:`check_size`, or a layout section in ``sections``, before any coding).
    """
    if not isinstance(rgb, np.ndarray):
        raise CodecError(f"expected an (H, W, 3) uint8 array, got {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise CodecError(f"expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    if isinstance(quality, bool) or not isinstance(quality, numbers.Real) \
            or not math.isfinite(float(quality)):
        raise CodecError(f"quality must be a number between 1 and 8, got {quality!r}")
    quality_milli = round(float(quality) * 1000)
    if not 1000 <= quality_milli <= 8000:
        raise CodecError(f"quality must be between 1 and 8, got {quality}")
    if isinstance(refine, bool) or not isinstance(refine, numbers.Integral) \
            or not 0 <= refine <= MAX_REFINE:
        raise CodecError(f"refine must be a whole number of steps from 0 to {MAX_REFINE}, got {refine!r}")
    height, width = rgb.shape[:2]
    check_size(height, width)
    _check_mode(mode, sections, height, width)
    if any(getattr(s, "kind", None) == bitstream.SECTION_LAYOUT for s in sections):
        raise CodecError("sections hold a layout section; the codec writes it itself for thin images")
    layout = fold_layout(height, width)
    if layout is not None:
        rgb = fold(rgb, layout)
        sections = (layout.section(), *sections)
    model = model or get_model(refine=bool(refine))
    if refine and not model.can_refine:
        raise CodecError("refinement needs the float entropy model: load the weights with refine=True")
    coded_height, coded_width = rgb.shape[:2]
    tile, overlap = _geometry(coded_height, coded_width, refine)
    tiles = []
    step = (lambda: progress(1)) if progress else None   # after each refinement step
    for top, left, h, w in tile_grid(coded_height, coded_width, tile, overlap):
        # padded as uint8, then made float: a quarter of the memory of padding the floats
        tile_rgb = rgb[top:top + h, left:left + w]
        if not (tile_rgb.flags.c_contiguous and tile_rgb.flags.writeable):
            tile_rgb = np.array(tile_rgb)   # torch wants a writable, contiguous array
        x = _pad_to_stride(torch.from_numpy(tile_rgb).permute(2, 0, 1)[None])
        if not refine:
            x = x.float().div_(255.0)
        # refinement keeps the pixels uint8 (a quarter of the memory while the latents, their
        # gradient and Adam's moments are held) and makes each window float for its step
        if analysis is not None and not refine:
            s = _code_cached(model, x, quality_milli / 1000, analysis, (top, left))
        else:
            y, z = refine_latents(model, x, quality_milli / 1000, int(refine), progress=step, size=(h, w))
            del x   # a large image's pixels need not stay while its latents are coded
            s = model.code_latents(y, z)
        tiles.append(bitstream.TileStreams(s["y_shape"], s["z_shape"], s["z_stream"],
                                           s["y_stream"], s["escapes"]))
        if progress:
            progress(1)
    header = bitstream.Header(fingerprint=model.fingerprint, quality_milli=quality_milli,
                              height=height, width=width, mode=mode, tile_size=tile,
                              tile_overlap=overlap, latent_channels=model.M, hyper_channels=model.N,
                              release=model.release)
    return bitstream.pack(bitstream.Container(header, tuple(tiles), tuple(sections)))


@torch.no_grad()
def _code_cached(model, x: torch.Tensor, quality: float, analysis: dict, key) -> dict:
    """The streams of ``model.compress(x, quality)`` with ``g_a(x)`` taken from (or put into)
    ``analysis[key]``: the same operations in the same order, so the same bytes."""
    if key not in analysis:
        analysis[key] = model.analysis(x)
    return model.code_latents(*model.latents(analysis[key], quality))


def _round_into(rgb: np.ndarray, x_hat: torch.Tensor, rows: int = 256) -> None:
    """``rgb[...] = clip(round(x_hat * 255), 0, 255)`` for ``x_hat`` ``(3, H, W)`` float32, as
    the blending path rounds a single tile's pixels (its weights are exactly 1), ``rows`` rows
    at a time so no full-size float temporary is made."""
    for top in range(0, rgb.shape[0], rows):
        part = x_hat[:, top:top + rows].permute(1, 2, 0).numpy()
        rgb[top:top + rows] = np.clip(np.round(part * np.float32(255.0)), 0, 255)


def _streams(t: "bitstream.TileStreams") -> dict:
    """A container tile as the stream dict of :meth:`vaecodec.coder.Coder.decompress`."""
    return {"z_shape": t.z_shape, "y_shape": t.y_shape, "z_stream": t.z_stream,
            "y_stream": t.y_stream, "escapes": t.escapes}


def latent_digest(data: bytes, model=None) -> str:
    """SHA-256 (hex) of a file's decoded latents: per tile ``z_hat`` as little-endian int64 then
    ``y_hat`` as little-endian float32. Identical on every machine (see SPEC.md). ``model``:
    as in :func:`decoder_for` (default: the release the file names)."""
    container = bitstream.unpack(data)
    model = decoder_for(container.header, model)
    h = hashlib.sha256()
    for t in container.tiles:
        z_hat, y_hat = model.decode_latents(_streams(t))
        h.update(z_hat.numpy().astype("<i8").tobytes())
        h.update(y_hat.numpy().astype("<f4").tobytes())
    return h.hexdigest()


@dataclass
class Decoded:
    """Result of :func:`decompress_array`: ``rgb`` ``(H, W, 3)`` uint8 (unfolded: the header's
    size), the ``header``, the side-data ``sections`` (ICC profile, alpha, EXIF, XMP) and the
    ``layout`` a thin image was folded in (its section, consumed by unfolding, is not among
    ``sections``), or None."""
    rgb: np.ndarray
    header: "bitstream.Header"
    sections: tuple = field(default_factory=tuple)
    layout: "bitstream.Layout | None" = None


def decompress_array(data: bytes, model=None, progress=None) -> Decoded:
    """Decode ``.vae`` bytes with ``model``, or by default with the shipped release the file
    names (:func:`decoder_for`); a folded thin image is unfolded (see :func:`fold_layout`).
    Raises :class:`vaecodec.bitstream.BitstreamError` for a damaged, foreign or newer file,
    :class:`vaecodec.releases.ReleaseError` for a file of a release this package does not
    have, :class:`CodecError` when it does not fit the model or its layout or tiling is not
    the one its image size gives."""
    from .entropy import EntropyCodingError
    container = bitstream.unpack(data)
    model = decoder_for(container.header, model)
    hd = container.header
    if (hd.latent_channels, hd.hyper_channels) != (model.M, model.N):
        raise CodecError("file's latent channels do not match the model")
    layout = bitstream.layout_of(container.sections)
    if layout is not None and layout != fold_layout(hd.height, hd.width):
        raise CodecError("file's layout does not match its image size")
    height, width = coded_size(hd.height, hd.width, layout)   # of the image the latents code
    if not _geometry_allowed(height, width, hd.tile_size, hd.tile_overlap):
        raise CodecError("file's tiling does not match its image size")
    grid = tile_grid(height, width, hd.tile_size, hd.tile_overlap)
    if len(grid) != len(container.tiles):
        raise CodecError(f"file has {len(container.tiles)} tiles, its image size needs {len(grid)}")
    quality = hd.quality_milli / 1000
    for (_, _, h, w), t in zip(grid, container.tiles):
        ph, pw = h + (-h) % STRIDE, w + (-w) % STRIDE
        if t.y_shape != (ph // 16, pw // 16) or t.z_shape != (ph // 64, pw // 64):
            raise CodecError("a tile's latent shape does not match its size")
    # Blend in a band of float rows as tall as one tile row; rows no later tile touches are
    # rounded into the uint8 output, so float memory stays O(tile x width). The linear ramps
    # of neighbouring tiles are exact dyadic numbers that sum to 1.
    rgb = None
    band_top, band = 0, np.zeros((0, width, 3), dtype=np.float32)
    row_tops = sorted({top for top, _, _, _ in grid})
    for (top, left, h, w), t in zip(grid, container.tiles):
        try:
            x_hat = model.decompress(_streams(t), quality)
        except EntropyCodingError as exc:
            raise CodecError(f"file is damaged: {exc}") from None
        if rgb is None:
            try:
                rgb = np.empty((height, width, 3), dtype=np.uint8)
            except MemoryError:
                raise CodecError(f"not enough memory for a {hd.width}x{hd.height} image") from None
        if len(grid) == 1:   # one tile: no blending, rounded a band of rows at a time
            _round_into(rgb, x_hat[0, :, :h, :w])
            if progress:
                progress(1)
            break
        rec = x_hat[0, :, :h, :w].permute(1, 2, 0).numpy()
        if top + h > band_top + len(band):
            grow = np.zeros((top + h - band_top - len(band), width, 3), dtype=np.float32)
            band = np.concatenate([band, grow])
        wy = _ramp(h, hd.tile_overlap if top else 0, hd.tile_overlap if top + h < height else 0)
        wx = _ramp(w, hd.tile_overlap if left else 0, hd.tile_overlap if left + w < width else 0)
        band[top - band_top:top - band_top + h, left:left + w] += rec * (wy[:, None, None] * wx[None, :, None])
        if left + w == width:   # end of a tile row: flush the rows that are now final
            i = row_tops.index(top)
            final = row_tops[i + 1] if i + 1 < len(row_tops) else height
            rgb[band_top:final] = np.clip(np.round(band[:final - band_top] * 255.0), 0, 255)
            band, band_top = band[final - band_top:].copy(), final
        if progress:
            progress(1)
    if layout is not None:
        rgb = unfold(rgb, hd.height, hd.width, layout)
    sections = tuple(s for s in container.sections if s.kind != bitstream.SECTION_LAYOUT)
    return Decoded(rgb, hd, sections, layout)
