"""A compact copy of a training folder, small enough to travel with the working tree to a GPU
machine (scripts/gpu-train.sh) where the whole training folder (144 MiB here) would not fit.
:func:`pack` keeps every image but only one square crop of it (``side`` pixels, at a seeded random
position), saved as a 4:4:4 JPEG. File stems and their sorted order are kept, so
``vaecodec train`` holds out the same validation images from the packed folder as from the
original one.

Usage: ``python -m vaecodec.datapack TRAIN_DIR .gpu/data`` (``make gpu-data TRAIN_DATA=DIR``;
the defaults, 320² crops at quality 70, pack a folder of 663 photos into about 15 MiB).
"""
from __future__ import annotations

import io
import random
from pathlib import Path

import click
from PIL import Image

from .train import list_images

MIB = 2**20
# defaults: all 680 images of ../shared/data/train in about 15 MiB
SIDE, QUALITY, MAX_MIB = 320, 70, 16


def pack(src: str | Path, dst: str | Path, side: int = SIDE, quality: int = QUALITY,
         max_bytes: int = MAX_MIB * MIB, seed: int = 0, progress=None) -> tuple[int, int]:
    """Write one ``side`` x ``side`` crop (smaller images: as large as they allow) of every image
    in ``src`` to ``dst/<stem>.jpg`` (JPEG ``quality``, no chroma subsampling).

    Returns ``(images, bytes)``. ``progress(n)`` is called after each image. Raises
    ``FileNotFoundError`` if ``src`` has no images, ``FileExistsError`` if ``dst`` is a non-empty
    folder, and ``ValueError`` if ``side`` is not positive or the packed images would exceed
    ``max_bytes`` (nothing is written then).
    """
    if side < 1:
        raise ValueError(f"side must be positive, got {side}")
    files = list_images(src)
    if len({f.stem for f in files}) != len(files):
        raise ValueError(f"{src} holds several images with the same name stem")
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"{dst} is not empty")
    rng = random.Random(seed)
    encoded, total = [], 0
    for f in files:
        with Image.open(f) as im:
            rgb = im.convert("RGB")
        w, h = min(side, rgb.width), min(side, rgb.height)
        left, top = rng.randrange(rgb.width - w + 1), rng.randrange(rgb.height - h + 1)
        buf = io.BytesIO()
        rgb.crop((left, top, left + w, top + h)).save(buf, "JPEG", quality=quality, subsampling=0)
        encoded.append((f.stem, buf.getvalue()))
        total += buf.tell()
        if progress:
            progress(1)
    if total > max_bytes:
        raise ValueError(f"{len(files)} packed images take {total / MIB:.1f} MiB, over the "
                         f"{max_bytes / MIB:.1f} MiB budget: lower --side or --quality")
    dst.mkdir(parents=True, exist_ok=True)
    for stem, data in encoded:
        (dst / f"{stem}.jpg").write_bytes(data)
    return len(encoded), total


@click.command()
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("dst", type=click.Path(file_okay=False))
@click.option("--side", type=click.IntRange(min=1), default=SIDE, show_default=True,
              help="Crop side in pixels (at least the training crop, 256).")
@click.option("--quality", type=click.IntRange(50, 100), default=QUALITY, show_default=True,
              help="JPEG quality (4:4:4).")
@click.option("--max-mib", type=float, default=float(MAX_MIB), show_default=True,
              help="Refuse to write more than this many MiB.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the crop positions.")
def main(src, dst, side, quality, max_mib, seed):
    """Pack the training folder SRC into DST: one JPEG crop per image, to carry to a GPU run."""
    from tqdm import tqdm
    try:
        with tqdm(total=len(list_images(src)), unit="img", desc="packing") as bar:
            count, total = pack(src, dst, side, quality, int(max_mib * MIB), seed, bar.update)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"packed {count} images into {dst}: {total / MIB:.1f} MiB")


if __name__ == "__main__":
    main()
