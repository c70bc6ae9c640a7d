"""vaecodec: a learned image codec (mean-scale hyperprior VAE) with exact, portable entropy coding.

    import vaecodec
    data = vaecodec.compress("photo.png", quality=4.5)    # bytes of a .vae file
    image = vaecodec.decompress(data)                     # a PIL.Image.Image
    vaecodec.info(data)                                   # header fields, no decoding

Importing the package registers ``.vae`` with Pillow (``Image.open``, ``Image.save``). It stays
light: the API module (numpy) loads on first use of its names, the model (PyTorch) on first
coding.
"""
from .errors import CodecError
from . import pillow_plugin as _pillow_plugin  # noqa: F401  (registers the format)

__all__ = ["compress", "decompress", "info", "FileInfo", "CodecError", "VaecodecWarning"]


def __getattr__(name: str):
    if name in __all__:
        from . import api
        return getattr(api, name)
    if name == "__version__":   # the installed distribution's version, e.g. "0.3.0"
        from .releases import package_version
        return package_version()
    raise AttributeError(f"module 'vaecodec' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
