"""Growing the latent channels M of a trained model (``vaecodec train --init ... --M`` larger):
the widened model codes the same images to the same pictures at almost the same size, and its
new channels receive gradients, so training can put them to use."""
import numpy as np
import pytest
import torch
from contextlib import nullcontext

from vaecodec import codec, weights
from vaecodec.model import MeanScaleHyperprior
from vaecodec.train import TrainConfig, TrainingError, check_architecture, load_state, rd_loss
from vaecodec.widen import latent_channels, widen_state
from conftest import photo_crop, randomised


def trained_like(M=24, slices=4, seed=0):
    """A small model with random gains and non-zero context/LRP/checkerboard/block outputs."""
    torch.manual_seed(seed)
    model = randomised(MeanScaleHyperprior(16, M, slices=slices, checkerboard=True, blocks=1), seed)
    with torch.no_grad():
        model.log_gain.add_(0.3 * torch.randn_like(model.log_gain))
        model.log_inv_gain.add_(0.3 * torch.randn_like(model.log_inv_gain))
    return model.eval()


def widened(old, M):
    new = MeanScaleHyperprior(old.N, M, slices=old.slices, checkerboard=old.checkerboard,
                              blocks=old.blocks)
    load_state(new, old.state_dict(), new_slices_ok=True)
    return new.eval()


def rounded_pass(model, x, quality):
    """Deterministic rounding as the coder sees it: reconstruction and per-latent bits."""
    with torch.no_grad():
        gain, inv_gain = model.gains(quality)
        y = model.g_a(x) * gain[None, :, None, None]
        y_hat, likelihoods = model.latents(y, model.h_s(torch.round(model.h_a(y))), noisy=False)
        return model.g_s(y_hat * inv_gain[None, :, None, None]), -torch.log2(likelihoods), y


@pytest.mark.parametrize("quality", [1, 8])
def test_widened_model_computes_the_same_function(quality):
    old = trained_like()
    new = widened(old, 36)                 # 4 slices: 6 -> 9 channels each
    x = torch.rand(2, 3, 128, 128)
    x_old, bits_old, _ = rounded_pass(old, x, quality)
    x_new, bits_new, y_new = rounded_pass(new, x, quality)
    assert torch.allclose(x_old, x_new, atol=1e-5)
    kept = (torch.arange(24) // 6) * 9 + torch.arange(24) % 6     # old channels, slice by slice
    added = torch.ones(36, dtype=torch.bool)
    added[kept] = False
    assert torch.allclose(bits_old, bits_new[:, kept], rtol=1e-4, atol=1e-5)
    assert float(bits_old.sum()) > 100
    assert torch.count_nonzero(y_new[:, added]) == 0
    assert float(bits_new[:, added].max()) < 1e-4     # the new latents cost (almost) nothing
    assert latent_channels(new.state_dict()) == 36


def test_widened_export_decodes_the_same_picture(tmp_path):
    old = trained_like(seed=1)
    weights.export(old, tmp_path / "old")
    weights.export(widened(old, 32), tmp_path / "new")
    rgb = photo_crop(128, 192, seed=3)
    for quality in (2.0, 7.0):
        files = {}
        for name in ("old", "new"):
            model = weights.load(tmp_path / name)
            data = codec.compress_array(rgb, quality, model=model)
            files[name] = (len(data), codec.decompress_array(data, model=model).rgb.astype(int))
        assert weights.load(tmp_path / "new").M == 32
        (size_old, rgb_old), (size_new, rgb_new) = files["old"], files["new"]
        assert np.abs(rgb_old - rgb_new).max() <= 1 and np.mean(rgb_old != rgb_new) < 0.01
        assert size_old <= size_new <= size_old * 1.02 + 16


def test_new_channels_get_gradients():
    new = widened(trained_like(seed=2), 32).train()
    x = torch.rand(2, 3, 64, 64)
    rd_loss(new, x, torch.tensor([3, 7]), nullcontext())["loss"].backward()
    added = torch.ones(32, dtype=torch.bool)
    added[(torch.arange(24) // 6) * 8 + torch.arange(24) % 6] = False
    conv = list(new.g_a.children())[-1]           # the analysis transform's output layer
    assert float(conv.weight.detach()[added].abs().sum()) == 0          # new rows start at zero...
    assert float(conv.weight.grad[added].abs().sum()) > 0      # ...and are trained


def test_widening_only_grows_by_whole_channels_per_slice():
    old = trained_like()
    with pytest.raises(RuntimeError, match="M=24 .* M=16"):
        widened(old, 16)
    with pytest.raises(RuntimeError, match="M=24 .* M=30 in 5 slices"):
        load_state(MeanScaleHyperprior(16, 30, slices=5), old.state_dict(), new_slices_ok=True)
    with pytest.raises(RuntimeError):     # a resume never widens
        load_state(MeanScaleHyperprior(16, 32, slices=4, checkerboard=True, blocks=1), old.state_dict())
    state = old.state_dict()
    assert widen_state(state, old) is state       # same M: nothing to do


def test_init_may_widen_resume_may_not():
    cfg = TrainConfig(data="d", N=16, M=32, slices=4, blocks=1)
    saved = {"N": 16, "M": 24, "slices": 4, "checkerboard": True, "blocks": 1}
    check_architecture("old", saved, cfg, init=True)
    with pytest.raises(TrainingError, match="pass --N 16 --M 24 --slices 4"):
        check_architecture("old", saved, cfg, init=False)
    with pytest.raises(TrainingError, match="pass --N 16 --M 40 --slices 4"):   # never narrower
        check_architecture("old", {**saved, "M": 40}, cfg, init=True)
    with pytest.raises(TrainingError, match="pass --N 16 --M 30 --slices 3"):   # slices stay
        check_architecture("old", {**saved, "M": 30, "slices": 3}, cfg, init=True)
