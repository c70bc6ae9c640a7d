"""Compare sets of weights on the training folder's validation split, with real ``.vae`` files.

The held-out images are those of :func:`vaecodec.train.split_validation` (every 40th file of
the training folder, 17 of ``../shared/data/train``), never Kodak: this is the check to run
before a new checkpoint may replace the shipped weights (the Kodak benchmark then reports it).
Each image is coded whole at every quality; rate is the file's size in bits per pixel, PSNR is
on RGB 0..255. Prints each curve (bpp / dB, averaged over the images) and its BD-rate against
the first folder (negative: fewer bits at the same PSNR). When the held-out images come from
several sources (the file-name prefix before the first ``_``: ``bsds500``, ``sunhays80``,
``urban100``), an indented line per source follows: 13 of the 17 are BSDS500 JPEGs with 4:2:0
chroma, so the mean alone says little about full-colour photos like Kodak's::

    vaecodec export runs/s23/checkpoint.safetensors --out build/s23
    python benchmarks/validation.py weights build/s23
    python benchmarks/validation.py weights build/s23 --refine 30 --qualities 1,4,8

One folder at all 8 qualities takes about 4.6 CPU-minutes (plain coding). Curves are cached
(``--cache``, default ``build/validation-cache``) by the SHA-256 of the weights files and of
the scored pixels (and the analysis transform's precision), so the reference is measured once.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from vaecodec import benchmark, codec, hardware, metrics, train, weights  # noqa: E402
from vaecodec.imageio import read_image  # noqa: E402

CACHE = Path("build/validation-cache")


def weights_digest(folder: Path) -> str:
    """SHA-256 over the names and bytes of the ``*.safetensors`` files of the export ``folder``
    names (a folder of releases names its newest, :func:`vaecodec.weights.resolve`), as hex.
    Raises ``OSError`` when one cannot be read."""
    h = hashlib.sha256()
    for f in sorted(weights.resolve(folder).glob("*.safetensors")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def curve(folder: Path, images: list[np.ndarray], qualities: list[int], refine: int) -> dict:
    """``{"bpp": [...], "psnr": [...]}`` per quality, each the mean over ``images``
    (``(H, W, 3)`` uint8): bpp from the ``.vae`` bytes, PSNR in dB; ``"image_bpp"`` and
    ``"image_psnr"`` hold the per-image values (one list per quality). Raises
    :class:`vaecodec.weights.WeightsError` when ``folder`` holds no usable weights."""
    from tqdm import tqdm
    model = weights.load(str(folder), refine=refine > 0)
    rates, dbs = [], []
    with tqdm(total=len(qualities) * len(images), desc=str(folder), unit="file") as bar:
        for q in qualities:
            rates.append([])
            dbs.append([])
            for rgb in images:
                data = codec.compress_array(rgb, quality=q, model=model, refine=refine)
                out = codec.decompress_array(data, model=model).rgb
                rates[-1].append(8 * len(data) / (rgb.shape[0] * rgb.shape[1]))
                dbs[-1].append(metrics.psnr_rgb(rgb, out))
                bar.update(1)
    return {"bpp": [float(np.mean(r)) for r in rates], "psnr": [float(np.mean(d)) for d in dbs],
            "image_bpp": rates, "image_psnr": dbs}


def source_groups(files: list[Path]) -> dict[str, list[int]]:
    """Indices of ``files`` by source, the file-name prefix before the first ``_``
    (``bsds500_test_100007.jpg`` -> ``bsds500``; a name without ``_`` is its own source)."""
    groups: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        groups.setdefault(f.stem.split("_", 1)[0], []).append(i)
    return groups


def subset(result: dict, indices: list[int]) -> dict:
    """The mean curve of ``result`` over the images at ``indices``."""
    return {k: [float(np.mean([per_q[i] for i in indices])) for per_q in result[f"image_{k}"]]
            for k in ("bpp", "psnr")}


def read_cached(path: Path, count: int, images: int) -> dict | None:
    """The curve stored at ``path`` (``count`` qualities of ``images`` images), or ``None`` when
    there is none or it is unusable (older caches without per-image values included)."""
    try:
        result = json.loads(path.read_text())
        if all(len(result[k]) == count and all(isinstance(v, float) for v in result[k])
               for k in ("bpp", "psnr")) and \
                all(len(result[f"image_{k}"]) == count and
                    all(len(per_q) == images for per_q in result[f"image_{k}"]) for k in ("bpp", "psnr")):
            return result
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def write_cached(path: Path, result: dict) -> None:
    """Store ``result`` at ``path`` atomically (temporary file, then rename)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)


def parse_qualities(text: str) -> list[int]:
    """``"1,4,8"`` -> ``[1, 4, 8]``; raises ``click.BadParameter`` unless at least 2 distinct
    whole qualities from 1 to 8."""
    try:
        qs = [int(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"not a list of whole numbers: {text!r}", param_hint="--qualities")
    if len(qs) < 2 or len(set(qs)) != len(qs):
        raise click.BadParameter("BD-rate needs at least 2 qualities, each once",
                                 param_hint="--qualities")
    if not all(1 <= q <= 8 for q in qs):
        raise click.BadParameter(f"qualities are 1 to 8, got {text!r}", param_hint="--qualities")
    return sorted(qs)


@click.command()
@click.argument("folders", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", type=click.Path(exists=True, file_okay=False), default="../shared/data/train",
              show_default=True, help="Training folder whose validation split is scored.")
@click.option("--qualities", default="1,2,3,4,5,6,7,8", show_default=True,
              help="Comma-separated whole quality levels (1-8), at least 2.")
@click.option("--refine", type=click.IntRange(0, codec.MAX_REFINE), default=0, show_default=True,
              help="Encoder-side refinement steps (vaecodec compress --refine).")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=CACHE,
              show_default=True, help="Folder of measured curves, keyed by the SHA-256 of the "
                                      "weights and of the scored images.")
@click.option("--no-cache", is_flag=True, help="Measure again instead of reading the cache.")
def main(folders, data, qualities, refine, cache, no_cache):
    """Score weights FOLDERS on the validation split; BD-rate against the first folder."""
    qs = parse_qualities(qualities)
    try:
        files, images = validation_images(data)
        groups = source_groups(files)
        cache.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as exc:   # no images, an unreadable image, a bad --cache
        raise click.ClickException(str(exc)) from None
    ref = None
    for folder in folders:
        result = score(folder, images, qs, refine, cache, no_cache)
        if ref is None:
            ref = result
        click.echo(line(str(folder), result, ref, qs, result is ref))
        for name, indices in (groups.items() if len(groups) > 1 else ()):
            click.echo(line(f"  {name} ({len(indices)} images)", subset(result, indices),
                            subset(ref, indices), qs, result is ref))


def score(folder: Path, images: list[np.ndarray], qs: list[int], refine: int, cache: Path,
          no_cache: bool = False) -> dict:
    """:func:`curve` of ``folder``, read from the ``cache`` folder when it holds one for the
    same weights and pixels and written there otherwise. Raises ``click.ClickException`` for
    weights that cannot be read or used."""
    # what is scored, whatever the files are called
    scored = " ".join(benchmark.pixel_digest(Image.fromarray(rgb)) for rgb in images)
    try:
        # the encoder's arithmetic too: the analysis transform's precision changes the files
        analysis = "bf16" if hardware.native_bf16(torch.device("cpu")) else "fp32"
        key = hashlib.sha256(f"{weights_digest(folder)} {scored} {refine} {qs} analysis {analysis}".encode())
    except OSError as exc:
        raise click.ClickException(f"{folder}: {exc}") from None
    cached = cache / f"{key.hexdigest()[:24]}.json"
    result = None if no_cache else read_cached(cached, len(qs), len(images))
    if result is None:
        try:
            result = curve(folder, images, qs, refine)
        except weights.WeightsError as exc:   # not an export, damaged, another model
            raise click.ClickException(f"{folder}: {exc}") from None
        write_cached(cached, result)
    return result


def validation_images(data) -> tuple[list[Path], list[np.ndarray]]:
    """The held-out validation files of the training folder ``data`` and their pixels
    (``(H, W, 3)`` uint8). Raises ``OSError``/``ValueError`` for no or unreadable images."""
    files = train.split_validation(train.list_images(data))[1]
    return files, [read_image(f)[0] for f in files]


def line(label: str, result: dict, ref: dict, qs: list[int], is_ref: bool) -> str:
    """One printed curve: ``label``, its points and its BD-rate against ``ref``."""
    points = " ".join(f"q{q} {b:.4f}/{p:.2f}" for q, b, p in zip(qs, result["bpp"], result["psnr"]))
    if is_ref:
        return f"{label} (reference): {points}"
    bd = metrics.bd_rate(ref["bpp"], ref["psnr"], result["bpp"], result["psnr"])
    verdict = f"BD-rate vs reference {bd:+.2f} %" if np.isfinite(bd) else \
        "no BD-rate (the PSNR ranges of the curves do not overlap)"
    return f"{label}: {verdict}  {points}"


if __name__ == "__main__":
    main()
