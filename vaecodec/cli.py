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
import re
import signal
import stat
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import click

from .batch import Terminated

GLIBC_FAST_MALLOC = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"


def _process_start() -> float:
    """The :func:`time.perf_counter` reading at which this process started, so that the time
    printed as "since the process started" counts Python's start-up and every import too: from
    the kernel's record of the start (Linux, in clock ticks of 10 ms after boot), else (no
    /proc) the import of this module, about 0.2 s later."""
    now = time.perf_counter()
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")   # field 22: starttime
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started
        if 0 <= age < 10 * 365 * 86400:
            return now - age
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    return now


PROCESS_START = _process_start()


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


def _as_path(value: str) -> Path:
    """A path argument as a Path. Only a bare "-" means standard input/output; ``./-`` names a
    file called "-" (pathlib would shorten it to "-", so it is made absolute)."""
    if value != "-" and Path(value) == Path("-"):
        return Path(os.path.abspath(value))
    return Path(value)


def _path_argument(ctx, param, value: str) -> Path:
    """Click callback: refuse an empty path; see :func:`_as_path`."""
    if not value:
        raise click.BadParameter("empty path")
    return _as_path(value)


def _paths_argument(ctx, param, values: tuple[str, ...]) -> tuple[str, ...]:
    """Click callback for INPUT... [OUTPUT]: refuse empty paths; the strings are kept as given
    (a trailing "/" says the user means a folder, which Path would drop)."""
    if any(not v for v in values):
        raise click.BadParameter("empty path")
    return values


_Terminated = Terminated   # SIGTERM, raised where the process is (batch.Terminated)


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
            raise click.ClickException(error_message(exc)) from None


def error_message(exc: Exception) -> str:
    """The one line that reports ``exc``: its own message for an error meant for the user
    (bad input, damaged file, missing weights, ...), else "internal error (...)"."""
    if isinstance(exc, click.ClickException):
        return exc.format_message()
    if isinstance(exc, _expected_errors()):
        msg = str(exc) if not isinstance(exc, MemoryError) else "not enough memory"
        if isinstance(exc, OSError) and exc.strerror:
            msg = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
        return msg
    return (f"internal error ({type(exc).__name__}: {exc}); "
            "rerun with VAECODEC_DEBUG=1 for details")


def describe_failure(shown: str, exc: Exception) -> str:
    """The line reporting that the file ``shown`` failed with ``exc`` (for batch runs)."""
    return named(shown, error_message(exc))


def named(shown: str, message: str) -> str:
    """``message`` prefixed with the file name ``shown`` ("x.vae: file is corrupted ..."),
    unless it names that file already ("no such file: x.vae")."""
    if re.search(rf"(^|[\s'\"(]){re.escape(shown)}($|[\s:,;'\")])", message):
        return message
    return f"{shown}: {message}"


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
    vaecodec compress photos/ --out-dir vae/ --recursive --jobs 2
    vaecodec decompress vae/ --out-dir restored/ --recursive --format jpg
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


def _folder_hint(raw: str, source: Path, suffix: str) -> str:
    name = (source.stem if not _is_stdio(source) else "image") + suffix
    return f"use --out-dir {raw} to write {name} into it"


def _check_output(input: Path, output: Path, force: bool, stdout_what: str, image: bool = False) -> None:
    """Refuse an OUTPUT that cannot be written before any coding work is done: standard output
    that is a terminal (for binary ``stdout_what``), the input itself, a directory, an unknown
    image extension (``image``), for a .vae file (not ``image``) an image extension without
    ``force``, a missing or read-only directory, an existing file without ``force``.

    Raises:
        ImageError: one line naming OUTPUT.
    """
    from . import batch, fileio, imageio
    if _is_stdio(output):
        _check_stdout(stdout_what)
        return
    if os.path.isdir(output):   # before the extension, which a directory rarely has
        raise imageio.ImageError(f"cannot write {output}: it is a directory")
    if _is_stdio(input):
        _check_not_stdin(output)
    else:
        fileio.check_distinct(input, output)
    ext = output.suffix.lower()
    if image and ext not in imageio.WRITE_FORMATS:
        shown = f"'{ext}'" if output.suffix else "no extension"
        raise imageio.ImageError(f"cannot write {output}: unknown image extension ({shown}); "
                                 f"use one of {', '.join(imageio.WRITE_FORMATS)}")
    if not image and not force and (ext in batch.IMAGE_SUFFIXES or ext in imageio.WRITE_FORMATS):
        raise imageio.ImageError(
            f"{output} has the extension of an image format ({ext}), but compress writes a .vae "
            f"file; name it {output.with_suffix('.vae')} (or use --force to write it anyway)")
    _, _, parent = fileio.resolve_target(output, force)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise imageio.ImageError(f"cannot write {output}: permission denied")


@dataclass(frozen=True)
class CompressOptions:
    """The settings of one ``compress`` run, shared by all its files (picklable, for workers)."""
    quality: float = 4.0
    refine: int = 0
    force: bool = False
    release: str | None = None
    weights: Path | None = None
    target: tuple[str, float] | None = None   # rate control: ("size" | "bpp" | "psnr", value)
    metadata: str = "all"


@dataclass(frozen=True)
class DecompressOptions:
    """The settings of one ``decompress`` run. ``jpeg_quality``: 1-100 for JPEG output;
    ``webp_quality``: 0-100 for lossy WebP output (None: lossless); ``background``: the colour
    (a Pillow colour name or #rrggbb) that alpha is flattened onto, or None to keep alpha."""
    force: bool = False
    weights: Path | None = None
    jpeg_quality: int = 95
    webp_quality: int | None = None
    background: str | None = None


@dataclass
class Coded:
    """One file coded: sizes in bytes, the image in pixels, the ``.vae`` file's bits per pixel,
    and the seconds of each stage (reading, model loading, coding, writing).
    ``line`` is the summary line printed for it and ``details`` the --verbose one."""
    source: str
    target: str
    bytes_in: int
    bytes_out: int
    width: int
    height: int
    mode: str
    bpp: float
    seconds: dict
    line: str
    details: str


def _stages(seconds: dict) -> str:
    return ", ".join(f"{name} {s:.2f} s" for name, s in seconds.items())


def _model_text(model) -> str:
    """The model a file was coded with and the torch threads, for --verbose."""
    import torch
    release = model.release
    text = f"model release {release}" if release else "weights that are no release"
    threads = torch.get_num_threads()
    return f"{text} (fingerprint {model.fingerprint.hex()}), {threads} thread{'s' * (threads != 1)}"


@contextlib.contextmanager
def _no_progress():
    yield lambda n: None


def compress_one(input: Path, output: Path, o: CompressOptions, note, bar: bool = False) -> Coded:
    """Compress the image file ``input`` ("-": standard input) into the .vae file ``output``
    ("-": standard output), as ``vaecodec compress INPUT OUTPUT`` does.

    Every check that needs no decoding comes first (:func:`_check_output`), then the image is
    read (``note(text)`` is called with each one-line notice about a lossy or surprising
    conversion), the model loaded (once per process), the image coded (with a tqdm bar on a
    terminal when ``bar``) and the file written atomically.

    Raises:
        CodecError, ImageError, click.ClickException, ...: one-line messages; those about the
            input name it (e.g. "x.png: image 200000x1 is too large ...").
    """
    from . import api, codec, fileio, imageio
    from .errors import CodecError
    stdin, stdout = _is_stdio(input), _is_stdio(output)
    _check_output(input, output, o.force, "a .vae file")
    if o.release is not None:   # an unknown release: refused before the image is read
        api.encoder(o.release, o.refine)
    start = time.perf_counter()
    try:
        if stdin:
            raw = _read_stdin_image()
            rgb, meta = api.read(raw, "standard input")
            bytes_in = len(raw)
        else:
            rgb, meta = api.read(input)
            bytes_in = os.path.getsize(input)
        h, w = rgb.shape[:2]
        codec.check_size(h, w)
    except CodecError as exc:
        raise CodecError(named(_shown(input), str(exc))) from None
    if not stdout and output.suffix.lower() != ".vae":   # with --force only, see _check_output
        meta.notices.append(f"{output} does not end in .vae (it will hold a .vae stream)")
    for notice in meta.notices:
        note(notice)
    reading = time.perf_counter() - start
    model = api.encoder(o.release, o.refine, o.weights)   # loaded before the coding clock starts
    loading = time.perf_counter() - start - reading
    progress = _progress if bar else (lambda *a: _no_progress())
    quality, chosen = o.quality, ""
    if o.target:   # rate control: no bar (the number of probes is not known in advance)
        begin = time.perf_counter()
        kind, value = o.target
        result = api.compress_to_target(rgb, meta, kind, value, refine=o.refine, model=o.release,
                                        weights=o.weights, metadata=o.metadata)
        data, quality = result.data, result.quality
        shown_value = f"{value:,.0f} bytes" if kind == "size" else f"{value:g}" + (" dB" if kind == "psnr" else " bpp")
        chosen = f" (chosen for --{kind} {shown_value})"
        if not result.reached:
            note(f"the --{kind} target {shown_value} is out of reach; quality {quality:g} gives "
                 "the closest file")
        coding = time.perf_counter() - begin
    else:
        with progress(codec.work_units(h, w, o.refine), "compress", "step" if o.refine else "tile") as update:
            begin = time.perf_counter()
            data = api.compress_read(rgb, meta, o.quality, refine=o.refine, model=o.release,
                                     weights=o.weights, progress=update, metadata=o.metadata)
            coding = time.perf_counter() - begin
    begin = time.perf_counter()
    if stdout:
        _write_stdout(data)
    else:
        fileio.atomic_write_bytes(output, data, force=o.force)
    writing = time.perf_counter() - begin
    seconds = {"reading": reading, "model loading": loading, "encoding": coding, "writing": writing}
    bpp = 8 * len(data) / (h * w)
    line = (f"{_shown(input)} -> {_shown(output, True)}: {len(data):,} bytes, {bpp:.3f} bpp, "
            f"{w}x{h} {meta.mode}, quality {round(quality * 1000) / 1000:g}{chosen}, "
            f"encoded in {coding:.2f} s")
    return Coded(_shown(input), _shown(output, True), bytes_in, len(data), w, h, meta.mode, bpp,
                 seconds, line, f"  {_stages(seconds)}; {_model_text(model)}")


def _flatten(image, colour: str):
    """``image`` with its alpha composited onto ``colour`` (RGBA -> RGB, LA -> L); other
    modes unchanged. The ICC profile in ``image.info`` is kept."""
    from PIL import Image, ImageColor
    if image.mode not in ("RGBA", "LA"):
        return image
    mode = image.mode[0] if image.mode == "LA" else "RGB"
    flat = Image.new(mode, image.size, ImageColor.getcolor(colour, mode))
    flat.paste(image.convert(mode), mask=image.getchannel("A"))
    flat.info.update({k: v for k, v in image.info.items() if k == "icc_profile"})
    return flat


def decompress_one(input: Path, output: Path, o: DecompressOptions, note, bar: bool = False) -> Coded:
    """Decompress the .vae file ``input`` ("-": standard input) into the image file ``output``
    ("-": a PNG on standard output), as ``vaecodec decompress INPUT OUTPUT`` does: the
    format follows OUTPUT's extension; ``o`` sets JPEG and WebP quality and flattens alpha.

    Refuses before decoding what can be refused from the header (an output that cannot be
    written, a release this vaecodec lacks, transparency to JPEG or BMP without
    ``o.background``). ``note(text)``: each one-line notice (e.g. JPEG output is lossy).

    Raises:
        CodecError, BitstreamError, ImageError, click.ClickException, ...: one-line messages;
            those about the input name it ("x.vae: file is corrupted or truncated ...").
    """
    from . import api, bitstream, codec, imageio
    from .errors import CodecError
    from .releases import ReleaseError
    stdout = _is_stdio(output)
    _check_output(input, output, o.force, "a PNG image", image=True)
    shown = _shown(input)
    start = time.perf_counter()
    try:
        data = _read_input_bytes(input)
        header = bitstream.peek_header(data)
        reading = time.perf_counter() - start
        model = api.decoder(header, o.weights)   # loaded (or the release refused) before decoding
        sections = bitstream.unpack(data).sections   # a thin image's layout sizes the progress bar
    except (bitstream.BitstreamError, CodecError, ReleaseError) as exc:
        raise CodecError(named(shown, str(exc))) from None
    loading = time.perf_counter() - start - reading
    if not stdout and o.background is None:   # e.g. RGBA to .jpg: refuse before decoding
        try:
            imageio.check_output_mode(output, header.mode)
        except imageio.ImageError as exc:
            raise imageio.ImageError(f"{exc}, or flatten it with --background COLOR") from None
    # the grid the image size implies (bounded); decompress_array refuses a file whose tiling
    # differs before it allocates anything
    progress = _progress if bar else (lambda *a: _no_progress())
    with progress(codec.file_tile_count(header, sections), "decompress") as update:
        begin = time.perf_counter()
        try:
            image, _ = api.decode(data, weights=o.weights, progress=update)
        except CodecError as exc:
            raise CodecError(named(shown, str(exc))) from None
        coding = time.perf_counter() - begin
    begin = time.perf_counter()
    icc = image.info.get("icc_profile")
    if o.background is not None:
        image = _flatten(image, o.background)
    if stdout:
        png, notices = imageio.encode_png(image, icc)
        _write_stdout(png)
        written = len(png)
    else:
        notices = imageio.write_image(output, image, icc, force=o.force,
                                      jpeg_quality=o.jpeg_quality, webp_quality=o.webp_quality)
        written = os.path.getsize(output)
    writing = time.perf_counter() - begin
    for notice in notices:
        note(notice)
    h, w = header.height, header.width
    seconds = {"reading": reading, "model loading": loading, "decoding": coding, "writing": writing}
    line = (f"{shown} -> {_shown(output, True)}: {w}x{h} {image.mode}, "
            f"decoded in {coding:.2f} s")
    return Coded(shown, _shown(output, True), len(data), written, w, h, image.mode,
                 8 * len(data) / (h * w), seconds, line, f"  {_stages(seconds)}; {_model_text(model)}")


_BATCH_OPTIONS = ("out_dir", "recursive", "jobs", "out_format")


def _verbosity_option(f):
    f = click.option("-v", "--verbose", is_flag=True,
                     help="Also print, per file, the seconds of each stage (reading, model "
                          "loading, coding, writing; and the start-up before them), the model "
                          "release and the torch threads.")(f)
    return click.option("--quiet", is_flag=True,
                        help="Print nothing but errors: no summary lines, notes or progress "
                             "bars.")(f)


def _batch_options(what: str, reads: str):
    """The options of the many-files form, shared by compress and decompress."""
    def decorate(f):
        f = click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
                         help="torch threads for the coding (default: torch's, one per core; with "
                              "--jobs, the cores shared among the jobs). The same count gives the "
                              "same bytes; another count can change a --refine file by a few bytes "
                              "and a few decoded pixel values by 1.")(f)
        f = click.option("-j", "--jobs", type=click.IntRange(min=1), default=None, metavar="N",
                         help="Worker processes coding files in parallel, each loading the model "
                              "once (default 1; with --out-dir).")(f)
        f = click.option("-r", "--recursive", is_flag=True,
                         help=f"With --out-dir: also take the {reads} in the subfolders of a folder "
                              "INPUT, written to the same subfolders under DIR.")(f)
        return click.option("-o", "--out-dir", type=click.Path(), default=None, metavar="DIR",
                            help=f"Code every INPUT (files, and the {reads} in folders) into DIR "
                                 f"(created if missing), each named after its input ({what}), in "
                                 "one process: the model is loaded once. A file that fails is "
                                 "reported in one line and the others go on; exit status 1 if any "
                                 "failed.")(f)
    return decorate


def _start(threads: int | None, quiet: bool, verbose: bool) -> int | None:
    """Common start of compress and decompress: refuse --quiet with --verbose; set the torch
    threads (returns the previous count, to restore, or None)."""
    if quiet and verbose:
        raise click.UsageError("give --quiet or --verbose, not both")
    if threads is None:
        return None
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    return previous


def _restore_threads(previous: int | None) -> None:
    if previous is not None:
        import torch
        torch.set_num_threads(previous)


def _single(kind: str, paths: tuple[str, ...], batch_given: list[str], o, quiet: bool,
            verbose: bool) -> None:
    """The one-file form: ``INPUT OUTPUT``."""
    if batch_given:
        raise click.UsageError(f"{', '.join(batch_given)} work{'s' * (len(batch_given) == 1)} "
                               "with --out-dir DIR")
    if len(paths) != 2:
        raise click.UsageError(
            f"give INPUT OUTPUT, or any number of inputs with --out-dir DIR (got {len(paths)} "
            f"path{'s' * (len(paths) != 1)})")
    input, output = _as_path(paths[0]), _as_path(paths[1])
    stdout = _is_stdio(output)
    if not _is_stdio(output) and (paths[1].endswith(("/", os.sep)) or os.path.isdir(output)):
        from .imageio import ImageError   # the same refusal (and status) for "dir" and "dir/"
        what = "it is a directory" if os.path.isdir(output) else "a name ending in '/' is a folder"
        raise ImageError(f"cannot write {paths[1]}: {what}; "
                         f"{_folder_hint(paths[1], input, '.vae' if kind == 'compress' else '.png')}")
    notes = (lambda text: None) if quiet else (lambda text: click.echo(f"note: {text}", err=True))
    work = compress_one if kind == "compress" else decompress_one
    coded = work(input, output, o, notes, bar=not quiet)
    if quiet:
        return
    in_all = time.perf_counter() - PROCESS_START
    click.echo(f"{coded.line} ({in_all:.2f} s since the process started)", err=stdout)
    if verbose:
        click.echo(f"  start-up {in_all - sum(coded.seconds.values()):.2f} s (Python, torch), "
                   f"{coded.details.strip()}", err=stdout)


def _many(kind: str, paths: tuple[str, ...], out_dir: str, recursive: bool, jobs: int | None,
          threads: int | None, suffix: str, o, quiet: bool, verbose: bool) -> None:
    """The many-files form: every INPUT into ``out_dir``."""
    from . import batch
    if STDIO in paths:
        raise click.UsageError("standard input ('-') has no name to name an output after; "
                               "give INPUT OUTPUT for it")
    if out_dir == STDIO:
        raise click.UsageError("--out-dir must be a folder, not standard output")
    out = Path(out_dir)
    suffixes = batch.IMAGE_SUFFIXES if kind == "compress" else frozenset({batch.VAE_SUFFIX})
    found, problems = batch.find_inputs([_as_path(p) for p in paths], suffixes, recursive)
    todo, failed = batch.plan(found, out, suffix)
    failed = [batch.Outcome(batch.Job(arg, out), error=f"{arg}: {why}") for arg, why in problems] + failed
    if todo:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise click.ClickException(f"--out-dir {out_dir}: not a folder") from None
        except OSError as exc:
            raise click.ClickException(f"cannot create --out-dir {out_dir}: "
                                       f"{exc.strerror or exc}") from None
    ready = []
    for job in todo:
        try:
            job.target.parent.mkdir(parents=True, exist_ok=True)
            ready.append(job)
        except OSError as exc:
            failed.append(batch.Outcome(job, error=f"{job.source}: cannot create "
                                                   f"{job.target.parent}: {exc.strerror or exc}"))
    reporter = batch.Reporter(len(ready) + len(failed), kind, quiet)
    outcomes = list(failed)
    try:
        for outcome in failed:
            reporter.report(outcome, verbose)
        if verbose and ready:
            workers = min(jobs or 1, len(ready))
            each = threads or (max(1, batch.usable_cores() // workers) if workers > 1 else None)
            if each is None:
                import torch
                each = torch.get_num_threads()
            reporter.echo(f"{len(ready)} file{'s' * (len(ready) != 1)} to {kind} into {out_dir} "
                          f"with {workers} process{'es' * (workers != 1)} of {each} "
                          f"thread{'s' * (each != 1)}")
        work = compress_one if kind == "compress" else decompress_one
        outcomes += batch.run(work, describe_failure, ready, o, jobs or 1, threads, reporter, verbose)
    finally:
        reporter.close()
    if not quiet:
        click.echo(batch.summary(kind, outcomes, time.perf_counter() - PROCESS_START))
    if any(outcome.error is not None for outcome in outcomes):
        raise click.exceptions.Exit(1)


def _given(ctx: click.Context, names) -> list[str]:
    """The batch-only options the user gave (as typed, e.g. "--jobs")."""
    from click.core import ParameterSource
    shown = []
    for param in ctx.command.params:
        if param.name in names and ctx.get_parameter_source(param.name) != ParameterSource.DEFAULT:
            shown.append(param.opts[-1] if param.opts[-1].startswith("--") else param.opts[0])
    return shown


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(), callback=_paths_argument,
                metavar="INPUT OUTPUT | INPUT... -o DIR")
@click.option("-q", "--quality", type=_FiniteFloatRange(1, 8), default=4.0, show_default=True,
              help="1 (smallest file) to 8 (best quality), in steps of 0.001; "
                   "fractions interpolate between the trained levels.")
@click.option("--refine", type=click.IntRange(0, MAX_REFINE), default=0, show_default=True,
              metavar="STEPS",
              help="Search for better latents before coding (encoder-side refinement, Yang et "
                   "al. 2020): 30 steps make files about 8 % smaller at the same PSNR, 60 "
                   "steps about 9 % (Kodak). "
                   "Each step takes about 1.5-2 s per megapixel on two cores (0.1 s for a "
                   "small image), after a start-up of a few seconds; memory: about 2 GB up "
                   "to 12 megapixels, 3.1 GB for 8K. Decoding is unchanged. The file depends on the "
                   "torch thread count (--threads): the same count gives the same bytes.")
@click.option("--size", "size", default=None, metavar="BYTES",
              help="Rate control instead of --quality: the largest file of at most BYTES "
                   "(20000, 20k, 1.5M, 64KiB); the quality is searched by bisection and printed.")
@click.option("--bpp", type=_FiniteFloatRange(min=0, min_open=True), default=None,
              help="Rate control: the largest file of at most this many bits per pixel.")
@click.option("--psnr", type=_FiniteFloatRange(min=0, min_open=True), default=None, metavar="DB",
              help="Rate control: the smallest file whose decoded PSNR (RGB) is at least DB. "
                   "A target out of reach gives the closest file (quality 1 or 8) and a note.")
@click.option("--metadata", default="all", show_default=True, metavar="LIST",
              help="Metadata to keep, as cwebp's -metadata: all, none, or a comma list of "
                   "icc, exif, xmp. EXIF is kept without its orientation tag (applied to the "
                   "pixels); decompress writes it back into PNG, JPEG and WebP.")
@click.option("--strip", is_flag=True, help="Keep no metadata (same as --metadata none).")
@click.option("-f", "--force", is_flag=True,
              help="Overwrite existing outputs; also write a .vae file under an image "
                   "extension (OUTPUT photo.jpg is refused without it).")
@click.option("--model", "release", metavar="ID", default=None,
              help="Model release to encode with (default: the newest; `vaecodec --version` "
                   "lists them). Files record their release, and every release keeps decoding.")
@click.option("--weights", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of exported weights instead of a release (for training exports).")
@_batch_options("photo.png -> DIR/photo.vae", "images")
@_verbosity_option
@click.pass_context
def compress(ctx, paths: tuple[str, ...], quality: float, refine: int, size: str | None,
             bpp: float | None, psnr: float | None, metadata: str, strip: bool, force: bool,
             release: str | None, weights: Path | None, out_dir: str | None, recursive: bool,
             jobs: int | None, threads: int | None, quiet: bool, verbose: bool):
    """Compress an image (PNG, JPEG, TIFF, BMP, WebP, ...) into a .vae file, or many images
    into a folder.

    INPUT "-" reads the image from standard input; OUTPUT "-" writes the .vae file to
    standard output (messages then go to standard error).

    The line printed for each file gives the seconds the encoding itself took, then the
    seconds since the process started: Python's start-up, loading torch and the model, reading
    and writing included (Python's exit, a fraction of a second with torch loaded, comes
    after it).

    \b
    vaecodec compress photo.png photo.vae
    vaecodec compress *.png --out-dir vae/           # photo.png -> vae/photo.vae
    vaecodec compress photos/ --out-dir vae/ --recursive --jobs 2
    vaecodec compress photo.png photo.vae --size 20k        # rate control: --size, --bpp, --psnr

    Quality on Kodak (release 2026.12, means of the 24 images, bpp / PSNR-RGB): 1: 0.10 /
    26.3 dB, 2: 0.24 / 28.9, 3: 0.48 / 31.9, 4: 0.65 / 33.6, 5: 0.85 / 35.1, 6: 1.07 / 36.3,
    7: 1.32 / 37.3, 8: 1.61 / 38.1.
    """
    from .ratecontrol import parse_size
    if release is not None and weights is not None:
        raise click.UsageError("give --model or --weights, not both")
    targets = [(k, v) for k, v in (("size", size), ("bpp", bpp), ("psnr", psnr)) if v is not None]
    if len(targets) > 1:
        raise click.UsageError(f"give one of --size, --bpp and --psnr, not {' and '.join('--' + k for k, _ in targets)}")
    if targets and ctx.get_parameter_source("quality") is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError(f"give --quality or --{targets[0][0]}, not both")
    if targets and targets[0][0] == "size":
        try:
            targets = [("size", float(parse_size(size)))]
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--size") from None
    if release is not None:   # an unknown release, or one without an encoder: a usage error
        from . import releases
        try:
            found = releases.find(release)
        except releases.ReleaseError as exc:
            raise click.BadParameter(str(exc), param_hint="--model") from None
        if not found.can_encode:
            raise click.BadParameter(f"release {release} cannot encode in this vaecodec; releases "
                                     f"that can: {', '.join(releases.encoders()) or 'none'}",
                                     param_hint="--model")
    if strip:
        if ctx.get_parameter_source("metadata") is click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError("give --strip or --metadata, not both (--strip is --metadata none)")
        metadata = "none"
    from .api import metadata_kinds
    from .errors import CodecError
    try:
        metadata_kinds(metadata)
    except CodecError as exc:
        raise click.BadParameter(str(exc), param_hint="--metadata") from None
    o = CompressOptions(quality, refine, force, release, weights, targets[0] if targets else None, metadata)
    previous = _start(threads, quiet, verbose)
    try:
        if out_dir is None:
            _single("compress", paths, _given(ctx, _BATCH_OPTIONS), o, quiet, verbose)
        else:
            _many("compress", paths, out_dir, recursive, jobs, threads, ".vae", o, quiet, verbose)
    finally:
        _restore_threads(previous)


FORMATS = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tif": ".tif", "bmp": ".bmp"}


def _background_option(ctx, param, value):
    if value is None:
        return None
    from PIL import ImageColor
    try:
        ImageColor.getrgb(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a colour (try white, black, '#808080' or "
                                 "'rgb(255,255,255)')") from None
    return value


def _check_output_options(ctx, paths: tuple[str, ...], out_dir: str | None, out_format: str) -> None:
    """A usage error for ``--jpeg-quality`` or ``--webp-quality`` given on the command line when
    no output is of that format (the output's extension, or ``--format`` with ``--out-dir``;
    standard output is PNG): an option that would silently do nothing."""
    from .imageio import WRITE_FORMATS
    if out_dir is None and ctx.get_parameter_source("out_format") is click.core.ParameterSource.COMMANDLINE:
        return   # --format without --out-dir: the one-file form's own usage error follows
    if out_dir is not None:
        written = {WRITE_FORMATS[FORMATS[out_format]]}
    elif len(paths) == 2:
        written = {"PNG" if _is_stdio(paths[1]) else WRITE_FORMATS.get(Path(paths[1]).suffix.lower())}
    else:
        return   # the one-file form's own error follows
    for option, fmt, name in (("jpeg_quality", "JPEG", "--jpeg-quality"), ("webp_quality", "WEBP", "--webp-quality")):
        given = ctx.get_parameter_source(option) is click.core.ParameterSource.COMMANDLINE
        if given and fmt not in written and None not in written:
            raise click.UsageError(f"{name} applies to {fmt.replace('WEBP', 'WebP')} output only; "
                                   f"this run writes {', '.join(sorted(written))}")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(), callback=_paths_argument,
                metavar="INPUT OUTPUT | INPUT... -o DIR")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--weights", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of exported weights (default: the model release the file names).")
@click.option("--format", "out_format", type=click.Choice(list(FORMATS)), default="png",
              show_default=True,
              help="Image format of the files written into --out-dir (a named OUTPUT's "
                   "extension picks its own).")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=95, show_default=True,
              metavar="Q", help="Quality of JPEG output, 1-100 (no chroma subsampling).")
@click.option("--webp-quality", type=click.IntRange(0, 100), default=None, metavar="Q",
              help="Write lossy WebP at this quality, 0-100 (default: lossless WebP).")
@click.option("--background", callback=_background_option, default=None, metavar="COLOR",
              help="Flatten transparency onto this colour (white, '#ffffff', ...), as JPEG and "
                   "BMP output need: RGBA becomes RGB, LA grey. Default: alpha is kept, and "
                   "refused for JPEG and BMP.")
@_batch_options("photo.vae -> DIR/photo.png", ".vae files")
@_verbosity_option
@click.pass_context
def decompress(ctx, paths: tuple[str, ...], force: bool, weights: Path | None, out_format: str,
               jpeg_quality: int, webp_quality: int | None, background: str | None,
               out_dir: str | None, recursive: bool, jobs: int | None, threads: int | None,
               quiet: bool, verbose: bool):
    """Decompress a .vae file into an image, or many into a folder; the format follows
    OUTPUT's extension (.png, .jpg, .webp, .tif, .bmp) or --format.

    INPUT "-" reads the .vae file from standard input; OUTPUT "-" writes a PNG image to
    standard output (messages then go to standard error).

    The line printed for each file gives the seconds the decoding itself took, then the
    seconds since the process started (Python's start-up, loading torch and the model, reading
    and writing included).

    \b
    vaecodec decompress photo.vae photo.png
    vaecodec decompress vae/ --out-dir restored/ --format jpg --jpeg-quality 90
    """
    _check_output_options(ctx, paths, out_dir, out_format)
    o = DecompressOptions(force, weights, jpeg_quality, webp_quality, background)
    previous = _start(threads, quiet, verbose)
    try:
        if out_dir is None:
            _single("decompress", paths, _given(ctx, _BATCH_OPTIONS), o, quiet, verbose)
        else:
            _many("decompress", paths, out_dir, recursive, jobs, threads, FORMATS[out_format], o,
                  quiet, verbose)
    finally:
        _restore_threads(previous)


@main.command()
@click.argument("file", type=click.Path(), callback=_path_argument)
def info(file: Path):
    """Show the header of a .vae file ("-": standard input): size, mode, quality, bpp, tiles,
    the layout of a folded thin image, model release and weights fingerprint."""
    from . import bitstream, releases
    try:
        data = _read_input_bytes(file)
        c = bitstream.unpack(data)
    except bitstream.BitstreamError as exc:
        raise bitstream.BitstreamError(named(_shown(file), str(exc))) from None
    h = c.header
    try:
        release = releases.for_header(h).id
        release += "" if h.release else " (named by its fingerprint: a format 1 file)"
    except releases.ReleaseError:
        release = (f"{h.release} (not in this vaecodec: a newer one decodes it)" if h.release
                   else "none (weights that are no release)")
    kinds = {1: "ICC profile", 2: "alpha", 3: "EXIF", 4: "XMP", 5: "layout"}
    layout = bitstream.layout_of(c.sections)   # checked by unpack
    folded = ""
    if layout is not None:
        coded_h, coded_w = layout.coded_size(h.height, h.width)
        strips = layout.strips(h.height, h.width)
        folded = (f"layout:      folded into {strips} strip{'s' * (strips != 1)} of "
                  f"{layout.strip_length} px, coded as {coded_w}x{coded_h}\n")
    click.echo(f"file:        {_shown(file)} ({len(data):,} bytes)\n"
               f"image:       {h.width}x{h.height} {h.mode}\n"
               f"bpp:         {8 * len(data) / (h.width * h.height):.4f}\n"
               f"quality:     {h.quality_milli / 1000:g}\n"
               f"tiles:       {len(c.tiles)}" + (f" ({h.tile_size} px, overlap {h.tile_overlap})"
                                                 if h.tile_size else "") + "\n"
               + folded +
               f"latents:     M={h.latent_channels} N={h.hyper_channels}\n"
               f"release:     {release}\n"
               f"weights:     {h.fingerprint.hex()}\n"
               f"format:      version {data[4]}\n"
               f"sections:    " + (", ".join(f"{kinds.get(s.kind, s.kind)} ({len(s.data):,} bytes)"
                                             for s in c.sections) or "none"))


def _schedule_option(ctx, param, value):
    if value is None:
        return None
    start, sep, end = value.partition(":")
    if not (sep and start.isdigit() and end.isdigit() and int(start) < int(end)):
        raise click.BadParameter(f"{value!r} is not START:END, two step counts with START < END "
                                 "(e.g. 216854:400000)")
    return (int(start), int(end))


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
@click.option("--schedule", callback=_schedule_option, default=None, metavar="START:END",
              help="One long decay across resumed runs instead of one per run: the learning "
                   "rate falls by a cosine from --lr at global step START to 2% at END "
                   "(e.g. 216854:400000); --decay-fraction is then unused. --resume keeps the "
                   "checkpoint's schedule.")
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
                   "a resumed checkpoint's ladder, and the run prints the old and new ladders "
                   "(default: the checkpoint's, or 0.0018 ... 0.18 for a new model; release "
                   "2026.12's is 0.0006,0.002,0.0067,0.013,0.025,0.0483,0.0932,0.18).")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True,
              help="Keep activations and weights in NHWC layout, which oneDNN's bf16 "
                   "convolutions use natively: 1.7-1.8x faster bf16 steps on a 2-core AVX-512 "
                   "Xeon, 1.05x in fp32 (benchmarks/train-speed.md). The checkpoint is the "
                   "same either way.")
@click.option("--average", type=_FiniteFloatRange(0, 1, max_open=True), default=None,
              help="Decay of the exponential moving average of the weights kept beside the "
                   "trained ones (Polyak averaging); export uses the average. 0: none. "
                   "Default: a resumed checkpoint's, else 0.999 (about the last 1,000 steps).")
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


def _export(checkpoint: Path, out: Path, float_dtype: str = "float32", averaged: bool = True) -> None:
    from . import weights
    from .model import MeanScaleHyperprior
    from .train import checkpoint_config, load_checkpoint, saved_architecture
    model = MeanScaleHyperprior(**saved_architecture(checkpoint_config(checkpoint)))
    steps = load_checkpoint(checkpoint, model, averaged=averaged)
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
@click.option("--average/--no-average", default=True, show_default=True,
              help="Export the checkpoint's weight average (train --average) where it has one, "
                   "else the trained weights.")
def export_command(checkpoint: Path, out: Path, float16: bool, state: Path | None, average: bool):
    """Export a training checkpoint to safetensors weights with fresh entropy tables.

    An export is no release: files coded with it (--weights) name no release and decode only
    with it. `make release CHECKPOINT=...` turns a checkpoint into a release.
    """
    if state is not None:
        given = [name for option, name in (("float16", "--float16"), ("average", "--no-average"))
                 if click.get_current_context().get_parameter_source(option)
                 is click.core.ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"{' and '.join(given)} {'do' if len(given) > 1 else 'does'} not "
                                   "apply to --state (the training state keeps the trained weights)")
        from .train import save_training_state
        step = save_training_state(checkpoint, state)
        click.echo(f"wrote the training state of {checkpoint} (step {step}) to {state} "
                   f"({state.stat().st_size / 2**20:.1f} MiB)")
        return
    _export(checkpoint, out, "float16" if float16 else "float32", average)


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
