"""Compare sets of weights on the training folder's validation split, with real ``.vae`` files.

The held-out images are those of :func:`vaecodec.train.split_validation` (every 40th file of
the training folder, 17 of ``../shared/data/train``), never Kodak: this is the check to run
before a new checkpoint may replace the shipped weights (the Kodak benchmark then reports it).
Each image is coded whole at every quality; rate is the file's size in bits per pixel, PSNR is
on RGB 0..255. Prints each curve (bpp / dB, averaged over the images) and its BD-rate against
the first folder (negative: fewer bits at the same PSNR)::

    vaecodec export runs/s23/checkpoint.safetensors --out build/s23
    python benchmarks/validation.py weights build/s23
    python benchmarks/validation.py weights build/s23 --refine 30 --qualities 1,4,8

One folder at all 8 qualities takes about 4.6 CPU-minutes (plain coding). Curves are cached
(``--cache``, default ``build/validation-cache``) by the weights files' SHA-256, so the
reference is measured once.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from vaecodec import codec, metrics, train, weights  # noqa: E402
from vaecodec.imageio import read_image  # noqa: E402

CACHE = Path("build/validation-cache")


def weights_digest(folder: Path) -> str:
    """SHA-256 over the names and bytes of ``folder``'s ``*.safetensors`` files (hex)."""
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def curve(folder: Path, images: list[np.ndarray], qualities: list[int], refine: int) -> dict:
    """``{"bpp": [...], "psnr": [...]}`` per quality, each the mean over ``images``
    (``(H, W, 3)`` uint8): bpp from the ``.vae`` bytes, PSNR in dB."""
    from tqdm import tqdm
    model = weights.load(str(folder), refine=refine > 0)
    bpp, psnr = [], []
    with tqdm(total=len(qualities) * len(images), desc=str(folder), unit="file") as bar:
        for q in qualities:
            rates, dbs = [], []
            for rgb in images:
                data = codec.compress_array(rgb, quality=q, model=model, refine=refine)
                out = codec.decompress_array(data, model=model).rgb
                rates.append(8 * len(data) / (rgb.shape[0] * rgb.shape[1]))
                dbs.append(metrics.psnr_rgb(rgb, out))
                bar.update(1)
            bpp.append(float(np.mean(rates)))
            psnr.append(float(np.mean(dbs)))
    return {"bpp": bpp, "psnr": psnr}


@click.command()
@click.argument("folders", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", type=click.Path(exists=True, file_okay=False), default="../shared/data/train",
              show_default=True, help="Training folder whose validation split is scored.")
@click.option("--qualities", default="1,2,3,4,5,6,7,8", show_default=True,
              help="Comma-separated integer quality levels.")
@click.option("--refine", type=click.IntRange(min=0), default=0, show_default=True,
              help="Encoder-side refinement steps (vaecodec compress --refine).")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=CACHE,
              show_default=True, help="Folder of measured curves, keyed by the weights' SHA-256.")
@click.option("--no-cache", is_flag=True, help="Measure again instead of reading the cache.")
def main(folders, data, qualities, refine, cache, no_cache):
    """Score weights FOLDERS on the validation split; BD-rate against the first folder."""
    try:
        qs = [int(v) for v in qualities.split(",")]
    except ValueError:
        raise click.BadParameter(f"not a list of integers: {qualities!r}", param_hint="--qualities")
    if len(qs) < 2:
        raise click.BadParameter("BD-rate needs at least 2 qualities", param_hint="--qualities")
    files = train.split_validation(train.list_images(data))[1]
    images = [read_image(f)[0] for f in files]
    cache.mkdir(parents=True, exist_ok=True)
    ref = None
    for folder in folders:
        key = hashlib.sha256(f"{weights_digest(folder)} {refine} {qs} {[f.name for f in files]}"
                             .encode()).hexdigest()[:24]
        cached = cache / f"{key}.json"
        if cached.exists() and not no_cache:
            result = json.loads(cached.read_text())
        else:
            try:
                result = curve(folder, images, qs, refine)
            except weights.WeightsError as exc:   # not an export, damaged, another model
                raise click.ClickException(f"{folder}: {exc}") from None
            cached.write_text(json.dumps(result))
        points = " ".join(f"q{q} {b:.4f}/{p:.2f}" for q, b, p in zip(qs, result["bpp"], result["psnr"]))
        if ref is None:
            ref = result
            click.echo(f"{folder} (reference): {points}")
        else:
            bd = metrics.bd_rate(ref["bpp"], ref["psnr"], result["bpp"], result["psnr"])
            click.echo(f"{folder}: BD-rate vs reference {bd:+.2f} %  {points}")


if __name__ == "__main__":
    main()
