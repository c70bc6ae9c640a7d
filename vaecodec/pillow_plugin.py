"""Pillow plugin for ``.vae`` files, registered by ``import vaecodec``.

    import vaecodec
    from PIL import Image
    im = Image.open("photo.vae")          # reads the header; pixels are decoded at load()
    im.save("copy.vae", quality=4.5)      # the same bytes as `vaecodec compress --quality 4.5`
    im.save(buf, format="VAE", quality=3, refine=30)

Save options: ``quality`` (1 to 8, default 4; not JPEG's 0-100 scale), ``refine`` (encoder-side
refinement steps, default 0), ``model`` (a model release ID, default the newest), and the rate
control of :func:`vaecodec.compress` instead of ``quality``: ``size`` (bytes, or text such as
``"20k"``), ``bpp`` or ``psnr`` (dB). The ICC
profile, EXIF and XMP in ``im.info`` are kept (opening a ``.vae`` file puts them there, as
Pillow's own plugins do; pass ``exif=im.info["exif"]`` to write EXIF into a JPEG, as for any
Pillow image), alpha is stored losslessly, EXIF orientation is applied.

Format ``"VAE"``, extension ``.vae``, MIME type ``image/x-vae``. A damaged file raises
``PIL.UnidentifiedImageError`` (an ``OSError``) at open, naming what is wrong; one that decodes
wrongly raises ``OSError`` at ``load()``.
"""
from __future__ import annotations

from PIL import Image, ImageFile, UnidentifiedImageError

from . import bitstream

FORMAT = "VAE"
MIME = "image/x-vae"


def _accept(prefix: bytes) -> bool:
    return prefix[:4] == bitstream.MAGIC


class VaeImageFile(ImageFile.ImageFile):
    """An opened ``.vae`` file: size, mode and ICC profile from its header at open; pixels
    decoded by :func:`vaecodec.api.decompress` when Pillow loads them."""

    format = FORMAT
    format_description = "vaecodec learned image"

    def _open(self) -> None:
        name = getattr(self, "filename", "") or "image"
        try:
            data = bitstream.read_file(self.fp)
            container = bitstream.unpack(data)
        except bitstream.BitstreamError as exc:
            raise UnidentifiedImageError(f"{name}: damaged or unsupported .vae file ({exc})") from None
        header = container.header
        self._mode = header.mode
        self._size = (header.width, header.height)
        for s in container.sections:
            if s.kind == bitstream.SECTION_ICC:
                self.info["icc_profile"] = s.data
            elif s.kind == bitstream.SECTION_EXIF:
                self.info["exif"] = b"Exif\x00\x00" + s.data   # as Pillow's JPEG plugin keeps it
            elif s.kind == bitstream.SECTION_XMP:
                self.info["xmp"] = s.data
        self.info["quality"] = header.quality_milli / 1000
        self.info["release"] = header.release
        self.tile = [ImageFile._Tile("vae", (0, 0) + self.size, 0, (data, name))]


class _VaeDecoder(ImageFile.PyDecoder):
    """Decodes the whole file at once (the tile's arguments hold its bytes and name)."""

    _pulls_fd = True

    def decode(self, buffer) -> tuple[int, int]:
        from .api import decode
        from .errors import CodecError
        data, name = self.args
        try:
            image, _ = decode(data)
        except CodecError as exc:
            raise OSError(f"cannot decode {name}: {exc}") from None
        self.set_as_raw(image.tobytes())
        return -1, 0


def _save(im: Image.Image, fp, filename) -> None:
    from .api import compress, compress_read, read
    from .errors import CodecError
    options = im.encoderinfo
    targets = {k: options[k] for k in ("size", "bpp", "psnr") if options.get(k) is not None}
    try:
        if targets:   # rate control: exactly what vaecodec.compress writes
            data = compress(im, options.get("quality"), refine=options.get("refine", 0),
                            model=options.get("model"), **targets)
        else:
            rgb, meta = read(im, str(filename or "image"))
            quality = options.get("quality")
            data = compress_read(rgb, meta, 4.0 if quality is None else quality,
                                 refine=options.get("refine", 0), model=options.get("model"))
    except CodecError as exc:
        raise OSError(f"cannot write {filename or 'image'} as .vae: {exc}") from None
    fp.write(data)


def register() -> None:
    """Register the format with Pillow (done on ``import vaecodec``; harmless to repeat)."""
    Image.register_open(FORMAT, VaeImageFile, _accept)
    Image.register_save(FORMAT, _save)
    Image.register_extension(FORMAT, ".vae")
    Image.register_mime(FORMAT, MIME)
    Image.register_decoder("vae", _VaeDecoder)


register()
