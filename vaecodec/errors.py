"""The error every public vaecodec function raises for a problem the user can fix (no torch
here, so it can be imported cheaply)."""


class CodecError(ValueError):
    """An image that cannot be coded, a ``.vae`` file that cannot be decoded, or a model that
    cannot be used; ``str(err)`` is a one-line message meant for the user."""
