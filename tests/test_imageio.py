"""Tests for vaecodec.imageio (image reading/writing around the codec)."""

from __future__ import annotations

import errno
import io
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms

from vaecodec import fileio, imageio
from vaecodec.alpha import decode_alpha, encode_alpha
from vaecodec.fileio import atomic_write_bytes, check_distinct
from vaecodec.imageio import ImageError, ImageMeta, read_image, to_image, write_image

RNG = np.random.default_rng(1234)


def rand(shape, dtype=np.uint8, high=256):
    return RNG.integers(0, high, size=shape, dtype=dtype)


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def lab_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png16(path, arr: np.ndarray) -> None:
    """Write a 16-bit PNG by hand (Pillow cannot create 16-bit RGB images)."""
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = arr.astype(">u2").reshape(h, -1)
    raw = b"".join(b"\0" + rows[i].tobytes() for i in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def write_png_header_only(path, width: int, height: int) -> None:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b""))


def write_tiff16_rgb(path, arr: np.ndarray) -> None:
    """Minimal little-endian uncompressed 16-bit RGB TIFF."""
    h, w, c = arr.shape
    data = arr.astype("<u2").tobytes()
    entries = [
        (256, 3, 1, w), (257, 3, 1, h), (258, 3, 3, None), (259, 3, 1, 1), (262, 3, 1, 2),
        (273, 4, 1, None), (277, 3, 1, c), (278, 3, 1, h), (279, 4, 1, len(data)), (284, 3, 1, 1),
    ]
    ifd_off = 8
    bps_off = ifd_off + 2 + 12 * len(entries) + 4
    data_off = bps_off + 6
    out = b"II*\0" + struct.pack("<I", ifd_off) + struct.pack("<H", len(entries))
    for tag, typ, cnt, val in entries:
        if tag == 258:
            out += struct.pack("<HHII", tag, typ, cnt, bps_off)
        elif tag == 273:
            out += struct.pack("<HHII", tag, typ, cnt, data_off)
        elif typ == 3:
            out += struct.pack("<HHIHH", tag, typ, cnt, val, 0)
        else:
            out += struct.pack("<HHII", tag, typ, cnt, val)
    out += struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + data
    with open(path, "wb") as f:
        f.write(out)


def listing(d) -> list[str]:
    return sorted(os.listdir(d))


# --------------------------------------------------------------------------
# modes round trip
# --------------------------------------------------------------------------


def test_rgb_round_trip(tmp_path):
    a = rand((13, 17, 3))
    p = tmp_path / "x.png"
    Image.fromarray(a).save(p)
    rgb, meta = read_image(p)
    assert rgb.shape == (13, 17, 3) and rgb.dtype == np.uint8
    assert rgb.flags.c_contiguous and rgb.flags.writeable
    np.testing.assert_array_equal(rgb, a)
    assert meta.mode == "RGB" and meta.alpha is None and meta.icc_profile is None
    assert meta.notices == []
    out = to_image(rgb, meta)
    assert out.mode == "RGB" and out.size == (17, 13)
    np.testing.assert_array_equal(np.asarray(out), a)


def test_astronaut_photo_round_trip(tmp_path):
    skdata = pytest.importorskip("skimage.data")
    a = skdata.astronaut()[::4, ::4].copy()
    p = tmp_path / "astro.png"
    Image.fromarray(a).save(p)
    rgb, meta = read_image(p)
    np.testing.assert_array_equal(rgb, a)
    np.testing.assert_array_equal(np.asarray(to_image(rgb, meta)), a)


def test_grey_round_trip(tmp_path):
    g = rand((9, 11))
    p = tmp_path / "g.png"
    Image.fromarray(g).save(p)
    rgb, meta = read_image(p)
    assert meta.mode == "L" and meta.alpha is None
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], g)
    out = to_image(rgb, meta)
    assert out.mode == "L" and out.size == (11, 9)
    np.testing.assert_array_equal(np.asarray(out), g)


def test_rgba_round_trip_exact_alpha(tmp_path):
    a = rand((10, 12, 4))
    p = tmp_path / "a.png"
    Image.fromarray(a).save(p)
    rgb, meta = read_image(p)
    assert meta.mode == "RGBA" and meta.alpha is not None
    np.testing.assert_array_equal(rgb, a[..., :3])
    np.testing.assert_array_equal(decode_alpha(meta.alpha, 10, 12), a[..., 3])
    out = to_image(rgb, meta)
    assert out.mode == "RGBA" and out.size == (12, 10)
    np.testing.assert_array_equal(np.asarray(out), a)


def test_la_round_trip_exact_alpha(tmp_path):
    a = rand((7, 5, 2))
    p = tmp_path / "la.png"
    Image.fromarray(a).save(p)
    rgb, meta = read_image(p)
    assert meta.mode == "LA"
    np.testing.assert_array_equal(rgb, np.repeat(a[..., :1], 3, axis=2))
    out = to_image(rgb, meta)
    assert out.mode == "LA" and out.size == (5, 7)
    np.testing.assert_array_equal(np.asarray(out), a)


def test_bilevel_becomes_grey(tmp_path):
    b = rand((6, 8), high=2).astype(bool)
    p = tmp_path / "b.png"
    Image.fromarray(b).save(p)
    rgb, meta = read_image(p)
    assert meta.mode == "L"
    np.testing.assert_array_equal(rgb[..., 0], np.where(b, 255, 0))
    assert to_image(rgb, meta).mode == "L"


def test_palette_without_transparency(tmp_path):
    pal = rand((4, 3))
    idx = rand((5, 6), high=4)
    im = Image.frombytes("P", (6, 5), idx.tobytes())
    im.putpalette(pal.ravel().tolist())
    p = tmp_path / "p.png"
    im.save(p)
    rgb, meta = read_image(p)
    assert meta.mode == "RGB" and meta.alpha is None
    np.testing.assert_array_equal(rgb, pal[idx])
    assert any("palette" in n for n in meta.notices)


def test_palette_with_transparency_becomes_rgba(tmp_path):
    pal = rand((4, 3))
    idx = rand((5, 6), high=4)
    im = Image.frombytes("P", (6, 5), idx.tobytes())
    im.putpalette(pal.ravel().tolist())
    p = tmp_path / "pt.png"
    im.save(p, transparency=2)
    rgb, meta = read_image(p)
    assert meta.mode == "RGBA"
    np.testing.assert_array_equal(rgb, pal[idx])
    np.testing.assert_array_equal(decode_alpha(meta.alpha, 5, 6), np.where(idx == 2, 0, 255))
    out = to_image(rgb, meta)
    assert out.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(out)[..., 3], np.where(idx == 2, 0, 255))


def test_palette_gif_multi_frame_notice(tmp_path):
    frames = [Image.fromarray(rand((4, 4, 3))).convert("P") for _ in range(3)]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    rgb, meta = read_image(p)
    assert rgb.shape == (4, 4, 3)
    assert any("3 frames" in n and "first frame" in n for n in meta.notices)


def test_colour_key_transparency_becomes_alpha(tmp_path):
    g = rand((6, 7))
    g[0, 0] = 17
    p = tmp_path / "lk.png"
    Image.fromarray(g).save(p, transparency=17)
    rgb, meta = read_image(p)
    assert meta.mode == "LA"
    np.testing.assert_array_equal(decode_alpha(meta.alpha, 6, 7), np.where(g == 17, 0, 255))

    a = rand((6, 7, 3))
    a[1, 1] = (1, 2, 3)
    p = tmp_path / "rk.png"
    Image.fromarray(a).save(p, transparency=(1, 2, 3))
    rgb, meta = read_image(p)
    assert meta.mode == "RGBA"
    np.testing.assert_array_equal(
        decode_alpha(meta.alpha, 6, 7), np.where((a == (1, 2, 3)).all(axis=2), 0, 255)
    )


# --------------------------------------------------------------------------
# bit depth, colour spaces
# --------------------------------------------------------------------------


def test_16bit_grey_png_rounds_to_8_bits(tmp_path):
    v = rand((5, 9), dtype=np.uint16, high=65536)
    v[0, :6] = [0, 128, 129, 385, 65406, 65535]
    p = tmp_path / "g16.png"
    Image.fromarray(v).save(p)  # Pillow writes I;16 as a 16-bit grey PNG
    rgb, meta = read_image(p)
    assert meta.mode == "L"
    assert "16-bit image coded at 8 bits" in meta.notices
    expected = np.rint(v / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(rgb[..., 0], expected)
    np.testing.assert_array_equal(rgb[0, :6, 0], [0, 0, 1, 1, 254, 255])


def test_16bit_rgb_png(tmp_path):
    v = rand((4, 6, 3), dtype=np.uint16, high=65536)
    p = tmp_path / "rgb16.png"
    write_png16(p, v)
    rgb, meta = read_image(p)
    assert meta.mode == "RGB"
    assert "16-bit image coded at 8 bits" in meta.notices
    # Pillow 13 decodes 16-bit RGB PNGs to "RGB" keeping the high byte only.
    np.testing.assert_array_equal(rgb, (v >> 8).astype(np.uint8))
    assert np.abs(rgb.astype(int) - np.rint(v / 257.0)).max() <= 1


def test_16bit_rgba_and_la_png(tmp_path):
    v = rand((4, 6, 4), dtype=np.uint16, high=65536)
    p = tmp_path / "rgba16.png"
    write_png16(p, v)
    rgb, meta = read_image(p)
    assert meta.mode == "RGBA" and "16-bit image coded at 8 bits" in meta.notices
    np.testing.assert_array_equal(decode_alpha(meta.alpha, 4, 6), v[..., 3] >> 8)

    v = rand((4, 6, 2), dtype=np.uint16, high=65536)
    p = tmp_path / "la16.png"
    write_png16(p, v)
    rgb, meta = read_image(p)
    # Pillow opens 16-bit grey+alpha PNGs as RGBA; we restore LA.
    assert meta.mode == "LA" and "16-bit image coded at 8 bits" in meta.notices
    np.testing.assert_array_equal(rgb[..., 0], v[..., 0] >> 8)
    np.testing.assert_array_equal(decode_alpha(meta.alpha, 4, 6), v[..., 1] >> 8)
    assert to_image(rgb, meta).mode == "LA"


def test_16bit_rgb_tiff(tmp_path):
    v = rand((3, 5, 3), dtype=np.uint16, high=65536)
    p = tmp_path / "rgb16.tif"
    write_tiff16_rgb(p, v)
    rgb, meta = read_image(p)
    assert meta.mode == "RGB" and "16-bit image coded at 8 bits" in meta.notices
    assert np.abs(rgb.astype(int) - np.rint(v / 257.0)).max() <= 1


def test_8bit_bmp_16bpp_is_not_reported_as_16_bit(tmp_path):
    p = tmp_path / "x.bmp"
    Image.fromarray(rand((4, 4, 3))).save(p)
    _, meta = read_image(p)
    assert meta.notices == []


def test_cmyk_jpeg_converted(tmp_path):
    p = tmp_path / "c.jpg"
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(p, quality=95)
    rgb, meta = read_image(p)
    assert meta.mode == "RGB" and rgb.shape == (6, 8, 3)
    assert "CMYK image converted to RGB" in meta.notices
    assert meta.icc_profile is None
    assert rgb[..., 0].min() > 200 and rgb[..., 1:].max() < 50  # red


def test_cmyk_with_non_cmyk_icc_falls_back_and_drops_profile(tmp_path):
    p = tmp_path / "c.tif"
    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(p, icc_profile=srgb_icc())
    rgb, meta = read_image(p)
    assert meta.mode == "RGB" and meta.icc_profile is None
    assert "CMYK image converted to RGB" in meta.notices
    assert rgb.min() == 255


def test_lab_tiff_converted(tmp_path):
    p = tmp_path / "lab.tif"
    Image.new("LAB", (4, 3), (255, 128, 128)).save(p)
    rgb, meta = read_image(p)
    assert meta.mode == "RGB" and rgb.shape == (3, 4, 3)
    assert any("Lab" in n for n in meta.notices)
    assert rgb.min() >= 250  # L* = 100 is white


def test_float_and_int32_tiffs(tmp_path):
    f = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    p = tmp_path / "f.tif"
    Image.fromarray(f).save(p)
    rgb, meta = read_image(p)
    assert meta.mode == "L" and any("float" in n for n in meta.notices)
    np.testing.assert_array_equal(rgb[..., 0], np.rint(f * 255).astype(np.uint8))

    i = np.array([[0, 257, 65535, 70000]], dtype=np.int32)
    p = tmp_path / "i.tif"
    Image.fromarray(i).save(p)
    rgb, meta = read_image(p)
    assert meta.mode == "L" and any("32-bit integer" in n for n in meta.notices)
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 1, 255, 255])


@pytest.mark.parametrize(
    "mode, expected_mode, notice",
    [
        ("YCbCr", "RGB", "YCbCr image converted to RGB"),
        ("HSV", "RGB", "HSV image converted to RGB"),
        ("RGBX", "RGB", None),
        ("RGBa", "RGBA", None),
        ("La", "LA", None),
        ("PA", "RGBA", "palette image expanded to RGBA"),
        ("I;16B", "L", "16-bit image coded at 8 bits"),
    ],
)
def test_other_pillow_modes(tmp_path, monkeypatch, mode, expected_mode, notice):
    src = Image.new(mode, (5, 3))
    p = tmp_path / "fake.png"
    p.write_bytes(b"not really read")
    monkeypatch.setattr(imageio.Image, "open", lambda *a, **k: src.copy())
    rgb, meta = read_image(p)
    assert rgb.shape == (3, 5, 3) and meta.mode == expected_mode
    assert (notice in meta.notices) if notice else meta.notices == []
    if mode not in ("La", "RGBa", "I;16B"):
        np.testing.assert_array_equal(rgb, np.asarray(src.convert("RGB")))
    assert to_image(rgb, meta).mode == expected_mode


# --------------------------------------------------------------------------
# orientation and ICC
# --------------------------------------------------------------------------


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def test_exif_orientation_png_exact(tmp_path):
    a = rand((4, 7, 3))
    p = tmp_path / "o.png"
    Image.fromarray(a).save(p, exif=_exif(6))
    rgb, meta = read_image(p)
    assert rgb.shape == (7, 4, 3)
    np.testing.assert_array_equal(rgb, np.rot90(a, k=-1))  # 6 = rotate 90 degrees clockwise
    assert to_image(rgb, meta).size == (4, 7)


def test_exif_orientation_jpeg(tmp_path):
    a = np.zeros((32, 48, 3), np.uint8)
    a[:16, :16] = (255, 0, 0)  # red block top-left
    p = tmp_path / "o.jpg"
    Image.fromarray(a).save(p, exif=_exif(6), quality=95)
    rgb, _ = read_image(p)
    assert rgb.shape == (48, 32, 3)
    # After a clockwise quarter turn the top-left block is top-right.
    assert rgb[:16, -16:, 0].mean() > 200 and rgb[:16, :16, 0].mean() < 50
    expected = np.rot90(a, k=-1).astype(int)
    assert np.abs(rgb.astype(int) - expected).mean() < 8


def test_icc_profile_carried_and_written(tmp_path):
    icc = srgb_icc()
    a = rand((5, 5, 3))
    p = tmp_path / "icc.png"
    Image.fromarray(a).save(p, icc_profile=icc)
    rgb, meta = read_image(p)
    assert meta.icc_profile == icc
    out = tmp_path / "out.tif"
    write_image(out, to_image(rgb, meta), meta.icc_profile)
    _, meta2 = read_image(out)
    assert meta2.icc_profile == icc
    for ext in (".png", ".webp", ".jpg"):
        q = tmp_path / f"out{ext}"
        write_image(q, to_image(rgb, meta), meta.icc_profile)
        with Image.open(q) as im:
            assert im.info.get("icc_profile") == icc, ext


def test_mismatched_icc_profile_dropped(tmp_path):
    p = tmp_path / "labicc.png"
    Image.fromarray(rand((4, 4, 3))).save(p, icc_profile=lab_icc())
    _, meta = read_image(p)
    assert meta.icc_profile is None
    assert any("ICC" in n and "dropped" in n for n in meta.notices)


def test_write_without_icc_ignores_image_info_profile(tmp_path):
    im = Image.fromarray(rand((4, 4, 3)))
    im.info["icc_profile"] = srgb_icc()
    p = tmp_path / "noicc.png"
    write_image(p, im, None)
    with Image.open(p) as back:
        assert "icc_profile" not in back.info or not back.info["icc_profile"]


# --------------------------------------------------------------------------
# refusals while reading
# --------------------------------------------------------------------------


def test_missing_file(tmp_path):
    p = tmp_path / "nope.png"
    with pytest.raises(ImageError, match=r"^no such file: .*nope\.png$"):
        read_image(p)


def test_directory(tmp_path):
    with pytest.raises(ImageError, match="is a directory"):
        read_image(tmp_path)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png is empty$"):
        read_image(p)


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("hello, I am not a picture\n")
    with pytest.raises(ImageError, match=r"notes\.png is not an image Pillow can read"):
        read_image(p)


def test_eps_is_never_opened(tmp_path):
    p = tmp_path / "x.eps"
    p.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageError, match="not an image Pillow can read"):
        read_image(p)


def test_truncated_image(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(rand((64, 64, 3))).save(buf, "PNG")
    p = tmp_path / "trunc.png"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match=r"trunc\.png is corrupt or truncated"):
        read_image(p)


def test_zero_size(tmp_path, monkeypatch):
    p = tmp_path / "zero.png"
    write_png_header_only(p, 0, 5)
    with pytest.raises(ImageError, match=r"zero\.png"):  # Pillow 13 refuses to identify it
        read_image(p)
    # Formats that Pillow would open with a zero size are caught by our check.
    q = tmp_path / "fake.png"
    Image.fromarray(rand((2, 2, 3))).save(q)
    monkeypatch.setattr(imageio.Image, "open", lambda *a, **k: Image.new("RGB", (0, 5)))
    with pytest.raises(ImageError, match=r"fake\.png has zero size \(0x5\)"):
        read_image(q)


def test_decompression_bomb(tmp_path):
    p = tmp_path / "bomb.png"
    write_png_header_only(p, 40000, 40000)  # 1.6e9 pixels > 2**30
    with pytest.raises(ImageError, match=r"bomb\.png is too large"):
        read_image(p)
    # Our cap, not Pillow's default one, applies and is restored afterwards.
    before = Image.MAX_IMAGE_PIXELS
    q = tmp_path / "small.png"
    Image.fromarray(rand((10, 10, 3))).save(q)
    with pytest.raises(ImageError, match=r"small\.png is too large \(10x10 = 100 pixels"):
        read_image(q, max_pixels=99)
    assert read_image(q, max_pixels=100)[0].shape == (10, 10, 3)
    assert Image.MAX_IMAGE_PIXELS == before


def test_our_cap_replaces_pillows_global_limit(tmp_path, monkeypatch):
    # Even with Pillow's own limit far below the image size, read_image applies
    # max_pixels only, and leaves Pillow's global as it found it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    p = tmp_path / "ok.png"
    Image.fromarray(rand((30, 30, 3))).save(p)
    assert read_image(p)[0].shape == (30, 30, 3)
    assert Image.MAX_IMAGE_PIXELS == 10
    with pytest.raises(ImageError, match="too large"):
        read_image(p, max_pixels=899)


def test_nul_in_file_name(tmp_path):
    with pytest.raises(ImageError, match="invalid file name"):
        read_image(str(tmp_path / "a\0b.png"))
    with pytest.raises(ImageError, match="not a file name"):
        atomic_write_bytes(str(tmp_path / "a\0b.vae"), b"x")
    with pytest.raises(ImageError, match="invalid file name"):
        check_distinct("a.png", "b\0.png")


def test_messages_are_one_line(tmp_path):
    p = tmp_path / "bad\nname.png"
    with pytest.raises(ImageError) as info:
        read_image(p)
    assert "\n" not in str(info.value)
    assert "bad\\nname.png" in str(info.value)


# --------------------------------------------------------------------------
# alpha codec
# --------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.sampled_from(["random", "constant", "binary", "gradient"]),
    st.integers(0, 2**32 - 1),
)
def test_alpha_round_trip(h, w, kind, seed):
    r = np.random.default_rng(seed)
    if kind == "random":
        a = r.integers(0, 256, (h, w), dtype=np.uint8)
    elif kind == "constant":
        a = np.full((h, w), r.integers(0, 256), np.uint8)
    elif kind == "binary":
        a = np.where(r.random((h, w)) < 0.5, 0, 255).astype(np.uint8)
    else:
        a = (np.add.outer(np.arange(h), np.arange(w)) * 37 % 256).astype(np.uint8)
    data = encode_alpha(a)
    assert isinstance(data, bytes)
    back = decode_alpha(data, h, w)
    assert back.dtype == np.uint8 and back.shape == (h, w)
    np.testing.assert_array_equal(back, a)


def test_alpha_compresses_smooth_planes():
    a = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    data = encode_alpha(a)
    assert len(data) < 1000
    np.testing.assert_array_equal(decode_alpha(data, 256, 256), a)
    assert encode_alpha(np.full((500, 500), 255, np.uint8)) == b"\x00\xff"


def test_alpha_noncontiguous_input():
    a = rand((10, 20))[:, ::2]
    np.testing.assert_array_equal(decode_alpha(encode_alpha(a), 10, 10), a)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x00\x01\x02",
        b"\x07garbage",
        b"\x01not zlib at all",
        b"\x01" + zlib.compress(bytes(5)),  # too short for 4x4
        b"\x01" + zlib.compress(bytes(17)),  # too long for 4x4
        b"\x01" + zlib.compress(bytes(16))[:-3],  # truncated stream
        b"\x01" + zlib.compress(bytes(16)) + b"xx",  # trailing data
    ],
)
def test_decode_alpha_garbage(data):
    with pytest.raises(ImageError):
        decode_alpha(data, 4, 4)


def test_decode_alpha_wrong_size_and_bad_args():
    data = encode_alpha(rand((4, 5)))
    with pytest.raises(ImageError, match="expected 5x5"):
        decode_alpha(data, 5, 5)
    with pytest.raises(ImageError):
        decode_alpha(data, 0, 20)
    with pytest.raises(ImageError):
        decode_alpha("text", 4, 5)  # type: ignore[arg-type]
    with pytest.raises(ImageError):
        encode_alpha(np.zeros((3, 3), np.uint16))
    with pytest.raises(ImageError):
        encode_alpha(np.zeros((0, 3), np.uint8))


def test_decode_alpha_bomb_is_bounded():
    data = b"\x01" + zlib.compress(bytes(50_000_000), 9)  # ~50 KB inflating to 50 MB
    with pytest.raises(ImageError, match="more than 100 samples, expected 10x10"):
        decode_alpha(data, 10, 10)


# --------------------------------------------------------------------------
# to_image
# --------------------------------------------------------------------------


def test_to_image_grey_takes_rounded_mean():
    rgb = np.array([[[10, 11, 11], [10, 10, 11], [0, 0, 255], [255, 255, 255]]], np.uint8)
    out = to_image(rgb, ImageMeta(mode="L"))
    assert out.mode == "L"
    np.testing.assert_array_equal(np.asarray(out), [[11, 10, 85, 255]])


def test_to_image_errors():
    rgb = rand((3, 4, 3))
    with pytest.raises(ImageError, match="needs an alpha plane"):
        to_image(rgb, ImageMeta(mode="RGBA"))
    with pytest.raises(ImageError, match="has no alpha"):
        to_image(rgb, ImageMeta(mode="RGB", alpha=encode_alpha(rand((3, 4)))))
    with pytest.raises(ImageError, match="expected 3x4"):
        to_image(rgb, ImageMeta(mode="LA", alpha=encode_alpha(rand((4, 4)))))
    with pytest.raises(ImageError):
        to_image(rgb.astype(np.float32), ImageMeta(mode="RGB"))
    with pytest.raises(ImageError):
        to_image(rgb[..., :2], ImageMeta(mode="RGB"))
    with pytest.raises(ImageError):
        ImageMeta(mode="CMYK")


def test_to_image_sets_icc():
    icc = srgb_icc()
    out = to_image(rand((2, 2, 3)), ImageMeta(mode="RGB", icc_profile=icc))
    assert out.info["icc_profile"] == icc


# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".tiff", ".webp", ".PNG"])
def test_write_lossless_formats_round_trip(tmp_path, ext):
    a = rand((6, 9, 3))
    p = tmp_path / f"out{ext}"
    notices = write_image(p, Image.fromarray(a), None)
    assert isinstance(notices, list)
    rgb, meta = read_image(p)
    np.testing.assert_array_equal(rgb, a)
    assert listing(tmp_path) == [p.name]


@pytest.mark.parametrize("ext", [".png", ".tif", ".webp"])
def test_write_alpha_formats_round_trip(tmp_path, ext):
    a = rand((6, 9, 4))
    a[0, 0, 3] = 0  # fully transparent pixel keeps its colour (WebP exact)
    p = tmp_path / f"out{ext}"
    write_image(p, Image.fromarray(a), None)
    rgb, meta = read_image(p)
    assert meta.mode == "RGBA"
    np.testing.assert_array_equal(rgb, a[..., :3])
    np.testing.assert_array_equal(decode_alpha(meta.alpha, 6, 9), a[..., 3])


def test_write_grey_webp_notice(tmp_path):
    p = tmp_path / "g.webp"
    notices = write_image(p, Image.fromarray(rand((4, 4, 2))), None)
    assert any("WebP" in n for n in notices)
    with Image.open(p) as im:
        assert im.mode == "RGBA"


def test_write_jpeg_is_lossy_with_notice(tmp_path):
    a = np.full((8, 8, 3), 120, np.uint8)
    p = tmp_path / "o.jpeg"
    notices = write_image(p, Image.fromarray(a), None)
    assert any("lossy" in n for n in notices)
    rgb, _ = read_image(p)
    assert np.abs(rgb.astype(int) - 120).max() <= 2


@pytest.mark.parametrize("ext", [".jpg", ".bmp"])
def test_write_refuses_alpha_where_unsupported(tmp_path, ext):
    p = tmp_path / f"o{ext}"
    with pytest.raises(ImageError, match="cannot store transparency"):
        write_image(p, Image.fromarray(rand((4, 4, 4))), None)
    assert listing(tmp_path) == []


def test_write_bmp_drops_icc_with_notice(tmp_path):
    p = tmp_path / "o.bmp"
    notices = write_image(p, Image.fromarray(rand((4, 4, 3))), srgb_icc())
    assert any("BMP" in n and "ICC" in n for n in notices)


@pytest.mark.parametrize("name", ["out.gif", "out.xyz", "out"])
def test_write_unknown_extension(tmp_path, name):
    with pytest.raises(ImageError, match=r"unknown image extension.*\.png.*\.jpeg"):
        write_image(tmp_path / name, Image.fromarray(rand((2, 2, 3))), None)
    assert listing(tmp_path) == []


def test_write_refuses_overwrite_without_force(tmp_path):
    p = tmp_path / "o.png"
    p.write_bytes(b"precious")
    with pytest.raises(ImageError, match=r"o\.png exists; use --force to overwrite$"):
        write_image(p, Image.fromarray(rand((2, 2, 3))), None)
    assert p.read_bytes() == b"precious"
    assert listing(tmp_path) == ["o.png"]
    os.chmod(p, 0o640)
    write_image(p, Image.fromarray(rand((2, 2, 3))), None, force=True)
    assert read_image(p)[0].shape == (2, 2, 3)
    assert os.stat(p).st_mode & 0o777 == 0o640  # permissions kept on overwrite
    assert listing(tmp_path) == ["o.png"]


def test_write_refuses_directory_and_missing_parent(tmp_path):
    d = tmp_path / "sub.png"
    d.mkdir()
    with pytest.raises(ImageError, match="is a directory"):
        write_image(d, Image.fromarray(rand((2, 2, 3))), None, force=True)
    with pytest.raises(ImageError, match="does not exist"):
        write_image(tmp_path / "missing" / "o.png", Image.fromarray(rand((2, 2, 3))), None)
    f = tmp_path / "file"
    f.write_bytes(b"x")
    with pytest.raises(ImageError, match="is not a directory"):
        atomic_write_bytes(tmp_path / "file" / "o.vae", b"data")
    with pytest.raises(ImageError, match="not a file name"):
        atomic_write_bytes(str(tmp_path) + os.sep, b"data")


def test_atomic_write_bytes(tmp_path):
    p = tmp_path / "x.vae"
    atomic_write_bytes(p, b"abc")
    assert p.read_bytes() == b"abc"
    assert listing(tmp_path) == ["x.vae"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(p).st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(ImageError, match="exists; use --force"):
        atomic_write_bytes(p, b"def")
    assert p.read_bytes() == b"abc"
    atomic_write_bytes(p, bytearray(b"def"), force=True)
    assert p.read_bytes() == b"def"
    assert listing(tmp_path) == ["x.vae"]


def test_atomic_write_follows_symlink(tmp_path):
    real = tmp_path / "real.vae"
    real.write_bytes(b"old")
    link = tmp_path / "link.vae"
    link.symlink_to(real)
    with pytest.raises(ImageError, match="exists"):
        atomic_write_bytes(link, b"new")
    atomic_write_bytes(link, b"new", force=True)
    assert link.is_symlink() and real.read_bytes() == b"new"


@pytest.mark.parametrize("force", [False, True])
def test_failed_write_leaves_nothing(tmp_path, monkeypatch, force):
    def boom(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "replace", boom)
    monkeypatch.setattr(fileio.os, "link", boom)
    p = tmp_path / "o.png"
    with pytest.raises(ImageError, match=r"^cannot write .*o\.png: no space left on device$"):
        write_image(p, Image.fromarray(rand((4, 4, 3))), None, force=force)
    assert listing(tmp_path) == []


def test_failed_encode_leaves_nothing(tmp_path):
    p = tmp_path / "o.png"
    with pytest.raises(ImageError, match="cannot encode"):
        write_image(p, Image.new("CMYK", (2, 2)), None)
    assert listing(tmp_path) == []


def test_permission_denied_message(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(fileio.tempfile, "mkstemp", denied)
    with pytest.raises(ImageError, match=r"^cannot write .*o\.vae: permission denied$"):
        atomic_write_bytes(tmp_path / "o.vae", b"x")
    assert listing(tmp_path) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_permission_denied_real(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    os.chmod(d, 0o500)
    try:
        with pytest.raises(ImageError, match="permission denied"):
            atomic_write_bytes(d / "o.vae", b"x")
        assert listing(d) == []
    finally:
        os.chmod(d, 0o700)


# --------------------------------------------------------------------------
# check_distinct
# --------------------------------------------------------------------------


def test_check_distinct(tmp_path, monkeypatch):
    a = tmp_path / "a.png"
    a.write_bytes(b"x")
    with pytest.raises(ImageError, match="output path is the same as the input"):
        check_distinct(a, a)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImageError, match="same as the input"):
        check_distinct("a.png", "./sub/../a.png")
    link = tmp_path / "l.png"
    link.symlink_to(a)
    with pytest.raises(ImageError, match="same as the input"):
        check_distinct(a, link)
    hard = tmp_path / "h.png"
    os.link(a, hard)
    with pytest.raises(ImageError, match="same as the input"):
        check_distinct(hard, a)
    with pytest.raises(ImageError, match="same as the input"):
        check_distinct(tmp_path / "new.png", tmp_path / "new.png")
    check_distinct(a, tmp_path / "b.png")  # distinct: no error
