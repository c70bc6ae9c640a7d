"""Where output files go: atomic writes that never clobber a file unless asked, and the checks
a caller makes before doing any work (the target can be written; it is not the input).

Every refusal is an :class:`vaecodec.errors.ImageError` whose message is one line naming the
file. Only the standard library is used.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from typing import Union

from .errors import ImageError, one_line

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


def display_name(path: PathLike) -> str:
    """``path`` as a (one-line) message names it: as is, or quoted (``repr``) when it holds
    control characters."""
    s = os.fsdecode(os.fspath(path))
    if any(ord(c) < 32 or ord(c) == 127 for c in s):
        return repr(s)
    return s


_ERRNO_TEXT = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOSPC: "no space left on device",
    errno.EROFS: "read-only file system",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENAMETOOLONG: "file name too long",
    errno.EISDIR: "it is a directory",
    errno.ENOTDIR: "a parent of it is not a directory",
    errno.ENOENT: "no such file or directory",
}


def os_reason(err: OSError) -> str:
    """A short lower-case reason for ``err`` (``"permission denied"``, ``"no space left on
    device"``, ...)."""
    if err.errno in _ERRNO_TEXT:
        return _ERRNO_TEXT[err.errno]
    return one_line(err.strerror or err).lower() or "unknown error"


def _umask() -> int:
    """The process's umask, read without changing it where ``/proc`` tells it."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def resolve_target(path: PathLike, force: bool) -> tuple[str, str, str]:
    """Check that ``path`` may be written, before any work; returns ``(name, target,
    directory)``: the name messages give it (:func:`display_name`), the file to write (a
    symlink is followed, so the file it points to is (re)written) and its directory.

    Raises:
        ImageError: ``path`` is no file name (empty, ending in a separator, holding NUL), is a
            directory, lies in a directory that does not exist, or exists and ``force`` is
            false (``"X exists; use --force to overwrite"``) or it is not a regular file.
    """
    name = display_name(path)
    p = os.fsdecode(os.fspath(path))
    if not p or p.endswith(("/", os.sep)) or "\0" in p:
        raise ImageError(f"cannot write {name}: not a file name")
    if os.path.isdir(p):
        raise ImageError(f"cannot write {name}: it is a directory")
    target = os.path.realpath(p) if os.path.islink(p) else os.path.abspath(p)
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        if os.path.lexists(parent):
            raise ImageError(f"cannot write {name}: {display_name(parent)} is not a directory")
        raise ImageError(f"cannot write {name}: directory {display_name(parent)} does not exist")
    if os.path.lexists(p) or os.path.lexists(target):
        if not force:
            raise ImageError(f"{name} exists; use --force to overwrite")
        if os.path.exists(target) and not os.path.isfile(target):
            raise ImageError(f"cannot overwrite {name}: not a regular file")
    return name, target, parent


def atomic_write_bytes(path: PathLike, data: bytes, force: bool = False) -> None:
    """Write ``data`` to ``path`` atomically.

    The bytes go to a temporary file in the same directory (flushed and
    fsynced) which is then moved into place, so readers see either the old file
    or the complete new one.  Without ``force`` the move is a hard link, which
    fails if the name appeared meanwhile (no race with another writer); with
    ``force`` it is ``os.replace``.  An overwritten file keeps its permission
    bits; a new one gets ``0o666 & ~umask``.  A symlink is followed.

    Raises:
        ImageError: the path is a directory or ends in a separator, its
            directory does not exist, it exists and ``force`` is false (``"X
            exists; use --force to overwrite"``), or the OS refuses the write
            (``"cannot write X: permission denied"``, ``"... no space left on
            device"``, ...).  No temporary or partial file is left behind.
    """
    name, target, parent = resolve_target(path, force)
    try:
        payload = memoryview(data)
    except TypeError:
        raise ImageError(f"cannot write {name}: data must be bytes, not {type(data).__name__}") from None

    try:
        perms = stat.S_IMODE(os.stat(target).st_mode) if force and os.path.exists(target) else None
    except OSError:
        perms = None
    if perms is None:
        perms = 0o666 & ~_umask()

    base = os.path.basename(target)[:100]
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=parent)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fchmod(f.fileno(), perms)
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, target)
            tmp = None
        else:
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise ImageError(f"{name} exists; use --force to overwrite") from None
            except OSError as err:
                # File systems without hard links: check, then rename.
                if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV):
                    raise
                if os.path.lexists(target):
                    raise ImageError(f"{name} exists; use --force to overwrite") from None
                os.replace(tmp, target)
                tmp = None
    except ImageError:
        raise
    except OSError as err:
        raise ImageError(f"cannot write {name}: {os_reason(err)}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    # Make the rename durable (best effort).
    with contextlib.suppress(OSError, AttributeError):
        dfd = os.open(parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def check_distinct(in_path: PathLike, out_path: PathLike) -> None:
    """Refuse an output path that is the input file.

    Two paths are the same when both exist and ``os.path.samefile`` says so
    (hard links, symlinks, different spellings), or when their fully resolved
    paths are equal.

    Raises:
        ImageError: ``"output path is the same as the input: X"``.
    """
    a = os.fsdecode(os.fspath(in_path))
    b = os.fsdecode(os.fspath(out_path))
    if "\0" in a or "\0" in b:
        raise ImageError(f"invalid file name: {display_name(in_path if chr(0) in a else out_path)}")
    same = False
    try:
        same = os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        same = False
    if not same:
        same = os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))
    if same:
        raise ImageError(f"output path is the same as the input: {display_name(out_path)}")
