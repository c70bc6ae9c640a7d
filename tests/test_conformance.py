"""Conformance files decode to the recorded latents (exactly) and pixels (within +-1)."""
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
import importlib.util

DIR = ROOT / "bitstream" / "conformance"
MANIFEST = json.loads((DIR / "manifest.json").read_text())
spec = importlib.util.spec_from_file_location("make_conformance", DIR / "make.py")
make = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make)


def test_conformance_covers_the_current_weights(model):
    assert any(e["fingerprint"] == model.coding.fingerprint.hex() for e in MANIFEST), \
        "weights changed: run `python bitstream/conformance/make.py` and commit the result"


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_conformance_file(model, entry):
    from vaecodec import bitstream
    data = (DIR / entry["file"]).read_bytes()
    if entry["fingerprint"] != model.coding.fingerprint.hex():
        with pytest.raises(bitstream.BitstreamError, match="other model weights"):
            bitstream.unpack(data, expected_fingerprint=model.coding.fingerprint)
        return
    assert make.latent_sha256(model, data) == entry["latents_sha256"]
    image = make.decode_image(model, data)
    assert (image.width, image.height, image.mode) == (entry["width"], entry["height"], entry["mode"])
    if hashlib.sha256(image.tobytes()).hexdigest() != entry["pixels_sha256"]:
        ref = np.asarray(Image.open(DIR / entry["reference"]), dtype=int)
        diff = np.abs(np.asarray(image, dtype=int) - ref)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


@pytest.mark.parametrize("name", sorted(make.REFUSED))
def test_refused_conformance_files(model, name):
    from vaecodec import bitstream
    data = (DIR / "refused" / name).read_bytes()
    with pytest.raises(bitstream.BitstreamError) as err:
        bitstream.unpack(data, expected_fingerprint=model.coding.fingerprint)
    assert str(err.value).startswith(make.REFUSED[name])
