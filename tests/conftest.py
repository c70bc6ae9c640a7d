"""Shared fixtures: a real photo, the bundled model, small deterministic test images."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
KODAK = ROOT.parent / "shared" / "data" / "kodak"

# Keep the suite light on the 2 shared cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def photo_path(tmp_path_factory) -> Path:
    """A real photograph: Kodak's kodim23 when the evaluation data is present, otherwise
    scikit-image's bundled 'astronaut' (512x512) written to a temporary PNG."""
    kodim = KODAK / "kodim23.png"
    if kodim.exists():
        return kodim
    from skimage import data
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


@pytest.fixture(scope="session")
def model():
    """The exported weights in weights/ (loaded once)."""
    from vaecodec.codec import get_model
    return get_model()


def photo_crop(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 crop (tiled if needed) of scikit-image's 'astronaut'."""
    from skimage import data
    src = data.astronaut()
    reps = (-(-height // src.shape[0]), -(-width // src.shape[1]), 1)
    big = np.tile(src, reps)
    top = seed % max(1, big.shape[0] - height + 1)
    return np.ascontiguousarray(big[top:top + height, :width])


def randomised(model, seed: int = 0):
    """``model`` with random, non-zero last layers in its channel-context, LRP and checkerboard
    networks and its transforms' residual blocks (a new model's are zero), so tests exercise
    those paths whatever the shipped weights hold."""
    from vaecodec.transforms import ResidualBottleneck
    blocks = [m.net for m in model.modules() if isinstance(m, ResidualBottleneck)]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for net in (*model.context, *model.lrp, *model.spatial, *blocks):
            for p in net[-1].parameters():
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def assert_extends(old, new, levels=(1, 6)) -> None:
    """``new`` (a model with networks ``old`` lacks) refuses ``old``'s state as a strict load,
    takes it with ``new_slices_ok``, and then computes exactly ``old``'s function: its new
    networks start at zero, so training continues where it was."""
    from vaecodec.train import load_state
    with pytest.raises(RuntimeError):
        load_state(new, old.state_dict())
    load_state(new, old.state_dict(), new_slices_ok=True)
    x, level = torch.rand(2, 3, 64, 64), torch.tensor(levels)
    torch.manual_seed(4)
    a = old(x, level)
    torch.manual_seed(4)
    b = new(x, level)
    assert torch.equal(a.x_hat, b.x_hat) and torch.equal(a.y_likelihoods, b.y_likelihoods)


def assert_decoder_file_is_checked(good: Path, other: Path, fname: str, tensor: str, tmp_path: Path) -> None:
    """The decoder file ``fname`` of the export ``good`` is under its fingerprint: in a copy of
    ``good``, the file of the export ``other`` is refused as another export's, the file with
    ``tensor`` changed (and no checksum of its own, as exports before session 15) as damaged,
    and no file at all as not found."""
    import re
    import shutil
    from safetensors.torch import save_file
    from vaecodec.weights import WeightsError, load
    mixed, damaged = tmp_path / "mixed", tmp_path / "damaged"
    for copy in (mixed, damaged):
        shutil.copytree(good, copy)
    shutil.copy(other / fname, mixed / fname)
    with pytest.raises(WeightsError, match=f"{fname.split('.')[0]} and synthesis weights of different exports"):
        load(mixed)
    from vaecodec.weights import _read
    tensors, meta = _read(damaged / fname)   # unpacked; written back plain, without a checksum
    meta = {k: v for k, v in meta.items() if k not in ("sha256", "packed")}   # only the fingerprint left
    tensors[tensor] = tensors[tensor] + 1
    save_file(tensors, str(damaged / fname), metadata=meta)
    with pytest.raises(WeightsError, match=re.escape(fname) + r".* is damaged \(fingerprint mismatch\)"):
        load(damaged)
    (damaged / fname).unlink()
    with pytest.raises(WeightsError, match="not found"):
        load(damaged)


def tile_streams(data: bytes) -> dict:
    """The entropy-coded streams of a single-tile ``.vae`` file."""
    from vaecodec import bitstream, codec
    (tile,) = bitstream.unpack(data).tiles
    return codec._streams(tile)


def assert_exact_in_float64(nets) -> None:
    """Integer context networks fed :func:`vaecodec.integer.context_input` (``|x| <= 2**11 *
    2**8``; hidden activations ``<= 2**24``; weights ``<= 2**13``): every accumulator stays
    below 2**53, so their float64 evaluation is exact."""
    from vaecodec.integer import ACT_MAX, CONTEXT_FRAC, CONTEXT_MAX
    for net in nets:
        bound = CONTEXT_MAX * 2**CONTEXT_FRAC
        for i, w in enumerate(net.weights):
            fan_in = w.shape[1] * w.shape[2] * w.shape[3]
            assert float(w.abs().max()) <= 2**13
            assert fan_in * 2**13 * bound + float(net.biases[i].abs().max()) < 2**53
            bound = ACT_MAX
