"""Channel-wise autoregressive entropy model (Minnen & Singh 2020): slices of ``y`` coded one
after another, each with a context of the slices before it, exactly reproducible at decode time.

A small model (N=16, M=24, 4 slices) with random, non-zero context and LRP networks is exported
and loaded like the shipped weights, so these tests cover the slice path whatever the shipped
weights hold.
"""
import numpy as np
import pytest
import torch

from vaecodec import codec, weights
from vaecodec.model import MeanScaleHyperprior
from vaecodec.train import TrainConfig, load_state
from conftest import assert_decoder_file_is_checked, assert_exact_in_float64, photo_crop, randomised, tile_streams



@pytest.fixture(scope="module")
def sliced_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sliced")
    weights.export(randomised(MeanScaleHyperprior(16, 24, slices=4)), folder)
    return folder


@pytest.fixture(scope="module")
def sliced(sliced_dir):
    return weights.load(sliced_dir)


@pytest.fixture(scope="module")
def coded(sliced):
    rgb = photo_crop(128, 192, seed=1)
    return rgb, codec.compress_array(rgb, 5.0, model=sliced)



def test_export_load_keeps_slices(sliced):
    assert sliced.slices == 4 and len(sliced.context) == 3 and len(sliced.model.lrp) == 4


def test_round_trip_and_exact_latents_under_thread_counts(sliced, coded):
    rgb, data = coded
    digest = codec.latent_digest(data, sliced)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert codec.latent_digest(data, sliced) == digest
    finally:
        torch.set_num_threads(threads)
    decoded = codec.decompress_array(data, model=sliced).rgb
    assert decoded.shape == rgb.shape and decoded.dtype == np.uint8
    assert codec.compress_array(rgb, 5.0, model=sliced) == data     # the encoder is deterministic


def test_exact_slices_match_the_float_model(sliced, sliced_dir, coded):
    """The exact (integer) path decodes what the float training model quantises: ``y_hat``
    equal to 1e-3 nearly everywhere (fixed-point rounding of a mean may move a rare symbol)."""
    rgb, data = coded
    model, _ = weights.load_float_model(sliced_dir)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    gain, _ = model.gains(5.0)
    with torch.no_grad():
        y = model.g_a(x) * gain[:, None, None]
        z_hat = torch.round(model.h_a(y))
        hyper = model.h_s(z_hat)
        y_float, _ = model.latents(y, hyper, noisy=False)
        _, y_exact = sliced.decode_latents(tile_streams(data))
        means = hyper.chunk(2, 1)[0].chunk(4, 1)
        decoded = list(y_exact.chunk(4, 1))
        y_exact = torch.cat([d + model.residual(i, means[i], decoded[:i + 1])
                             for i, d in enumerate(decoded)], 1)
    assert ((y_float - y_exact).abs() < 1e-3).float().mean() > 0.99


def test_context_changes_the_code(sliced_dir, coded, tmp_path):
    """With the context networks zeroed the same model writes a different y stream: slices
    1..3 really are coded with the context's parameters."""
    rgb, data = coded
    plain, _ = weights.load_float_model(sliced_dir)
    with torch.no_grad():
        for net in plain.context:
            for p in net[-1].parameters():
                p.zero_()
    weights.export(plain, tmp_path)
    plain_data = codec.compress_array(rgb, 5.0, model=weights.load(tmp_path))
    assert tile_streams(plain_data)["z_stream"] == tile_streams(data)["z_stream"]
    assert tile_streams(plain_data)["y_stream"] != tile_streams(data)["y_stream"]


def test_context_accumulators_are_exact_in_float64(sliced):
    """Inputs ``<= 2**11 * 2**8``, hidden activations ``<= 2**24``, weights ``<= 2**13``:
    every accumulator stays below 2**53, so float64 evaluation is exact."""
    assert_exact_in_float64(sliced.context)


def test_damaged_y_stream_is_refused(sliced, coded):
    from vaecodec.entropy import EntropyCodingError
    s = tile_streams(coded[1])
    s["y_stream"] = s["y_stream"][:-4]
    with pytest.raises(EntropyCodingError):
        sliced.decode_latents(s)


def test_new_slices_start_as_the_plain_hyperprior():
    """A channel-context model initialised from a plain hyperprior computes the same function
    (the new networks' last layers are zero), so training resumes where it was."""
    torch.manual_seed(1)
    plain = MeanScaleHyperprior(16, 24, slices=1)
    sliced = MeanScaleHyperprior(16, 24, slices=4)
    with pytest.raises(RuntimeError):
        load_state(sliced, plain.state_dict())
    load_state(sliced, plain.state_dict(), new_slices_ok=True)
    x, level = torch.rand(2, 3, 64, 64), torch.tensor([0, 7])
    assert torch.allclose(plain(x, level).x_hat, sliced(x, level).x_hat, atol=1e-6)
    y = torch.randn(2, 24, 8, 8) * 5
    hyper = torch.randn(2, 48, 8, 8)
    for a, b in zip(plain.latents(y, hyper, noisy=False),
                                          sliced.latents(y, hyper, noisy=False)):
        assert torch.allclose(a, b, atol=1e-6)


def test_slices_must_divide_the_latent_channels():
    with pytest.raises(ValueError, match="slices"):
        MeanScaleHyperprior(16, 24, slices=5)
    with pytest.raises(ValueError, match="slices"):
        TrainConfig(data="d", M=24, slices=5)
    with pytest.raises(ValueError, match="slices"):
        TrainConfig(data="d", slices=0)


def test_context_file_belongs_to_its_export(sliced_dir, tmp_path):
    """The decoder half of context.safetensors is covered by the fingerprint: a context file
    of another export, or a changed LRP weight, is refused; a plain export removes a stale one."""
    from vaecodec.weights import CONTEXT_FILE
    other = tmp_path / "other"
    torch.manual_seed(5)
    weights.export(randomised(MeanScaleHyperprior(16, 24, slices=4), seed=5), other)
    assert_decoder_file_is_checked(sliced_dir, other, CONTEXT_FILE, "lrp.0.4.bias", tmp_path)
    weights.export(MeanScaleHyperprior(16, 24, slices=1), other)
    assert not (other / CONTEXT_FILE).exists() and weights.load(other).slices == 1


def test_export_writes_all_files_or_none(sliced_dir, tmp_path, monkeypatch):
    import shutil
    folder = tmp_path / "w"
    shutil.copytree(sliced_dir, folder)
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    real_save = weights.save_file

    def fail_on_context(tensors, path, metadata=None):   # the last file written: a full disk
        if "context" in path:
            raise OSError(28, "No space left on device")
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(weights, "save_file", fail_on_context)
    with pytest.raises(weights.WeightsError, match="cannot write .*context.safetensors: No space left on device"):
        weights.export(randomised(MeanScaleHyperprior(16, 24, slices=4), seed=9), folder)
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before   # no .tmp left either
    monkeypatch.setattr(weights, "save_file", real_save)
    monkeypatch.setattr(weights, "MAX_FILE_BYTES", max(f.stat().st_size for f in folder.glob("*.safetensors")) // 2)
    with pytest.raises(weights.WeightsError, match="exceed 16 MiB"):
        weights.export(randomised(MeanScaleHyperprior(16, 24, slices=4), seed=9), folder)
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before
