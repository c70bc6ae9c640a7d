"""``vaecodec benchmark``: the click command (registered lazily by :mod:`vaecodec.cli`)."""
from __future__ import annotations

from pathlib import Path

import click

from .codecs import ALIASES, CODECS, DEFAULT_CODECS, REFINED, parse_codecs
from .images import default_dataset
from .report import ANCHOR, SUBJECT, _fmt
from .run import run_benchmark


#: The files :func:`run_benchmark` writes into its output folder.
RESULT_FILES = ("results.json", "per-image.json", "per-image.csv", "report.md", "rd-psnr.png",
                "rd-msssim.png")


def _parse_codecs_option(ctx, param, value):
    if param.name == "reuse" and not value:
        return []
    return parse_codecs(value, option=param.opts[0])


@click.command("benchmark", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dataset", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None,
              help="Directory of images (PNG, PPM, BMP, TIFF, ...). Default: "
                   "../shared/data/kodak from the current directory or <repo>/../shared/data/"
                   "kodak when present, else scikit-image's sample photographs.")
@click.option("--codecs", default=",".join(DEFAULT_CODECS), show_default=True,
              callback=_parse_codecs_option,
              help=f"Comma list of codecs: {', '.join(CODECS)} (aliases: "
                   f"{', '.join(f'{a}={n}' for a, n in ALIASES.items())}). Unavailable ones are "
                   "skipped with a notice.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory. Default: benchmarks/results/<dataset name>.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes, parallel over images (timings get noisier).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N images (sorted by file name).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Threads each codec may use (1 keeps encode/decode times comparable).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--reuse", default="", metavar="CODECS", callback=_parse_codecs_option,
              help="Comma list of codecs whose per-image results already in OUT are kept "
                   "(e.g. the classical codecs when only the vaecodec weights changed); the "
                   "rest of OUT's results are rewritten.")
@click.option("-f", "--force", is_flag=True,
              help="Overwrite the results of an earlier run in OUT (refused without it, "
                   "unless --reuse names codecs to keep from them).")
def benchmark_command(dataset: Path | None, codecs: list[str], out: Path | None, jobs: int,
                      limit: int | None, threads: int, quiet: bool, reuse: list[str],
                      force: bool) -> None:
    """Rate-distortion benchmark of vaecodec against JPEG, WebP, AVIF, JPEG XL and JPEG 2000.

    For every image and quality it measures the real file size (bpp), PSNR-RGB (dB), MS-SSIM
    and encode/decode times (s); it writes results.json (CompressAI's plotting layout),
    per-image.json/.csv, report.md (BD-rate and BD-PSNR against JPEG and of vaecodec head to
    head against each codec, PSNR at 0.25/0.5/1 bpp, per-quality tables), rd-psnr.png and
    rd-msssim.png.

    Example: vaecodec benchmark --codecs jpeg,webp,avif --limit 4 --jobs 2
    """
    if dataset is None:
        dataset = default_dataset()
    name = dataset.resolve().name if dataset is not None else "skimage"
    if out is None:
        out = Path("benchmarks") / "results" / name
    earlier = [f for f in RESULT_FILES if (Path(out) / f).exists()]
    if earlier and not force and not reuse:
        raise click.ClickException(
            f"{out} holds the results of an earlier run ({', '.join(earlier)}); use --force to "
            "overwrite them, --reuse CODECS to keep some, or another --out")
    try:   # the plots need it: refuse now, not after an hour of measuring
        import matplotlib  # noqa: F401
    except ImportError:
        raise click.ClickException("the benchmark's plots need matplotlib: pip install "
                                   "'vaecodec[bench]' (or pip install matplotlib)") from None
    result = run_benchmark(dataset, codecs, out, jobs=jobs, limit=limit, threads=threads,
                           progress=not quiet, reuse=reuse)
    click.echo(f"{len(result['images'])} images, codecs: "
               f"{', '.join(e['name'] for e in result['results'])}")
    if result["anchor"]:
        for e in result["results"]:
            b = result["bd"][e["codec"]]
            click.echo(f"  {e['name']:<10} BD-rate {_fmt(b['bd_rate_psnr_pct'], 1, True):>7} %  "
                       f"BD-PSNR {_fmt(b['bd_psnr_db'], 2, True):>6} dB  (vs JPEG)")
    for key, subject in (("head_to_head", SUBJECT), ("head_to_head_refined", REFINED)):
        for e in result["results"]:
            b = result[key].get(e["codec"])
            if b is not None and e["codec"] != ANCHOR:
                click.echo(f"  {subject} vs {e['name']:<10} BD-rate "
                           f"{_fmt(b['bd_rate_psnr_pct'], 1, True):>7} %  "
                           f"BD-PSNR {_fmt(b['bd_psnr_db'], 2, True):>6} dB  (head to head)")
    click.echo(f"wrote {result['files']['report']} and results.json, plots in {out}")
