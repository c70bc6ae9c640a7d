"""Command line: ``vaecodec compress | decompress | info | train | export | benchmark``.

Every expected failure (bad input, damaged file, missing weights) ends with one line on stderr
and a non-zero exit status, never a traceback (set ``VAECODEC_DEBUG=1`` to see one).
"""
from __future__ import annotations

import contextlib
import importlib
import io
import math
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import click

GLIBC_FAST_MALLOC = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"


def _expected_errors() -> tuple[type[Exception], ...]:
    """Exception types whose message is meant for the user (imported lazily: torch is slow)."""
    from .bitstream import BitstreamError
    from .errors import ImageError
    from .releases import ReleaseError
    errors = [BitstreamError, ImageError, ReleaseError, OSError, MemoryError]
    try:
        from .codec import CodecError
        from .entropy import EntropyCodingError
        from .train import TrainingError
        from .weights import WeightsError
        errors += [CodecError, EntropyCodingError, TrainingError, WeightsError]
    except Exception:  # a broken install must still give a one-line error
        pass
    return tuple(errors)


def _path_argument(ctx, param, value: str) -> Path:
    """Click callback: refuse empty paths and directory-style paths ending in '/'. Only a bare
    "-" means standard input/output; ``./-`` names a file called "-" (pathlib would shorten it
    to "-", so it is made absolute)."""
    if not value:
        raise click.BadParameter("empty path")
    if param.name == "output" and value.endswith(("/", os.sep)):
        raise click.BadParameter(f"{value!r} names a directory; give a file name")
    if value != "-" and Path(value) == Path("-"):
        return Path(os.path.abspath(value))
    return Path(value)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is so that cleanup (``finally``) runs: a half-written
    temporary output file is removed, as on Ctrl-C."""


def _raise_terminated(signum, frame):
    raise _Terminated()


class FriendlyGroup(click.Group):
    """Turns expected exceptions into ``Error: <one line>`` and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, _Terminated)
            if not getattr(exc, "reported", False):  # train's graceful stop has said what to do
                click.echo(f"Error: {'terminated' if terminated else 'interrupted'}", err=True)
            raise click.exceptions.Exit(143 if terminated else 130) from None
        except Exception as exc:
            if os.environ.get("VAECODEC_DEBUG"):
                raise
            if isinstance(exc, _expected_errors()):
                msg = str(exc) if not isinstance(exc, MemoryError) else "not enough memory"
                if isinstance(exc, OSError) and exc.strerror:
                    msg = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
                raise click.ClickException(msg) from None
            raise click.ClickException(f"internal error ({type(exc).__name__}: {exc}); "
                                       "rerun with VAECODEC_DEBUG=1 for details") from None


def _print_version(ctx, param, value):
    """``--version``: the package version and every model release it decodes."""
    if not value or ctx.resilient_parsing:
        return
    from . import releases
    shipped = releases.shipped()
    lines = [f"vaecodec {releases.package_version()}", "model releases (decoded; * also encoded):"]
    lines += [f"  {r.id}{' *' if r.can_encode else '  '}  fingerprint {r.fingerprint.hex()}, "
              f"vaecodec {r.version}, {releases.describe_sizes(r)}" for r in shipped] or ["  none installed"]
    click.echo("\n".join(lines))
    ctx.exit()


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and the model releases it decodes, then exit.")
def main():
    """vaecodec: a learned image codec (mean-scale hyperprior VAE).

    \b
    vaecodec compress photo.png photo.vae --quality 4
    vaecodec decompress photo.vae restored.png
    vaecodec info photo.vae
    cat photo.png | vaecodec compress - - > photo.vae    ("-" is standard input/output)
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)   # train installs its own graceful stop


@contextlib.contextmanager
def _progress(total: int, desc: str, unit: str = "tile"):
    """Yields the update function of a tqdm bar for work of several ``unit`` (tiles, refinement
    steps) on a terminal (no bar for a single unit or when stderr is not a terminal). The bar is
    removed when the block ends, also on an error, so the ``Error: ...`` line is not glued to it."""
    if total <= 1:
        yield lambda n: None
        return
    from tqdm import tqdm
    with tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr,
              disable=None) as bar:
        yield bar.update


MAX_REFINE = 1000   # = codec.MAX_REFINE; the CLI imports codec (and torch) only when it runs
STDIO = "-"   # INPUT "-" is standard input, OUTPUT "-" standard output
MAX_STDIN_IMAGE_BYTES = 1 << 30


def _stdin():
    if sys.stdin is None:   # the shell closed it (<&-)
        raise click.ClickException("standard input is closed")
    return sys.stdin.buffer


def _stdout():
    if sys.stdout is None:   # >&-
        raise click.ClickException("standard output is closed")
    return sys.stdout.buffer


def _stdin_stat() -> os.stat_result | None:
    """``fstat`` of standard input, or None where it has no descriptor (a test runner's)."""
    try:
        return os.fstat(_stdin().fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return None


def _check_not_stdin(output: Path) -> None:
    """Refuse an OUTPUT that is the very file redirected into standard input (``- x < x``)."""
    st = _stdin_stat()
    try:
        same = st is not None and os.path.samestat(st, os.stat(output))
    except OSError:
        same = False
    if same:
        raise click.ClickException(f"output path is the same as the input: {output}")


def _is_stdio(path: Path) -> bool:
    return str(path) == STDIO


def _shown(path: Path, output: bool = False) -> str:
    """``path`` as messages name it: "-" is standard input or standard output."""
    if _is_stdio(path):
        return "standard output" if output else "standard input"
    return str(path)


def _read_input_bytes(path: Path) -> bytes:
    """The bytes of a .vae file (a pipe works too, and "-" is standard input). The magic bytes
    are checked before the rest is read, so a wrong file (a video, /dev/zero) is refused without
    reading it into memory. A regular file is read whole (its size bounds it, and unpack checks
    the CRC before any field); from a pipe or device no more is read than its length fields
    declare (:func:`bitstream.read_file`), so an endless stream cannot exhaust memory."""
    if _is_stdio(path):
        st = _stdin_stat()   # `- < file` is read as the file itself
        data = _read_vae_stream(_stdin(), st is not None and stat.S_ISREG(st.st_mode))
    else:
        if not path.exists():
            raise click.ClickException(f"no such file: {path}")
        if path.is_dir():
            raise click.ClickException(f"{path} is a directory, not a .vae file")
        with path.open("rb") as f:
            data = _read_vae_stream(f, path.is_file())
    if not data:
        raise click.ClickException(f"{_shown(path)} is empty")
    return data


def _read_vae_stream(f, regular: bool) -> bytes:
    """A regular file's bytes whole once its magic bytes check out; from anything else exactly
    the one .vae file its length fields declare (:func:`bitstream.read_file`)."""
    from .bitstream import MAGIC, check_magic, read_file
    if not regular:
        return read_file(f)
    data = f.read(len(MAGIC))
    if len(data) == len(MAGIC):  # shorter: unpack reports it as truncated
        check_magic(data)
    return data + f.read()


def _read_stdin_image() -> bytes:
    """An image file's bytes from standard input, at most :data:`MAX_STDIN_IMAGE_BYTES`."""
    stream, data = _stdin(), bytearray()
    while chunk := stream.read(1 << 20):
        data += chunk
        if len(data) > MAX_STDIN_IMAGE_BYTES:
            raise click.ClickException("standard input holds more than 1 GiB; save the image to "
                                       "a file and compress that")
    return bytes(data)


def _check_stdout(what: str) -> None:
    """Refuse to write binary ``what`` to a terminal (it would garble the screen)."""
    if _stdout().isatty():
        raise click.ClickException(f"refusing to write {what} to a terminal; redirect standard "
                                   "output (> file, | command) or name an OUTPUT file")


def _write_stdout(data: bytes) -> None:
    """Write all of ``data`` to standard output (a write to a pipe can return after part of
    it). A reader that closed the pipe early is a one-line error; standard output then points
    at /dev/null, so that Python's flush at exit does not print a second complaint (as the
    Python docs advise for SIGPIPE)."""
    stream, view = _stdout(), memoryview(data)
    try:
        while view:   # a pipe can take part of the data; a closed one then raises
            written = stream.write(view)
            if not written:
                raise click.ClickException("standard output takes no more data")
            view = view[written:]
        stream.flush()
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise click.ClickException("standard output was closed before the whole file was "
                                   "written") from None


class _FiniteFloatRange(click.FloatRange):
    """A FloatRange that also refuses NaN and ±inf: click's lets NaN through (every comparison
    with NaN is false), and an infinite learning rate or budget is never meant."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number.", param, ctx)
        return number


def _crop_option(ctx, param, value):
    from .model import STRIDE   # the transforms' total downsampling (y by 16, z by 4 more)
    if value < STRIDE or value % STRIDE:
        raise click.BadParameter(f"{value} is not a positive multiple of {STRIDE} "
                                 f"(try {max(STRIDE, value // STRIDE * STRIDE)}).")
    return value


_POSITIVE = _FiniteFloatRange(min=0, min_open=True)


def _check_output(input: Path, output: Path, force: bool, stdout_what: str, image: bool = False) -> None:
    """Refuse an OUTPUT that cannot be written before any coding work is done: standard output
    that is a terminal (for binary ``stdout_what``), the input itself, an unknown image
    extension, a missing or read-only directory, an existing file without --force."""
    from . import fileio, imageio
    if _is_stdio(output):
        _check_stdout(stdout_what)
        return
    if _is_stdio(input):
        _check_not_stdin(output)
    else:
        fileio.check_distinct(input, output)
    if os.path.isdir(output):   # before the extension, which a directory rarely has
        raise imageio.ImageError(f"cannot write {output}: it is a directory")
    if image and output.suffix.lower() not in imageio.WRITE_FORMATS:
        shown = f"'{output.suffix.lower()}'" if output.suffix else "no extension"
        raise imageio.ImageError(f"cannot write {output}: unknown image extension ({shown}); "
                                 f"use one of {', '.join(imageio.WRITE_FORMATS)}")
    _, _, parent = fileio.resolve_target(output, force)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise imageio.ImageError(f"cannot write {output}: permission denied")


@main.command()
@click.argument("input", type=click.Path(), callback=_path_argument)
@click.argument("output", type=click.Path(), callback=_path_argument)
@click.option("-q", "--quality", type=_FiniteFloatRange(1, 8), default=4.0, show_default=True,
              help="1 (smallest file) to 8 (best quality), in steps of 0.001; "
                   "fractions interpolate between the trained levels.")
@click.option("--refine", type=click.IntRange(0, MAX_REFINE), default=0, show_default=True,
              metavar="STEPS",
              help="Search for better latents before coding (encoder-side refinement, Yang et "
                   "al. 2020): 30 steps make files about 8 % smaller at the same PSNR, 60 "
                   "steps about 9 % (Kodak). "
                   "Each step takes about 1.5-2 s per megapixel on two cores (0.1 s for a "
                   "small image), after a start-up of a few seconds; a large image needs "
                   "about 2 GB of memory. Decoding is unchanged.")
@click.option("-f", "--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--model", "release", metavar="ID", default=None,
              help="Model release to encode with (default: the newest; `vaecodec --version` "
                   "lists them). Files record their release, and every release keeps decoding.")
@click.option("--weights", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of exported weights instead of a release (for training exports).")
def compress(input: Path, output: Path, quality: float, refine: int, force: bool,
             release: str | None, weights: Path | None):
    """Compress an image (PNG, JPEG, TIFF, BMP, WebP, ...) into a .vae file.

    INPUT "-" reads the image from standard input; OUTPUT "-" writes the .vae file to
    standard output (messages then go to standard error).
    """
    from . import api, codec, fileio
    if release is not None and weights is not None:
        raise click.UsageError("give --model or --weights, not both")
    stdin, stdout = _is_stdio(input), _is_stdio(output)
    _check_output(input, output, force, "a .vae file")
    if release is not None:   # an unknown release: refused before the image is read
        api.encoder(release, refine)
    rgb, meta = api.read(_read_stdin_image(), "standard input") if stdin else api.read(input)
    h, w = rgb.shape[:2]
    codec.check_size(h, w)
    if not stdout and output.suffix.lower() != ".vae":
        meta.notices.append(f"{output} does not end in .vae (it will hold a .vae stream)")
    for notice in meta.notices:
        click.echo(f"note: {notice}", err=True)
    api.encoder(release, refine, weights)   # loaded before the clock starts
    with _progress(codec.work_units(h, w, refine), "compress", "step" if refine else "tile") as update:
        start = time.perf_counter()
        data = api.compress_read(rgb, meta, quality, refine=refine, model=release, weights=weights,
                                 progress=update)
        seconds = time.perf_counter() - start
    if stdout:
        _write_stdout(data)
    else:
        fileio.atomic_write_bytes(output, data, force=force)
    click.echo(f"{_shown(input)} -> {_shown(output, True)}: {len(data):,} bytes, "
               f"{8 * len(data) / (h * w):.3f} bpp, {w}x{h} {meta.mode}, "
               f"quality {round(quality * 1000) / 1000:g}, {seconds:.2f} s", err=stdout)


@main.command()
@click.argument("input", type=click.Path(), callback=_path_argument)
@click.argument("output", type=click.Path(), callback=_path_argument)
@click.option("-f", "--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--weights", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of exported weights (default: the model release the file names).")
def decompress(input: Path, output: Path, force: bool, weights: Path | None):
    """Decompress a .vae file into an image; the format follows OUTPUT's extension (.png, ...).

    INPUT "-" reads the .vae file from standard input; OUTPUT "-" writes a PNG image to
    standard output (messages then go to standard error).
    """
    from . import api, bitstream, codec, imageio
    stdout = _is_stdio(output)
    _check_output(input, output, force, "a PNG image", image=True)
    data = _read_input_bytes(input)
    header = bitstream.peek_header(data)
    api.decoder(header, weights)   # loaded (or the file's release refused) before the clock starts
    if not stdout:
        imageio.check_output_mode(output, header.mode)   # e.g. RGBA to .jpg: refuse before decoding
    # the grid the image size implies (bounded); decompress_array refuses a file whose tiling
    # differs before it allocates anything
    with _progress(codec.file_tile_count(header), "decompress") as update:
        start = time.perf_counter()
        image, _ = api.decode(data, weights=weights, progress=update)
        seconds = time.perf_counter() - start
    icc = image.info.get("icc_profile")
    if stdout:
        png, notices = imageio.encode_png(image, icc)
        _write_stdout(png)
    else:
        notices = imageio.write_image(output, image, icc, force=force)
    for notice in notices:
        click.echo(f"note: {notice}", err=True)
    click.echo(f"{_shown(input)} -> {_shown(output, True)}: {header.width}x{header.height} "
               f"{header.mode}, {seconds:.2f} s", err=stdout)


@main.command()
@click.argument("file", type=click.Path(), callback=_path_argument)
def info(file: Path):
    """Show the header of a .vae file ("-": standard input): size, mode, quality, bpp, tiles,
    model release and weights fingerprint."""
    from . import bitstream, releases
    data = _read_input_bytes(file)
    c = bitstream.unpack(data)
    h = c.header
    try:
        release = releases.for_header(h).id
        release += "" if h.release else " (named by its fingerprint: a format 1 file)"
    except releases.ReleaseError:
        release = (f"{h.release} (not in this vaecodec: a newer one decodes it)" if h.release
                   else "none (weights that are no release)")
    kinds = {1: "ICC profile", 2: "alpha", 3: "EXIF", 4: "XMP"}
    click.echo(f"file:        {_shown(file)} ({len(data):,} bytes)\n"
               f"image:       {h.width}x{h.height} {h.mode}\n"
               f"bpp:         {8 * len(data) / (h.width * h.height):.4f}\n"
               f"quality:     {h.quality_milli / 1000:g}\n"
               f"tiles:       {len(c.tiles)}" + (f" ({h.tile_size} px, overlap {h.tile_overlap})"
                                                 if h.tile_size else "") + "\n"
               f"latents:     M={h.latent_channels} N={h.hyper_channels}\n"
               f"release:     {release}\n"
               f"weights:     {h.fingerprint.hex()}\n"
               f"format:      version {data[4]}\n"
               f"sections:    " + (", ".join(f"{kinds.get(s.kind, s.kind)} ({len(s.data):,} bytes)"
                                             for s in c.sections) or "none"))


def _lambdas_option(ctx, param, value):
    if value is None:
        return None
    from .model import check_lambdas
    try:
        return check_lambdas(value.split(","))
    except ValueError as e:
        raise click.BadParameter(f"{value!r}: {e}") from None


@main.command()
@click.option("--data", "data", type=click.Path(exists=True, file_okay=False), required=True,
              help="Folder of training images (never the evaluation set).")
@click.option("--out", default="runs/train", show_default=True, help="Run folder: log, checkpoint.")
@click.option("--minutes", type=_POSITIVE, default=60.0, show_default=True, help="Time budget.")
@click.option("--max-steps", type=click.IntRange(min=0), default=0,
              help="Stop after this many steps of this run, resumed or not (0: no limit).")
@click.option("--crop", type=int, default=256, show_default=True,
              callback=_crop_option,
              help="Crop size in pixels, a multiple of 64. 128 is faster early on, but most "
                   "latents of a 128² crop sit at its border; photos are mostly interior.")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Crops per step.")
@click.option("--sampling", type=click.Choice(["area", "image"]), default="area", show_default=True,
              help="How each crop's image is drawn. area: in proportion to its pixel count, so "
                   "every training pixel is about equally likely; image: every image equally "
                   "often (over-weights small images).")
@click.option("--lr", type=_POSITIVE, default=5e-4, show_default=True, help="Peak learning rate.")
@click.option("--decay-fraction", type=_FiniteFloatRange(0.0, 1.0), default=0.15, show_default=True,
              help="Share of the budget, at the end, over which the learning rate decays (cosine, to 2%).")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto",
              show_default=True,
              help="auto: bf16 autocast where the device computes bf16 natively (~1.8x faster "
                   "on CPUs with AVX-512 BF16), fp32 elsewhere (bf16 on an AVX2-only CPU is "
                   "~80x slower).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.safetensors.")
@click.option("--init", type=click.Path(exists=True), default=None,
              help="Start from a checkpoint file or an exported weights folder "
                   "(e.g. weights); fresh optimiser, step count carried on.")
@click.option("--checkpoint-minutes", type=_POSITIVE, default=5.0, show_default=True)
@click.option("--val-every", type=click.IntRange(min=1), default=500, show_default=True,
              help="Validate (real rate, PSNR on held-out training images) every this many steps.")
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="torch CPU threads (0: torch default).")
@click.option("--N", "N", type=click.IntRange(min=1), default=128, show_default=True,
              help="Filters.")
@click.option("--M", "M", type=click.IntRange(min=1), default=192, show_default=True,
              help="Latent channels.")
@click.option("--slices", type=click.IntRange(min=1), default=4, show_default=True,
              help="Channel slices of the latents, coded one after another, each with a "
                   "context of the slices before it (Minnen & Singh 2020); must divide M. "
                   "1: the plain mean-scale hyperprior.")
@click.option("--checkerboard/--no-checkerboard", default=True, show_default=True,
              help="Code each slice in two halves, the second with a spatial context of the "
                   "first (He et al. 2021).")
@click.option("--blocks", type=click.IntRange(0, 16), default=2, show_default=True,   # model.MAX_BLOCKS
              help="Residual bottleneck blocks (ELIC, He et al. 2022) per stage of the analysis "
                   "and synthesis transforms, at 1/4 and 1/8 resolution; 0: plain GDN transforms.")
@click.option("--lambdas", callback=_lambdas_option, default=None, metavar="L1,...,L8",
              help="λ of each quality level (MSE on 0..255 values), comma-separated; overrides "
                   "a resumed checkpoint's ladder (default: the checkpoint's, or 0.0018 ... 0.18).")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True,
              help="Keep activations and weights in NHWC layout, which oneDNN's bf16 "
                   "convolutions use natively: 1.7-1.8x faster bf16 steps on a 2-core AVX-512 "
                   "Xeon, 1.05x in fp32 (benchmarks/train-speed.md). The checkpoint is the "
                   "same either way.")
@click.option("--export", "export_dir", type=click.Path(file_okay=False), default=None,
              help="Export weights to this folder when done (e.g. weights).")
def train(export_dir, **options):
    """Train the model (rate + λ·MSE, all 8 quality levels at once); resumable.

    Works under torchrun for multi-process / multi-GPU DDP training.
    """
    if sys.platform.startswith("linux") and "mmap_threshold" not in os.environ.get("GLIBC_TUNABLES", ""):
        # glibc returns large tensors to the kernel after every use; raising its thresholds
        # (before the process starts) makes CPU training steps ~1.6-1.9x faster.
        # the child imports this very package: not a `vaecodec` folder in the working
        # directory, which `python -m` would otherwise put first on sys.path (Python >= 3.11)
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, GLIBC_TUNABLES=GLIBC_FAST_MALLOC, PYTHONSAFEPATH="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        os.execve(sys.executable, [sys.executable, "-m", "vaecodec", *sys.argv[1:]], env)
    from .train import TrainConfig, train as run
    try:   # combinations the option parser cannot check, e.g. --slices that does not divide --M
        cfg = TrainConfig(**{k: v for k, v in options.items() if v is not None and k != "init"},
                          init=options["init"] or "")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    ckpt = run(cfg)
    if export_dir and int(os.environ.get("RANK", "0")) == 0:
        _export(ckpt, Path(export_dir))


def _export(checkpoint: Path, out: Path, float_dtype: str = "float32") -> None:
    from . import weights
    from .model import MeanScaleHyperprior
    from .train import checkpoint_config, load_checkpoint, saved_architecture
    model = MeanScaleHyperprior(**saved_architecture(checkpoint_config(checkpoint)))
    steps = load_checkpoint(checkpoint, model)
    fp = weights.export(model, out, steps=steps, float_dtype=float_dtype)
    click.echo(f"exported {checkpoint} (step {steps}) to {out}/ (fingerprint {fp.hex()})")


@main.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("build/candidate"),
              show_default=True,
              help="Folder for the weights files (synthesis, hyper, analysis, training and, "
                   "when the model has them, context and spatial .safetensors).")
@click.option("--float16", is_flag=True,
              help="Store the float transforms in float16 (half the bytes; releases after "
                   "the first are made this way).")
@click.option("--state", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the compact training state to this file instead (one file, bfloat16, "
                   "~15 MiB; `train --init FILE` continues from it). This is what the "
                   "repository keeps of training between releases.")
def export_command(checkpoint: Path, out: Path, float16: bool, state: Path | None):
    """Export a training checkpoint to safetensors weights with fresh entropy tables.

    An export is no release: files coded with it (--weights) name no release and decode only
    with it. `make release CHECKPOINT=...` turns a checkpoint into a release.
    """
    if state is not None:
        from .train import save_training_state
        step = save_training_state(checkpoint, state)
        click.echo(f"wrote the training state of {checkpoint} (step {step}) to {state} "
                   f"({state.stat().st_size / 2**20:.1f} MiB)")
        return
    _export(checkpoint, out, "float16" if float16 else "float32")


class LazyCommand(click.Command):
    """A subcommand that ``--help`` lists by its name and ``help`` text, but whose module is
    imported only when the command runs or shows its own help: ``target`` names the real
    :class:`click.Command` as ``"module:attribute"``. A module that cannot be imported ends the
    command with a one-line :class:`click.ClickException`."""

    def __init__(self, name: str, target: str, help: str):
        super().__init__(name, help=help, add_help_option=False)
        self.target = target

    def load(self) -> click.Command:
        """The real command (importing its module)."""
        module, _, attribute = self.target.partition(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except ImportError as exc:
            raise click.ClickException(f"the {self.name} command cannot be loaded: {exc}") from None

    def make_context(self, info_name, args, parent=None, **extra):
        # the real command parses the arguments; Group.invoke then runs ``ctx.command``
        return self.load().make_context(info_name, args, parent=parent, **extra)


# matplotlib, scipy and the other codecs' adapters load only for `vaecodec benchmark`
main.add_command(LazyCommand(
    "benchmark", "vaecodec.benchmark.command:benchmark_command",
    "Rate-distortion benchmark of vaecodec against JPEG, WebP, AVIF, JPEG XL and JPEG 2000."))
