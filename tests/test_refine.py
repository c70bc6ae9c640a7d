"""Encoder-side latent refinement (vaecodec.refine): smaller RD cost, same decoder, clear errors."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import ROOT, photo_crop
from vaecodec import benchmark, cli, codec, refine, weights
from vaecodec.metrics import mse_rgb


@pytest.fixture(scope="module")
def refining_model():
    return codec.get_model(refine=True)


def test_sga_round_lies_between_floor_and_ceiling_and_anneals_to_rounding():
    v = torch.linspace(-3.2, 3.2, 1001, requires_grad=True)
    gen = torch.Generator().manual_seed(1)
    soft = refine.sga_round(v, 0.5, gen)
    assert torch.all(soft >= torch.floor(v)) and torch.all(soft <= torch.floor(v) + 1)
    assert not torch.equal(soft, torch.round(v))   # warm: a soft draw, not rounding
    soft.sum().backward()
    assert v.grad.abs().sum() > 0                  # differentiable in v
    cold = refine.sga_round(v.detach(), 1e-3, gen)
    away_from_half = (v.detach() - torch.floor(v.detach()) - 0.5).abs() > 0.05
    assert torch.allclose(cold[away_from_half], torch.round(v.detach())[away_from_half], atol=1e-6)
    assert refine.temperature(0, 30) == refine.TAU_START
    assert refine.temperature(29, 30) == pytest.approx(refine.TAU_END)


def test_model_lmbda_follows_the_ladder_and_interpolates_geometrically(model):
    ladder = [float(v) for v in model.model.lambdas]
    assert model.lmbda(1) == pytest.approx(ladder[0]) and model.lmbda(8) == pytest.approx(ladder[7])
    assert model.lmbda(3.5) == pytest.approx((ladder[2] * ladder[3]) ** 0.5)
    with pytest.raises(ValueError):
        model.lmbda(8.5)


def _cost(rgb, data, lmbda):
    """Real rate-distortion cost of a file: bpp from its size + λ·MSE (0..255 values)."""
    decoded = codec.decompress_array(data, model=codec.get_model(encoder=False)).rgb
    return 8 * len(data) / (rgb.shape[0] * rgb.shape[1]) + lmbda * mse_rgb(rgb, decoded)


def test_refinement_lowers_the_real_rate_distortion_cost(refining_model):
    rgb = photo_crop(128, 192, seed=40)
    for quality in (2.0, 6.0):
        plain = codec.compress_array(rgb, quality, model=refining_model)
        refined = codec.compress_array(rgb, quality, model=refining_model, refine=30)
        lmbda = refining_model.lmbda(quality)
        # measured on files: bits from the file size, distortion from the decoded pixels
        assert _cost(rgb, refined, lmbda) < 0.985 * _cost(rgb, plain, lmbda)   # measured 0.97


def test_refined_file_is_an_ordinary_file_reproducible_and_counted_in_progress(refining_model):
    rgb = photo_crop(64, 128, seed=3)
    calls = []
    a = codec.compress_array(rgb, 4.0, model=refining_model, refine=4, progress=calls.append)
    assert len(calls) == codec.work_units(64, 128, refine=4) == 5
    b = codec.compress_array(rgb, 4.0, model=refining_model, refine=4)
    assert a == b                                          # seeded: the same bytes again
    assert a != codec.compress_array(rgb, 4.0, model=refining_model)   # refinement changed them
    # the plain decoder reads it, bit-exact on every decode
    decoder = codec.get_model(encoder=False)
    first = codec.decompress_array(a, model=decoder).rgb
    assert first.shape == rgb.shape
    assert np.array_equal(first, codec.decompress_array(a, model=decoder).rgb)
    # refine=0 is exactly the plain encoder
    assert codec.compress_array(rgb, 4.0, model=refining_model, refine=0) == \
        codec.compress_array(rgb, 4.0, model=codec.get_model())


def test_refinement_leaves_the_model_untouched(refining_model):
    before = {k: v.clone() for k, v in refining_model.model.state_dict().items()}
    flags = [p.requires_grad for p in refining_model.model.parameters()]
    codec.compress_array(photo_crop(64, 64), 3.0, model=refining_model, refine=2)
    assert all(torch.equal(before[k], v) for k, v in refining_model.model.state_dict().items())
    assert [p.requires_grad for p in refining_model.model.parameters()] == flags


def test_refine_needs_the_float_entropy_model_and_a_valid_step_count():
    rgb = photo_crop(64, 64)
    with pytest.raises(codec.CodecError, match="float entropy model"):
        codec.compress_array(rgb, 4.0, model=codec.get_model(), refine=3)
    for bad in (-1, codec.MAX_REFINE + 1, 2.5, True, "3"):
        with pytest.raises(codec.CodecError, match="refine must be"):
            codec.compress_array(rgb, 4.0, model=codec.get_model(), refine=bad)
    assert cli.MAX_REFINE == codec.MAX_REFINE
    with pytest.raises(ValueError, match="float entropy model"):   # the model-level call too
        refine.refine_latents(codec.get_model(), torch.rand(1, 3, 64, 64), 4.0, steps=2)


def test_load_for_refinement_needs_the_training_file_of_the_same_export(tmp_path):
    d = tmp_path / "w"
    shutil.copytree(weights.default_weights_dir(), d)
    (d / weights.TRAINING_FILE).unlink()
    weights.load(d)                               # plain encoding does not need it
    with pytest.raises(weights.WeightsError, match="not found"):
        weights.load(d, refine=True)
    # a training file of another export is refused
    src = weights.load_float_model(weights.default_weights_dir())[0]
    other = tmp_path / "other"
    torch.manual_seed(0)
    with torch.no_grad():
        src.g_s[0].weight.add_(0.01 * torch.randn_like(src.g_s[0].weight))   # a different decoder
    weights.export(src, other)
    shutil.copy(other / weights.TRAINING_FILE, d / weights.TRAINING_FILE)
    with pytest.raises(weights.WeightsError, match="different exports"):
        weights.load(d, refine=True)


def test_cli_compress_refine(tmp_path, photo_path):
    from PIL import Image
    src = tmp_path / "small.png"
    Image.open(photo_path).convert("RGB").crop((0, 0, 96, 64)).save(src)
    runner = CliRunner()
    plain = runner.invoke(cli.main, ["compress", str(src), str(tmp_path / "a.vae")])
    refined = runner.invoke(cli.main, ["compress", "--refine", "5", str(src), str(tmp_path / "b.vae")])
    assert plain.exit_code == 0 and refined.exit_code == 0, refined.output
    assert (tmp_path / "a.vae").read_bytes() != (tmp_path / "b.vae").read_bytes()
    out = runner.invoke(cli.main, ["decompress", str(tmp_path / "b.vae"), str(tmp_path / "b.png")])
    assert out.exit_code == 0 and Image.open(tmp_path / "b.png").size == (96, 64)
    for bad in ("-1", "1001", "x"):
        res = runner.invoke(cli.main, ["compress", "--refine", bad, str(src), str(tmp_path / "c.vae")])
        assert res.exit_code == 2 and "--refine" in res.output and not (tmp_path / "c.vae").exists()


def test_benchmark_measures_refined_vaecodec_head_to_head(tmp_path, monkeypatch):
    from PIL import Image
    from skimage import data
    d = tmp_path / "tiny"
    d.mkdir()
    Image.fromarray(data.astronaut()[100:196, 40:168]).save(d / "a.png")
    monkeypatch.setattr(benchmark.VaeCodecRefined, "refine_steps", 3)   # keep the test short
    assert benchmark.parse_codecs("vaecodec-refine") == ["vaecodec-refine"]
    assert "vaecodec-refine" not in benchmark.DEFAULT_CODECS
    res = benchmark.run_benchmark(d, ["vaecodec", "vaecodec-refine", "jpeg"], tmp_path / "o",
                                  progress=False)
    assert res["errors"] == []
    curves = {e["codec"]: e["results"] for e in res["results"]}
    assert curves["vaecodec-refine"]["bpp"] != curves["vaecodec"]["bpp"]
    h2h = res["head_to_head_refined"]
    assert set(h2h) == {"vaecodec", "jpeg"}
    report = (tmp_path / "o" / "report.md").read_text()
    assert f"## vaecodec --refine {benchmark.REFINE_STEPS} head to head" in report
    assert f"| JPEG | {h2h['jpeg']['bd_rate_psnr_pct']:+.1f} |" in report


def test_damaged_float_weights_fall_back_to_the_plain_latents(refining_model):
    rgb = photo_crop(64, 64, seed=5)
    plain = codec.compress_array(rgb, 4.0, model=refining_model)
    weight = refining_model.model.h_s[0].weight
    kept = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.fill_(float("nan"))   # an export without checksums could hold this
        assert codec.compress_array(rgb, 4.0, model=refining_model, refine=3) == plain
    finally:
        with torch.no_grad():
            weight.copy_(kept)


def test_benchmark_where_every_codec_fails_writes_nothing(tmp_path, monkeypatch):
    import click
    from PIL import Image
    d = tmp_path / "tiny"
    d.mkdir()
    Image.fromarray(photo_crop(64, 64)).save(d / "a.png")

    def broken(self, image, quality):
        raise RuntimeError("no float weights")
    monkeypatch.setattr(benchmark.VaeCodecRefined, "encode", broken)
    with pytest.raises(click.ClickException, match="nothing was measured"):
        benchmark.run_benchmark(d, ["vaecodec-refine"], tmp_path / "o", progress=False)
    assert not (tmp_path / "o" / "report.md").exists()


def test_refinement_spends_nothing_on_the_padding(refining_model):
    """Only the image counts, not the padding up to a multiple of 64 (here: noise, the worst
    case): refining for the image alone gives a lower cost on the image."""
    m = refining_model
    rgb = photo_crop(128, 128, seed=40)
    x = torch.rand(1, 3, 128, 192, generator=torch.Generator().manual_seed(0))
    x[:, :, :, :128] = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    lmbda = m.lmbda(2.0)

    def cost(size):
        s = m.code_latents(*refine.refine_latents(m, x, 2.0, 20, size=size))
        bits = 8 * sum(len(s[k]) for k in ("z_stream", "y_stream", "escapes"))
        x_hat = torch.round(m.decompress(s, 2.0)[:, :, :, :128].clamp(0, 1) * 255)
        return bits / 128**2 + lmbda * float(((x_hat - x[:, :, :, :128] * 255) ** 2).mean())

    assert cost((128, 128)) < 0.95 * cost(None)   # measured 0.84


def test_learning_rate_keeps_the_step_budget():
    assert refine.learning_rate(30) == pytest.approx(0.01)      # the tuned 30-step setting
    assert refine.learning_rate(60) == pytest.approx(0.005)
    assert refine.learning_rate(100) == pytest.approx(0.003)
    assert refine.learning_rate(5) == refine.MAX_LEARNING_RATE  # few steps: capped


@pytest.mark.parametrize("size", [(100, 64), (64, 65), (0, 64), (-1, -1), (1.5, 2), (64,), (32, 32, 3)])
def test_refine_refuses_a_size_that_is_not_inside_x(refining_model, size):
    with pytest.raises(ValueError, match="size must be"):
        refine.refine_latents(refining_model, torch.rand(1, 3, 64, 64), 4.0, steps=1, size=size)


def test_zero_steps_code_the_analysis_transforms_latents(model):
    """``refine_latents`` with no steps returns :meth:`analyse`'s latents, and
    :meth:`compress` codes exactly those: the plain and the refining path share one coder."""
    x = torch.from_numpy(photo_crop(64, 128)).permute(2, 0, 1)[None].float() / 255
    y, z = refine.refine_latents(model, x, 3.5, 0)
    y0, z0 = model.analyse(x, 3.5)
    assert y.shape == (1, model.M, 4, 8) and z.shape == (1, model.N, 1, 2)
    assert torch.equal(y, y0) and torch.equal(z, z0)
    assert model.compress(x, 3.5) == model.code_latents(y, z)


def test_windowed_refinement_has_the_whole_images_loss_and_gradient(refining_model, monkeypatch):
    """Latents too large to differentiate in one piece are refined window by window: the loss
    and its gradients are those of the whole image (float32, a deterministic quantiser)."""
    from vaecodec.entropy import bits
    monkeypatch.setattr(refine, "WINDOW_CORE", 8)   # 128-px cores: 2x3 windows on this image
    m = refining_model.model
    x = torch.from_numpy(photo_crop(256, 384, seed=7)).permute(2, 0, 1)[None].float() / 255
    y0, z0 = refining_model.analyse(x, 4.0)
    inv_gain = m.gains(4.0)[1].detach()[:, None, None]
    lmbda, h, w = m.lmbda(4.0), 250, 370   # the image inside the padded x
    image = x[:, :, :h, :w]
    identity = lambda v: (v, v)   # noqa: E731 (no rounding: the loss is smooth and the same every call)
    frozen = [p for p in m.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        results = []
        for windowed in (False, True):
            y, z = y0.clone().requires_grad_(True), z0.clone().requires_grad_(True)
            z_tilde = z + 0.3
            if windowed:
                loss = refine._windowed_backward(m, image, y, z_tilde, inv_gain, lmbda, identity, False)
            else:
                y_in, likelihoods = m.latents(y, m.h_s(z_tilde), quantize=identity)
                x_hat = m.g_s(y_in * inv_gain)[:, :, :h, :w]
                loss = (bits(m.prior.likelihood(z_tilde)) + bits(likelihoods)) / (h * w) \
                    + lmbda * 255.0 ** 2 * torch.mean((x_hat - image) ** 2)
                loss.backward()
            results.append((loss.item(), y.grad, z.grad))
    finally:
        for p in frozen:
            p.requires_grad_(True)
    (whole, gy, gz), (windows, wy, wz) = results
    assert windows == pytest.approx(whole, rel=1e-5)
    assert float((wy - gy).norm() / gy.norm()) < 2e-3   # measured 4e-4
    assert float((wz - gz).norm() / gz.norm()) < 2e-3   # measured 2e-5


def test_windowed_refinement_lowers_the_real_rate_distortion_cost(refining_model, monkeypatch):
    monkeypatch.setattr(refine, "WHOLE_LATENTS", 4)   # this 128x256 image in two 128-px windows
    monkeypatch.setattr(refine, "WINDOW_CORE", 8)
    rgb = photo_crop(128, 256, seed=40)
    plain = codec.compress_array(rgb, 3.0, model=refining_model)
    refined = codec.compress_array(rgb, 3.0, model=refining_model, refine=10)
    lmbda = refining_model.lmbda(3.0)
    # measured 0.982, as refining it in one piece (0.981)
    assert _cost(rgb, refined, lmbda) < 0.99 * _cost(rgb, plain, lmbda)


def test_refined_large_images_keep_one_set_of_latents():
    """Refinement codes a large photo's latents as one set, as plain coding does; only images
    over 33.5 megapixels are cut into independent tiles."""
    for refine_steps in (0, 30):
        assert codec._geometry(3024, 4032, refine_steps) == (0, 0)
        assert codec.tile_count(3024, 4032, refine_steps) == 1
        assert codec.work_units(3024, 4032, refine_steps) == refine_steps + 1
        assert codec._geometry(4400, 8000, refine_steps) == (codec.TILE, codec.OVERLAP)


@pytest.mark.parametrize("windowed", [False, True])
def test_uint8_pixels_refine_to_the_same_latents_as_float(refining_model, monkeypatch, windowed):
    """The codec hands refinement its pixels as uint8 (a quarter of the memory of an 8K
    image's floats while the latents are refined); each window is made float as the codec
    would have made the whole image, so the latents are exactly the float path's."""
    if windowed:
        monkeypatch.setattr(refine, "WHOLE_LATENTS", 4)
        monkeypatch.setattr(refine, "WINDOW_CORE", 8)
    pixels = torch.from_numpy(photo_crop(128, 256, seed=41)).permute(2, 0, 1)[None]
    as_float = refine.refine_latents(refining_model, pixels.float() / 255, 3.0, 3, size=(120, 250))
    as_uint8 = refine.refine_latents(refining_model, pixels, 3.0, 3, size=(120, 250))
    assert pixels.dtype == torch.uint8
    for a, b in zip(as_float, as_uint8):
        assert torch.equal(a, b)
    start = refining_model.analyse(pixels.float() / 255, 3.0)[0]
    assert not torch.equal(as_uint8[0], start)   # the steps did move the latents
