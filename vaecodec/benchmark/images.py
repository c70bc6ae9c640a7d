"""The images to benchmark on: a dataset folder (Kodak by default) or scikit-image's samples."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_SUFFIXES = {".png", ".ppm", ".pnm", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".webp"}
# scikit-image's bundled colour photographs, used when no dataset directory is available
SKIMAGE_SAMPLES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry",
                   "hubble_deep_field")


@dataclass(frozen=True)
class ImageSource:
    """An image to benchmark: a file, or a scikit-image sample by function name."""
    name: str
    path: str | None = None
    skimage: str | None = None

    def load(self) -> Image.Image:
        if self.path is not None:
            with Image.open(self.path) as im:
                return im.convert("RGB")
        import skimage.data
        arr = getattr(skimage.data, self.skimage)()
        return Image.fromarray(np.asarray(arr)[..., :3]).convert("RGB")


def pixel_digest(image: Image.Image) -> str:
    """SHA-256 (hex) of an RGB image's size and pixels: what a stored measurement was made on."""
    h = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    h.update(np.asarray(image.convert("RGB"), dtype=np.uint8).tobytes())
    return h.hexdigest()


def default_dataset() -> Path | None:
    """Kodak at ``../shared/data/kodak`` (from the current directory) or
    ``<repo>/../shared/data/kodak``, when present; else ``None`` (scikit-image samples)."""
    for candidate in (Path.cwd() / ".." / "shared" / "data" / "kodak",
                      REPO_ROOT.parent / "shared" / "data" / "kodak"):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def dataset_images(dataset: Path | None,
                   limit: int | None = None) -> tuple[str, list[ImageSource]]:
    """The dataset's name and its images (sorted by file name), at most ``limit`` of them.

    ``dataset=None`` means scikit-image's sample photographs. A missing directory or one without
    images raises :class:`click.UsageError`.
    """
    if dataset is None:
        sources = [ImageSource(n, skimage=n) for n in SKIMAGE_SAMPLES]
        name = "skimage"
    else:
        dataset = Path(dataset)
        if not dataset.is_dir():
            raise click.UsageError(f"dataset directory not found: {dataset}")
        files = sorted(p for p in dataset.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise click.UsageError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {dataset}")
        sources = [ImageSource(p.stem, path=str(p)) for p in files]
        name = dataset.resolve().name
    if limit is not None:
        if limit < 1:
            raise click.UsageError("--limit must be at least 1")
        sources = sources[:limit]
    return name, sources
