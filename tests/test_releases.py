"""Model releases: files name their release, every shipped release keeps decoding its files, a
new release is made only through scripts/release.py, and a file of a release this package does
not have is refused with one line."""
from __future__ import annotations

import datetime as dt
import importlib.util
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import ROOT, photo_crop, randomised

spec = importlib.util.spec_from_file_location("release_tool", ROOT / "scripts" / "release.py")
release_tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(release_tool)

FIRST = "2026.12"


def test_the_first_release_is_shipped_and_newest():
    from vaecodec import releases
    r = releases.find(FIRST)
    assert r.number == 1 and r.fingerprint.hex() == "9a02d927a3c3f3c4" and r.steps == 216_854
    assert releases.newest().id == FIRST and r.can_encode
    # sizes recorded are the files' own; training-only tensors are in the encoder files
    for name, size in r.files.items():
        assert (r.folder / name).stat().st_size == size
    assert r.decoder_bytes < 18 * 2**20 and set(r.files) - set(releases.ENCODER_FILES) == {
        "synthesis.safetensors", "hyper.safetensors", "context.safetensors", "spatial.safetensors"}


def test_default_compress_names_the_newest_release(model):
    from vaecodec import bitstream, codec
    data = codec.compress_array(photo_crop(64, 64), 4.0, model=model)
    header = bitstream.peek_header(data)
    assert data[4] == 2 and header.release == FIRST and header.fingerprint == model.fingerprint


def test_decoder_weights_hold_no_training_only_tensors():
    from safetensors import safe_open
    from vaecodec import releases
    folder = releases.find(FIRST).folder
    for name in ("synthesis", "hyper", "context", "spatial"):
        with safe_open(str(folder / f"{name}.safetensors"), "pt") as f:
            keys = list(f.keys())
            assert not any(k.startswith(("h_s.", "context.", "spatial.", "prior.", "g_a.", "h_a."))
                           for k in keys), name
            assert json.loads(f.metadata()["packed"])   # stored packed


def test_packing_is_lossless_for_every_dtype():
    import torch
    from vaecodec.weights import pack_tensors, unpack_tensors
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(-5, 5, dtype=torch.int64),
               "c": torch.randn(7).half(), "d": torch.tensor([], dtype=torch.int16),
               "e": torch.randn(2, 2, dtype=torch.float64)}
    stored, packed = pack_tensors(tensors)
    back = unpack_tensors(stored, packed)
    assert all(back[k].dtype == t.dtype and torch.equal(back[k], t) for k, t in tensors.items())


@pytest.fixture
def two_releases(tmp_path, monkeypatch):
    """A releases folder holding a copy of the first release and then, made with the release
    tool, a second one: a small random model (validation stubbed to a 2 % gain). Yields the
    folder and a file coded with each release."""
    from vaecodec import codec, releases
    from vaecodec.model import MeanScaleHyperprior
    from vaecodec import weights
    base = tmp_path / "releases"
    shutil.copytree(releases.find(FIRST).folder, base / FIRST)
    monkeypatch.setenv("VAECODEC_RELEASES", str(base))
    monkeypatch.delenv("VAECODEC_WEIGHTS", raising=False)
    rgb = photo_crop(64, 96)
    first_file = codec.compress_array(rgb, 3.0, model=codec.get_model(release=FIRST))
    # a perturbed second model, exported in float16 as releases after the first are
    model = randomised(MeanScaleHyperprior(16, 24, slices=4, checkerboard=True, blocks=1), seed=3)
    export = tmp_path / "export"
    weights.export(model, export, steps=7, float_dtype="float16")
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "vaecodec"\nversion = "0.2.0"\n')
    monkeypatch.setattr(release_tool, "validation_gain", lambda ref, cand, data: -2.0)
    second = release_tool.make_release(export, base=base, data="unused", today=dt.date(2027, 1, 15),
                                       pyproject=pyproject, conformance=False,
                                       staging=tmp_path / "staging")
    second_file = codec.compress_array(rgb, 3.0, model=codec.get_model(release=second.id))
    yield base, first_file, second_file, pyproject, rgb


def test_files_of_two_releases_decode_with_their_own_decoder(two_releases):
    from vaecodec import bitstream, codec, releases
    base, first_file, second_file, pyproject, rgb = two_releases
    assert [r.id for r in releases.shipped()] == [FIRST, "2027.01"]
    second = releases.find("2027.01")
    assert second.number == 2 and second.version == "0.3.0" and second.steps == 7
    assert 'version = "0.3.0"' in pyproject.read_text()
    assert bitstream.peek_header(first_file).release == FIRST
    assert bitstream.peek_header(second_file).release == "2027.01"
    # the default decoder of each file is its own release's
    a = codec.decompress_array(first_file)
    b = codec.decompress_array(second_file)
    assert np.array_equal(a.rgb, codec.decompress_array(first_file, model=codec.get_model(release=FIRST, encoder=False)).rgb)
    assert codec.latent_digest(first_file) == codec.latent_digest(
        first_file, codec.get_model(release=FIRST, encoder=False))
    assert b.rgb.shape == a.rgb.shape == rgb.shape
    assert np.abs(a.rgb.astype(int) - rgb).mean() < 12   # the trained release still codes well
    # each release's decoder refuses the other's file
    with pytest.raises(bitstream.BitstreamError, match="other model weights"):
        codec.decompress_array(second_file, model=codec.get_model(release=FIRST, encoder=False))
    # the superseded release keeps its decoder but no longer ships an encoder
    assert not releases.find(FIRST).can_encode and releases.find("2027.01").can_encode
    with pytest.raises(codec.CodecError, match="releases that can encode: 2027.01"):
        codec.get_model(release=FIRST)


def test_a_file_of_a_release_not_shipped_is_refused(two_releases):
    from vaecodec import codec, releases
    from vaecodec.cli import main
    base, first_file, second_file, _, _ = two_releases
    shutil.rmtree(base / "2027.01")   # an older vaecodec: it never had this release
    with pytest.raises(releases.ReleaseError) as err:
        codec.decompress_array(second_file)
    assert str(err.value).startswith("file was made with model release 2027.01, which this vaecodec")
    assert "a newer vaecodec decodes it" in str(err.value) and "\n" not in str(err.value)
    path = base.parent / "new.vae"
    path.write_bytes(second_file)
    result = CliRunner().invoke(main, ["decompress", str(path), str(base.parent / "out.png")])
    assert result.exit_code == 1 and "release 2027.01" in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    info = CliRunner().invoke(main, ["info", str(path)])
    assert info.exit_code == 0 and "2027.01 (not in this vaecodec: a newer one decodes it)" in info.output
    assert codec.decompress_array(first_file).rgb.shape == (64, 96, 3)


def test_release_tool_refuses_a_small_gain(tmp_path, monkeypatch):
    from vaecodec import releases, weights
    from vaecodec.model import MeanScaleHyperprior
    base = tmp_path / "releases"
    shutil.copytree(releases.find(FIRST).folder, base / FIRST, ignore=shutil.ignore_patterns("*.safetensors"))
    export = tmp_path / "export"
    weights.export(randomised(MeanScaleHyperprior(16, 24, slices=4, checkerboard=True)), export)
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('version = "0.2.0"\n')
    monkeypatch.setattr(release_tool, "validation_gain", lambda ref, cand, data: -0.6)
    with pytest.raises(SystemExit, match="BD-rate -0.60 % against release 2026.12"):
        release_tool.make_release(export, base=base, data="unused", pyproject=pyproject,
                                  conformance=False, staging=tmp_path / "staging")
    assert [r.id for r in releases.shipped(base)] == [FIRST] and pyproject.read_text() == 'version = "0.2.0"\n'
    with pytest.raises(SystemExit, match="must beat the newest"):
        release_tool.make_release(export, base=base, data=None, pyproject=pyproject,
                                  conformance=False, staging=tmp_path / "staging")


def test_release_ids_and_versions():
    assert release_tool.next_id([], dt.date(2027, 3, 1)) == "2027.03"
    assert release_tool.next_id(["2027.03", "2027.03.2"], dt.date(2027, 3, 9)) == "2027.03.3"
    assert release_tool.bump_minor("0.2.0") == "0.3.0" and release_tool.bump_minor("1.9.4") == "1.10.0"


def test_file_naming_a_release_with_another_fingerprint_is_refused(model):
    from dataclasses import replace
    from vaecodec import bitstream, codec, releases
    data = codec.compress_array(photo_crop(64, 64), 2.0, model=model)
    c = bitstream.unpack(data)
    forged = bitstream.pack(replace(c, header=replace(c.header, fingerprint=b"\x01" * 8)))
    with pytest.raises(releases.ReleaseError, match="names model release 2026.12 but carries fingerprint 0101"):
        codec.decompress_array(forged)


def test_version_lists_the_releases():
    from vaecodec.cli import main
    from vaecodec import releases
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == f"vaecodec {releases.package_version()}"
    assert any(line.strip().startswith(f"{FIRST} *") and "9a02d927a3c3f3c4" in line for line in lines)


def test_info_shows_the_release(tmp_path, model):
    from vaecodec import codec
    from vaecodec.cli import main
    path = tmp_path / "a.vae"
    path.write_bytes(codec.compress_array(photo_crop(64, 64), 2.0, model=model))
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code == 0 and f"release:     {FIRST}\n" in result.output
    old = ROOT / "bitstream" / "conformance" / FIRST / "format1" / "rgb-64x64-q1.vae"
    result = CliRunner().invoke(main, ["info", str(old)])
    assert f"release:     {FIRST} (named by its fingerprint: a format 1 file)" in result.output


def test_compress_model_option(tmp_path, photo_path):
    from vaecodec import bitstream
    from vaecodec.cli import main
    src = tmp_path / "a.png"
    from PIL import Image
    Image.fromarray(photo_crop(64, 64)).save(src)
    ok = CliRunner().invoke(main, ["compress", str(src), str(tmp_path / "a.vae"), "--model", FIRST])
    assert ok.exit_code == 0, ok.output
    assert bitstream.peek_header((tmp_path / "a.vae").read_bytes()).release == FIRST
    bad = CliRunner().invoke(main, ["compress", str(src), str(tmp_path / "b.vae"), "--model", "1999.01"])
    assert bad.exit_code == 2 and "unknown model release '1999.01'; this vaecodec has 2026.12" in bad.output
    assert not (tmp_path / "b.vae").exists()
