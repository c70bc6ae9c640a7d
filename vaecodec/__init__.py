"""vaecodec: a learned image codec (mean-scale hyperprior VAE) with exact, portable entropy coding.

    import vaecodec
    data = vaecodec.compress("photo.png", quality=4.5)    # bytes of a .vae file
    image = vaecodec.decompress(data)                     # a PIL.Image.Image
    vaecodec.info(data)                                   # header fields, no decoding

Importing the package also registers ``.vae`` with Pillow (``Image.open``, ``Image.save``).
The model (PyTorch) is loaded on first use, not at import.
"""
from .api import FileInfo, VaecodecWarning, compress, decompress, info
from .errors import CodecError
from . import pillow_plugin as _pillow_plugin  # noqa: F401  (registers the format)

__all__ = ["compress", "decompress", "info", "FileInfo", "CodecError", "VaecodecWarning"]
