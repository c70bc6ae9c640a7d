"""Many files in one run: ``vaecodec compress IN... --out-dir DIR`` and
``vaecodec decompress IN... --out-dir DIR``.

The inputs are files and folders (a folder gives its images, or its ``.vae`` files, and with
``--recursive`` those of its subfolders too, mirrored under DIR). Each output is named after its
input (``photo.png`` -> ``DIR/photo.vae``, ``photo.vae`` -> ``DIR/photo.png``). The model is
loaded once per process: in this process, or once in each of ``--jobs`` worker processes. A
file that fails is reported in one line naming it and the run goes on; :func:`run` returns
every file's :class:`Outcome` and the command exits with status 1 if any failed.

No torch here: the coding itself is a function the caller passes in (the command line's
:func:`vaecodec.cli.compress_one` and :func:`vaecodec.cli.decompress_one`, the same code the
one-file form runs), so this module imports nothing above it.
"""
from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

#: Extensions of the files a folder contributes to ``compress`` (lower case). A file named on
#: the command line is read whatever its extension.
IMAGE_SUFFIXES = frozenset({
    ".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff", ".bmp", ".dib", ".webp",
    ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".pfm", ".tga", ".qoi", ".avif", ".heic", ".heif",
    ".jxl", ".jp2", ".j2k", ".jpx", ".jpf", ".j2c", ".psd", ".ico", ".pcx", ".sgi", ".rgb",
})
VAE_SUFFIX = ".vae"


@dataclass(frozen=True)
class Job:
    """One file to code: ``source`` (as the user named it, or found in a named folder) into
    ``target`` (under the output folder)."""
    source: Path
    target: Path


@dataclass
class Outcome:
    """What became of one :class:`Job`. ``error``: the one-line reason it failed (no
    ``Error:`` prefix), else None. ``result``: the :class:`vaecodec.cli.Coded` record of a
    success. ``notices``: one-line notes about the file (lossy conversions, ...)."""
    job: Job
    error: str | None = None
    result: object | None = None
    notices: list[str] = field(default_factory=list)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def find_inputs(arguments: list[Path], suffixes: frozenset[str], recursive: bool
                ) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """The input files the command line names, each with its path relative to the output
    folder, and the arguments that name none, each with a one-line reason.

    A file argument is taken whatever its extension and written directly under the output
    folder. A folder contributes its files whose extension (lower case) is in ``suffixes``,
    except hidden ones (``.name``), in sorted order; with ``recursive`` also those of its
    subfolders (hidden folders skipped, symbolic links to folders not followed), at the same
    relative path. A file reached twice (named twice, or named and inside a named folder) is
    coded once, at its first place.
    """
    found: list[tuple[Path, Path]] = []
    problems: list[tuple[Path, str]] = []
    seen: set[str] = set()

    def add(path: Path, relative: Path) -> None:
        key = os.path.normcase(os.path.realpath(path))
        if key not in seen:
            seen.add(key)
            found.append((path, relative))

    for arg in arguments:
        if os.path.isdir(arg):
            before = len(found)
            if recursive:
                for top, dirs, files in os.walk(arg):
                    dirs[:] = sorted(d for d in dirs if not _hidden(d))
                    for name in sorted(files):
                        if not _hidden(name) and os.path.splitext(name)[1].lower() in suffixes:
                            path = Path(top) / name
                            add(path, path.relative_to(arg))
            else:
                for entry in sorted(os.scandir(arg), key=lambda e: e.name):
                    if (not _hidden(entry.name) and entry.is_file()
                            and os.path.splitext(entry.name)[1].lower() in suffixes):
                        add(Path(arg) / entry.name, Path(entry.name))
            if len(found) == before:
                kind = ".vae files" if suffixes == {VAE_SUFFIX} else "images"
                hint = "" if recursive else " (--recursive also searches its subfolders)"
                problems.append((arg, f"no {kind} in this folder{hint}"))
        elif os.path.lexists(arg):
            add(arg, Path(arg.name))
        else:
            problems.append((arg, "no such file or folder"))
    return found, problems


def plan(found: list[tuple[Path, Path]], out_dir: Path, suffix: str
         ) -> tuple[list[Job], list[Outcome]]:
    """Jobs writing each found input to ``out_dir / relative`` with ``suffix`` (".vae",
    ".png", ...) instead of its extension. Inputs whose outputs would have the same name
    (``a.png`` and ``a.jpg``) are not coded: each gets a failed :class:`Outcome` naming the
    others."""
    targets: dict[str, list[tuple[Path, Path]]] = {}
    for source, relative in found:
        target = out_dir / relative.parent / (relative.stem + suffix)
        targets.setdefault(os.path.normcase(os.path.abspath(target)), []).append((source, target))
    jobs, clashes = [], []
    for group in targets.values():
        if len(group) == 1:
            jobs.append(Job(*group[0]))
            continue
        for source, target in group:
            others = ", ".join(str(s) for s, _ in group if s != source)
            clashes.append(Outcome(Job(source, target), error=(
                f"{source}: {target} would also be written from {others}; code them into "
                "separate --out-dir folders")))
    order = {source: i for i, (source, _) in enumerate(found)}
    jobs.sort(key=lambda j: order[j.source])
    return jobs, clashes


# --------------------------------------------------------------------------------------------
# running


_IN_WORKER = False
_BUSY = False   # a worker is coding a file


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is so that cleanup (``finally``) runs: a half-written
    temporary output file is removed, as on Ctrl-C."""


def _worker_sigterm(signum, frame) -> None:
    """SIGTERM in a worker: raised as an interruption while it codes a file (so that its
    temporary output is removed; :func:`run_job` then ends the process), else the end."""
    if _BUSY:
        raise Terminated()
    os._exit(143)


def _init_worker(threads: int) -> None:
    """Start of a worker process: ``threads`` torch threads; Ctrl-C is left to the parent
    (which stops the workers with SIGTERM, see :func:`_worker_sigterm`)."""
    global _IN_WORKER
    _IN_WORKER = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_sigterm)
    import torch
    torch.set_num_threads(threads)


def run_job(work, describe, job: Job, options) -> Outcome:
    """Code one file: ``work(source, target, options, note)`` returns its record;
    ``describe(shown, exc)`` turns a failure into the one line of the :class:`Outcome`'s
    ``error`` (both module-level functions, so worker processes can unpickle them). In a
    worker process, Ctrl-C or SIGTERM ends the worker once the file's temporary output is
    removed."""
    global _BUSY
    notices: list[str] = []
    _BUSY = True
    try:
        return Outcome(job, result=work(job.source, job.target, options, notices.append),
                       notices=notices)
    except KeyboardInterrupt as exc:
        if _IN_WORKER:
            os._exit(143 if isinstance(exc, Terminated) else 130)
        raise
    except Exception as exc:
        if os.environ.get("VAECODEC_DEBUG"):
            raise
        return Outcome(job, error=describe(str(job.source), exc),
                       notices=notices)
    finally:
        _BUSY = False


class Reporter:
    """Prints each file's line (standard output), its notes and errors (standard error) and
    keeps one overall progress bar on a terminal (standard error; none with ``quiet``)."""

    #: Notes that hold for every file of a run (the output format's): printed once, unnamed.
    RUN_WIDE = ("JPEG output is lossy", "WebP output is lossy", "WebP has no greyscale mode")

    def __init__(self, total: int, verb: str, quiet: bool):
        from tqdm import tqdm
        self.quiet = quiet
        self.said: set[str] = set()
        self.bar = tqdm(total=total, desc=verb, unit="file", leave=False, file=sys.stderr,
                        disable=True if quiet or total <= 1 else None, dynamic_ncols=True,
                        mininterval=0)

    def echo(self, line: str, err: bool = False) -> None:
        if self.quiet and not err:
            return
        stream = sys.stderr if err else sys.stdout
        if self.bar.disable:
            import click
            click.echo(line, err=err)
        else:
            self.bar.write(line, file=stream)

    def report(self, outcome: Outcome, verbose: bool) -> None:
        if not self.quiet:
            for notice in outcome.notices:
                if not notice.startswith(self.RUN_WIDE):
                    self.echo(f"note: {outcome.job.source}: {notice}", err=True)
                elif notice not in self.said:
                    self.said.add(notice)
                    self.echo(f"note: {notice}", err=True)
        if outcome.error is not None:
            self.echo(f"Error: {outcome.error}", err=True)
        else:
            self.echo(outcome.result.line)
            if verbose:
                self.echo(outcome.result.details)
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


def _terminate(pool) -> None:
    """Send SIGTERM to every worker of ``pool``: each removes its temporary output and ends."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            process.terminate()
        except (OSError, ValueError, AttributeError):
            pass


def run(work, describe, jobs: list[Job], options, n_jobs: int, threads: int | None,
        reporter: Reporter, verbose: bool) -> list[Outcome]:
    """Code ``jobs`` in this process (``n_jobs`` 1) or in ``n_jobs`` worker processes of
    ``threads`` torch threads each (default: the usable cores divided among them, at least 1),
    reporting each file as it is done. Returns the outcomes in the order they finished.
    Ctrl-C or SIGTERM stops the workers (their temporary files are removed) and is raised."""
    outcomes: list[Outcome] = []
    workers = min(n_jobs, len(jobs))
    if workers <= 1:
        for job in jobs:
            outcome = run_job(work, describe, job, options)
            outcomes.append(outcome)
            reporter.report(outcome, verbose)
        return outcomes
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool
    threads = threads or max(1, usable_cores() // workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))
    try:
        futures = {pool.submit(run_job, work, describe, job, options): job for job in jobs}
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except BrokenProcessPool:
                outcome = Outcome(futures[future], error=(
                    f"{futures[future].source}: not coded: a worker process ended abruptly "
                    "(out of memory?)"))
            outcomes.append(outcome)
            reporter.report(outcome, verbose)
    except BaseException:
        _terminate(pool)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return outcomes


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def summary(kind: str, outcomes: list[Outcome], seconds: float) -> str:
    """The closing line: files coded and failed, bytes read and written, the mean bpp of the
    ``.vae`` files (mean over files), and files coded per second of ``seconds``, the wall time
    since the process started (start-up and model loading included)."""
    done = [o.result for o in outcomes if o.error is None]
    failed = len(outcomes) - len(done)
    verb = "compressed" if kind == "compress" else "decompressed"
    line = f"{len(done)} file{'s' * (len(done) != 1)} {verb}"
    if failed:
        line += f", {failed} failed"
    if done:
        mean_bpp = sum(r.bpp for r in done) / len(done)
        line += (f": {sum(r.bytes_in for r in done):,} bytes in, {sum(r.bytes_out for r in done):,} "
                 f"bytes out, mean {mean_bpp:.3f} bpp")
    rate = len(done) / seconds if seconds > 0 else 0.0
    return line + f", {rate:.2f} files/s ({seconds:.2f} s since the process started)"
