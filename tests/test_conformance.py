"""Every release's conformance files decode to the recorded latents (exactly) and pixels (within
+-1) with the decoder the package ships for that release, and the refused files are refused."""
import hashlib
import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

DIR = ROOT / "bitstream" / "conformance"
spec = importlib.util.spec_from_file_location("make_conformance", DIR / "make.py")
make = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make)
ENTRIES = [(folder, e) for folder in make.release_folders()
           for e in json.loads((folder / "manifest.json").read_text())]


def test_every_shipped_release_has_conformance_files():
    from vaecodec import releases
    shipped = releases.shipped()
    assert shipped, "no release installed"
    folders = {f.name for f in make.release_folders()}
    for r in shipped:
        assert r.id in folders, f"release {r.id} has no folder in bitstream/conformance"
    assert folders <= {r.id for r in shipped}, "conformance files of a release that is not shipped"


def test_first_release_decodes_the_files_written_before_releases():
    """Files written by vaecodec 0.1.0 (format 1, no release ID) are decoded by release 2026.12."""
    old = [e for folder, e in ENTRIES if folder.name == "2026.12" and e["format"] == 1]
    new = {e["file"]: e for folder, e in ENTRIES if folder.name == "2026.12" and e["format"] == 2}
    assert len(old) == 3
    for e in old:
        assert e["release"] == "" and e["fingerprint"] == "9a02d927a3c3f3c4"
        assert new[e["file"].removeprefix("format1/")]["latents_sha256"] == e["latents_sha256"]


@pytest.mark.parametrize("folder,entry", ENTRIES, ids=[f"{f.name}/{e['file']}" for f, e in ENTRIES])
def test_conformance_file(folder, entry):
    from vaecodec import bitstream
    data = (folder / entry["file"]).read_bytes()
    header = bitstream.peek_header(data)
    assert (header.release, header.fingerprint.hex(), data[4]) == \
        (entry["release"], entry["fingerprint"], entry["format"])
    assert make.latent_sha256(data) == entry["latents_sha256"]
    image = make.decode_image(data)
    assert (image.width, image.height, image.mode) == (entry["width"], entry["height"], entry["mode"])
    if hashlib.sha256(image.tobytes()).hexdigest() != entry["pixels_sha256"]:
        ref = np.asarray(Image.open(folder / entry["reference"]), dtype=int)
        diff = np.abs(np.asarray(image, dtype=int) - ref)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


@pytest.mark.parametrize("name", sorted(make.REFUSED))
def test_refused_conformance_files(name):
    from vaecodec import bitstream, codec, releases
    data = (DIR / "refused" / name).read_bytes()
    with pytest.raises((bitstream.BitstreamError, releases.ReleaseError)) as err:
        codec.decompress_array(data)
    assert str(err.value).startswith(make.REFUSED[name])


def test_refused_folder_holds_exactly_the_listed_files():
    assert sorted(p.name for p in (DIR / "refused").iterdir()) == sorted(make.REFUSED)
