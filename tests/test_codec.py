"""Image <-> bytes: exact shapes for any size, tiling, bpp from file size, quality ladder."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from vaecodec import bitstream, codec
from conftest import photo_crop


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / max(mse, 1e-12))


@pytest.mark.parametrize("height,width", [(1, 1), (2, 2), (7, 9), (63, 65), (500, 400),
                                          (1, 300), (300, 1), (3, 1030)])
def test_any_size_roundtrips_with_exact_shape(model, height, width):
    rgb = photo_crop(height, width, seed=height)
    data = codec.compress_array(rgb, 6.0, model=model)
    out = codec.decompress_array(data, model=model)
    assert out.rgb.shape == (height, width, 3) and out.rgb.dtype == np.uint8
    assert (out.header.height, out.header.width) == (height, width)
    if height * width >= 64 * 64:
        assert psnr(out.rgb, rgb) > 20


def test_tile_grid_covers_image_with_overlap():
    grid = codec.tile_grid(2500, 1100, 1024, 64)
    cover = np.zeros((2500, 1100), int)
    for top, left, h, w in grid:
        assert 0 < h <= 1024 and 0 < w <= 1024
        cover[top:top + h, left:left + w] += 1
    assert cover.min() >= 1
    assert codec.tile_grid(100, 50, 0, 0) == [(0, 0, 100, 50)]


def test_large_images_are_coded_as_one_tile(model):
    """An image wider than the 1024-px tiles of old files, and than one transform window, is
    one set of latents (one z, one y, no seams); its windowed transforms agree with the whole
    ones up to float rounding, and the file is smaller than independent tiles'."""
    from vaecodec import bitstream
    from vaecodec.transforms import run_tiled
    rgb = photo_crop(192, 1280, seed=3)
    data = codec.compress_array(rgb, 4.0, model=model)
    header = bitstream.peek_header(data)
    assert (header.tile_size, header.tile_overlap) == (0, 0) and len(bitstream.unpack(data).tiles) == 1
    out = codec.decompress_array(data, model=model).rgb
    assert psnr(out, rgb) > 30
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        whole = model.model.g_a(x)
        windows = run_tiled(model.model.g_a, x, 16, 512, 64)
        assert (whole - windows).abs().max() < 1e-4 and windows.shape == whole.shape
        synth = run_tiled(model.model.g_s, whole, 16, 32, 4, inverse=True)
        assert (synth - model.model.g_s(whole)).abs().max() * 255 < 0.01
    assert codec.work_units(192, 1280) == 1


def test_tiled_image_has_no_visible_seam(model, monkeypatch):
    """Files of independent overlapping tiles (vaecodec 0.1.0's for large images, and refined
    or very large images now) blend without a seam."""
    monkeypatch.setattr(codec, "_geometry", lambda h, w, refine=0: (codec.TILE, codec.OVERLAP))
    """Around the tile boundary the tiled decode is as good as coding the strip in one piece."""
    import torch
    rgb = photo_crop(300, 1500, seed=7)           # two tiles side by side, overlap 960..1024
    tiled = codec.decompress_array(codec.compress_array(rgb, 6.0, model=model), model=model).rgb
    x = codec._pad_to_stride(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)
    whole = model.decompress(model.compress(x, 6.0), 6.0)[0, :, :300, :1500]
    whole = np.clip(np.round(whole.permute(1, 2, 0).numpy() * 255), 0, 255).astype(np.uint8)
    for region in (slice(928, 960), slice(960, 1024), slice(1024, 1056)):
        assert psnr(tiled[:, region], rgb[:, region]) > psnr(whole[:, region], rgb[:, region]) - 1.0


def test_bpp_rises_and_distortion_falls_with_quality(model):
    rgb = photo_crop(256, 320, seed=11)
    sizes, quality = [], []
    for q in (1, 4, 8):
        data = codec.compress_array(rgb, q, model=model)
        sizes.append(len(data))
        quality.append(psnr(codec.decompress_array(data, model=model).rgb, rgb))
    assert sizes[0] < sizes[1] < sizes[2]
    assert quality[0] < quality[2]


def test_fractional_quality_lies_between_neighbours(model):
    rgb = photo_crop(256, 256, seed=2)
    n3, n35, n4 = (len(codec.compress_array(rgb, q, model=model)) for q in (3, 3.5, 4))
    assert n3 < n35 < n4
    assert bitstream.peek_header(codec.compress_array(rgb, 3.5, model=model)).quality_milli == 3500


def test_quality_out_of_range_is_refused(model):
    with pytest.raises(codec.CodecError):
        codec.compress_array(photo_crop(64, 64), 9, model=model)


@pytest.mark.parametrize("kwargs, message", [
    ({"quality": "4"}, "quality must be a number"),
    ({"quality": True}, "quality must be a number"),
    ({"quality": None}, "quality must be a number"),
    ({"quality": float("nan")}, "quality must be a number"),
    ({"mode": "CMYK"}, "mode must be one of"),
    ({"mode": "RGBA"}, "needs an alpha section"),
    ({"mode": "LA", "sections": (bitstream.Section(bitstream.SECTION_ALPHA, b"xx"),)},
     "alpha section does not hold a 48x32 plane"),
])
def test_compress_array_refuses_what_a_decoder_could_not_restore(model, kwargs, message):
    # every refusal comes before any coding, so no file is made that decompress would refuse
    with pytest.raises(codec.CodecError, match=message):
        codec.compress_array(photo_crop(32, 48), model=model, **kwargs)


def test_compress_array_refuses_non_arrays_and_empty_images(model):
    with pytest.raises(codec.CodecError, match="got list"):
        codec.compress_array(photo_crop(8, 8).tolist(), model=model)
    with pytest.raises(codec.CodecError, match="image 5x0 is empty"):
        codec.compress_array(np.zeros((0, 5, 3), np.uint8), model=model)


def test_compress_array_with_alpha_round_trips(model):
    from vaecodec.alpha import decode_alpha, encode_alpha
    plane = np.arange(32 * 48, dtype=np.uint8).reshape(32, 48)
    section = bitstream.Section(bitstream.SECTION_ALPHA, encode_alpha(plane))
    data = codec.compress_array(photo_crop(32, 48), mode="RGBA", sections=(section,), model=model)
    decoded = codec.decompress_array(data, model=model)
    assert decoded.header.mode == "RGBA"
    stored = dict((s.kind, s.data) for s in decoded.sections)[bitstream.SECTION_ALPHA]
    assert np.array_equal(decode_alpha(stored, 32, 48), plane)


# ------------------------------------------------------------------------------------------
# thin images: folded into a near-square image before coding (SPEC.md, "Thin images")


def ramp(height: int, width: int) -> np.ndarray:
    """A ``(height, width, 3)`` grey ramp along the long side (a CSS-style gradient strip)."""
    n = max(height, width)
    line = (np.arange(n) * 255 // max(1, n - 1)).astype(np.uint8)
    line = line[None, :] if width >= height else line[:, None]
    return np.repeat(np.broadcast_to(line, (height, width))[:, :, None], 3, axis=2).copy()


def coded_area(height: int, width: int) -> int:
    """Pixels the latents code for an ``height x width`` image: its folded image, padded."""
    h, w = codec.coded_size(height, width, codec.fold_layout(height, width))
    return codec._padded(h) * codec._padded(w)


@pytest.mark.parametrize("height,width,make,floor", [
    (1, 20000, ramp, 40),    # measured 46.8 dB, 247 bytes (version 2 files: 43.5 dB, 4,358 bytes)
    (20000, 1, ramp, 40),    # 44.6 dB, 299 bytes
    (7, 3000, photo_crop, 30),   # 32.9 dB; a 256x256 crop of the same photo: 33.7 dB
])
def test_thin_images_are_folded_and_round_trip(model, height, width, make, floor):
    rgb = make(height, width)
    data = codec.compress_array(rgb, 4.0, model=model)
    container = bitstream.unpack(data)
    layout = bitstream.layout_of(container.sections)
    assert data[4] == 3 and layout == codec.fold_layout(height, width) is not None
    assert layout.axis == (0 if width > height else 1)
    assert (container.header.height, container.header.width) == (height, width)
    out = codec.decompress_array(data, model=model)
    assert out.rgb.shape == (height, width, 3) and out.layout == layout and out.sections == ()
    assert psnr(out.rgb, rgb) > floor
    # the pixels coded (and so the time) are in proportion to the image's, not 64x them
    assert coded_area(height, width) <= 1.25 * height * width
    if make is ramp:
        assert len(data) < 600   # 247 bytes; 4,358 when padded to 20032x64 (version 2)


def test_fold_layout_rule_and_bounds():
    """The rule: images with a side under 64 px are folded where that at least halves the
    padded area, into a near-square image; photos never are. Whatever the size, the pixels
    coded stay within 4x the image's plus one 64x64 block, and a stream reader's limit, made
    from the header's size, holds the folded image's latents."""
    assert codec.fold_layout(1, 20000) == bitstream.Layout(0, 192)      # 105 strips: 192x105
    assert codec.fold_layout(20000, 1) == bitstream.Layout(1, 192)
    assert codec.fold_layout(7, 3000) == bitstream.Layout(0, 192)       # 16 strips: 192x112
    assert codec.fold_layout(1, 65) == bitstream.Layout(0, 64)          # 2 strips, 64x2
    for h, w in [(1, 64), (63, 65), (63, 1000), (40, 20000), (64, 100000), (512, 768), (1, 1)]:
        assert codec.fold_layout(h, w) is None, (h, w)
    sizes = [(h, w) for h in range(1, 80, 3) for w in [*range(1, 400, 7), 1000, 5000, 20000, 131072]]
    for h, w in sizes + [(w, h) for h, w in sizes]:
        layout = codec.fold_layout(h, w)
        assert coded_area(h, w) <= 4 * h * w + 4096, (h, w)
        if min(h, w) >= 64:
            assert layout is None
        if layout is None:
            continue
        ch, cw = layout.coded_size(h, w)
        assert max(ch, cw) <= 2 * min(ch, cw) + 64 and ch * cw < 2 * h * w + 64 * 64, (h, w)
        for tiling in [(0, 0), (codec.TILE, codec.OVERLAP)]:
            header = bitstream.Header(b"\0" * 8, 4000, h, w, "RGB", *tiling, 192, 128)
            assert bitstream.stream_limit(header) >= \
                bitstream.stream_limit(replace(header, height=ch, width=cw)), (h, w, tiling)


def test_fold_and_unfold_are_inverse_and_fill_with_the_last_pixel():
    rgb = np.random.default_rng(1).integers(0, 256, (3, 200, 3), dtype=np.uint8)
    layout = bitstream.Layout(0, 64)                  # 4 strips of 64 columns, 56 filled
    folded = codec.fold(rgb, layout)
    assert folded.shape == (12, 64, 3)
    assert np.array_equal(folded[3:6], rgb[:, 64:128]) and np.array_equal(folded[9:12, :8], rgb[:, 192:])
    assert (folded[9:12, 8:] == rgb[:, 199:200]).all()
    assert np.array_equal(codec.unfold(folded, 3, 200, layout), rgb)
    tall = np.ascontiguousarray(rgb.transpose(1, 0, 2))
    assert np.array_equal(codec.fold(tall, bitstream.Layout(1, 64)), folded.transpose(1, 0, 2))
    assert np.array_equal(codec.unfold(codec.fold(tall, bitstream.Layout(1, 64)), 200, 3,
                                       bitstream.Layout(1, 64)), tall)


def test_photos_are_coded_as_before(model, monkeypatch):
    """Images that are not folded are the version 2 files of before, byte for byte."""
    rgb = photo_crop(63, 65)
    data = codec.compress_array(rgb, 3.0, model=model)
    assert data[4] == 2 and bitstream.unpack(data).sections == ()
    monkeypatch.setattr(codec, "fold_layout", lambda h, w: None)
    assert codec.compress_array(rgb, 3.0, model=model) == data


def test_thin_version_2_files_still_decode_and_other_layouts_are_refused(model, monkeypatch):
    rgb = ramp(2, 300)
    with monkeypatch.context() as m:   # a thin image as vaecodec 0.2.0 coded it: padded
        m.setattr(codec, "fold_layout", lambda h, w: None)
        old = codec.compress_array(rgb, 4.0, model=model)
    assert old[4] == 2 and bitstream.unpack(old).tiles[0].y_shape == (4, 20)
    assert psnr(codec.decompress_array(old, model=model).rgb, rgb) > 35
    data = codec.compress_array(rgb, 4.0, model=model)
    c = bitstream.unpack(data)
    assert bitstream.layout_of(c.sections) == bitstream.Layout(0, 64) and c.tiles[0].y_shape == (4, 4)
    for layout in (bitstream.Layout(0, 128), bitstream.Layout(1, 64)):
        bad = bitstream.pack(replace(c, sections=(layout.section(),)))
        with pytest.raises(codec.CodecError, match="^file's layout does not match its image size$"):
            codec.decompress_array(bad, model=model)
        assert codec.file_tile_count(c.header, (layout.section(),)) == 1
    # a photo's file with a layout section is refused the same way
    photo = bitstream.unpack(codec.compress_array(photo_crop(64, 64), 4.0, model=model))
    bad = bitstream.pack(replace(photo, sections=(bitstream.Layout(0, 64).section(),)))
    with pytest.raises(codec.CodecError, match="layout does not match"):
        codec.decompress_array(bad, model=model)
    with pytest.raises(codec.CodecError, match="codec writes it itself"):
        codec.compress_array(rgb, model=model, sections=(bitstream.Layout(0, 64).section(),))


def test_tile_counts_of_folded_images():
    """Progress bars count the folded image's tiles: a 131072x20 line is folded into 1664x1580
    and coded as one tile, refined or not; a file of vaecodec 0.3.0, which refined it in 2x2
    tiles, counts 4, not the 137 tiles of the line's own width."""
    layout = codec.fold_layout(20, 131072)
    assert layout.coded_size(20, 131072) == (1580, 1664)
    assert codec.tile_count(20, 131072) == 1 and codec.tile_count(20, 131072, refine=3) == 1
    assert codec.work_units(20, 131072, refine=3) == 4
    header = bitstream.Header(b"\0" * 8, 4000, 20, 131072, "RGB", 1024, 64, 192, 128)
    assert codec.file_tile_count(header, (layout.section(),)) == 4
    assert codec.file_tile_count(replace(header, tile_size=0, tile_overlap=0), (layout.section(),)) == 1
    assert codec.work_units(1, 20000) == 1
