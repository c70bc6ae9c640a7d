"""``hyper.safetensors``: the integer hyper-synthesis in a file of its own (so that a model with
more latent channels keeps every file under 16 MiB). It is under the fingerprint like the other
decoder files, and exports from before it (the tensors inside ``synthesis.safetensors``) load
with the same fingerprint."""
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vaecodec import codec, weights
from vaecodec.model import MeanScaleHyperprior
from vaecodec.weights import HYPER_FILE, SYNTHESIS_FILE, WeightsError
from conftest import assert_decoder_file_is_checked, photo_crop, randomised


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hyper")
    weights.export(randomised(MeanScaleHyperprior(16, 24, slices=4, checkerboard=True)), folder)
    return folder


def rewrite(path, tensors):
    """Replace the tensors of the weights file ``path`` (stored plain, not packed), with a
    matching checksum."""
    with safe_open(str(path), "pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "packed"}
    meta["sha256"] = weights._digest(tensors).hex()
    save_file(tensors, str(path), metadata=meta)


def load_file(path):
    """The tensors of a weights file as the loader sees them (unpacked)."""
    return weights._read(Path(path))[0]


def test_hyper_synthesis_has_its_own_file(export_dir):
    hyper = load_file(str(export_dir / HYPER_FILE))
    assert hyper and all(k.startswith("h_s_int.") for k in hyper)
    assert not any(k.startswith("h_s_int.") for k in load_file(str(export_dir / SYNTHESIS_FILE)))
    assert weights.load(export_dir, encoder=False).h_s is not None


def test_an_export_with_the_hyper_synthesis_inside_synthesis_still_loads(export_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(export_dir, old)
    merged = {**load_file(str(old / SYNTHESIS_FILE)), **load_file(str(old / HYPER_FILE))}
    rewrite(old / SYNTHESIS_FILE, merged)
    (old / HYPER_FILE).unlink()
    new_model, old_model = weights.load(export_dir), weights.load(old)
    assert old_model.fingerprint == new_model.fingerprint
    rgb = photo_crop(64, 128, seed=1)
    data = codec.compress_array(rgb, 3.0, model=new_model)
    assert codec.compress_array(rgb, 3.0, model=old_model) == data
    assert (codec.decompress_array(data, model=old_model).rgb
            == codec.decompress_array(data, model=new_model).rgb).all()


def test_hyper_file_belongs_to_its_export(export_dir, tmp_path):
    other = tmp_path / "other"
    torch.manual_seed(7)
    weights.export(randomised(MeanScaleHyperprior(16, 24, slices=4, checkerboard=True), seed=7), other)
    assert_decoder_file_is_checked(export_dir, other, HYPER_FILE, "h_s_int.layer0.bias", tmp_path)


def test_a_wrong_file_in_place_of_synthesis_is_a_clear_error(export_dir, tmp_path):
    """Another weights file (or a directory) named synthesis.safetensors is refused by name; it
    used to be an internal KeyError."""
    for impostor in (HYPER_FILE, "analysis.safetensors", "training.safetensors"):
        wrong = tmp_path / impostor.split(".")[0]
        shutil.copytree(export_dir, wrong)
        shutil.copy(export_dir / impostor, wrong / SYNTHESIS_FILE)
        with pytest.raises(WeightsError, match="synthesis.safetensors is not a synthesis weights file"):
            weights.load(wrong)
        with pytest.raises(WeightsError, match="synthesis.safetensors is not a synthesis weights file"):
            weights.load_float_model(wrong)
    folder = tmp_path / "dir"
    shutil.copytree(export_dir, folder)
    (folder / HYPER_FILE).unlink()
    (folder / HYPER_FILE).mkdir()
    with pytest.raises(WeightsError, match="hyper.safetensors is a directory, not a weights file"):
        weights.load(folder)


def test_an_export_that_cannot_be_written_says_why(export_dir, tmp_path, monkeypatch):
    """A write failure inside safetensors (its own error type, not OSError) or a failed rename
    names the file and the reason; no temporary file is left behind."""
    model = weights.load_float_model(export_dir)[0]
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / HYPER_FILE).mkdir()          # the rename onto it fails
    with pytest.raises(WeightsError, match=re.escape(f"cannot write {folder / HYPER_FILE}: Is a directory")):
        weights.export(model, folder)
    from safetensors import SafetensorError
    def refuse(*args, **kwargs):
        raise SafetensorError('Error while serializing: I/O error: No space left on device '
                              '(os error 28) at path "x"')
    monkeypatch.setattr(weights, "save_file", refuse)
    with pytest.raises(WeightsError, match=re.escape(f"cannot write {tmp_path / 'new' / SYNTHESIS_FILE}: "
                                                     "No space left on device (os error 28)") + "$"):
        weights.export(model, tmp_path / "new")
    assert not [p for p in (folder, tmp_path / "new") for f in p.iterdir() if f.suffix == ".tmp"]
