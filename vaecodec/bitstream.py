"""The ``.vae`` file container, format versions 2 and 3 (version 1 files are read too).

A ``.vae`` file holds one image compressed by vaecodec: a header (image size and mode, quality,
tiling, latent geometry, the ID of the model release that made it and the fingerprint of its
weights), optional
side-data sections (ICC profile, alpha plane, EXIF, XMP, and the layout of a folded thin image),
the entropy-coded latent streams of every tile, and a CRC-32 over all of it. The byte layout is
specified in ``bitstream/SPEC.md``. :func:`pack` writes the lowest version that holds a file:
3 when it has a layout section (:class:`Layout`), else 2.

This module only frames bytes; it knows nothing about how the streams were entropy coded. It uses
the standard library only (no torch, no numpy), so ``vaecodec info`` and validation stay cheap.

Public API: :func:`pack`, :func:`unpack`, :func:`peek_header`, :func:`read_file`, the
dataclasses :class:`Header`, :class:`TileStreams`, :class:`Section`, :class:`Container`,
:class:`Layout` (with :func:`layout_of`), and :class:`BitstreamError`, raised for every file
(or, in :func:`pack`, every input) that is refused, with a one-line message meant to be shown
to the user as is.
"""
from __future__ import annotations

import io
import operator
import struct
import zlib
from dataclasses import dataclass

__all__ = [
    "MAGIC", "VERSION", "RELEASE_ID_MAX", "MAX_PIXELS", "MAX_SIDE", "MAX_TILES", "MODES", "MIN_FILE_SIZE",
    "SECTION_ICC", "SECTION_ALPHA", "SECTION_EXIF", "SECTION_XMP", "SECTION_LAYOUT", "SECTION_KINDS",
    "ALPHA_MODES", "BitstreamError", "Section", "TileStreams", "Header", "Container", "Layout",
    "layout_of",
    "pack", "unpack", "peek_header", "read_file", "stream_limit", "tile_starts", "size_problem",
    "check_magic", "release_id_problem",
]

MAGIC = b"VAEC"
VERSION = 3               # every version from 1 up to this one is read; pack writes 2 or 3
LAYOUT_VERSION = 3        # the first version with a layout section (files without one are 2)
RELEASE_ID_MAX = 32       # bytes of a release ID (SPEC.md, "Release")
_RELEASE_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ._-")

MAX_PIXELS = 1 << 30      # height * width above this is refused before anything is allocated
MAX_SIDE = 1 << 17        # height or width above this is refused
MAX_TILES = 1_000_000     # tile counts above this are refused
QUALITY_MILLI_MIN, QUALITY_MILLI_MAX = 1000, 8000

MODES = ("RGB", "L", "RGBA", "LA")          # mode code = index in this tuple
ALPHA_MODES = frozenset({"RGBA", "LA"})   # modes whose files carry an alpha section

SECTION_ICC = 1       # ICC colour profile of the original image (raw profile bytes)
SECTION_ALPHA = 2     # alpha plane, compressed by the codec (opaque bytes); RGBA / LA files only
SECTION_EXIF = 3      # EXIF metadata: the TIFF-structured block, without the "Exif\0\0" prefix
SECTION_XMP = 4       # XMP metadata: the XMP packet (UTF-8 XML)
SECTION_LAYOUT = 5    # how a thin image was folded before coding (:class:`Layout`); version 3 only
SECTION_KINDS = frozenset({SECTION_ICC, SECTION_ALPHA, SECTION_EXIF, SECTION_XMP, SECTION_LAYOUT})

_U16, _U32 = 0xFFFF, 0xFFFFFFFF

# magic, version, flags, fingerprint, quality_milli, height, width, mode, tile_size, tile_overlap,
# M, N, section count
_HEADER = struct.Struct(">4sBB8sHIIBHHHHB")
_SECTION = struct.Struct(">BI")          # kind, length
_COUNT = struct.Struct(">I")             # tile count
_TILE = struct.Struct(">HHHHIII")        # y h, y w, z h, z w, len(z), len(y), len(escapes)
_CRC = struct.Struct(">I")
_RELEASE_LEN = struct.Struct(">B")       # from version 2: release ID length, then the ID (ASCII)
_LAYOUT = struct.Struct(">BI")           # layout section payload: axis, strip length

#: Size in bytes of the smallest possible file (format version 1, no sections, no tiles): 42.
#: A version 2 file is at least one byte longer (its release ID length).
MIN_FILE_SIZE = _HEADER.size + _COUNT.size + _CRC.size


class BitstreamError(ValueError):
    """A ``.vae`` file (or a container given to :func:`pack`) is refused.

    ``str(err)`` is a complete one-line message meant for the user, e.g.
    ``"file is corrupted or truncated (checksum mismatch)"``; callers need not show a traceback.
    """


@dataclass(frozen=True)
class Section:
    """Optional side data stored next to the image.

    Attributes:
        kind: what ``data`` is. 1 (:data:`SECTION_ICC`): the ICC colour profile of the original
            image; 2 (:data:`SECTION_ALPHA`): the alpha plane, compressed by the codec (opaque
            here), allowed only when the image mode is ``"RGBA"`` or ``"LA"``; 3
            (:data:`SECTION_EXIF`): EXIF metadata (without the orientation tag, which the
            encoder applied); 4 (:data:`SECTION_XMP`): the XMP packet; 5
            (:data:`SECTION_LAYOUT`): how a thin image was folded before coding
            (:meth:`Layout.section`; it makes the file format version 3). Other kinds are
            refused, and each kind appears at most once per file.
        data: the payload, 0 to 2**32 - 1 bytes.
    """

    kind: int
    data: bytes


@dataclass(frozen=True)
class TileStreams:
    """The entropy-coded latents of one tile.

    Attributes:
        y_shape: ``(h, w)`` of the latent ``y`` of this tile, in latent elements, each 1..65535.
        z_shape: ``(h, w)`` of the hyper-latent ``z`` of this tile, each 1..65535.
        z_stream: entropy-coded ``z`` (opaque bytes, may be empty).
        y_stream: entropy-coded ``y`` (opaque bytes, may be empty).
        escapes: the escaped symbols of this tile (opaque bytes, may be empty).

    Each byte string is at most 2**32 - 1 bytes. Whether the shapes match the image geometry is
    for the codec to check; the container only stores them.
    """

    y_shape: tuple[int, int]
    z_shape: tuple[int, int]
    z_stream: bytes
    y_stream: bytes
    escapes: bytes


@dataclass(frozen=True)
class Header:
    """The fixed-size header of a ``.vae`` file.

    Attributes:
        fingerprint: exactly 8 bytes identifying the model weights that made the file; a
            decoder refuses a file whose fingerprint differs from its weights'.
        quality_milli: the quality the image was coded at, times 1000, rounded to an integer
            (quality 4.5 -> 4500); 1000..8000.
        height: original image height in pixels, 1..:data:`MAX_SIDE`.
        width: original image width in pixels, 1..:data:`MAX_SIDE`; also
            ``height * width <= MAX_PIXELS``.
        mode: the original image mode, one of ``"RGB"``, ``"L"``, ``"RGBA"``, ``"LA"``.
        tile_size: tile edge in pixels, a positive multiple of 64 up to 65472; 0 means a single
            tile covering the whole image.
        tile_overlap: overlap in pixels between neighbouring tiles, ``0 <= tile_overlap <
            tile_size``; must be 0 when ``tile_size`` is 0.
        latent_channels: M, the number of channels of ``y``, 1..65535 (e.g. 192).
        hyper_channels: N, the number of channels of ``z``, 1..65535 (e.g. 128).
        release: the ID of the model release that made the file (e.g. ``"2026.12"``), 0 to
            :data:`RELEASE_ID_MAX` ASCII letters, digits, ``.``, ``_`` or ``-``; ``""`` for
            weights that are no release (a training export) and for every format version 1
            file, whose fingerprint alone names its weights.
    """

    fingerprint: bytes
    quality_milli: int
    height: int
    width: int
    mode: str
    tile_size: int
    tile_overlap: int
    latent_channels: int
    hyper_channels: int
    release: str = ""


@dataclass(frozen=True)
class Layout:
    """How a thin image was folded into a near-square one before coding (SPEC.md, "Thin
    images"): cut along its long side into strips of ``strip_length`` pixels, stacked along its
    short side. The payload of a section of kind :data:`SECTION_LAYOUT`.

    Attributes:
        axis: 0: the image is wider than tall; it is cut into strips of ``strip_length``
            columns, stacked top to bottom (the coded image is ``strip_length`` wide). 1: taller
            than wide; strips of ``strip_length`` rows, stacked left to right.
        strip_length: the strips' length in pixels, 1..:data:`MAX_SIDE` (vaecodec writes a
            multiple of 64; the codec checks it is the one the image's size gives).
    """

    axis: int
    strip_length: int

    def strips(self, height: int, width: int) -> int:
        """How many strips an ``height x width`` image is cut into: ``ceil(width /
        strip_length)`` for axis 0, ``ceil(height / strip_length)`` for axis 1."""
        return -(-(width if self.axis == 0 else height) // self.strip_length)

    def coded_size(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` in pixels of the folded image the latents of an ``height x
        width`` image code: ``k * height`` by ``strip_length`` for axis 0, ``strip_length`` by
        ``k * width`` for axis 1 (``k`` = :meth:`strips`)."""
        k = self.strips(height, width)
        return (k * height, self.strip_length) if self.axis == 0 else (self.strip_length, k * width)

    def section(self) -> Section:
        """This layout as a :class:`Section` (5 bytes: ``u8`` axis, ``u32`` strip length).
        Raises :class:`BitstreamError` for a field out of range."""
        problem = _layout_fields_problem(self.axis, self.strip_length)
        if problem:
            raise BitstreamError(f"cannot write .vae file: {problem}")
        return Section(SECTION_LAYOUT, _LAYOUT.pack(self.axis, self.strip_length))

    @classmethod
    def parse(cls, data: bytes) -> "Layout":
        """The layout a section of kind :data:`SECTION_LAYOUT` holds. Raises
        :class:`BitstreamError` (one line) for a payload that is not exactly 5 bytes or a field
        out of range."""
        problem = _layout_problem(data)
        if problem:
            raise _invalid(problem)
        return cls(*_LAYOUT.unpack(data))


def _layout_fields_problem(axis, strip_length) -> str | None:
    if not _is_int(axis) or axis not in (0, 1):
        return f"layout axis must be 0 or 1, got {axis!r}"
    return _int_in("layout strip length", strip_length, 1, MAX_SIDE)


def _layout_problem(data) -> str | None:
    """Why ``data`` is not a layout payload (SPEC.md, section kind 5), or None."""
    if len(data) != _LAYOUT.size:
        return f"layout section of {len(data)} bytes, expected {_LAYOUT.size}"
    return _layout_fields_problem(*_LAYOUT.unpack(data))


def layout_of(sections) -> Layout | None:
    """The :class:`Layout` among ``sections`` (those of a :class:`Container`), or None when the
    image was coded as it is. Raises :class:`BitstreamError` for a malformed payload
    (:func:`unpack` has refused such a file already)."""
    for s in sections:
        if s.kind == SECTION_LAYOUT:
            return Layout.parse(s.data)
    return None


def _version(sections) -> int:
    """The format version :func:`pack` writes for a file with ``sections``: the lowest that
    holds them."""
    return LAYOUT_VERSION if any(getattr(s, "kind", None) == SECTION_LAYOUT for s in sections) else 2


@dataclass(frozen=True)
class Container:
    """Everything stored in one ``.vae`` file.

    Attributes:
        header: the :class:`Header`.
        tiles: the tiles' streams, in the order the codec defines (row-major over the tile
            grid); 0..:data:`MAX_TILES` of them. Whether their number matches the tile grid is
            for the codec to check.
        sections: optional side data, at most 255 sections, each kind at most once.
    """

    header: Header
    tiles: tuple[TileStreams, ...]
    sections: tuple[Section, ...] = ()


# --------------------------------------------------------------------------------------------
# validation shared by pack and unpack


def _is_int(x) -> bool:
    """True for ints and int-likes (numpy integers), False for bools, floats and the rest."""
    if isinstance(x, bool):
        return False
    try:
        operator.index(x)
    except TypeError:
        return False
    return True


def _int_in(name: str, value, lo: int, hi: int) -> str | None:
    """An error message if ``value`` is not an int in ``lo..hi``, else None."""
    if not _is_int(value):
        return f"{name} must be an integer, got {value!r}"
    if not lo <= operator.index(value) <= hi:
        return f"{name} {value} is out of range {lo}..{hi}"
    return None


def size_problem(height, width) -> str | None:
    """Why a ``.vae`` file cannot hold a ``height x width`` image (sides 1..:data:`MAX_SIDE`,
    at most :data:`MAX_PIXELS` pixels), as a one-line message, or None if it can."""
    for problem in (
        _int_in("image height", height, 1, MAX_SIDE),
        _int_in("image width", width, 1, MAX_SIDE),
    ):
        if problem:
            return problem
    if operator.index(height) * operator.index(width) > MAX_PIXELS:
        return (f"image size {width}x{height} exceeds the limit of {MAX_PIXELS} pixels")
    return None


def release_id_problem(release) -> str | None:
    """Why ``release`` cannot be a release ID in a ``.vae`` file (SPEC.md, "Release"), as a
    one-line message, or None if it can: a ``str`` of at most :data:`RELEASE_ID_MAX` ASCII
    letters, digits, ``.``, ``_`` and ``-`` (``""``: no release)."""
    if not isinstance(release, str):
        return f"release ID must be a string, got {release!r}"
    if len(release) > RELEASE_ID_MAX:
        return f"release ID {release!r} is longer than {RELEASE_ID_MAX} characters"
    if not set(release) <= _RELEASE_CHARS:
        return f"release ID {release!r} may hold only ASCII letters, digits, '.', '_' and '-'"
    return None


def check_magic(head: bytes) -> None:
    """Refuse a file whose first 4 bytes ``head`` are not :data:`MAGIC`; lets a caller refuse a
    wrong file before reading all of it. Raises :class:`BitstreamError`."""
    if bytes(head) != MAGIC:
        raise BitstreamError("not a vaecodec file (bad magic bytes)")


def _header_problem(h: Header) -> str | None:
    """The first thing wrong with ``h`` (as a message), or None if it is valid."""
    if not isinstance(h.fingerprint, (bytes, bytearray)) or len(h.fingerprint) != 8:
        return f"fingerprint must be exactly 8 bytes, got {h.fingerprint!r}"
    problem = size_problem(h.height, h.width)
    if problem:
        return problem
    if h.mode not in MODES:
        return f"image mode {h.mode!r} is not one of {', '.join(MODES)}"
    problem = _int_in("quality_milli", h.quality_milli, QUALITY_MILLI_MIN, QUALITY_MILLI_MAX)
    if problem:
        return problem
    problem = _int_in("tile size", h.tile_size, 0, _U16)
    if problem:
        return problem
    if h.tile_size % 64:
        return f"tile size {h.tile_size} is not a multiple of 64"
    problem = _int_in("tile overlap", h.tile_overlap, 0, _U16)
    if problem:
        return problem
    if h.tile_size == 0 and h.tile_overlap != 0:
        return f"tile overlap {h.tile_overlap} given without tiling (tile size 0)"
    if h.tile_size and h.tile_overlap >= h.tile_size:
        return f"tile overlap {h.tile_overlap} is not smaller than the tile size {h.tile_size}"
    return (_int_in("latent channels (M)", h.latent_channels, 1, _U16)
            or _int_in("hyper-latent channels (N)", h.hyper_channels, 1, _U16)
            or release_id_problem(h.release))


def _section_kinds(version: int) -> frozenset:
    """The section kinds a file of format ``version`` may hold."""
    return SECTION_KINDS if version >= LAYOUT_VERSION else SECTION_KINDS - {SECTION_LAYOUT}


def _sections_problem(sections, mode: str, version: int = VERSION) -> str | None:
    if len(sections) > 255:
        return f"{len(sections)} sections, at most 255 are allowed"
    seen = set()
    for s in sections:
        if not isinstance(s, Section):
            return f"section {s!r} is not a Section"
        if not _is_int(s.kind) or s.kind not in _section_kinds(version):
            return f"unknown section kind {s.kind!r}"
        if s.kind in seen:
            return f"section kind {s.kind} appears more than once"
        seen.add(s.kind)
        if s.kind == SECTION_ALPHA and mode not in ALPHA_MODES:
            return f"alpha section in a file of mode {mode} (only RGBA and LA have alpha)"
        if not isinstance(s.data, (bytes, bytearray)):
            return f"section {s.kind} data must be bytes"
        if len(s.data) > _U32:
            return f"section {s.kind} is larger than 4 GiB"
        if s.kind == SECTION_LAYOUT:
            problem = _layout_problem(s.data)
            if problem:
                return problem
    if version >= LAYOUT_VERSION and SECTION_LAYOUT not in seen:
        return (f"format version {version} without a layout section (a file without one is "
                f"version 2)")
    return None


def _shape_problem(name: str, shape) -> str | None:
    if not isinstance(shape, tuple) or len(shape) != 2:
        return f"{name} must be a tuple (h, w), got {shape!r}"
    return (_int_in(f"{name} height", shape[0], 1, _U16)
            or _int_in(f"{name} width", shape[1], 1, _U16))


def _tile_problem(i: int, t) -> str | None:
    if not isinstance(t, TileStreams):
        return f"tile {i} is not a TileStreams"
    problem = _shape_problem(f"tile {i} y shape", t.y_shape) or _shape_problem(
        f"tile {i} z shape", t.z_shape)
    if problem:
        return problem
    for name in ("z_stream", "y_stream", "escapes"):
        b = getattr(t, name)
        if not isinstance(b, (bytes, bytearray)):
            return f"tile {i} {name} must be bytes"
        if len(b) > _U32:
            return f"tile {i} {name} is larger than 4 GiB"
    return None


# --------------------------------------------------------------------------------------------
# writing


def pack(c: Container) -> bytes:
    """Serialise ``c`` into the bytes of a ``.vae`` file, in the lowest format version that
    holds it: 3 when it has a layout section (:data:`SECTION_LAYOUT`), else 2.

    Every field is validated first, by the same rules :func:`unpack` applies, so
    ``unpack(pack(c)) == c`` for every container ``pack`` accepts (byte strings come back as
    ``bytes``, sequences as tuples).

    Raises:
        BitstreamError: (a ``ValueError``) a field is out of range or of the wrong type; the
            message starts with ``"cannot write .vae file: "``.
    """
    def refuse(problem: str):
        raise BitstreamError(f"cannot write .vae file: {problem}")

    if not isinstance(c, Container) or not isinstance(c.header, Header):
        refuse("expected a Container with a Header")
    h = c.header
    tiles, sections = tuple(c.tiles), tuple(c.sections)
    version = _version(sections)
    problem = _header_problem(h) or _sections_problem(sections, h.mode, version)
    if problem:
        refuse(problem)
    if len(tiles) > MAX_TILES:
        refuse(f"{len(tiles)} tiles, at most {MAX_TILES} are allowed")
    for i, t in enumerate(tiles):
        problem = _tile_problem(i, t)
        if problem:
            refuse(problem)

    release = h.release.encode("ascii")
    out = bytearray(_HEADER.pack(
        MAGIC, version, 0, bytes(h.fingerprint), h.quality_milli, h.height, h.width,
        MODES.index(h.mode), h.tile_size, h.tile_overlap, h.latent_channels, h.hyper_channels,
        len(sections)))
    out += bytes([len(release)]) + release
    for s in sections:
        out += _SECTION.pack(s.kind, len(s.data))
        out += s.data
    out += _COUNT.pack(len(tiles))
    for t in tiles:
        out += _TILE.pack(*t.y_shape, *t.z_shape, len(t.z_stream), len(t.y_stream),
                          len(t.escapes))
        out += t.z_stream
        out += t.y_stream
        out += t.escapes
    out += _CRC.pack(zlib.crc32(out) & _U32)
    return bytes(out)


# --------------------------------------------------------------------------------------------
# reading


class _Reader:
    """Bounds-checked cursor over the CRC-covered part of a file."""

    def __init__(self, view: memoryview, pos: int, end: int):
        self.view, self.pos, self.end = view, pos, end

    def take(self, n: int, what: str) -> memoryview:
        left = self.end - self.pos
        if n > left:
            raise BitstreamError(
                f"file is truncated or corrupted ({what}: needs {n} bytes at offset {self.pos}, "
                f"only {left} left)")
        chunk = self.view[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def read(self, st: struct.Struct, what: str) -> tuple:
        return st.unpack(self.take(st.size, what))


def _invalid(problem: str) -> BitstreamError:
    return BitstreamError(f"file is invalid or corrupted: {problem}")


def _check_version(version: int) -> None:
    if version > VERSION:
        raise BitstreamError(
            f"made by a newer vaecodec (format version {version}, this one reads up to "
            f"{VERSION}); upgrade vaecodec")
    if version < 1:
        raise BitstreamError(f"not a valid .vae file (format version {version} does not exist)")


def _check_envelope(data) -> memoryview:
    """Size, magic, version and CRC checks, in that order. Returns a view of ``data``."""
    view = memoryview(data).cast("B")  # TypeError for non-bytes-like input (a caller bug)
    if len(view) < MIN_FILE_SIZE:
        raise BitstreamError("file is truncated or not a .vae file")
    check_magic(view[:4])
    _check_version(view[4])
    (stored,) = _CRC.unpack(view[-4:])
    if zlib.crc32(view[:-4]) & _U32 != stored:
        raise BitstreamError(f"file is corrupted or truncated (checksum mismatch){_appended(view)}")
    return view


def _appended(view: memoryview) -> str:
    """``"; its last N bytes follow a complete file"`` when ``view`` is a whole, CRC-valid file
    with bytes appended (so the message says why the checksum failed), else ``""``."""
    try:
        whole = read_file(io.BytesIO(view))
    except BitstreamError:
        return ""
    n = len(whole)
    if MIN_FILE_SIZE <= n < len(view) and \
            zlib.crc32(view[:n - 4]) & _U32 == _CRC.unpack(view[n - 4:n])[0]:
        return f"; its last {len(view) - n} bytes follow a complete file"
    return ""


def _parse_header(view: memoryview, end: int | None = None) -> tuple[Header, int, int]:
    """Parse and validate the header (the fixed part, then from version 2 the release ID).
    Returns (header, section count, offset after it). ``view`` holds at least the fixed part;
    a release ID reaching past ``end`` (default: the end of ``view``) is refused as
    truncated."""
    (_magic, version, flags, fingerprint, quality_milli, height, width, mode_code, tile_size,
     tile_overlap, m, n, n_sections) = _HEADER.unpack(view[:_HEADER.size])
    release = ""
    if version >= 2:
        r = _Reader(view, _HEADER.size, len(view) if end is None else end)
        (length,) = r.read(_RELEASE_LEN, "release ID length")
        raw = bytes(r.take(length, "release ID"))
        if not set(raw.decode("latin-1")) <= _RELEASE_CHARS or length > RELEASE_ID_MAX:
            raise _invalid(f"release ID {raw!r} is not a valid release ID")
        release = raw.decode("ascii")
    if flags:
        raise BitstreamError(
            f"file uses format features this vaecodec does not know (flags 0x{flags:02x}); "
            f"upgrade vaecodec")
    if mode_code >= len(MODES):
        raise _invalid(f"unknown image mode code {mode_code}")
    header = Header(fingerprint=fingerprint, quality_milli=quality_milli, height=height,
                    width=width, mode=MODES[mode_code], tile_size=tile_size,
                    tile_overlap=tile_overlap, latent_channels=m, hyper_channels=n,
                    release=release)
    problem = _header_problem(header)
    if problem:
        raise _invalid(problem)
    return header, n_sections, r.pos if version >= 2 else _HEADER.size


#: What a streaming reader (:func:`read_file`) allows: at most this many bytes of tile streams
#: per latent element (``y`` and ``z``) of the tile grid, plus :data:`STREAM_SLACK` per tile...
STREAM_BYTES_PER_LATENT = 8
STREAM_SLACK = 64
#: ...and sections of at most 2 bytes per pixel plus :data:`SECTION_SLACK` bytes in all.
SECTION_SLACK = 64 << 20


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Where tiles start along a side of ``n`` pixels (SPEC.md, "Tiles and padding"): ``[0]``
    when ``tile == 0`` or ``n <= tile``, else every ``tile - overlap`` pixels,
    ``ceil((n - overlap) / step)`` of them; each is ``min(tile, n - start)`` long."""
    if tile == 0 or n <= tile:
        return [0]
    step = tile - overlap
    return [i * step for i in range(-(-(n - overlap) // step))]


def _padded_sides(n: int, tile: int, overlap: int) -> list[int]:
    """Padded lengths (multiples of 64) of the tiles along a side of ``n`` pixels."""
    length = tile if tile and n > tile else n
    return [-(-min(length, n - s) // 64) * 64 for s in tile_starts(n, tile, overlap)]


def stream_limit(h: Header) -> int:
    """The most bytes a streaming reader accepts for a file with header ``h``: the tile grid's
    latents at :data:`STREAM_BYTES_PER_LATENT` bytes each (an entropy-coded latent costs at
    most 2 bytes plus a 4-byte escape varint), :data:`STREAM_SLACK` per tile, and sections of
    up to 2 bytes per pixel plus :data:`SECTION_SLACK`. No file vaecodec writes comes near it;
    a folded thin image (:class:`Layout`) stays under it too, as folding is used only where it
    at least halves the padded area coded (SPEC.md, "Thin images")."""
    rows = _padded_sides(h.height, h.tile_size, h.tile_overlap)
    cols = _padded_sides(h.width, h.tile_size, h.tile_overlap)
    area = sum(rows) * sum(cols)   # sum over the grid of padded tile areas (it is separable)
    latents = h.latent_channels * area // 256 + h.hyper_channels * area // 4096
    tiles = len(rows) * len(cols)
    return (_HEADER.size + 1 + RELEASE_ID_MAX + _COUNT.size + _CRC.size
            + (_TILE.size + STREAM_SLACK) * tiles
            + STREAM_BYTES_PER_LATENT * latents
            + 2 * h.height * h.width + SECTION_SLACK + 255 * _SECTION.size)


def read_file(f) -> bytes:
    """Read one ``.vae`` file from the binary file object ``f`` (a pipe, a socket, a file),
    taking exactly the bytes its own length fields declare and leaving the rest of the stream
    unread (so files sent back to back can be read one by one, and a writer that keeps the
    stream open after a whole file does not block the reader).

    A stream that is not a ``.vae`` file is refused after its first 4 bytes, one with a garbage
    header after the header (unlike :func:`unpack`, the header is checked before the CRC: a
    stream cannot be seen whole before it is read), and one whose declared lengths add up to
    more than :func:`stream_limit` allows for its image size as soon as they do, so memory stays
    proportional to the image the header describes. The result is meant for :func:`unpack`,
    which reports a stream that ended early as a truncated file.

    Raises:
        BitstreamError: bad magic bytes, a newer (or zero) format version, an invalid header
            field, or declared lengths beyond :func:`stream_limit`.
    """
    out = bytearray()

    def take(n: int) -> bool:
        if len(out) + n > limit:
            raise _invalid(f"its lengths declare more data than a {header.width}x"
                           f"{header.height} image can hold")
        while n > 0:
            chunk = f.read(min(n, 1 << 20))
            if not chunk:
                return False
            out.extend(chunk)
            n -= len(chunk)
        return True

    limit, header = _HEADER.size + 1 + RELEASE_ID_MAX, None
    if not take(len(MAGIC)):
        return bytes(out)
    check_magic(out[:len(MAGIC)])
    if not take(1):
        return bytes(out)
    _check_version(out[4])
    if not take(_HEADER.size - len(MAGIC) - 1):
        return bytes(out)
    if out[4] >= 2:   # the release ID: its length, then the ID
        if not take(1):
            return bytes(out)
        if out[-1] > RELEASE_ID_MAX:
            raise _invalid(f"release ID length {out[-1]} exceeds {RELEASE_ID_MAX}")
        if not take(out[-1]):
            return bytes(out)
    header, n_sections, _ = _parse_header(memoryview(bytes(out)))  # garbage: refused here
    limit = stream_limit(header)
    for _ in range(n_sections):         # sections: kind, length, data
        if not take(_SECTION.size):
            return bytes(out)
        kind, length = _SECTION.unpack(out[-_SECTION.size:])
        if kind not in _section_kinds(out[4]) or not take(length):
            return bytes(out)
    if not take(_COUNT.size):
        return bytes(out)
    (n_tiles,) = _COUNT.unpack(out[-_COUNT.size:])
    for _ in range(n_tiles):
        if not take(_TILE.size) or not take(sum(_TILE.unpack(out[-_TILE.size:])[4:])):
            return bytes(out)
    take(_CRC.size)
    return bytes(out)


def peek_header(data: bytes) -> Header:
    """Read only the header of a ``.vae`` file, e.g. for ``vaecodec info``.

    Applies the same checks as :func:`unpack` up to and including the header fields (size,
    magic, version, CRC over the whole file, flags, field ranges), but does not walk the
    sections and tiles, so a file it accepts may still be refused by :func:`unpack` (only if it
    was written wrongly with a valid CRC; corruption is caught by the CRC).

    Raises:
        BitstreamError: the file is refused; ``str(err)`` is a one-line user-facing message.
        TypeError: ``data`` is not bytes-like.
    """
    view = _check_envelope(data)
    header, _, _ = _parse_header(view, len(view) - _CRC.size)
    return header


def unpack(data: bytes, expected_fingerprint: bytes | None = None) -> Container:
    """Parse and validate the bytes of a ``.vae`` file.

    Checks, in this order (see ``bitstream/SPEC.md``): minimum size, magic bytes, format
    version, CRC-32, reserved flags, header fields, ``expected_fingerprint``, then sections and
    tiles with every length bounds-checked, and finally that nothing is left before the CRC.

    Args:
        data: the whole file (bytes, bytearray or memoryview).
        expected_fingerprint: the 8-byte fingerprint of the weights that will decode the file;
            if given, a file made with other weights is refused. None skips the check.

    Returns:
        The :class:`Container`; all byte strings in it are ``bytes`` and all sequences tuples.

    Raises:
        BitstreamError: the file is refused; ``str(err)`` is a one-line user-facing message
            (truncated, not a vaecodec file, newer format version, checksum mismatch, other
            model weights, out-of-range or malformed fields, trailing bytes).
        ValueError: ``expected_fingerprint`` is not 8 bytes (a caller bug, not a file problem).
        TypeError: ``data`` is not bytes-like.
    """
    if expected_fingerprint is not None and (
            not isinstance(expected_fingerprint, (bytes, bytearray))
            or len(expected_fingerprint) != 8):
        raise ValueError(f"expected_fingerprint must be 8 bytes, got {expected_fingerprint!r}")
    view = _check_envelope(data)
    header, n_sections, pos = _parse_header(view, len(view) - _CRC.size)
    if expected_fingerprint is not None and header.fingerprint != bytes(expected_fingerprint):
        raise BitstreamError(
            f"file was made with other model weights (fingerprint {header.fingerprint.hex()}, "
            f"these weights are {bytes(expected_fingerprint).hex()})")

    r = _Reader(view, pos, len(view) - _CRC.size)
    sections = []
    for i in range(n_sections):
        kind, length = r.read(_SECTION, f"section {i} header")
        sections.append(Section(kind=kind, data=bytes(r.take(length, f"section {i} data"))))
    problem = _sections_problem(sections, header.mode, view[4])
    if problem:
        raise _invalid(problem)

    (n_tiles,) = r.read(_COUNT, "tile count")
    if n_tiles > MAX_TILES:
        raise _invalid(f"{n_tiles} tiles, at most {MAX_TILES} are allowed")
    if n_tiles * _TILE.size > r.end - r.pos:
        raise BitstreamError(
            f"file is truncated or corrupted ({n_tiles} tiles do not fit in the "
            f"{r.end - r.pos} bytes left)")
    tiles = []
    for i in range(n_tiles):
        yh, yw, zh, zw, len_z, len_y, len_e = r.read(_TILE, f"tile {i} header")
        tile = TileStreams(
            y_shape=(yh, yw), z_shape=(zh, zw),
            z_stream=bytes(r.take(len_z, f"tile {i} z stream")),
            y_stream=bytes(r.take(len_y, f"tile {i} y stream")),
            escapes=bytes(r.take(len_e, f"tile {i} escapes")))
        problem = _tile_problem(i, tile)
        if problem:
            raise _invalid(problem)
        tiles.append(tile)

    if r.pos != r.end:
        raise _invalid(f"{r.end - r.pos} unexpected bytes after the last tile")
    return Container(header=header, tiles=tuple(tiles), sections=tuple(sections))
