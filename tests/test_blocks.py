"""Residual bottleneck blocks in the analysis and synthesis transforms (ELIC, He et al. 2022):
new blocks start as the identity, so ``--init`` can add them to a trained model; their
weights travel with the export (under the fingerprint on the decoder side) and a metadata
``blocks`` that does not match the tensors is refused."""
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vaecodec import codec, weights
from vaecodec.model import MeanScaleHyperprior
from vaecodec.train import TrainConfig, TrainingError, check_architecture, load_state
from vaecodec.transforms import ResidualBottleneck
from vaecodec.weights import SYNTHESIS_FILE, WeightsError
from conftest import assert_extends, photo_crop, randomised


@pytest.fixture(scope="module")
def blocks_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("blocks")
    weights.export(randomised(MeanScaleHyperprior(16, 24, slices=4, checkerboard=True, blocks=2)),
                   folder)
    return folder


def test_blocks_sit_at_quarter_and_eighth_resolution():
    model = MeanScaleHyperprior(16, 24, blocks=2)
    names = [n for n, m in model.named_modules() if isinstance(m, ResidualBottleneck)]
    assert names == ["g_a.res3_0", "g_a.res3_1", "g_a.res5_0", "g_a.res5_1",
                     "g_s.res1_0", "g_s.res1_1", "g_s.res3_0", "g_s.res3_1"]
    x = torch.rand(1, 16, 8, 8)
    block = ResidualBottleneck(16)
    assert torch.equal(block(x), x)     # a new block is the identity
    with pytest.raises(ValueError, match="blocks"):
        MeanScaleHyperprior(16, 24, blocks=-1)


def test_new_blocks_start_as_the_model_they_extend():
    torch.manual_seed(3)
    old = randomised(MeanScaleHyperprior(16, 24, slices=4, checkerboard=True))
    new = MeanScaleHyperprior(16, 24, slices=4, checkerboard=True, blocks=3)
    assert_extends(old, new, levels=(0, 7))
    with pytest.raises(RuntimeError):    # never the other way: trained blocks are not dropped
        load_state(old, new.state_dict(), new_slices_ok=True)


def test_init_may_add_blocks_resume_may_not():
    cfg = TrainConfig(data="d", N=16, M=24, slices=4, blocks=2)
    saved = {"N": 16, "M": 24, "slices": 4, "checkerboard": True}     # a checkpoint from before blocks
    check_architecture("old", saved, cfg, init=True)
    with pytest.raises(TrainingError, match=r"this run asks for --N 16 --M 24 --slices 4 --blocks 2 "
                                            r"--checkerboard; pass --N 16 --M 24 --slices 4 --blocks 0 --checkerboard$"):
        check_architecture("old", saved, cfg, init=False)
    with pytest.raises(TrainingError, match="pass --N 16 --M 24 --slices 4 --blocks 3 --checkerboard"):
        check_architecture("old", {**saved, "blocks": 3}, cfg, init=True)
    for bad in (-1, 17):
        with pytest.raises(ValueError, match="blocks"):
            TrainConfig(data="d", blocks=bad)


def test_cli_bounds_blocks_like_the_model():
    from click.testing import CliRunner
    from vaecodec.cli import main
    from vaecodec.model import MAX_BLOCKS
    runner = CliRunner()
    for bad in (-1, MAX_BLOCKS + 1):
        result = runner.invoke(main, ["train", "--data", ".", "--blocks", str(bad)])
        assert result.exit_code == 2 and f"0<=x<={MAX_BLOCKS}" in result.output


def test_export_load_round_trip_with_blocks(blocks_dir):
    model = weights.load(blocks_dir)
    assert model.blocks == 2 and model.checkerboard
    with safe_open(str(blocks_dir / SYNTHESIS_FILE), "pt") as f:
        assert f.metadata()["blocks"] == "2"
        assert any(k.startswith("g_s.res3_1.") for k in f.keys())
    float_model, _ = weights.load_float_model(blocks_dir)
    assert float(float_model.g_s.res3_1.net[-1].weight.detach().abs().sum()) > 0
    rgb = photo_crop(128, 192, seed=2)
    data = codec.compress_array(rgb, 5.0, model=model)
    decoded = codec.decompress_array(data, model=model).rgb
    assert decoded.shape == rgb.shape
    assert codec.compress_array(rgb, 5.0, model=model) == data


def test_block_weights_are_under_the_fingerprint(blocks_dir, tmp_path):
    """A changed synthesis block changes the fingerprint; metadata that hides the blocks is
    refused instead of decoding with a transform the file was not written for."""
    torch.manual_seed(0)
    changed = randomised(MeanScaleHyperprior(16, 24, slices=4, checkerboard=True, blocks=2), seed=1)
    fp_changed = weights.export(changed, tmp_path / "changed")
    assert fp_changed != weights.load(blocks_dir).fingerprint
    lying = tmp_path / "lying"
    shutil.copytree(blocks_dir, lying)
    for fname in ("synthesis.safetensors", "analysis.safetensors", "context.safetensors",
                  "spatial.safetensors", "training.safetensors"):
        with safe_open(str(lying / fname), "pt") as f:
            meta = {**f.metadata(), "blocks": "0"}
        save_file(load_file(str(lying / fname)), str(lying / fname), metadata=meta)
    with pytest.raises(WeightsError, match="do not match the shape in their metadata"):
        weights.load(lying)
    with pytest.raises(WeightsError, match="do not match the shape in their metadata"):
        weights.load_float_model(lying)   # --init would otherwise drop the trained blocks
    with safe_open(str(lying / "training.safetensors"), "pt") as f:
        meta = {**f.metadata(), "fingerprint": "0" * 16}
    save_file(load_file(str(lying / "training.safetensors")), str(lying / "training.safetensors"),
              metadata=meta)
    with pytest.raises(WeightsError, match="weights files of different exports"):
        weights.load_float_model(lying)


def test_absurd_blocks_in_metadata_are_refused(blocks_dir, tmp_path):
    lying = tmp_path / "lying"
    shutil.copytree(blocks_dir, lying)
    with safe_open(str(lying / SYNTHESIS_FILE), "pt") as f:
        meta = {**f.metadata(), "blocks": "100000000"}
    save_file(load_file(str(lying / SYNTHESIS_FILE)), str(lying / SYNTHESIS_FILE), metadata=meta)
    with pytest.raises(WeightsError, match=f"weights in {lying} have an invalid shape"):
        weights.load(lying)


@pytest.mark.parametrize("key, value", [("blocks", " 2"), ("blocks", "+2"), ("blocks", "2.0"),
                                        ("blocks", "\u0662"), ("N", "16 "), ("checkerboard", "2"),
                                        ("slices", ""), ("steps", "-1")])
def test_metadata_numbers_must_be_what_export_writes(blocks_dir, tmp_path, key, value):
    """Only plain ASCII digits are read back: Python's int() would take " 2", "+2" or an
    Arabic-Indic "٢" (U+0662) as 2, and such metadata was never written by export."""
    lying = tmp_path / "lying"
    shutil.copytree(blocks_dir, lying)
    with safe_open(str(lying / SYNTHESIS_FILE), "pt") as f:
        meta = {**f.metadata(), key: value}
    save_file(load_file(str(lying / SYNTHESIS_FILE)), str(lying / SYNTHESIS_FILE), metadata=meta)
    with pytest.raises(WeightsError, match=f"weights in {lying} have (an invalid shape|invalid metadata)"
                                           f" .*{key}"):
        weights.load(lying)
    assert weights.load(blocks_dir).blocks == 2   # the untouched export still loads
