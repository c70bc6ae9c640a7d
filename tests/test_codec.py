"""Image <-> bytes: exact shapes for any size, tiling, bpp from file size, quality ladder."""
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
