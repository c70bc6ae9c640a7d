"""Checkerboard spatial context (He et al. 2021) inside each channel slice: the anchors of a slice
are coded first, then its other half with parameters corrected from the decoded anchors, exactly
reproducible at decode time.

A small model (N=16, M=24, 4 slices, checkerboard) with random, non-zero context networks is
exported and loaded like the shipped weights, whatever the shipped weights hold.
"""

import numpy as np
import pytest
import torch

from vaecodec import codec, weights
from vaecodec.model import MeanScaleHyperprior, anchor_mask
from vaecodec.train import TrainConfig, TrainingError, check_architecture
from vaecodec.weights import SPATIAL_FILE
from conftest import assert_decoder_file_is_checked, assert_exact_in_float64, assert_extends, photo_crop, randomised, tile_streams



@pytest.fixture(scope="module")
def board_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("board")
    weights.export(randomised(MeanScaleHyperprior(16, 24, slices=4, checkerboard=True)), folder)
    return folder


@pytest.fixture(scope="module")
def board(board_dir):
    return weights.load(board_dir)


@pytest.fixture(scope="module")
def coded(board):
    rgb = photo_crop(128, 192, seed=2)
    return rgb, codec.compress_array(rgb, 5.0, model=board)



def test_anchor_mask_is_a_checkerboard():
    m = anchor_mask(3, 4)[0, 0].int().tolist()
    assert m == [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]]


def test_export_load_keeps_the_checkerboard(board, board_dir):
    assert board.checkerboard and len(board.spatial) == 4 and len(board.context) == 3
    model, _ = weights.load_float_model(board_dir)
    assert model.checkerboard and float(model.spatial[3][-1].weight.detach().abs().sum()) > 0


def test_round_trip_is_deterministic(board, coded):
    rgb, data = coded
    digest = codec.latent_digest(data, board)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert codec.latent_digest(data, board) == digest
    finally:
        torch.set_num_threads(threads)
    decoded = codec.decompress_array(data, model=board).rgb
    assert decoded.shape == rgb.shape and decoded.dtype == np.uint8
    assert codec.compress_array(rgb, 5.0, model=board) == data


def test_exact_path_matches_the_float_model(board, board_dir, coded):
    """The decoder's ``y_hat`` equals the float training model's deterministic quantisation
    (anchors and the rest, every slice) to 1e-3 nearly everywhere."""
    rgb, data = coded
    model, _ = weights.load_float_model(board_dir)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    gain, _ = model.gains(5.0)
    with torch.no_grad():
        y = model.g_a(x) * gain[:, None, None]
        hyper = model.h_s(torch.round(model.h_a(y)))
        mean_h = hyper.chunk(2, 1)[0].chunk(4, 1)
        _, y_exact = board.decode_latents(tile_streams(data))
        decoded = list(y_exact.chunk(4, 1))
        refined = torch.cat([d + model.residual(i, mean_h[i], decoded[:i + 1]) for i, d in enumerate(decoded)], 1)
        y_float, _ = model.latents(y, hyper, noisy=False)
    close = (y_float - refined).abs() < 1e-3
    assert close.float().mean() > 0.99
    assert close[:, :, ~anchor_mask(*y.shape[2:])[0, 0]].float().mean() > 0.99   # the second halves too


def test_spatial_context_changes_the_code(board_dir, coded, tmp_path):
    """Zeroing the checkerboard networks changes the y stream, not the z stream: the second
    halves really are coded with the spatial context's parameters."""
    rgb, data = coded
    model, _ = weights.load_float_model(board_dir)
    with torch.no_grad():
        for net in model.spatial:
            for p in net[-1].parameters():
                p.zero_()
    weights.export(model, tmp_path)
    other = codec.compress_array(rgb, 5.0, model=weights.load(tmp_path))
    assert tile_streams(other)["z_stream"] == tile_streams(data)["z_stream"]
    assert tile_streams(other)["y_stream"] != tile_streams(data)["y_stream"]


def test_spatial_accumulators_are_exact_in_float64(board):
    assert_exact_in_float64(board.spatial)


def test_a_new_checkerboard_starts_as_the_model_it_extends():
    """Initialised from a model without it, a checkerboard model computes the same function
    (its networks' last layers are zero), so training continues where it was."""
    torch.manual_seed(3)
    assert_extends(randomised(MeanScaleHyperprior(16, 24, slices=4)),
                   MeanScaleHyperprior(16, 24, slices=4, checkerboard=True))


def test_init_may_add_the_checkerboard_not_remove_it():
    cfg = TrainConfig(data="d", N=16, M=24, slices=4, checkerboard=True, blocks=0)
    plain = {"N": 16, "M": 24, "slices": 4, "checkerboard": False}
    check_architecture("old", plain, cfg, init=True)
    with pytest.raises(TrainingError, match="--no-checkerboard"):
        check_architecture("old", plain, cfg, init=False)
    check_architecture("old", {**plain, "slices": 1}, cfg, init=True)
    with pytest.raises(TrainingError, match="--slices 1 --checkerboard"):   # its networks' shapes
        check_architecture("old", {**plain, "slices": 1, "checkerboard": True}, cfg, init=True)
    cfg = TrainConfig(data="d", N=16, M=24, slices=4, checkerboard=False, blocks=0)
    with pytest.raises(TrainingError, match="pass --N 16 --M 24 --slices 4 --checkerboard"):
        check_architecture("new", {**plain, "checkerboard": True}, cfg, init=True)


def test_spatial_file_belongs_to_its_export(board_dir, tmp_path):
    """The decoder half of spatial.safetensors is under the fingerprint: another export's file
    or a changed integer weight is refused; an export without checkerboard removes a stale one."""
    other = tmp_path / "other"
    torch.manual_seed(5)
    weights.export(randomised(MeanScaleHyperprior(16, 24, slices=4, checkerboard=True), seed=5), other)
    assert_decoder_file_is_checked(board_dir, other, SPATIAL_FILE, "spatial_int.2.layer1.bias", tmp_path)
    weights.export(MeanScaleHyperprior(16, 24, slices=4), other)
    assert not (other / SPATIAL_FILE).exists() and not weights.load(other).checkerboard
