"""Rate-distortion benchmark: metrics, Bjøntegaard deltas, codecs and the end-to-end run."""
from __future__ import annotations

import json
import math
import sys

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vaecodec import benchmark, metrics

RATES = np.array([0.12, 0.25, 0.5, 1.0, 2.0])  # bpp
PSNRS = np.array([26.0, 28.7, 31.9, 35.4, 39.0])  # dB


def sample(name: str = "astronaut", box=(0, 0, 128, 96)) -> Image.Image:
    import skimage.data
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB").crop(box)


# -- metrics ----------------------------------------------------------------------------------

def test_psnr_rgb_known_values():
    a = np.full((8, 8, 3), 100, dtype=np.uint8)
    assert metrics.psnr_rgb(a, a) == metrics.PSNR_CAP == 100.0
    b = a.copy()
    b[..., 0] += 3  # squared error 9 on a third of the values: MSE 3
    assert metrics.psnr_rgb(a, b) == pytest.approx(10 * math.log10(255**2 / 3))
    assert metrics.psnr_rgb(Image.fromarray(a), Image.fromarray(b)) == metrics.psnr_rgb(a, b)
    with pytest.raises(ValueError):
        metrics.psnr_rgb(a, a[:4])


def test_bpp():
    assert metrics.bpp(1000, 100, 80) == 1.0
    assert metrics.bpp(12288, 512, 768) == pytest.approx(0.25)


def test_ms_ssim_identical_and_small_images():
    img = np.asarray(sample(box=(0, 0, 176, 168)))
    assert metrics.ms_ssim_rgb(img, img) == pytest.approx(1.0, abs=1e-5)
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    assert 0.5 < metrics.ms_ssim_rgb(img, noisy) < 0.999
    small = img[:96, :128]
    with pytest.warns(RuntimeWarning, match="MS-SSIM"):
        assert math.isnan(metrics.ms_ssim_rgb(small, small))


# -- Bjøntegaard ------------------------------------------------------------------------------

def test_bd_rate_against_itself_is_zero():
    assert abs(metrics.bd_rate(RATES, PSNRS, RATES, PSNRS)) < 1e-6
    assert abs(metrics.bd_psnr(RATES, PSNRS, RATES, PSNRS)) < 1e-6


def test_bd_rate_half_rate_is_minus_50_percent():
    assert metrics.bd_rate(RATES, PSNRS, RATES / 2, PSNRS) == pytest.approx(-50.0, abs=0.1)
    assert metrics.bd_rate(RATES, PSNRS, RATES * 1.25, PSNRS) == pytest.approx(25.0, abs=0.1)
    # unsorted input and a swapped role give the inverse change
    order = [3, 0, 4, 1, 2]
    back = metrics.bd_rate(RATES / 2, PSNRS, RATES[order], PSNRS[order])
    assert back == pytest.approx(100.0, abs=0.1)


def test_bd_psnr_sanity():
    # +1 dB everywhere is +1 dB BD-PSNR and a negative BD-rate
    assert metrics.bd_psnr(RATES, PSNRS, RATES, PSNRS + 1.0) == pytest.approx(1.0, abs=1e-9)
    assert metrics.bd_rate(RATES, PSNRS, RATES, PSNRS + 1.0) < -5
    # half the rate: PSNR gained at equal rate is positive, about the local slope × log 2
    gain = metrics.bd_psnr(RATES, PSNRS, RATES / 2, PSNRS)
    assert 2.0 < gain < 4.0
    # curves that do not overlap give NaN, not a number
    assert math.isnan(metrics.bd_rate(RATES, PSNRS, RATES, PSNRS + 20))
    assert math.isnan(metrics.bd_psnr(RATES, PSNRS, RATES * 100, PSNRS))


def test_own_pchip_matches_scipy_and_is_exact_on_lines():
    x = np.array([0.0, 0.7, 1.5, 2.0, 3.2, 4.0])
    y = np.array([1.0, 2.5, 2.6, 4.0, 3.0, 5.0])
    own = metrics.Pchip(x, y, use_scipy=False)
    t = np.linspace(0, 4, 81)
    line = metrics.Pchip(x, 2 * x + 1, use_scipy=False)
    assert np.allclose(line(t), 2 * t + 1)
    assert line.integrate(0.3, 3.5) == pytest.approx((3.5**2 + 3.5) - (0.3**2 + 0.3))
    assert math.isnan(own(np.array([4.5]))[0])
    pytest.importorskip("scipy")
    ref = metrics.Pchip(x, y, use_scipy=True)
    assert np.allclose(own(t), ref(t), atol=1e-12)
    assert own.integrate(0.2, 3.9) == pytest.approx(ref.integrate(0.2, 3.9), abs=1e-12)


def test_psnr_at_bpp():
    assert metrics.psnr_at_bpp(RATES, PSNRS, 0.5) == pytest.approx(31.9)
    assert 31.9 < metrics.psnr_at_bpp(RATES, PSNRS, 0.7) < 35.4
    assert math.isnan(metrics.psnr_at_bpp(RATES, PSNRS, 0.1))
    assert math.isnan(metrics.psnr_at_bpp(RATES, PSNRS, 2.5))


# -- codecs -----------------------------------------------------------------------------------

def test_jpeg_quality_5_is_sane():
    img = sample("chelsea", box=(0, 0, 256, 192))
    codec = benchmark.get_codec("jpeg")
    data = codec.encode(img, 5)
    assert data[:2] == b"\xff\xd8"  # a complete JPEG file
    m = benchmark.measure(codec, img, 5)
    assert m["bytes"] == len(data)
    assert m["bpp"] < 0.5
    assert 18 < m["psnr-rgb"] < 32
    hi = benchmark.measure(codec, img, 95)
    assert hi["bpp"] > m["bpp"] and hi["psnr-rgb"] > m["psnr-rgb"] + 8


@pytest.mark.parametrize("name", ["webp", "avif", "jpegxl", "jpeg2000", "heic"])
def test_optional_codecs_round_trip(name):
    codec = benchmark.get_codec(name)
    reason = codec.unavailable_reason()
    if reason:
        pytest.skip(reason)
    img = sample(box=(0, 0, 128, 96))
    lo, hi = codec.qualities[len(codec.qualities) // 2], codec.qualities[-1]
    small, large = (benchmark.measure(codec, img, q) for q in (lo, hi))
    assert 0 < small["bpp"] < large["bpp"]
    assert 30 < small["psnr-rgb"] < large["psnr-rgb"] < 60  # mid sweep ~35 dB, top ~40-45 dB


def test_jpegxl_falls_back_to_imagecodecs(monkeypatch):
    imagecodecs = pytest.importorskip("imagecodecs")
    if not imagecodecs.JPEGXL.available:
        pytest.skip("imagecodecs without JPEG XL")
    monkeypatch.setitem(sys.modules, "pillow_jxl", None)  # import fails
    codec = benchmark.get_codec("jxl")
    assert codec.unavailable_reason() is None and codec._backend == "imagecodecs"
    img = sample(box=(0, 0, 128, 96))
    m = benchmark.measure(codec, img, 90)
    assert m["psnr-rgb"] > 35 and 0 < m["bpp"] < 4


def test_parse_codecs_and_aliases():
    assert benchmark.parse_codecs("JPEG, jxl,j2k,jpeg") == ["jpeg", "jpegxl", "jpeg2000"]
    with pytest.raises(click.BadParameter, match="unknown codec 'png'"):
        benchmark.parse_codecs("jpeg,png")


# -- end to end -------------------------------------------------------------------------------

@pytest.fixture
def small_dataset(tmp_path):
    d = tmp_path / "tiny"
    d.mkdir()
    sample("astronaut", box=(100, 40, 228, 136)).save(d / "a.png")
    sample("coffee", box=(200, 100, 328, 196)).save(d / "b.png")
    (d / "notes.txt").write_text("not an image")
    return d


def test_run_benchmark_end_to_end(small_dataset, tmp_path):
    out = tmp_path / "out"
    res = benchmark.run_benchmark(small_dataset, ["jpeg", "webp"], out, progress=False)
    assert res["images"] == ["a", "b"]
    assert res["skipped"] == {} and res["errors"] == []

    entries = json.loads((out / "results.json").read_text())
    assert [e["name"] for e in entries] == ["JPEG", "WebP"]
    keys = {"bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"}
    for e, codec in zip(entries, ("jpeg", "webp")):
        assert set(e["results"]) == keys
        n = len(benchmark.CODECS[codec].qualities)
        assert all(len(v) == n for v in e["results"].values())
        bpp = e["results"]["bpp"]
        assert bpp == sorted(bpp) and bpp[0] > 0
        assert all(t > 0 for t in e["results"]["encoding_time"] + e["results"]["decoding_time"])
        assert all(v is None for v in e["results"]["ms-ssim-rgb"])  # 128×96 < 161 px: NaN

    raw = json.loads((out / "per-image.json").read_text())["records"]
    assert len(raw) == 2 * (len(benchmark.JpegCodec.qualities) + len(benchmark.WebPCodec.qualities))
    # the aggregate is the mean of per-image values
    q5 = [r for r in raw if r["codec"] == "jpeg" and r["quality"] == 5]
    jpeg = entries[0]
    i = jpeg["qualities"].index(5)
    assert jpeg["results"]["bpp"][i] == pytest.approx(np.mean([r["bpp"] for r in q5]))
    assert jpeg["results"]["psnr-rgb"][i] == pytest.approx(np.mean([r["psnr-rgb"] for r in q5]))
    assert q5[0]["bpp"] == pytest.approx(8 * q5[0]["bytes"] / (128 * 96))

    assert res["bd"]["jpeg"]["bd_rate_psnr_pct"] == pytest.approx(0.0, abs=1e-6)
    assert res["bd"]["webp"]["bd_rate_psnr_pct"] < 0  # WebP beats JPEG
    report = (out / "report.md").read_text()
    assert "BD-rate PSNR [%]" in report and "0.25 bpp" in report and "### WebP" in report
    for png in ("rd-psnr.png", "rd-msssim.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "per-image.csv").read_text().startswith("image,codec,quality")


def test_parallel_jobs_match_serial(small_dataset, tmp_path):
    serial = benchmark.run_benchmark(small_dataset, "jpeg", tmp_path / "s", progress=False)
    parallel = benchmark.run_benchmark(small_dataset, "jpeg", tmp_path / "p", jobs=2,
                                       progress=False)
    assert parallel["errors"] == []
    assert parallel["results"][0]["results"]["bpp"] == serial["results"][0]["results"]["bpp"]


def test_unavailable_codec_is_skipped_with_a_notice(small_dataset, tmp_path, monkeypatch, capsys):
    def missing(self):
        raise benchmark.CodecUnavailable("libwebp not installed")
    monkeypatch.setattr(benchmark.WebPCodec, "_load", missing)
    res = benchmark.run_benchmark(small_dataset, "jpeg,webp", tmp_path / "o", limit=1,
                                  progress=False)
    assert res["skipped"] == {"webp": "CodecUnavailable: libwebp not installed"}
    assert [e["codec"] for e in res["results"]] == ["jpeg"]
    assert "skipping webp: CodecUnavailable: libwebp not installed" in capsys.readouterr().err
    assert "skipped: CodecUnavailable" in (tmp_path / "o" / "report.md").read_text()


def test_bad_input_is_a_usage_error(small_dataset, tmp_path):
    with pytest.raises(click.UsageError, match="unknown codec 'foo'"):
        benchmark.run_benchmark(small_dataset, ["jpeg", "foo"], tmp_path / "o")
    with pytest.raises(click.UsageError, match="not found"):
        benchmark.run_benchmark(tmp_path / "missing", ["jpeg"], tmp_path / "o")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(click.UsageError, match="no images"):
        benchmark.run_benchmark(empty, ["jpeg"], tmp_path / "o")


def test_cli(small_dataset, tmp_path):
    runner = CliRunner()
    res = runner.invoke(benchmark.benchmark_command, ["--help"])
    assert res.exit_code == 0 and "--codecs" in res.output and "--jobs" in res.output
    res = runner.invoke(benchmark.benchmark_command,
                        ["--dataset", str(small_dataset), "--codecs", "jpeg,foo"])
    assert res.exit_code == 2 and "unknown codec 'foo'" in res.output
    res = runner.invoke(benchmark.benchmark_command,
                        ["--dataset", str(small_dataset), "--codecs", "jpeg", "--reuse", "bogus"])
    assert res.exit_code == 2 and "'--reuse'" in res.output and "unknown codec 'bogus'" in res.output
    res = runner.invoke(benchmark.benchmark_command, ["--dataset", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "does not exist" in res.output
    out = tmp_path / "cli-out"
    res = runner.invoke(benchmark.benchmark_command,
                        ["--dataset", str(small_dataset), "--codecs", "jpg", "--out", str(out),
                         "--limit", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "results.json").read_text())[0]["name"] == "JPEG"


def test_a_missing_matplotlib_is_refused_before_measuring(small_dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib raises ImportError
    res = CliRunner().invoke(benchmark.benchmark_command,
                             ["--dataset", str(small_dataset), "--codecs", "jpeg", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "need matplotlib" in res.output
    assert not (tmp_path / "o").exists()


def test_reuse_keeps_earlier_measurements(small_dataset, tmp_path):
    out = tmp_path / "r"
    first = benchmark.run_benchmark(small_dataset, "jpeg", out, progress=False)
    again = benchmark.run_benchmark(small_dataset, "jpeg,webp", out, progress=False,
                                    reuse=["jpeg"])
    jpeg = [e for e in again["results"] if e["name"] == first["results"][0]["name"]][0]
    # timings are never reproduced by a new measurement: equal lists mean they were kept
    assert jpeg["results"]["encoding_time"] == first["results"][0]["results"]["encoding_time"]
    assert {e["codec"] for e in again["results"]} == {"jpeg", "webp"}


def test_reuse_measures_again_when_the_image_changed(small_dataset, tmp_path, capsys):
    out = tmp_path / "r"
    first = benchmark.run_benchmark(small_dataset, "jpeg", out, jobs=1, progress=False)
    stored = json.loads((out / "per-image.json").read_text())
    assert {r["sha256"] for r in stored["records"] if r["image"] == "a"} == {
        benchmark.pixel_digest(Image.open(small_dataset / "a.png").convert("RGB"))}
    # same name, other pixels: a.png's stored measurements must not be credited to it
    sample("camera", box=(0, 0, 128, 96)).save(small_dataset / "a.png")
    capsys.readouterr()
    again = benchmark.run_benchmark(small_dataset, "jpeg", out, progress=False, reuse=["jpeg"])
    assert "measuring jpeg on a again: the stored measurement was made on a different image" \
        in capsys.readouterr().err
    records = json.loads((out / "per-image.json").read_text())["records"]
    new_a = [r for r in records if r["image"] == "a"]
    old_b = [r for r in stored["records"] if r["image"] == "b"]
    assert all(r["sha256"] == benchmark.pixel_digest(Image.open(small_dataset / "a.png").convert("RGB"))
               for r in new_a)
    assert [r["encoding_time"] for r in records if r["image"] == "b"] == \
        [r["encoding_time"] for r in old_b]                       # b was kept
    assert again["results"][0]["results"]["bpp"] != first["results"][0]["results"]["bpp"]


def test_reused_measurements_keep_their_date_and_jobs(small_dataset, tmp_path):
    out = tmp_path / "r"
    benchmark.run_benchmark(small_dataset, "jpeg", out, jobs=2, progress=False)
    path = out / "per-image.json"
    stored = json.loads(path.read_text())
    for r in stored["records"]:        # as written before records carried their provenance
        del r["measured"], r["jobs"]
    stored["meta"]["date"] = "2026-01-02 03:04 UTC"
    path.write_text(json.dumps(stored))
    benchmark.run_benchmark(small_dataset, "jpeg", out, jobs=1, progress=False, reuse=["jpeg"])
    meta = json.loads(path.read_text())["meta"]
    assert meta["jobs"] == 2 and meta["measured"] == ["2026-01-02 03:04 UTC"]
    report = (out / "report.md").read_text()
    assert "measurements reused from 2026-01-02 03:04 UTC" in report
    assert "parallel jobs: 2 (times with several jobs share the CPU" in report


def test_head_to_head_ranks_two_codecs_directly():
    # vaecodec spends 10 % more bits than WebP for the same PSNR everywhere: +10 % head to head,
    # whatever each one's BD-rate against JPEG over its own overlap with JPEG says.
    # On MS-SSIM it spends 20 % fewer bits.
    webp_bpp, psnr = [0.2, 0.4, 0.8, 1.6], [28.0, 31.0, 34.0, 37.0]
    msssim = [0.90, 0.94, 0.97, 0.985]
    entries = [
        {"codec": "vaecodec", "name": "vaecodec",
         "results": {"bpp": [1.1 * b for b in webp_bpp], "psnr-rgb": psnr}},
        {"codec": "webp", "name": "WebP", "results": {"bpp": webp_bpp, "psnr-rgb": psnr}},
    ]
    h2h = benchmark.head_to_head(entries)
    assert list(h2h) == ["webp"]
    assert h2h["webp"]["bd_rate_psnr_pct"] == pytest.approx(10.0, abs=1e-6)
    assert h2h["webp"]["bd_psnr_db"] < 0
    assert math.isnan(h2h["webp"]["bd_rate_msssim_pct"])   # no MS-SSIM curves given
    entries[0]["results"]["ms-ssim-rgb"] = msssim
    entries[1]["results"]["ms-ssim-rgb"] = msssim
    entries[0]["results"]["bpp"] = [0.8 * b for b in webp_bpp]
    h2h = benchmark.head_to_head(entries)
    assert h2h["webp"]["bd_rate_msssim_pct"] == pytest.approx(-20.0, abs=1e-6)
    assert benchmark.head_to_head(entries[1:]) == {}


def test_report_ranks_vaecodec_head_to_head(small_dataset, tmp_path):
    res = benchmark.run_benchmark(small_dataset, ["vaecodec", "jpeg"], tmp_path / "o",
                                  progress=False)
    h2h = res["head_to_head"]
    assert list(h2h) == ["jpeg"]
    # against the anchor itself, the head-to-head number is the anchored one
    anchored = res["bd"]["vaecodec"]["bd_rate_psnr_pct"]
    assert h2h["jpeg"]["bd_rate_psnr_pct"] == pytest.approx(anchored)
    assert h2h["jpeg"]["bd_rate_psnr_pct"] < 0   # vaecodec beats JPEG
    assert h2h["jpeg"]["bd_rate_msssim_pct"] == pytest.approx(
        res["bd"]["vaecodec"]["bd_rate_msssim_pct"], nan_ok=True)   # NaN: images too small
    report = (tmp_path / "o" / "report.md").read_text()
    assert "## vaecodec head to head" in report
    assert f"| JPEG | {h2h['jpeg']['bd_rate_psnr_pct']:+.1f} | {h2h['jpeg']['bd_psnr_db']:+.2f} | " in report


def test_cli_prints_the_head_to_head_lines(small_dataset, tmp_path):
    res = CliRunner().invoke(benchmark.benchmark_command,
                             ["--dataset", str(small_dataset), "--codecs", "vaecodec,jpeg,webp",
                              "--out", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == 0, res.output
    entries = json.loads((tmp_path / "o" / "results.json").read_text())  # the measured curves
    curves = {e["codec"]: e["results"] for e in entries}
    expected = benchmark.head_to_head([{"codec": c, "results": r} for c, r in curves.items()])
    line = next(ln for ln in res.output.splitlines() if "vaecodec vs WebP" in ln)
    assert f"{expected['webp']['bd_rate_psnr_pct']:+.1f} %" in line and "(head to head)" in line
    assert "vaecodec vs JPEG" not in res.output   # the anchored line already says it


# -- benchmarks/validation.py -----------------------------------------------------------------

def load_validation_script():
    """benchmarks/validation.py as a module (it is a script, not part of the package)."""
    import importlib.util
    from conftest import ROOT
    spec = importlib.util.spec_from_file_location("validation", ROOT / "benchmarks" / "validation.py")
    validation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(validation)
    return validation


def test_validation_script_scores_real_files_and_caches_by_weights(tmp_path):
    from conftest import ROOT
    from vaecodec import codec
    validation = load_validation_script()
    data = tmp_path / "train"
    data.mkdir()
    for i, name in enumerate(("astronaut", "coffee")):   # every 40th file: img0 is held out
        sample(name, (0, 0, 128, 96)).save(data / f"img{i}.png")
    held_out = np.asarray(Image.open(data / "img0.png"))
    weights_dir = str(ROOT / "weights")
    args = [weights_dir, weights_dir, "--data", str(data), "--qualities", "1,8",
            "--cache", str(tmp_path / "cache")]
    result = CliRunner().invoke(validation.main, args)
    assert result.exit_code == 0, result.output
    ref, same = result.stdout.strip().splitlines()   # progress bars go to stderr
    for q in (1, 8):   # the curve is the file's size and PSNR, measured independently here
        coded = codec.compress_array(held_out, quality=q)
        bpp = 8 * len(coded) / (96 * 128)
        psnr = metrics.psnr_rgb(held_out, codec.decompress_array(coded).rgb)
        assert f"q{q} {bpp:.4f}/{psnr:.2f}" in ref
    assert "(reference)" in ref and "BD-rate vs reference +0.00 %" in same
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1   # same weights, one curve
    other = tmp_path / "other"   # same file names, other pixels: measured, not read from the cache
    other.mkdir()
    sample("coffee", (0, 0, 128, 96)).save(other / "img0.png")
    result = CliRunner().invoke(validation.main, [weights_dir, "--data", str(other), "--qualities",
                                                  "1,8", "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 0 and result.stdout.split(":", 1)[1] != ref.split(":", 1)[1]
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2
    for qualities in ("4", "1,1", "0,8", "a,b"):
        bad = CliRunner().invoke(validation.main, [weights_dir, "--data", str(data), "--qualities",
                                                   qualities])
        assert bad.exit_code == 2 and "Invalid value for --qualities" in bad.output, qualities
    bad = CliRunner().invoke(validation.main, [weights_dir, "--data", str(tmp_path / "cache")])
    assert bad.exit_code == 1 and bad.output.startswith("Error: no images in")


def test_validation_groups_images_by_source_and_averages_each_group():
    from pathlib import Path
    validation = load_validation_script()
    files = [Path(n) for n in ("bsds500_test_1.jpg", "urban100_img_021.png", "bsds500_val_2.jpg", "kodim")]
    groups = validation.source_groups(files)
    assert groups == {"bsds500": [0, 2], "urban100": [1], "kodim": [3]}
    result = {"image_bpp": [[0.1, 0.5, 0.3, 9.0], [1.0, 2.0, 3.0, 9.0]],
              "image_psnr": [[20.0, 30.0, 22.0, 0.0], [30.0, 40.0, 32.0, 0.0]]}
    assert validation.subset(result, groups["bsds500"]) == {"bpp": [pytest.approx(0.2), 2.0],
                                                            "psnr": [21.0, 31.0]}


# -- benchmarks/ceiling.py --------------------------------------------------------------------

def test_ceiling_script_reports_the_unrounded_reconstruction_above_the_file(tmp_path):
    import importlib.util
    from conftest import ROOT
    from vaecodec import codec
    spec = importlib.util.spec_from_file_location("ceiling", ROOT / "benchmarks" / "ceiling.py")
    ceiling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ceiling)
    data = tmp_path / "eval"
    data.mkdir()
    image = sample("astronaut", (0, 0, 160, 96))   # not a multiple of 64: padding is cropped
    image.save(data / "a.png")
    rgb = np.asarray(image)
    result = CliRunner().invoke(ceiling.main, [str(ROOT / "weights"), "--data", str(data), "--all-images"])
    assert result.exit_code == 0, result.output
    coded = codec.compress_array(rgb, quality=8)
    file_db = metrics.psnr_rgb(rgb, codec.decompress_array(coded).rgb)
    model = codec.get_model()
    ceiling_db = metrics.psnr_rgb(rgb, ceiling.unrounded(model, rgb, 8))
    assert f"unrounded {ceiling_db:.2f} dB; file {8 * len(coded) / (96 * 160):.3f} bpp / {file_db:.2f} dB" in result.output
    assert ceiling_db > file_db + 0.3 and file_db > 30   # rounding costs; the top quality is high
    bad = CliRunner().invoke(ceiling.main, [str(ROOT / "weights"), "--data", str(tmp_path / "none")])
    assert bad.exit_code == 2   # click: no such folder
    (tmp_path / "empty").mkdir()
    bad = CliRunner().invoke(ceiling.main, [str(ROOT / "weights"), "--data", str(tmp_path / "empty")])
    assert bad.exit_code == 1 and bad.output.startswith("Error: ")
