"""Tests of the .vae container (vaecodec/bitstream.py)."""
from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaecodec import bitstream as bs
from vaecodec.bitstream import (
    MAGIC, MAX_PIXELS, MAX_SIDE, MIN_FILE_SIZE, VERSION, BitstreamError, Container, Header, Layout,
    Section, TileStreams, pack, peek_header, unpack,
)

ROOT = Path(__file__).resolve().parents[1]
FP = bytes.fromhex("0123456789abcdef")
_U32 = 0xFFFFFFFF

# offsets of header fields (see bitstream/SPEC.md)
OFF_VERSION, OFF_FLAGS, OFF_FP, OFF_QUALITY = 4, 5, 6, 14
OFF_HEIGHT, OFF_WIDTH, OFF_MODE, OFF_TILE, OFF_OVERLAP, OFF_M, OFF_N, OFF_NSEC = (
    16, 20, 24, 25, 27, 29, 31, 33)
OFF_RELEASE = 34      # format 2: release ID length, then the ID
END = 35              # end of the header of a file naming no release


def header(**kw) -> Header:
    base = dict(fingerprint=FP, quality_milli=4500, height=100, width=70, mode="RGB",
                tile_size=0, tile_overlap=0, latent_channels=192, hyper_channels=128)
    base.update(kw)
    return Header(**base)


def tile(y=(7, 5), z=(2, 2), zs=b"zz", ys=b"yyyy", esc=b"") -> TileStreams:
    return TileStreams(y_shape=y, z_shape=z, z_stream=zs, y_stream=ys, escapes=esc)


def with_crc(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def patch(data: bytes, offset: int, fmt: str, *values) -> bytes:
    """Overwrite a field of a packed file and recompute the CRC."""
    body = bytearray(data[:-4])
    struct.pack_into(fmt, body, offset, *values)
    return with_crc(bytes(body))


def refused(data, match: str | None = None, **kw) -> str:
    with pytest.raises(BitstreamError) as info:
        unpack(data, **kw)
    msg = str(info.value)
    assert "\n" not in msg and msg
    if match is not None:
        assert match in msg, msg
    return msg


SMALL = Container(header=header(), tiles=(tile(),))
# a 20000x1 line folded into 105 strips of 192 px (format version 3)
LAYOUT = Section(5, struct.pack(">BI", 0, 192))
FOLDED = Container(header=header(height=1, width=20000), tiles=(tile(y=(8, 12), z=(2, 3)),),
                   sections=(LAYOUT,))


def version_of(c: Container) -> int:
    """The format version pack writes: 3 with a layout section, else 2."""
    return 3 if any(s.kind == 5 for s in c.sections) else 2


EXAMPLES = [
    Container(header=header(), tiles=()),
    SMALL,
    Container(header=header(mode="L", height=1, width=1), tiles=(tile(zs=b"", ys=b"", esc=b""),)),
    Container(
        header=header(mode="RGBA", height=1000, width=1500, tile_size=512, tile_overlap=64,
                      quality_milli=1000),
        tiles=tuple(tile(y=(36, 36), z=(9, 9), zs=bytes([i]) * i, ys=os.urandom(100 + i),
                         esc=b"\x00" * (i % 3)) for i in range(6)),
        sections=(Section(1, b"icc profile bytes"), Section(2, os.urandom(300)),
                  Section(3, b"")),
    ),
    Container(header=header(mode="LA", quality_milli=8000, fingerprint=b"\xff" * 8),
              tiles=(tile(y=(65535, 1), z=(1, 65535)),), sections=(Section(2, b"a"),)),
    Container(header=header(height=MAX_SIDE, width=MAX_PIXELS // MAX_SIDE, tile_size=65472,
                            tile_overlap=65471, latent_channels=1, hyper_channels=65535),
              tiles=()),
    FOLDED,
    Container(header=header(mode="LA", height=3000, width=7), tiles=(),
              sections=(Section(3, b"exif"), Section(2, b"a"), Section(5, struct.pack(">BI", 1, 192)))),
]


# ------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("c", EXAMPLES)
def test_round_trip(c):
    data = pack(c)
    assert isinstance(data, bytes)
    assert data[:4] == MAGIC and data[4] == version_of(c) and data[5] == 0
    back = unpack(data)
    assert back == c
    assert unpack(data, expected_fingerprint=c.header.fingerprint) == c
    assert peek_header(data) == c.header
    assert pack(back) == data
    # byte strings come back as bytes, sequences as tuples
    assert isinstance(back.tiles, tuple) and isinstance(back.sections, tuple)
    for t in back.tiles:
        assert all(type(b) is bytes for b in (t.z_stream, t.y_stream, t.escapes))
        assert type(t.y_shape) is tuple


def test_minimal_file_layout():
    data = pack(Container(header=header(), tiles=()))
    assert len(data) == MIN_FILE_SIZE + 1 == 43
    expected_body = (b"VAEC" + bytes([2, 0]) + FP + struct.pack(">HIIBHHHHB", 4500, 100, 70, 0, 0,
                                                                 0, 192, 128, 0)
                     + b"\x00" + struct.pack(">I", 0))
    assert data == with_crc(expected_body)


def test_release_id_layout_and_round_trip():
    c = Container(header=header(release="2026.12"), tiles=(tile(),))
    data = pack(c)
    assert data[OFF_RELEASE] == 7 and data[OFF_RELEASE + 1:OFF_RELEASE + 8] == b"2026.12"
    assert unpack(data) == c and peek_header(data).release == "2026.12"
    assert bs.read_file(io.BytesIO(data + b"next")) == data


def test_format_1_files_are_read_with_no_release():
    """Format 1 (vaecodec 0.1.0): the same header without the release ID; 42 bytes at least."""
    body = (b"VAEC" + bytes([1, 0]) + FP + struct.pack(">HIIBHHHHB", 4500, 100, 70, 0, 0, 0, 192, 128, 0)
            + struct.pack(">I", 0))
    data = with_crc(body)
    assert len(data) == MIN_FILE_SIZE == 42
    assert unpack(data) == Container(header=header(), tiles=())
    assert bs.read_file(io.BytesIO(data + b"x")) == data


@pytest.mark.parametrize("release", ["2026 12", "é", "a/b", "x" * 33, 7])
def test_invalid_release_ids_refused(release):
    with pytest.raises(BitstreamError, match="release ID"):
        pack(Container(header=header(release=release), tiles=()))
    if isinstance(release, str) and release.isascii():   # as written by someone else
        raw = release.encode()
        body = bytearray(pack(Container(header=header(), tiles=()))[:-4])
        body[OFF_RELEASE:OFF_RELEASE + 1] = bytes([len(raw)]) + raw
        refused(with_crc(bytes(body)), "release ID")


def test_release_id_cut_short_is_truncated():
    data = pack(Container(header=header(release="2026.12"), tiles=()))
    body = data[:OFF_RELEASE + 4]
    refused(with_crc(body), "truncated")


def test_layout_with_section_and_tile():
    c = Container(header=header(mode="RGBA"), tiles=(tile(y=(3, 4), z=(1, 2), zs=b"Z", ys=b"YY",
                                                          esc=b"EEE"),),
                  sections=(Section(2, b"alpha"),))
    data = pack(c)
    body = data[:-4]
    assert body[OFF_MODE] == 2 and body[OFF_NSEC] == 1
    rest = body[END:]
    assert rest == (b"\x02" + struct.pack(">I", 5) + b"alpha" + struct.pack(">I", 1)
                    + struct.pack(">HHHHIII", 3, 4, 1, 2, 1, 2, 3) + b"Z" + b"YY" + b"EEE")


def test_layout_section_makes_a_version_3_file():
    """A layout section (kind 5: u8 axis, u32 strip length) is the only thing that makes a file
    version 3; the same container without it is the version 2 file of today, byte for byte."""
    data = pack(FOLDED)
    assert data[OFF_VERSION] == 3
    assert data[END:END + 10] == b"\x05" + struct.pack(">I", 5) + b"\x00" + struct.pack(">I", 192)
    back = unpack(data)
    assert back == FOLDED and bs.layout_of(back.sections) == Layout(axis=0, strip_length=192)
    assert peek_header(data) == FOLDED.header
    assert bs.read_file(io.BytesIO(data + b"next")) == data
    plain = replace(FOLDED, sections=())
    assert pack(plain)[OFF_VERSION] == 2 and bs.layout_of(plain.sections) is None
    body = pack(plain)[:-4]   # version 3, one section, the section: nothing else differs
    assert data == with_crc(body[:OFF_VERSION] + b"\x03" + body[OFF_VERSION + 1:OFF_NSEC] + b"\x01"
                            + body[OFF_NSEC + 1:END] + data[END:END + 10] + body[END:])
    assert Layout(1, 64).section() == Section(5, b"\x01\x00\x00\x00\x40")
    assert Layout(1, 64).coded_size(3000, 7) == (64, 47 * 7) and Layout(0, 192).strips(1, 20000) == 105


@pytest.mark.parametrize("payload,what", [
    (b"", "layout section of 0 bytes, expected 5"),
    (b"\x00\x00\x00\x00\xc0\x00", "layout section of 6 bytes, expected 5"),
    (struct.pack(">BI", 2, 192), "layout axis must be 0 or 1, got 2"),
    (struct.pack(">BI", 0, 0), "layout strip length 0 is out of range 1..131072"),
    (struct.pack(">BI", 1, MAX_SIDE + 1), "layout strip length 131073 is out of range 1..131072"),
])
def test_damaged_layout_refused(payload, what):
    with pytest.raises(BitstreamError, match="cannot write .vae file: " + what):
        pack(replace(FOLDED, sections=(Section(5, payload),)))
    # as another writer would have written it: the section's payload replaced, CRC recomputed
    good = pack(FOLDED)[:-4]
    body = good[:END + 1] + struct.pack(">I", len(payload)) + payload + good[END + 10:]
    assert refused(with_crc(bytes(body))) == f"file is invalid or corrupted: {what}"
    with pytest.raises(BitstreamError, match=what):
        bs.layout_of((Section(5, payload),))


def test_layout_belongs_to_version_3_only():
    # a version 3 file without a layout section is refused (it would be written as version 2)
    assert refused(patch(pack(SMALL), OFF_VERSION, ">B", 3)) == (
        "file is invalid or corrupted: format version 3 without a layout section (a file "
        "without one is version 2)")
    # a layout section in a version 2 (or 1) file is unknown there, as in vaecodec 0.2.0
    assert refused(patch(pack(FOLDED), OFF_VERSION, ">B", 2)) == \
        "file is invalid or corrupted: unknown section kind 5"
    # a stream reader stops at that section's header (unpack then refuses what it read)
    assert bs.read_file(io.BytesIO(patch(pack(FOLDED), OFF_VERSION, ">B", 2) + b"x")) == \
        patch(pack(FOLDED), OFF_VERSION, ">B", 2)[:END + 5]


def test_a_reader_of_version_2_refuses_version_3_as_newer(monkeypatch):
    """vaecodec 0.2.0 (VERSION 2) tells its user to upgrade, before looking at the CRC."""
    monkeypatch.setattr(bs, "VERSION", 2)
    assert refused(pack(FOLDED)) == ("made by a newer vaecodec (format version 3, this one reads "
                                     "up to 2); upgrade vaecodec")
    assert unpack(pack(SMALL)) == SMALL


def test_accepts_bytearray_and_memoryview():
    data = pack(SMALL)
    assert unpack(bytearray(data)) == SMALL
    assert unpack(memoryview(data)) == SMALL
    assert peek_header(bytearray(data)) == SMALL.header


byte_strings = st.binary(max_size=40)
shapes = st.tuples(st.integers(1, 65535), st.integers(1, 65535))
tiles_st = st.builds(TileStreams, y_shape=shapes, z_shape=shapes, z_stream=byte_strings,
                     y_stream=byte_strings, escapes=byte_strings)


@st.composite
def headers(draw):
    height = draw(st.integers(1, MAX_SIDE))
    width = draw(st.integers(1, min(MAX_SIDE, MAX_PIXELS // height)))
    tile_size = draw(st.sampled_from([0, 64, 256, 512, 65472]))
    overlap = 0 if tile_size == 0 else draw(st.integers(0, tile_size - 1))
    return Header(fingerprint=draw(st.binary(min_size=8, max_size=8)),
                  quality_milli=draw(st.integers(1000, 8000)), height=height, width=width,
                  mode=draw(st.sampled_from(bs.MODES)), tile_size=tile_size,
                  tile_overlap=overlap, latent_channels=draw(st.integers(1, 65535)),
                  hyper_channels=draw(st.integers(1, 65535)))


layouts = st.builds(lambda axis, length: Section(5, struct.pack(">BI", axis, length)),
                    st.integers(0, 1), st.integers(1, MAX_SIDE))


@st.composite
def containers(draw, max_tiles=4):
    h = draw(headers())
    kinds = [1, 3, 4, 5] + ([2] if h.mode in ("RGBA", "LA") else [])
    chosen = draw(st.lists(st.sampled_from(kinds), unique=True, max_size=len(kinds)))
    sections = tuple(draw(layouts) if k == 5 else Section(k, draw(byte_strings)) for k in chosen)
    tiles = tuple(draw(st.lists(tiles_st, max_size=max_tiles)))
    return Container(header=h, tiles=tiles, sections=sections)


@settings(max_examples=150, deadline=None)
@given(containers())
def test_round_trip_property(c):
    data = pack(c)
    assert unpack(data) == c
    assert peek_header(data) == c.header
    assert pack(unpack(data)) == data


# ------------------------------------------------------------------------------------------
# damaged files


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(containers(max_tiles=2))
def test_every_truncation_refused(c):
    data = pack(c)
    for n in range(len(data)):
        with pytest.raises(BitstreamError):
            unpack(data[:n])
        with pytest.raises(BitstreamError):
            peek_header(data[:n])
    for n in range(MIN_FILE_SIZE):
        refused(data[:n], "file is truncated or not a .vae file")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(containers(max_tiles=2), st.binary(min_size=1, max_size=8))
def test_appended_bytes_refused(c, extra):
    msg = refused(pack(c) + extra)
    assert msg == ("file is corrupted or truncated (checksum mismatch); "
                   f"its last {len(extra)} bytes follow a complete file")


class Endless(io.RawIOBase):
    """A binary stream: ``prefix``, then ``fill`` bytes forever; counts what was read."""

    def __init__(self, prefix: bytes, fill: bytes = b"\x00"):
        self.prefix, self.fill, self.served = prefix, fill, 0

    def readable(self):
        return True

    def readinto(self, buf):
        n = len(buf)
        head = self.prefix[self.served:self.served + n]
        start = max(self.served - len(self.prefix), 0) % len(self.fill)  # continue the pattern
        tail = (self.fill * ((n + start) // len(self.fill) + 1))[start:start + n - len(head)]
        buf[:n] = head + tail
        self.served += n
        return n


@pytest.mark.parametrize("c", EXAMPLES[:5])
def test_read_file_takes_exactly_one_file(c):
    data = pack(c)
    assert bs.read_file(io.BytesIO(data)) == data
    f = io.BytesIO(data + data + b"rest")     # back to back: one file per call, rest left unread
    assert bs.read_file(f) == data and bs.read_file(f) == data and f.read() == b"rest"
    for n in (0, 3, 4, 20, len(data) - 1):
        assert bs.read_file(io.BytesIO(data[:n])) == data[:n]


def test_read_file_stays_bounded_on_endless_streams():
    data = pack(SMALL)
    # a whole valid file followed by an endless stream: the file is read, nothing after it
    stream = Endless(data)
    assert bs.read_file(stream) == data and stream.served == len(data)
    assert unpack(data) == SMALL
    # a valid header, then endless zeros: every length reads as 0, tile count too
    stream = Endless(data[:END])
    assert len(bs.read_file(stream)) == END + 4 + 4
    # an endless repetition of magic and version: its header fields are garbage, read no further
    stream = Endless(b"", fill=MAGIC + b"\x01")
    with pytest.raises(BitstreamError, match="format features"):   # flags byte "V"
        bs.read_file(stream)
    assert stream.served <= 1 << 20
    with pytest.raises(BitstreamError, match="not a vaecodec file"):
        bs.read_file(Endless(b"", fill=b"\x00"))
    with pytest.raises(BitstreamError, match="newer vaecodec"):
        bs.read_file(Endless(MAGIC + b"\x04"))


def test_read_file_refuses_lengths_beyond_what_the_image_can_hold():
    # the 100x70 header of SMALL, a million tiles, the first declaring three 4 GiB streams
    head = pack(SMALL)[:END]
    crafted = head + struct.pack(">I", 1_000_000) + struct.pack(">HHHHIII", 8, 8, 2, 2, *[_U32] * 3)
    stream = Endless(crafted, fill=b"y\n")
    with pytest.raises(BitstreamError, match="more data than a 70x100 image can hold"):
        bs.read_file(stream)
    assert stream.served < 1 << 20
    # the limit is generous: 8 bytes per latent of the tile grid, and per-pixel room for alpha
    h = SMALL.header
    latents = 192 * 128 * 128 // 256 + 128 * 128 * 128 // 4096
    assert bs.stream_limit(h) >= 8 * latents + 2 * 100 * 70 + bs.SECTION_SLACK
    tiled = replace(h, height=3000, width=2000, tile_size=1024, tile_overlap=64)
    assert bs.stream_limit(tiled) > 8 * 192 * 3 * 1024 * 2 * 1024 // 256   # 3x2 grid


def flipped(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@pytest.mark.parametrize("c", EXAMPLES[:3] + EXAMPLES[4:])
def test_every_single_bit_flip_refused(c):
    """Any flipped bit is refused: by the magic, by the version when it becomes one this
    reader does not know, and by the checksum otherwise."""
    data = pack(c)
    assert len(data) < 200  # keep the exhaustive loop small
    for bit in range(len(data) * 8):
        bad = flipped(data, bit)
        with pytest.raises(BitstreamError) as info:
            unpack(bad)
        msg = str(info.value)
        i = bit // 8
        if i < 4:
            assert msg == "not a vaecodec file (bad magic bytes)"
        elif i == OFF_VERSION and not 1 <= bad[i] <= VERSION:
            assert "version" in msg
        else:
            assert msg == "file is corrupted or truncated (checksum mismatch)"
        with pytest.raises(BitstreamError):
            peek_header(bad)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_bitstream_error(data):
    for candidate in (data, MAGIC + bytes([VERSION]) + data, with_crc(MAGIC + bytes([1]) + data)):
        try:
            c = unpack(candidate)
        except BitstreamError as e:
            assert str(e) and "\n" not in str(e)
        else:  # astronomically unlikely, but then the file must be canonical
            assert pack(c) == candidate


@settings(max_examples=200, deadline=None)
@given(containers(max_tiles=3), st.data())
def test_mutated_fields_with_valid_crc(c, data):
    """Corrupt a file *behind* the CRC (recomputed): the parser must still only raise
    BitstreamError, and whatever it accepts must be canonical (re-packs to the same bytes)."""
    body = bytearray(pack(c)[:-4])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(5, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):  # also cut or extend the body sometimes
        cut = data.draw(st.integers(0, len(body)))
        body = body[:cut] + data.draw(st.binary(max_size=10))
    candidate = with_crc(bytes(body))
    try:
        got = unpack(candidate)
    except BitstreamError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert pack(got) == candidate


# ------------------------------------------------------------------------------------------
# specific refusals


def test_refusal_order_and_messages():
    data = pack(SMALL)
    refused(b"", "file is truncated or not a .vae file")
    refused(b"GIF89a" + bytes(100), "not a vaecodec file (bad magic bytes)")
    refused(b"VAEC" + bytes(100), "format version 0")
    # bad magic wins over everything else
    refused(b"XAEC" + data[4:], "not a vaecodec file (bad magic bytes)")
    # newer version wins over a bad CRC
    newer = bytearray(data)
    newer[OFF_VERSION] = 4
    newer[-1] ^= 0xFF
    refused(bytes(newer), "made by a newer vaecodec")
    corrupted = bytearray(data)
    corrupted[40] ^= 0x10
    assert refused(bytes(corrupted)) == "file is corrupted or truncated (checksum mismatch)"


@pytest.mark.parametrize("version", [4, 7, 255])
def test_newer_version_refused(version):
    bad = patch(pack(SMALL), OFF_VERSION, ">B", version)
    msg = refused(bad)
    assert msg == (f"made by a newer vaecodec (format version {version}, this one reads up to 3);"
                   " upgrade vaecodec")
    with pytest.raises(BitstreamError, match="newer"):
        peek_header(bad)


def test_nonzero_flags_refused():
    for flags in (1, 0x80):
        refused(patch(pack(SMALL), OFF_FLAGS, ">B", flags), "flags")


def test_wrong_fingerprint_refused():
    data = pack(SMALL)
    other = bytes.fromhex("fedcba9876543210")
    msg = refused(data, expected_fingerprint=other)
    assert msg == ("file was made with other model weights (fingerprint 0123456789abcdef, "
                   "these weights are fedcba9876543210)")
    assert unpack(data, expected_fingerprint=FP) == SMALL
    with pytest.raises(ValueError):
        unpack(data, expected_fingerprint=b"short")


@pytest.mark.parametrize("height,width,what", [
    (0, 10, "height"),
    (10, 0, "width"),
    (MAX_SIDE + 1, 10, "height"),
    (10, MAX_SIDE + 1, "width"),
    (0xFFFFFFFF, 0xFFFFFFFF, "height"),
    (MAX_SIDE, MAX_SIDE, "exceeds"),
    (MAX_SIDE, MAX_PIXELS // MAX_SIDE + 1, "exceeds"),
])
def test_absurd_dimensions_refused(height, width, what):
    bad = patch(patch(pack(SMALL), OFF_HEIGHT, ">I", height), OFF_WIDTH, ">I", width)
    assert what in refused(bad)
    with pytest.raises(BitstreamError, match=what):
        peek_header(bad)
    with pytest.raises(BitstreamError, match="cannot write"):
        pack(replace(SMALL, header=replace(SMALL.header, height=height, width=width)))


@pytest.mark.parametrize("offset,fmt,value,what", [
    (OFF_MODE, ">B", 4, "mode"),
    (OFF_MODE, ">B", 255, "mode"),
    (OFF_QUALITY, ">H", 999, "quality"),
    (OFF_QUALITY, ">H", 8001, "quality"),
    (OFF_QUALITY, ">H", 0, "quality"),
    (OFF_TILE, ">H", 100, "multiple of 64"),
    (OFF_OVERLAP, ">H", 8, "overlap"),  # overlap without tiling
    (OFF_M, ">H", 0, "channels"),
    (OFF_N, ">H", 0, "channels"),
])
def test_bad_header_fields_refused(offset, fmt, value, what):
    assert what in refused(patch(pack(SMALL), offset, fmt, value))


def test_overlap_not_smaller_than_tile_refused():
    c = Container(header=header(tile_size=128, tile_overlap=64), tiles=())
    assert unpack(pack(c)) == c
    assert "overlap" in refused(patch(pack(c), OFF_OVERLAP, ">H", 128))


def test_huge_tile_count_refused_without_allocating():
    data = pack(Container(header=header(), tiles=()))
    body = data[:-4]
    assert refused(with_crc(body[:-4] + struct.pack(">I", 0xFFFFFFFF)), "at most 1000000")
    assert refused(with_crc(body[:-4] + struct.pack(">I", 1_000_000)), "truncated")


def test_huge_lengths_refused():
    data = pack(SMALL)
    body = bytearray(data[:-4])
    tile_rec = 34 + 4
    struct.pack_into(">I", body, tile_rec + 8 + 4, 0xFFFFFFFF)  # len(y)
    refused(with_crc(bytes(body)), "truncated")
    c = Container(header=header(), tiles=(), sections=(Section(1, b"abc"),))
    body = bytearray(pack(c)[:-4])
    struct.pack_into(">I", body, 35, 0xFFFFFFF0)
    refused(with_crc(bytes(body)), "section 0 data")


def test_missing_section_refused():
    # section count says 1 but the bytes are just the tile count
    refused(patch(pack(Container(header=header(), tiles=())), OFF_NSEC, ">B", 1), "truncated")


def test_bad_sections_refused():
    base = Container(header=header(mode="RGBA"), tiles=(), sections=(Section(1, b"x"),))
    for kind in (0, 5, 255):
        bad = patch(pack(base), END, ">B", kind)
        refused(bad, "unknown section kind")
    dup = Container(header=header(mode="RGBA"), tiles=(),
                    sections=(Section(1, b"x"), Section(2, b"y")))
    refused(patch(pack(dup), END + 6, ">B", 1), "more than once")
    alpha = Container(header=header(mode="RGBA"), tiles=(), sections=(Section(2, b"a"),))
    refused(patch(pack(alpha), OFF_MODE, ">B", 0), "alpha")


def test_zero_latent_shape_refused():
    body = bytearray(pack(SMALL)[:-4])
    struct.pack_into(">H", body, END + 4, 0)
    refused(with_crc(bytes(body)), "y shape height")


def test_trailing_bytes_before_crc_refused():
    data = pack(SMALL)
    refused(with_crc(data[:-4] + b"\x00"), "unexpected bytes")


def test_non_bytes_input_is_type_error():
    with pytest.raises(TypeError):
        unpack("VAEC not bytes")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# pack validation


@pytest.mark.parametrize("kw", [
    dict(fingerprint=b"short"),
    dict(fingerprint=b"123456789"),
    dict(quality_milli=999),
    dict(quality_milli=8001),
    dict(quality_milli=4.5),
    dict(quality_milli=True),
    dict(height=0),
    dict(width=-1),
    dict(mode="CMYK"),
    dict(tile_size=96),
    dict(tile_size=65536),
    dict(tile_size=-64),
    dict(tile_overlap=16),
    dict(tile_size=64, tile_overlap=64),
    dict(latent_channels=0),
    dict(hyper_channels=65536),
])
def test_pack_refuses_bad_header(kw):
    with pytest.raises(ValueError, match="cannot write .vae file") as info:
        pack(Container(header=header(**kw), tiles=()))
    assert isinstance(info.value, BitstreamError)


@pytest.mark.parametrize("c", [
    Container(header=header(), tiles=(tile(y=(0, 1)),)),
    Container(header=header(), tiles=(tile(z=(1, 65536)),)),
    Container(header=header(), tiles=(tile(y=[1, 1]),)),
    Container(header=header(), tiles=(tile(ys="text"),)),
    Container(header=header(), tiles=("not a tile",)),
    Container(header=header(), tiles=(), sections=(Section(9, b""),)),
    Container(header=header(), tiles=(), sections=(Section(2, b"alpha in RGB"),)),
    Container(header=header(), tiles=(), sections=(Section(1, b""), Section(1, b""))),
    Container(header=header(), tiles=(), sections=tuple(Section(1, b"") for _ in range(256))),
])
def test_pack_refuses_bad_tiles_and_sections(c):
    with pytest.raises(BitstreamError, match="cannot write .vae file"):
        pack(c)


def test_pack_accepts_lists_and_bytearrays():
    c = Container(header=header(fingerprint=bytearray(FP)), tiles=[tile(ys=bytearray(b"q"))],
                  sections=[Section(1, bytearray(b"icc"))])
    back = unpack(pack(c))
    assert back.tiles == (tile(ys=b"q"),) and back.sections == (Section(1, b"icc"),)
    assert back.header == header()


# ------------------------------------------------------------------------------------------
# stays light


def test_import_does_not_pull_torch():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = ("import sys, vaecodec.bitstream; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'numpy' not in sys.modules, 'numpy imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT, timeout=60)


def test_pack_accepts_numpy_integers():
    np = pytest.importorskip("numpy")
    c = Container(header=replace(header(), height=np.int64(100), quality_milli=np.uint16(4500)),
                  tiles=(tile(y=(np.int32(7), 5)),))
    data = pack(c)
    assert data == pack(SMALL) and unpack(data) == SMALL
    with pytest.raises(BitstreamError):
        pack(replace(SMALL, header=replace(SMALL.header, quality_milli=np.float64(4500))))
