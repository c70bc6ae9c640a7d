"""Model releases: the frozen models that ``.vae`` files name, and the registry of those shipped.

A *release* is an export of trained weights (:mod:`vaecodec.weights`) frozen under a short ID
such as ``2026.12``. Every file a release writes records that ID and the weights' fingerprint
(``bitstream/SPEC.md``, "Release"); the decoder of a release (its decoder weights files and the
coding procedure they run under) never changes and is never removed from the package, so every
file ever written keeps decoding. The package ships the decoders of all releases and the
encoder (analysis transform and the float entropy model of ``--refine``) of the newest.

On disk a release is a folder ``<weights root>/<ID>/`` holding the weights files and
``release.json``::

    {"id": "2026.12", "number": 1, "fingerprint": "9a02d927a3c3f3c4", "version": "0.2.0",
     "date": "2026-12-06", "steps": 216854, "coding": 1,
     "files": {"synthesis.safetensors": 12345, ...}}

``number`` orders the releases (the newest has the largest), ``version`` is the package
version that introduced it, ``coding`` the version of the entropy-coding procedure
(``bitstream/SPEC.md``, "Probability model") its decoder follows, and ``files`` the size in
bytes of each weights file shipped.

This module reads only JSON (no torch), so ``vaecodec info`` and ``--version`` stay cheap.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .bitstream import Header, release_id_problem

RELEASE_FILE = "release.json"
CODING_VERSIONS = (1,)   # entropy-coding procedures this package implements (SPEC.md)
#: weights files that only encoding needs; a release keeps them only while it is the newest
ENCODER_FILES = ("analysis.safetensors", "training.safetensors")


class ReleaseError(ValueError):
    """A file names a release this package cannot decode, or a release folder is unusable.
    ``str(err)`` is a one-line message for the user."""


@dataclass(frozen=True)
class Release:
    """One shipped release (see the module docstring for the fields' meaning).

    Attributes:
        id: the release ID written into files, e.g. ``"2026.12"``.
        number: its place in the sequence of releases, 1 for the first.
        fingerprint: the 8-byte fingerprint of its decoder weights.
        version: the vaecodec version that introduced it.
        date: the day it was made, ``YYYY-MM-DD``.
        steps: training steps of its weights.
        coding: the entropy-coding procedure version its decoder follows.
        folder: where its weights files are.
        files: file name -> size in bytes, of the weights files shipped with it.
    """

    id: str
    number: int
    fingerprint: bytes
    version: str
    date: str
    steps: int
    coding: int
    folder: Path
    files: dict = field(default_factory=dict, compare=False)

    @property
    def can_encode(self) -> bool:
        """Whether its analysis transform is shipped (only the newest release's needs to be;
        ``--refine`` also needs the training file)."""
        return (self.folder / ENCODER_FILES[0]).is_file()

    @property
    def decoder_bytes(self) -> int:
        """Bytes on disk of the files decoding needs."""
        return sum(n for f, n in self.files.items() if f not in ENCODER_FILES)

    @property
    def encoder_bytes(self) -> int:
        """Bytes on disk of the encoder files shipped with it (0 once they are dropped)."""
        return sum(n for f, n in self.files.items() if f in ENCODER_FILES and (self.folder / f).is_file())


def root() -> Path:
    """The folder whose subfolders are the shipped releases: ``$VAECODEC_RELEASES``, else the
    weights shipped in the package (``vaecodec.pretrained``), else ``<repo>/weights``."""
    env = os.environ.get("VAECODEC_RELEASES")
    if env:
        return Path(env)
    try:
        from importlib.resources import files
        packaged = Path(str(files("vaecodec.pretrained")))
        if any(packaged.glob(f"*/{RELEASE_FILE}")):
            return packaged
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "weights"


def read(folder: str | Path) -> Release | None:
    """The release a weights folder holds, or None for a folder without ``release.json`` (a
    training export). Raises :class:`ReleaseError` for an unreadable or invalid
    ``release.json``."""
    folder = Path(folder)
    path = folder / RELEASE_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
        rel = Release(id=meta["id"], number=int(meta["number"]),
                      fingerprint=bytes.fromhex(meta["fingerprint"]), version=str(meta["version"]),
                      date=str(meta["date"]), steps=int(meta["steps"]), coding=int(meta["coding"]),
                      folder=folder, files={str(k): int(v) for k, v in meta["files"].items()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ReleaseError(f"{path} is not a valid release description ({type(exc).__name__}: {exc})") from None
    problem = release_id_problem(rel.id) or ("empty release ID" if not rel.id else None)
    if problem or len(rel.fingerprint) != 8 or rel.number < 1:
        raise ReleaseError(f"{path} is not a valid release description ({problem or 'bad fields'})")
    return rel


def write(release: Release) -> None:
    """Write ``release.json`` into ``release.folder`` (used when a release is made)."""
    meta = {"id": release.id, "number": release.number, "fingerprint": release.fingerprint.hex(),
            "version": release.version, "date": release.date, "steps": release.steps,
            "coding": release.coding, "files": dict(sorted(release.files.items()))}
    tmp = release.folder / (RELEASE_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, release.folder / RELEASE_FILE)


def shipped(base: str | Path | None = None) -> tuple[Release, ...]:
    """Every release under ``base`` (default :func:`root`), oldest first."""
    base = Path(base) if base else root()
    found = [r for d in sorted(base.iterdir()) if d.is_dir() and (r := read(d))] if base.is_dir() else []
    return tuple(sorted(found, key=lambda r: r.number))


def newest(base: str | Path | None = None) -> Release:
    """The newest shipped release; :class:`ReleaseError` when none is installed."""
    all_ = shipped(base)
    if not all_:
        raise ReleaseError(f"no model release found in {Path(base) if base else root()} "
                           "(reinstall vaecodec)")
    return all_[-1]


def encoders(base: str | Path | None = None) -> list[str]:
    """IDs of the shipped releases whose encoder is shipped too."""
    return [r.id for r in shipped(base) if r.can_encode]


def find(release_id: str, base: str | Path | None = None) -> Release:
    """The shipped release ``release_id``; :class:`ReleaseError` naming the shipped ones
    otherwise."""
    all_ = shipped(base)
    for r in all_:
        if r.id == release_id:
            return r
    raise ReleaseError(f"unknown model release {release_id!r}; this vaecodec has "
                       f"{', '.join(r.id for r in all_) or 'none'}")


def for_header(header: Header, base: str | Path | None = None) -> Release:
    """The shipped release that decodes a file with ``header`` (SPEC.md, "Release").

    A file naming a release is decoded by that release, whose fingerprint must be the file's;
    a file naming none (format version 1, written before releases existed, or a training
    export's file) by the release with its fingerprint.

    Raises:
        ReleaseError: the file names a release this package does not ship (made by a newer
            vaecodec), its fingerprint is not that of the release it names, or it names no
            release and no shipped release has its fingerprint.
    """
    all_ = shipped(base)
    if header.release:
        for r in all_:
            if r.id == header.release:
                if r.fingerprint != header.fingerprint:
                    raise ReleaseError(
                        f"file names model release {header.release} but carries fingerprint "
                        f"{header.fingerprint.hex()}, not that release's {r.fingerprint.hex()} "
                        "(not written by a vaecodec release)")
                return r
        raise ReleaseError(
            f"file was made with model release {header.release}, which this vaecodec "
            f"({package_version()}) does not have; a newer vaecodec decodes it "
            f"(this one decodes {', '.join(r.id for r in all_) or 'no release'})")
    for r in all_:
        if r.fingerprint == header.fingerprint:
            return r
    raise ReleaseError(
        f"file was made with model weights that are no release (fingerprint "
        f"{header.fingerprint.hex()}); only those weights decode it (--weights DIR)")


def package_version() -> str:
    """The installed vaecodec's version, e.g. ``"0.2.0"``."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version("vaecodec")
    except PackageNotFoundError:   # running from a source tree that is not installed
        return "unknown"


def describe_sizes(r: Release) -> str:
    """``"decoder 17.6 MiB, encoder 19.5 MiB"`` for ``r`` (the encoder only where shipped)."""
    text = f"decoder {r.decoder_bytes / 2**20:.1f} MiB"
    if r.encoder_bytes:
        text += f", encoder {r.encoder_bytes / 2**20:.1f} MiB"
    return text
