"""Rate control: --size / --bpp / --psnr pick the quality by bisection, reusing the analysis
transform, and give the largest file under a size or the smallest file over a PSNR."""
from __future__ import annotations

import numpy as np
import pytest

import vaecodec
from vaecodec import codec, ratecontrol
from conftest import photo_crop

RGB = photo_crop(64, 128, seed=7)


def coded(quality: float, refine: int = 0) -> bytes:
    return vaecodec.compress(RGB, quality, refine=refine)


def test_analysis_cache_gives_the_same_bytes(model):
    cache: dict = {}
    for q in (1.5, 6.25, 1.5):
        assert codec.compress_array(RGB, q, model=model, analysis=cache) == codec.compress_array(RGB, q, model=model)
    assert len(cache) == 1


@pytest.mark.parametrize("target", [700, "0.7k"])
def test_size_target_gives_the_largest_file_under_it(target):
    data = vaecodec.compress(RGB, size=target)
    q = vaecodec.info(data).quality
    assert len(data) <= 700 and 1 < q < 8
    assert len(coded(round(q + 0.02, 3))) > 700   # a step of the search higher is too big
    assert data == coded(q)                         # an ordinary file of that quality


def test_bpp_target():
    data = vaecodec.compress(RGB, bpp=1.0)
    q = vaecodec.info(data).quality
    assert 8 * len(data) / RGB.shape[0] / RGB.shape[1] <= 1.0
    assert 8 * len(coded(round(q + 0.02, 3))) / RGB.shape[0] / RGB.shape[1] > 1.0


def test_psnr_target_gives_the_smallest_file_over_it():
    data = vaecodec.compress(RGB, psnr=32.0)
    q = vaecodec.info(data).quality
    assert ratecontrol.psnr(np.asarray(vaecodec.decompress(data)), RGB) >= 32.0
    # PSNR is not monotonic in the quality at the search's resolution, but clearly below is worse
    lower = vaecodec.decompress(coded(round(q - 0.5, 3)))
    assert ratecontrol.psnr(np.asarray(lower), RGB) < 32.0


def test_targets_out_of_reach_give_the_closest_end_with_a_warning():
    with pytest.warns(vaecodec.VaecodecWarning, match="out of reach; coded at quality 1"):
        small = vaecodec.compress(RGB, size=10)
    assert small == coded(1.0)
    with pytest.warns(vaecodec.VaecodecWarning, match="out of reach; coded at quality 8"):
        best = vaecodec.compress(RGB, psnr=99)
    assert best == coded(8.0)
    assert vaecodec.compress(RGB, size="1M") == coded(8.0)   # everything fits: the top quality


def test_refined_size_target():
    data = vaecodec.compress(RGB, size=700, refine=3)
    q = vaecodec.info(data).quality
    assert len(data) <= 700 and data == coded(q, refine=3)


def test_thin_images_fold_with_the_analysis_cache_and_refinement(model):
    """A 600x2 strip is folded (format 3) when rate control codes it again from its analysis
    cache (the same file as without the cache) and when refined."""
    thin = photo_crop(2, 600, seed=3)
    cache: dict = {}
    for q in (2.5, 6.0):
        data = codec.compress_array(thin, q, model=model, analysis=cache)
        assert data[4] == 3 and data == codec.compress_array(thin, q, model=model)
    assert list(cache) == [(0, 0)]   # one tile, of the folded image
    refined = vaecodec.compress(thin, 4, refine=2)
    assert refined[4] == 3 and vaecodec.decompress(refined).size == (600, 2)


def test_numpy_numbers_are_targets_and_the_pillow_plugin_controls_the_rate():
    import io
    import numpy as np
    from PIL import Image
    target = len(vaecodec.compress(RGB, 4)) - 1
    by_size = vaecodec.compress(RGB, size=target)
    assert len(by_size) <= target and vaecodec.compress(RGB, size=np.int64(target)) == by_size
    assert vaecodec.compress(RGB, bpp=np.float32(1.0)) == vaecodec.compress(RGB, bpp=1.0)
    buf = io.BytesIO()
    Image.fromarray(RGB).save(buf, format="VAE", size=target)   # as vaecodec.compress
    assert buf.getvalue() == by_size
    with pytest.raises(vaecodec.CodecError, match="size target must be a positive number"):
        vaecodec.compress(RGB, size=True)


def test_bad_targets():
    with pytest.raises(vaecodec.CodecError, match="at most one of size, bpp and psnr"):
        vaecodec.compress(RGB, size=100, bpp=1)
    with pytest.raises(vaecodec.CodecError, match="quality or size, not both"):
        vaecodec.compress(RGB, 5, size=100)
    with pytest.raises(vaecodec.CodecError, match="quality or bpp, not both"):
        vaecodec.compress(RGB, 4.0, bpp=1)   # the default quality, given explicitly
    with pytest.raises(vaecodec.CodecError, match="not a size"):
        vaecodec.compress(RGB, size="lots")
    with pytest.raises(vaecodec.CodecError, match="positive"):
        vaecodec.compress(RGB, psnr=-3)


@pytest.mark.parametrize("text,value", [("20000", 20000), ("20k", 20000), ("1.5M", 1_500_000),
                                        ("64KiB", 65536), ("2 mib", 2 * 2**20), ("7b", 7)])
def test_parse_size(text, value):
    assert ratecontrol.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "k", "-5", "1e400", "0.5", "12q", "nan"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError):
        ratecontrol.parse_size(text)


def test_cli_size_target(tmp_path):
    from click.testing import CliRunner
    from PIL import Image
    from vaecodec.cli import main
    src = tmp_path / "a.png"
    Image.fromarray(RGB).save(src)
    out = tmp_path / "a.vae"
    result = CliRunner().invoke(main, ["compress", str(src), str(out), "--size", "0.7k"])
    assert result.exit_code == 0, result.output
    q = vaecodec.info(out.read_bytes()).quality
    assert out.stat().st_size <= 700 and f"quality {q:g} (chosen for --size 700 bytes)" in result.output
    both = CliRunner().invoke(main, ["compress", str(src), str(tmp_path / "b.vae"), "-q", "3", "--size", "1k"])
    assert both.exit_code == 2 and "give --quality or --size, not both" in both.output
    two = CliRunner().invoke(main, ["compress", str(src), str(tmp_path / "b.vae"), "--bpp", "1", "--psnr", "30"])
    assert two.exit_code == 2 and "give one of --size, --bpp and --psnr" in two.output
    bad = CliRunner().invoke(main, ["compress", str(src), str(tmp_path / "b.vae"), "--size", "huge"])
    assert bad.exit_code == 2 and "not a size" in bad.output
    tiny = CliRunner().invoke(main, ["compress", str(src), str(tmp_path / "c.vae"), "--size", "10"])
    assert tiny.exit_code == 0 and "out of reach; quality 1 gives the closest file" in tiny.output
