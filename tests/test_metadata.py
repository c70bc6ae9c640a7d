"""EXIF (less the orientation tag, which is applied) and XMP are kept by default, written back on
decode by the formats that hold them, and dropped on request (metadata="none"/"icc"/...)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import vaecodec
from vaecodec import bitstream, imageio
from conftest import photo_crop

XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
       b'22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
       b'xmlns:dc="http://purl.org/dc/elements/1.1/" tiff:Orientation="6" dc:format="image/jpeg"/>'
       b'</rdf:RDF></x:xmpmeta>')


@pytest.fixture(scope="module")
def camera_jpeg() -> bytes:
    """A JPEG as a camera writes it: EXIF with make, date, GPS and orientation 6, and XMP."""
    exif = Image.Exif()
    exif[0x010F] = "Camera Maker"
    exif[0x0132] = "2026:12:06 10:00:00"
    exif[0x0112] = 6
    exif.get_ifd(0x8825)[2] = (52.0, 31.0, 12.0)   # GPS latitude
    buf = io.BytesIO()
    Image.fromarray(photo_crop(48, 64)).save(buf, format="JPEG", quality=95, exif=exif.tobytes(), xmp=XMP)
    return buf.getvalue()


def test_exif_and_xmp_are_kept_without_the_orientation(camera_jpeg):
    data = vaecodec.compress(camera_jpeg)
    c = bitstream.unpack(data)
    kinds = {s.kind: s.data for s in c.sections}
    assert set(kinds) == {bitstream.SECTION_EXIF, bitstream.SECTION_XMP}
    assert kinds[bitstream.SECTION_EXIF][:2] in (b"II", b"MM")   # TIFF header, no Exif\0\0 prefix
    image = vaecodec.decompress(data)
    assert image.size == (48, 64)                                # rotated by the orientation
    exif = image.getexif()
    assert exif[0x010F] == "Camera Maker" and exif[0x0132] == "2026:12:06 10:00:00"
    assert 0x0112 not in exif and exif.get_ifd(0x8825)[2] == (52.0, 31.0, 12.0)
    assert b"Orientation" not in image.info["xmp"] and b'dc:format="image/jpeg"' in image.info["xmp"]


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".tif"])
def test_decoded_files_carry_the_metadata(camera_jpeg, tmp_path, ext):
    image = vaecodec.decompress(vaecodec.compress(camera_jpeg))
    out = tmp_path / f"out{ext}"
    notices = imageio.write_image(out, image, image.info.get("icc_profile"))
    with Image.open(out) as back:
        if ext == ".tif":   # libtiff cannot write EXIF sub-IFDs
            assert any("TIFF output does not keep EXIF" in n for n in notices)
            xmp = back.tag_v2.get(700)
        else:
            assert back.getexif()[0x010F] == "Camera Maker"
            xmp = back.info.get("xmp") or back.info.get("XML:com.adobe.xmp")
        assert xmp and ("image/jpeg" in str(xmp))


def test_bmp_drops_metadata_with_a_notice(camera_jpeg, tmp_path):
    image = vaecodec.decompress(vaecodec.compress(camera_jpeg))
    notices = imageio.write_image(tmp_path / "out.bmp", image, None)
    assert any("BMP cannot carry EXIF or XMP" in n for n in notices)


@pytest.mark.parametrize("metadata,kinds", [("none", set()), ("icc", set()), ("exif", {"EXIF"}),
                                            ("xmp,exif", {"EXIF", "XMP"}), ("all", {"EXIF", "XMP"})])
def test_metadata_selection(camera_jpeg, metadata, kinds):
    data = vaecodec.compress(camera_jpeg, metadata=metadata)
    assert set(vaecodec.info(data).sections) == kinds
    plain = vaecodec.compress(camera_jpeg, metadata="none")
    assert bitstream.unpack(data).tiles == bitstream.unpack(plain).tiles   # pixels coded alike


def test_bad_metadata_choice():
    with pytest.raises(vaecodec.CodecError, match="metadata must be all, none or a list"):
        vaecodec.compress(photo_crop(16, 16), metadata="gps")


def test_images_without_metadata_have_no_sections():
    assert vaecodec.info(vaecodec.compress(photo_crop(32, 32))).sections == ()
    assert np.asarray(vaecodec.decompress(vaecodec.compress(photo_crop(32, 32)))).shape == (32, 32, 3)


def test_cli_keeps_and_strips_metadata(camera_jpeg, tmp_path):
    from click.testing import CliRunner
    from vaecodec.cli import main
    src = tmp_path / "camera.jpg"
    src.write_bytes(camera_jpeg)
    kept, stripped = tmp_path / "kept.vae", tmp_path / "stripped.vae"
    assert CliRunner().invoke(main, ["compress", str(src), str(kept)]).exit_code == 0
    assert CliRunner().invoke(main, ["compress", str(src), str(stripped), "--strip"]).exit_code == 0
    assert set(vaecodec.info(kept.read_bytes()).sections) == {"EXIF", "XMP"}
    assert vaecodec.info(stripped.read_bytes()).sections == ()
    out = tmp_path / "out.jpg"
    assert CliRunner().invoke(main, ["decompress", str(kept), str(out)]).exit_code == 0
    with Image.open(out) as back:
        assert back.getexif()[0x010F] == "Camera Maker" and 0x0112 not in back.getexif()
    bad = CliRunner().invoke(main, ["compress", str(src), str(tmp_path / "x.vae"), "--metadata", "gps"])
    assert bad.exit_code == 2 and "metadata must be all, none or a list" in bad.output
    both = CliRunner().invoke(main, ["compress", str(src), str(tmp_path / "x.vae"), "--strip", "--metadata", "exif"])
    assert both.exit_code == 2 and "give --strip or --metadata, not both" in both.output
    assert not (tmp_path / "x.vae").exists()


@pytest.mark.parametrize("args, message", [
    (["out.png", "--jpeg-quality", "80"], "--jpeg-quality applies to JPEG output only; this run writes PNG"),
    (["out.jpg", "--webp-quality", "80"], "--webp-quality applies to WebP output only; this run writes JPEG"),
    (["-", "--jpeg-quality", "80"], "--jpeg-quality applies to JPEG output only; this run writes PNG"),
    (["--out-dir", "d", "--format", "tif", "--jpeg-quality", "80"], "this run writes TIFF"),
    (["-", "--format", "jpg", "--jpeg-quality", "80"], "--format works with --out-dir"),
])
def test_decompress_refuses_an_output_quality_for_another_format(tmp_path, args, message, monkeypatch):
    """An output quality option for a format this run does not write would silently do nothing."""
    from click.testing import CliRunner
    from vaecodec.cli import main
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.vae").write_bytes(vaecodec.compress(photo_crop(32, 32)))
    result = CliRunner().invoke(main, ["decompress", "in.vae", *args])
    assert result.exit_code == 2 and message in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.vae"]
    ok = CliRunner().invoke(main, ["decompress", "in.vae", "ok.jpg", "--jpeg-quality", "80"])
    assert ok.exit_code == 0 and (tmp_path / "ok.jpg").exists()


def test_pillow_open_carries_exif_and_xmp(camera_jpeg, tmp_path):
    path = tmp_path / "camera.vae"
    path.write_bytes(vaecodec.compress(camera_jpeg))
    with Image.open(path) as im:
        assert im.getexif()[0x010F] == "Camera Maker" and b"image/jpeg" in im.info["xmp"]
        im.save(tmp_path / "out.jpg", exif=im.info["exif"])   # Pillow writes EXIF when asked
    with Image.open(tmp_path / "out.jpg") as back:
        assert back.getexif()[0x010F] == "Camera Maker"
