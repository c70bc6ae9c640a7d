"""The top quality's ceiling: how well the transforms reconstruct from latents left unrounded.

``g_s(g_a(x) · gain · inverse gain)`` at a quality level's gains, with no rounding and no
latent residual prediction, is the most any quantisation step, gain or extra quality level
could reach with these analysis and synthesis transforms; beside it, the PSNR of the real
``.vae`` file at that quality and its rate. Scored on the training folder's validation split
(:func:`vaecodec.train.split_validation`, as ``benchmarks/validation.py``), or with
``--all-images`` on every image of an evaluation set such as Kodak, to *report* only (never
to tune)::

    python benchmarks/ceiling.py weights build/s40
    python benchmarks/ceiling.py weights --data ../shared/data/kodak --all-images

PSNR is on RGB 0..255 of the unpadded image, averaged over images in dB; bpp from the file.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from vaecodec import codec, metrics, train, weights  # noqa: E402
from vaecodec.imageio import read_image  # noqa: E402


def unrounded(coder, rgb: np.ndarray, quality: float) -> np.ndarray:
    """``(H, W, 3)`` uint8 reconstruction of ``rgb`` ``(H, W, 3)`` uint8 from the analysis
    transform's latents at ``quality``'s gain, unrounded, through its inverse gain."""
    h, w = rgb.shape[:2]
    x = codec._pad_to_stride(torch.tensor(rgb).permute(2, 0, 1)[None]).float() / 255
    gain, inv_gain = coder.gains(quality)
    y = coder.analysis(x) * (gain * inv_gain).detach()[:, None, None]
    x_hat = coder.synthesis(y)[0, :, :h, :w].clamp(0, 1)
    return np.round(x_hat.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


@click.command()
@click.argument("folders", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", type=click.Path(exists=True, file_okay=False), default="../shared/data/train",
              show_default=True, help="Training folder whose validation split is scored.")
@click.option("--all-images", is_flag=True,
              help="Score every image of --data (an evaluation set such as Kodak), not the split.")
@click.option("--quality", type=click.IntRange(1, 8), default=8, show_default=True,
              help="The quality level whose gains are used (8: the top).")
def main(folders, data, all_images, quality):
    """Ceiling and real file of each weights folder in FOLDERS at --quality."""
    try:
        files = train.list_images(data)
        if not all_images:
            files = train.split_validation(files)[1]
        images = [read_image(f)[0] for f in files]
    except (OSError, ValueError) as exc:   # no images, an unreadable image
        raise click.ClickException(str(exc)) from None
    click.echo(f"{len(images)} images of {data}, quality {quality}")
    for folder in folders:
        try:
            coder = weights.load(str(folder))
        except weights.WeightsError as exc:   # not an export, damaged
            raise click.ClickException(f"{folder}: {exc}") from None
        ceiling, real, bpp = [], [], []
        for rgb in images:
            ceiling.append(metrics.psnr_rgb(rgb, unrounded(coder, rgb, quality)))
            data_bytes = codec.compress_array(rgb, quality=quality, model=coder)
            real.append(metrics.psnr_rgb(rgb, codec.decompress_array(data_bytes, model=coder).rgb))
            bpp.append(8 * len(data_bytes) / (rgb.shape[0] * rgb.shape[1]))
        click.echo(f"{folder} (step {coder.steps:,}): unrounded {np.mean(ceiling):.2f} dB; "
                   f"file {np.mean(bpp):.3f} bpp / {np.mean(real):.2f} dB")


if __name__ == "__main__":
    main()
