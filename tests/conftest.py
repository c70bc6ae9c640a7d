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
