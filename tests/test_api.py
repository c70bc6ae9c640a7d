"""The Python API (vaecodec.compress / decompress / info) and the Pillow plugin carry what the
command line carries, and give the same bytes."""
from __future__ import annotations

import io
import re
import threading
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageCms, UnidentifiedImageError

import vaecodec
from vaecodec.cli import main
from conftest import ROOT, photo_crop


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)
    return 10 * np.log10(255 ** 2 / mse)


def cli_bytes(tmp_path, src, *args) -> bytes:
    out = tmp_path / "cli.vae"
    result = CliRunner().invoke(main, ["compress", str(src), str(out), "--force", *args])
    assert result.exit_code == 0, result.output
    return out.read_bytes()


def test_array_round_trip_and_header():
    rgb = photo_crop(96, 128)
    data = vaecodec.compress(rgb, 4.5)
    image = vaecodec.decompress(data)
    assert (image.mode, image.size) == ("RGB", (128, 96))
    assert psnr(image, rgb) > 28
    meta = vaecodec.info(data)
    assert (meta.width, meta.height, meta.mode, meta.quality, meta.bytes) == (128, 96, "RGB", 4.5, len(data))
    assert meta.bpp == pytest.approx(8 * len(data) / (128 * 96)) and meta.release == "2026.12"
    assert meta.tiles == 1 and meta.format == 2 and meta.sections == ()


def test_grey_and_rgba_arrays():
    rgb = photo_crop(64, 80)
    grey = rgb.mean(axis=2).round().astype(np.uint8)
    image = vaecodec.decompress(vaecodec.compress(grey, 5))
    assert image.mode == "L" and psnr(image, grey) > 28
    alpha = np.tile(np.arange(80, dtype=np.uint8) * 3, (64, 1))
    rgba = np.dstack([rgb, alpha])
    image = vaecodec.decompress(vaecodec.compress(rgba, 3))
    assert image.mode == "RGBA" and np.array_equal(np.asarray(image)[..., 3], alpha)
    assert vaecodec.info(vaecodec.compress(rgba, 3)).sections == ("alpha",)


def test_path_pil_and_cli_give_the_same_bytes(tmp_path):
    """An image with an ICC profile and an EXIF orientation: the API (path or PIL image), the
    Pillow plugin and the command line write identical files, rotated and with the profile."""
    src = tmp_path / "in.png"
    image = Image.fromarray(photo_crop(48, 80))
    exif = Image.Exif()
    exif[0x0112] = 6   # rotate 90° clockwise to display
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image.save(src, exif=exif, icc_profile=icc)
    expected = cli_bytes(tmp_path, src, "--quality", "3.25")
    assert vaecodec.compress(src, 3.25) == expected
    assert vaecodec.compress(str(src), 3.25) == expected
    with Image.open(src) as im:
        assert vaecodec.compress(im, 3.25) == expected
        buf = io.BytesIO()
        im.save(buf, format="VAE", quality=3.25)
        assert buf.getvalue() == expected
        im.save(tmp_path / "saved.vae", quality=3.25)
    assert (tmp_path / "saved.vae").read_bytes() == expected
    decoded = vaecodec.decompress(expected)
    assert decoded.size == (48, 80) and decoded.info["icc_profile"] == icc


def test_sixteen_bit_input_warns_as_the_cli_notes(tmp_path):
    src = tmp_path / "deep.png"
    deep = (photo_crop(40, 40)[..., 0].astype(np.uint16) * 257)
    Image.fromarray(deep).save(src)   # mode I;16
    with pytest.warns(vaecodec.VaecodecWarning, match="16-bit image coded at 8 bits"):
        data = vaecodec.compress(src, 4)
    result = CliRunner().invoke(main, ["compress", str(src), str(tmp_path / "d.vae")])
    assert "note: 16-bit image coded at 8 bits" in result.output
    assert (tmp_path / "d.vae").read_bytes() == data
    assert vaecodec.decompress(data).mode == "L"


@pytest.mark.parametrize("bad,match", [
    (np.zeros((4, 4, 3), np.float32), "uint8 array"),
    (np.zeros((0, 4, 3), np.uint8), "empty"),
    (np.zeros((4, 4, 2), np.uint8), "uint8 array of shape"),
    ("/no/such/file.png", "no such file: /no/such/file.png"),
    (b"not an image", "not an image"),
    (12, "expected a path"),
])
def test_bad_inputs_are_codec_errors(bad, match):
    with pytest.raises(vaecodec.CodecError, match=match) as err:
        vaecodec.compress(bad)
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)


def test_bad_options_and_files_are_codec_errors():
    rgb = photo_crop(16, 16)
    with pytest.raises(vaecodec.CodecError, match="quality must be between 1 and 8"):
        vaecodec.compress(rgb, 9)
    with pytest.raises(vaecodec.CodecError, match="refine"):
        vaecodec.compress(rgb, refine=-1)
    with pytest.raises(vaecodec.CodecError, match="unknown model release '1999.01'"):
        vaecodec.compress(rgb, model="1999.01")
    data = vaecodec.compress(rgb)
    for damaged, match in ((data[:-1], "corrupted or truncated"), (data[:-6] + bytes([data[-6] ^ 1]) + data[-5:], "checksum"),
                           (b"GIF89a" + bytes(60), "not a vaecodec file")):
        with pytest.raises(vaecodec.CodecError, match=match):
            vaecodec.decompress(damaged)
    with pytest.raises(vaecodec.CodecError, match="bytes of a .vae file"):
        vaecodec.decompress(None)
    with pytest.raises(vaecodec.CodecError, match="checksum"):
        vaecodec.info(data[:-1] + bytes([data[-1] ^ 1]))


def test_two_threads_compress_the_same_bytes_as_one():
    images = [photo_crop(64, 96, seed=s) for s in (0, 40)]
    alone = [vaecodec.compress(im, 4) for im in images]
    results = [None, None]

    def work(i):
        results[i] = vaecodec.compress(images[i], 4)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == alone


def test_pillow_open_is_lazy_and_registered(tmp_path):
    data = vaecodec.compress(np.dstack([photo_crop(40, 56), np.full((40, 56), 200, np.uint8)]), 4)
    path = tmp_path / "a.vae"
    path.write_bytes(data)
    assert Image.registered_extensions()[".vae"] == "VAE" and Image.MIME["VAE"] == "image/x-vae"
    with Image.open(path) as im:
        assert (im.format, im.mode, im.size) == ("VAE", "RGBA", (56, 40))
        assert im.tile and im.info["release"] == "2026.12"   # not decoded yet
        pixels = np.asarray(im)
        assert not im.tile
    assert np.array_equal(pixels, np.asarray(vaecodec.decompress(data)))
    assert (pixels[..., 3] == 200).all()


def test_thin_rgba_and_grey_images_are_folded_and_open_with_pillow(tmp_path):
    """A 1500x5 RGBA strip and a 3x2000 grey one: folded before coding (format 3, a layout
    section), alpha kept exact at the image's own size, and restored by the API and by
    Image.open with their size and mode."""
    rgb = photo_crop(5, 1500, seed=2)
    alpha = np.tile((np.arange(1500) % 256).astype(np.uint8), (5, 1))
    grey = photo_crop(2000, 3, seed=4).mean(axis=2).round().astype(np.uint8)
    for source, mode, size in ((np.dstack([rgb, alpha]), "RGBA", (1500, 5)), (grey, "L", (3, 2000))):
        data = vaecodec.compress(source, 4)
        meta = vaecodec.info(data)
        assert (meta.format, meta.width, meta.height, meta.mode) == (3, *size, mode)
        assert "layout" in meta.sections and meta.tiles == 1
        image = vaecodec.decompress(data)
        assert (image.mode, image.size) == (mode, size)
        path = tmp_path / f"{mode}.vae"
        path.write_bytes(data)
        with Image.open(path) as im:
            assert (im.format, im.mode, im.size) == ("VAE", mode, size)
            if mode == "RGBA":   # decoded through the same path
                assert np.array_equal(np.asarray(im), np.asarray(image))
        if mode == "RGBA":
            assert np.array_equal(np.asarray(image)[..., 3], alpha)
            assert psnr(np.asarray(image)[..., :3], rgb) > 30     # measured 32.5 dB
        else:
            assert psnr(image, grey) > 30                         # measured 31.6 dB


def test_pillow_refuses_damaged_files(tmp_path):
    data = vaecodec.compress(photo_crop(32, 32), 2)
    path = tmp_path / "bad.vae"
    path.write_bytes(data[:-10] + bytes([data[-10] ^ 4]) + data[-9:])
    with pytest.raises(UnidentifiedImageError, match=re.escape(str(path)) + ".*checksum"):
        Image.open(path)
    with pytest.raises(OSError):
        Image.open(io.BytesIO(data[:-7]))


def test_readme_python_examples_run(tmp_path, monkeypatch):
    """Every ```python block of the README runs, in order, in a folder holding photo.png."""
    Image.fromarray(photo_crop(64, 96)).save(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    scope: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for block in blocks:
            exec(compile(block, "README.md", "exec"), scope)


def test_vae_files_are_not_coded_again_and_paths_decode(tmp_path):
    data = vaecodec.compress(photo_crop(32, 48), 3)
    path = tmp_path / "a.vae"
    path.write_bytes(data)
    with pytest.raises(vaecodec.CodecError, match="is a .vae file already; decompress it"):
        vaecodec.compress(path)
    result = CliRunner().invoke(main, ["compress", str(path), str(tmp_path / "b.vae")])
    assert result.exit_code == 1 and "is a .vae file already" in result.output
    assert np.array_equal(np.asarray(vaecodec.decompress(path)), np.asarray(vaecodec.decompress(data)))
    with pytest.raises(vaecodec.CodecError, match="cannot read"):
        vaecodec.decompress(tmp_path / "missing.vae")
