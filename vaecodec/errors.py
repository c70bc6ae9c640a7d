"""The errors every public vaecodec function raises for a problem the user can fix, and the
one-line messages they carry (no torch and no Pillow here, so it can be imported cheaply)."""


class CodecError(ValueError):
    """An image that cannot be coded, a ``.vae`` file that cannot be decoded, or a model that
    cannot be used; ``str(err)`` is a one-line message meant for the user."""


class ImageError(ValueError):
    """A user-facing image or file I/O problem (:mod:`vaecodec.imageio`, :mod:`vaecodec.alpha`,
    :mod:`vaecodec.fileio`); ``str(err)`` is one line naming the file."""


def one_line(obj: object) -> str:
    """``str(obj)`` with all whitespace runs (newlines included) collapsed to single spaces."""
    return " ".join(str(obj).split())
