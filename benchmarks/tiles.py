"""Rate saved by coding a large photo as one set of latents instead of independent 1024-px tiles.

    python benchmarks/tiles.py [--data ../shared/data/large] [--qualities 2,5] [--out benchmarks/tiles.md]

For every image of the folder (camera-sized photos; evaluation only, never training), codes it
at each quality twice with the same model: as vaecodec writes it now (one tile up to 33.5
megapixels, transforms run in windows) and as independent 1024-px tiles overlapping by 64 px
(vaecodec 0.1.0's layout, still written for refined and very large images). Prints and writes a
Markdown table: bytes, PSNR (RGB) and the size change of each image, and the mean change.
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from vaecodec import codec, metrics  # noqa: E402
from vaecodec.imageio import read_image  # noqa: E402


def code(rgb: np.ndarray, quality: float, model, tiles: bool) -> tuple[int, float, float]:
    """Bytes, PSNR (dB) and seconds (encode + decode) of ``rgb`` at ``quality``, as one tile
    or (``tiles``) as independent 1024-px tiles."""
    geometry = codec._geometry
    if tiles:
        codec._geometry = lambda h, w, refine=0: (codec.TILE, codec.OVERLAP)
    try:
        start = time.perf_counter()
        data = codec.compress_array(rgb, quality, model=model)
        out = codec.decompress_array(data, model=model).rgb
        seconds = time.perf_counter() - start
    finally:
        codec._geometry = geometry
    return len(data), metrics.psnr_rgb(rgb, out), seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "large"))
    parser.add_argument("--qualities", default="2,5")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "tiles.md"))
    args = parser.parse_args(argv)
    files = sorted(p for p in Path(args.data).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    qualities = [float(q) for q in args.qualities.split(",")]
    model = codec.get_model()
    rows, changes = [], {q: [] for q in qualities}
    for f in files:
        rgb = read_image(f)[0]
        mp = rgb.shape[0] * rgb.shape[1] / 1e6
        for q in qualities:
            whole = code(rgb, q, model, tiles=False)
            tiled = code(rgb, q, model, tiles=True)
            change = 100 * (whole[0] / tiled[0] - 1)
            changes[q].append(change)
            rows.append(f"| {f.stem} | {rgb.shape[1]}×{rgb.shape[0]} ({mp:.1f} MP) | {q:g} | "
                        f"{tiled[0]:,} / {tiled[1]:.2f} dB | {whole[0]:,} / {whole[1]:.2f} dB | "
                        f"{change:+.2f} % | {whole[2]:.0f} s / {tiled[2]:.0f} s |")
            print(rows[-1], flush=True)
    lines = [
        "# One set of latents vs independent 1024-px tiles",
        "",
        f"Measured {dt.date.today().isoformat()} with `python benchmarks/tiles.py` on "
        f"{platform.processor() or platform.machine()} ({len(files)} photos of "
        f"`{Path(args.data).name}`, evaluation only), release {model.release or 'none'}. "
        "Bytes of the whole file; PSNR on RGB; time is encode + decode in one process (whole / tiles).",
        "",
        "| image | size | quality | 1024-px tiles: bytes / PSNR | one tile: bytes / PSNR | bytes | time |",
        "|---|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Mean size change: " + ", ".join(f"quality {q:g}: {np.mean(v):+.2f} %" for q, v in changes.items()),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(lines[-2])


if __name__ == "__main__":
    main()
