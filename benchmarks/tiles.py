"""Rate saved by coding a large photo as one set of latents instead of independent 1024-px tiles.

    python benchmarks/tiles.py [--data ../shared/data/large] [--qualities 2,5] [--out benchmarks/tiles.md]
    python benchmarks/tiles.py --refine 10 --images quantette_bryggen,... --out benchmarks/tiles-refine.md

For every image of the folder (camera-sized photos; evaluation only, never training), or those
``--images`` names, codes it at each quality twice with the same model: as vaecodec writes it
now (one tile up to 33.5 megapixels, transforms, and with ``--refine`` the refinement, run in
windows) and as independent 1024-px tiles overlapping by 64 px (vaecodec 0.1.0's layout, still
written for images over 33.5 megapixels). Prints and writes a Markdown table: bytes, PSNR (RGB)
and the size change of each image, the mean change, and the encode times.
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


def code(rgb: np.ndarray, quality: float, model, tiles: bool, refine: int = 0) -> tuple[int, float, float]:
    """Bytes, PSNR (dB) and encode seconds of ``rgb`` at ``quality`` with ``refine`` steps, as
    one tile or (``tiles``) as independent 1024-px tiles."""
    geometry = codec._geometry
    if tiles:
        codec._geometry = lambda h, w, refine=0: (codec.TILE, codec.OVERLAP)
    try:
        start = time.perf_counter()
        data = codec.compress_array(rgb, quality, model=model, refine=refine)
        seconds = time.perf_counter() - start
        out = codec.decompress_array(data, model=model).rgb
    finally:
        codec._geometry = geometry
    return len(data), metrics.psnr_rgb(rgb, out), seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "large"))
    parser.add_argument("--qualities", default="2,5")
    parser.add_argument("--refine", type=int, default=0, help="refinement steps (0: none)")
    parser.add_argument("--images", default="", help="comma list of file names without suffix (default: all)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "tiles.md"))
    args = parser.parse_args(argv)
    files = sorted(p for p in Path(args.data).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if args.images:
        names = args.images.split(",")
        files = [p for p in files if p.stem in names]
        if len(files) != len(names):
            parser.error(f"--images: not all of {names} are in {args.data}")
    qualities = [float(q) for q in args.qualities.split(",")]
    model = codec.get_model(refine=bool(args.refine))
    rows, changes, times = [], {q: [] for q in qualities}, []
    for f in files:
        rgb = read_image(f)[0]
        mp = rgb.shape[0] * rgb.shape[1] / 1e6
        for q in qualities:
            whole = code(rgb, q, model, tiles=False, refine=args.refine)
            tiled = code(rgb, q, model, tiles=True, refine=args.refine)
            change = 100 * (whole[0] / tiled[0] - 1)
            changes[q].append(change)
            rows.append(f"| {f.stem} | {rgb.shape[1]}×{rgb.shape[0]} ({mp:.1f} MP) | {q:g} | "
                        f"{tiled[0]:,} / {tiled[1]:.2f} dB | {whole[0]:,} / {whole[1]:.2f} dB | "
                        f"{change:+.2f} % | {whole[2]:.0f} s / {tiled[2]:.0f} s |")
            times.append(whole[2] / tiled[2])
            print(rows[-1], flush=True)
    lines = [
        "# One set of latents vs independent 1024-px tiles",
        "",
        f"Measured {dt.date.today().isoformat()} with `python benchmarks/tiles.py` on "
        f"{platform.processor() or platform.machine()} ({len(files)} photos of "
        f"`{Path(args.data).name}`, evaluation only), release {model.release or 'none'}"
        + (f", `--refine {args.refine}`" if args.refine else "") + ". "
        "Bytes of the whole file; PSNR on RGB; encode time in one process (one tile / tiles), "
        "each image coded both ways back to back.",
        "",
        "| image | size | quality | 1024-px tiles: bytes / PSNR | one tile: bytes / PSNR | bytes | encode time |",
        "|---|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Mean size change: " + ", ".join(f"quality {q:g}: {np.mean(v):+.2f} %" for q, v in changes.items())
        + f"; encode time, one tile / tiles: {np.exp(np.mean(np.log(times))):.2f}x (geometric mean).",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(lines[-2])


if __name__ == "__main__":
    main()
