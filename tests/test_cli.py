"""The command line (issue 5, CLI part of issue 2): compress/decompress/info round trip, damaged
and foreign files refused, overwrite rules, one-line errors without tracebacks, --help.

Everything runs the real codec with the bundled weights; only one test starts a real process.
"""
from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import ROOT, photo_crop
from vaecodec import bitstream, codec
from vaecodec import cli as cli_module
from vaecodec.cli import main

# Byte offsets in the big-endian header (">4sBB8sHIIBHHHHB", see bitstream/SPEC.md).
VERSION_AT, FINGERPRINT_AT, HEIGHT_AT, WIDTH_AT, TILE_AT = 4, 6, 16, 20, 25


def cli(*args) -> "click.testing.Result":
    return CliRunner().invoke(main, [str(a) for a in args])


def with_crc(data: bytes | bytearray) -> bytes:
    """``data`` with its last 4 bytes replaced by the CRC-32 of everything before them."""
    body = bytes(data[:-4])
    return body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def patched(data: bytes, offset: int, fmt: str, *values) -> bytes:
    """Overwrite a header field and recompute the CRC, so only that field is wrong."""
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return with_crc(out)


def listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def assert_refused(result, *fragments: str) -> str:
    """Non-zero exit, exactly one line on stderr, ``Error: ...``, no traceback, nothing on stdout
    (notices aside). Returns the message, lower-cased."""
    assert result.exit_code != 0, result.output
    # CliRunner stores an escaped exception here; a clean refusal is a SystemExit.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if not ln.startswith("note: ")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    assert result.stdout == ""
    message = lines[0].lower()
    for fragment in fragments:
        assert fragment.lower() in message, (fragment, lines[0])
    return message


@pytest.fixture(scope="module")
def photo_vae(photo_path, tmp_path_factory):
    """The real photo compressed through the CLI: (path of the .vae, compress's Result)."""
    out = tmp_path_factory.mktemp("cli") / "photo.vae"
    result = cli("compress", photo_path, out, "--quality", "3")
    assert result.exit_code == 0, result.output
    return out, result


@pytest.fixture(scope="module")
def small_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("small") / "small.png"
    Image.fromarray(photo_crop(48, 64, seed=5)).save(path)
    return path


@pytest.fixture(scope="module")
def small_vae(small_png, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small-vae") / "small.vae"
    assert cli("compress", small_png, out).exit_code == 0
    return out


# --------------------------------------------------------------------------------------------
# round trip


def test_round_trip_compress_info_decompress(photo_path, photo_vae, tmp_path):
    vae, compressed = photo_vae
    with Image.open(photo_path) as im:
        width, height = im.size
        original = np.asarray(im.convert("RGB"), dtype=np.float64)
    n = vae.stat().st_size

    m = re.search(r"-> .*: ([\d,]+) bytes, ([\d.]+) bpp, (\d+)x(\d+) RGB, quality 3\b",
                  compressed.stdout)
    assert m, compressed.stdout
    assert int(m[1].replace(",", "")) == n
    assert m[2] == f"{8 * n / (height * width):.3f}"
    assert (int(m[3]), int(m[4])) == (width, height)

    info = cli("info", vae)
    assert info.exit_code == 0, info.output
    assert f"{width}x{height} RGB" in info.stdout
    assert f"({n:,} bytes)" in info.stdout
    assert re.search(rf"^bpp:\s+{8 * n / (height * width):.4f}$", info.stdout, re.M)
    assert re.search(r"^quality:\s+3$", info.stdout, re.M)
    assert re.search(r"^sections:\s+none$", info.stdout, re.M)

    out = tmp_path / "decoded.png"
    result = cli("decompress", vae, out)
    assert result.exit_code == 0, result.output
    assert f"{width}x{height} RGB" in result.stdout
    with Image.open(out) as im:
        assert im.size == (width, height) and im.mode == "RGB"
        decoded = np.asarray(im, dtype=np.float64)
    psnr = 10 * np.log10(255**2 / np.mean((decoded - original) ** 2))
    assert psnr > 15, psnr
    assert listing(tmp_path) == ["decoded.png"]


def test_decompress_to_jpeg_prints_the_lossy_notice(small_vae, tmp_path):
    out = tmp_path / "x.jpg"
    result = cli("decompress", small_vae, out)
    assert result.exit_code == 0, result.output
    assert "note: JPEG output is lossy" in result.stderr
    with Image.open(out) as im:
        assert im.format == "JPEG" and im.size == (64, 48)


def test_thin_image_is_folded_and_info_shows_the_layout(tmp_path):
    """A 2000x3 strip: compressed folded (format 3), ``info`` says how in one line, and it
    decompresses to its own size."""
    src, vae, out = tmp_path / "strip.png", tmp_path / "strip.vae", tmp_path / "back.png"
    Image.fromarray(photo_crop(3, 2000, seed=1)).save(src)
    result = cli("compress", src, vae)
    assert result.exit_code == 0, result.output
    assert "2000x3 RGB" in result.stdout
    info = cli("info", vae)
    assert info.exit_code == 0, info.output
    assert re.search(r"^image:\s+2000x3 RGB$", info.stdout, re.M)
    assert re.search(r"^layout:\s+folded into 16 strips of 128 px, coded as 128x48$", info.stdout, re.M)
    assert re.search(r"^format:\s+version 3$", info.stdout, re.M)
    assert re.search(r"^sections:\s+layout \(5 bytes\)$", info.stdout, re.M)
    assert info.stdout.count("layout:") == 1 and len(info.stdout.splitlines()) == 11
    result = cli("decompress", vae, out)
    assert result.exit_code == 0, result.output
    with Image.open(out) as im:
        assert (im.size, im.mode) == ((2000, 3), "RGB")


# --------------------------------------------------------------------------------------------
# damaged files


@pytest.mark.parametrize("name", ["analysis", "synthesis", "context"])
def test_damaged_weights_file_is_refused(tmp_path, name):
    """A flipped byte in any weights file, the encoder's included (outside the fingerprint), is
    a one-line error naming the file; it used to give a valid but 20 bpp .vae for analysis."""
    import shutil
    import torch
    from vaecodec import weights
    from vaecodec.model import MeanScaleHyperprior
    torch.manual_seed(0)
    good = tmp_path / "good"
    weights.export(MeanScaleHyperprior(16, 24, slices=4), good)
    Image.fromarray(photo_crop(64, 64)).save(tmp_path / "in.png")
    assert cli("compress", tmp_path / "in.png", tmp_path / "ok.vae", "--weights", good).exit_code == 0
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    data = bytearray((bad / f"{name}.safetensors").read_bytes())
    data[-3] ^= 0x10                      # the last tensor's bytes, after the JSON header
    (bad / f"{name}.safetensors").write_bytes(bytes(data))
    message = assert_refused(cli("compress", tmp_path / "in.png", tmp_path / "out.vae",
                                 "--weights", bad), f"{name}.safetensors", "damaged")
    assert "checksum" in message and not (tmp_path / "out.vae").exists()


def test_weights_whose_metadata_shape_is_wrong_are_refused(tmp_path):
    """Metadata that names another N/M than the tensors hold is a one-line error (it was a
    multi-line internal error from load_state_dict; found by a tryout)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from vaecodec import weights
    from vaecodec.model import MeanScaleHyperprior
    torch.manual_seed(0)
    folder = tmp_path / "w"
    weights.export(MeanScaleHyperprior(16, 24, slices=1), folder)
    path = folder / "synthesis.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    meta.pop("sha256")
    save_file(tensors, str(path), metadata={**meta, "M": "32"})
    Image.fromarray(photo_crop(64, 64)).save(tmp_path / "in.png")
    assert_refused(cli("compress", tmp_path / "in.png", tmp_path / "out.vae", "--weights", folder),
                   "do not match the shape in their metadata", "M 32")


@pytest.mark.parametrize("where", ["header", "quarter", "middle", "three-quarters", "last-data",
                                   "crc"])
def test_flipped_byte_is_refused(photo_vae, tmp_path, where):
    data = photo_vae[0].read_bytes()
    n = len(data)
    pos = {"header": 20, "quarter": n // 4, "middle": n // 2, "three-quarters": 3 * n // 4,
           "last-data": n - 5, "crc": n - 2}[where]
    bad = bytearray(data)
    bad[pos] ^= 0xFF
    src = tmp_path / "bad.vae"
    src.write_bytes(bytes(bad))
    out = tmp_path / "out.png"
    assert_refused(cli("decompress", src, out), "checksum")
    assert_refused(cli("info", src), "checksum")
    assert listing(tmp_path) == ["bad.vae"]


@pytest.mark.parametrize("keep", [0.5, 0.99, "minus-1", 41, 10, 3])
def test_truncated_file_is_refused(photo_vae, tmp_path, keep):
    data = photo_vae[0].read_bytes()
    size = {0.5: len(data) // 2, 0.99: int(len(data) * 0.99), "minus-1": len(data) - 1}.get(keep, keep)
    src = tmp_path / "cut.vae"
    src.write_bytes(data[:size])
    out = tmp_path / "out.png"
    msg = assert_refused(cli("decompress", src, out))
    assert "truncated" in msg or "checksum" in msg
    assert_refused(cli("info", src))
    assert listing(tmp_path) == ["cut.vae"]


# --------------------------------------------------------------------------------------------
# overwriting


def test_no_overwrite_without_force(small_png, small_vae, tmp_path):
    existing = tmp_path / "existing.bin"
    existing.write_bytes(b"precious data\x00\x01")
    before = existing.read_bytes()
    assert_refused(cli("compress", small_png, existing), "exists", "--force")
    assert existing.read_bytes() == before
    existing_png = tmp_path / "existing.png"
    existing_png.write_bytes(before)
    assert_refused(cli("decompress", small_vae, existing_png), "exists", "--force")
    assert existing_png.read_bytes() == before
    assert listing(tmp_path) == ["existing.bin", "existing.png"]


def test_overwrite_with_force(small_png, small_vae, tmp_path):
    vae = tmp_path / "x.vae"
    vae.write_bytes(b"old")
    result = cli("compress", small_png, vae, "--force")
    assert result.exit_code == 0, result.output
    assert vae.read_bytes() == small_vae.read_bytes()      # same image, same quality, same bytes
    png = tmp_path / "x.png"
    png.write_bytes(b"old")
    result = cli("decompress", vae, png, "-f")
    assert result.exit_code == 0, result.output
    with Image.open(png) as im:
        assert im.size == (64, 48)
    assert listing(tmp_path) == ["x.png", "x.vae"]


def test_output_equal_to_input_is_refused(small_png, small_vae, tmp_path):
    png = tmp_path / "in.png"
    png.write_bytes(small_png.read_bytes())
    vae = tmp_path / "in.vae"
    vae.write_bytes(small_vae.read_bytes())
    for args in (("compress", png, png), ("compress", png, tmp_path / "." / ".." / tmp_path.name / "in.png"),
                 ("compress", png, png, "--force"), ("decompress", vae, vae, "--force")):
        assert_refused(cli(*args), "same as the input")
    assert png.read_bytes() == small_png.read_bytes()
    assert vae.read_bytes() == small_vae.read_bytes()
    assert listing(tmp_path) == ["in.png", "in.vae"]


# --------------------------------------------------------------------------------------------
# refusals: bad inputs


@pytest.mark.parametrize("command", ["compress", "decompress", "info"])
@pytest.mark.parametrize("kind", ["empty", "missing", "directory", "not-an-image"])
def test_bad_input_is_refused(tmp_path, command, kind):
    src = tmp_path / "input.png"
    expected = {"empty": "empty", "missing": "no such file", "directory": "directory"}
    if kind == "empty":
        src.write_bytes(b"")
    elif kind == "directory":
        src.mkdir()
    elif kind == "not-an-image":
        src.write_bytes(b"hello, this is a text file, not an image\n" * 20)
        expected["not-an-image"] = "not an image" if command == "compress" else "magic"
    before = listing(tmp_path)
    args = ["info", src] if command == "info" else [command, src, tmp_path / "out.vae"]
    if command == "decompress":
        args[-1] = tmp_path / "out.png"
    assert_refused(cli(*args), expected[kind])
    assert listing(tmp_path) == before


def test_decompress_refuses_an_image_file(small_png, tmp_path):
    assert_refused(cli("decompress", small_png, tmp_path / "o.png"), "not a vaecodec file")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_output_in_missing_directory_is_refused_before_coding(small_png, small_vae, tmp_path,
                                                              command, monkeypatch):
    # A tripwire, not a mock: the codec must not even be reached.
    def tripwire(*a, **k):
        raise AssertionError("the codec ran although the output cannot be written")
    monkeypatch.setattr(codec, "compress_array", tripwire)
    monkeypatch.setattr(codec, "decompress_array", tripwire)
    src = small_png if command == "compress" else small_vae
    out = tmp_path / "no" / "such" / "dir" / ("out.vae" if command == "compress" else "out.png")
    assert_refused(cli(command, src, out), "does not exist")
    assert listing(tmp_path) == []


def test_decompress_refuses_unknown_extension_before_decoding(small_vae, tmp_path, monkeypatch):
    monkeypatch.setattr(codec, "decompress_array", lambda *a, **k: pytest.fail("decoded"))
    assert_refused(cli("decompress", small_vae, tmp_path / "out.xyz"),
                   "unknown image extension", ".png")
    assert_refused(cli("decompress", small_vae, tmp_path / "noext"), "no extension")
    assert listing(tmp_path) == []
    (tmp_path / "folder").mkdir()     # a directory is named as one, not as a missing extension
    assert_refused(cli("decompress", small_vae, tmp_path / "folder"), "it is a directory")
    assert_refused(cli("compress", small_vae, tmp_path / "folder"), "it is a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_read_only_output_directory_is_refused(small_png, small_vae, tmp_path, command):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        src = small_png if command == "compress" else small_vae
        out = ro / ("out.vae" if command == "compress" else "out.png")
        assert_refused(cli(command, src, out), "permission denied")
        assert listing(ro) == []
    finally:
        ro.chmod(0o755)


# --------------------------------------------------------------------------------------------
# refusals: foreign, newer or lying .vae files


def _refuse_patched(tmp_path, data: bytes, *fragments) -> str:
    src = tmp_path / "patched.vae"
    src.write_bytes(data)
    msg = assert_refused(cli("decompress", src, tmp_path / "out.png"), *fragments)
    assert listing(tmp_path) == ["patched.vae"]
    return msg


def test_wrong_magic_is_refused(photo_vae, tmp_path):
    data = photo_vae[0].read_bytes()
    _refuse_patched(tmp_path, with_crc(b"PNG!" + data[4:]), "not a vaecodec file")
    src = tmp_path / "patched.vae"
    assert_refused(cli("info", src), "not a vaecodec file")


def test_newer_format_version_is_refused(photo_vae, tmp_path):
    data = photo_vae[0].read_bytes()
    newer = patched(data, VERSION_AT, ">B", bitstream.VERSION + 1)
    _refuse_patched(tmp_path, newer, "newer vaecodec", "upgrade")
    assert_refused(cli("info", tmp_path / "patched.vae"), "newer vaecodec")


def test_file_from_other_weights_is_refused(photo_vae, tmp_path):
    data = photo_vae[0].read_bytes()
    fingerprint = data[FINGERPRINT_AT:FINGERPRINT_AT + 8]
    other = bytes(b ^ 0x5A for b in fingerprint)
    _refuse_patched(tmp_path, patched(data, FINGERPRINT_AT, ">8s", other),
                    "names model release", other.hex())
    # info only reads the header; it shows the fingerprint instead of refusing
    result = cli("info", tmp_path / "patched.vae")
    assert result.exit_code == 0 and other.hex() in result.stdout


@pytest.mark.parametrize("height,width,tile,fragments", [
    (0xFFFFFFFF, 0xFFFFFFFF, None, ("out of range",)),
    (100_000, 100_000, None, ("exceeds the limit",)),
    (30_000, 30_000, None, ("tiling does not match",)),          # under the pixel limit: lies
    (30_000, 30_000, (1024, 64), ("tiles", "needs")),           # consistent tiling, 1 tile
    (1000, 700, None, ("latent shape",)),                       # plausible, wrong tile shape
    (2048, 2048, (64, 63), ("tiling does not match",)),         # a 4-million-tile grid
])
def test_absurd_dimensions_are_refused_before_allocating(photo_vae, tmp_path, height, width,
                                                         tile, fragments):
    data = patched(photo_vae[0].read_bytes(), HEIGHT_AT, ">II", height, width)
    if tile:
        data = patched(data, TILE_AT, ">HH", *tile)
    codec.get_model(None, encoder=False)            # loaded outside the measurement
    tracemalloc.start()
    try:
        _refuse_patched(tmp_path, data, *fragments)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MiB allocated before refusing"


# --------------------------------------------------------------------------------------------
# a real process: exit status and stderr


def test_real_process_exit_status_and_stderr(photo_vae, tmp_path):
    bad = bytearray(photo_vae[0].read_bytes())
    bad[len(bad) // 2] ^= 0x01
    src = tmp_path / "bad.vae"
    src.write_bytes(bytes(bad))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("VAECODEC_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "vaecodec", "decompress", str(src),
                           str(tmp_path / "out.png")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [     # the message names the damaged file
        f"Error: {src}: file is corrupted or truncated (checksum mismatch)"]
    assert listing(tmp_path) == ["bad.vae"]


def test_sigterm_while_writing_leaves_no_file_behind(small_png, tmp_path):
    # the process sends itself SIGTERM while fsyncing the temporary output: it must exit with
    # status 143 and one line, and remove the temporary file (the output never appears)
    script = ("import os, signal, sys\n"
              "real = os.fsync\n"
              "def fsync(fd):\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    real(fd)\n"
              "os.fsync = fsync\n"
              "from vaecodec.cli import main\n"
              "main(prog_name='vaecodec')\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("VAECODEC_DEBUG", None)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-c", script, "compress", str(small_png),
                           str(out / "o.vae")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.splitlines()[-1] == "Error: terminated"
    assert listing(out) == []


# --------------------------------------------------------------------------------------------
# help


def test_help_of_every_command():
    top = cli("--help")
    assert top.exit_code == 0
    for name in ("compress", "decompress", "info", "train", "export"):
        assert name in top.stdout
    assert set(main.commands) >= {"compress", "decompress", "info", "train", "export"}
    for name, command in main.commands.items():
        for flag in ("--help", "-h"):
            result = cli(name, flag)
            assert result.exit_code == 0, (name, result.output)
            assert "Usage:" in result.stdout
            for param in command.params:
                if isinstance(param, click.Option) and not param.hidden:
                    assert any(opt in result.stdout for opt in param.opts), (name, param.opts)
    compress_help = cli("compress", "--help").stdout
    for opt in ("--quality", "--force", "--weights", "INPUT", "OUTPUT"):
        assert opt in compress_help
    for opt in ("--force", "--weights", "INPUT", "OUTPUT"):
        assert opt in cli("decompress", "--help").stdout
    assert "FILE" in cli("info", "--help").stdout


@pytest.mark.parametrize("quality", ["9", "0.5", "nan", "inf"])
def test_bad_quality_is_a_usage_error(small_png, tmp_path, quality):
    result = cli("compress", small_png, tmp_path / "x.vae", "--quality", quality)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--quality" in result.stderr
    assert listing(tmp_path) == []


def test_side_longer_than_the_format_allows_is_refused_before_coding(tmp_path, monkeypatch):
    src = tmp_path / "long.png"
    Image.new("RGB", (bitstream.MAX_SIDE + 1, 1), (90, 120, 200)).save(src)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded for an image the format cannot hold")
    monkeypatch.setattr(codec, "get_model", no_model)
    assert_refused(cli("compress", src, tmp_path / "out.vae"), "too large",
                   str(bitstream.MAX_SIDE))
    assert listing(tmp_path) == ["long.png"]
    with pytest.raises(codec.CodecError, match="too large"):
        codec.compress_array(np.zeros((1, bitstream.MAX_SIDE + 1, 3), np.uint8))


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
@pytest.mark.parametrize("command", ["info", "decompress"])
def test_endless_non_vae_input_is_refused_without_reading_it(tmp_path, command):
    args = ["info", "/dev/zero"] if command == "info" else [command, "/dev/zero", tmp_path / "o.png"]
    tracemalloc.start()
    try:
        assert_refused(cli(*args), "not a vaecodec file")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def _feed_pipe(fifo: Path, head: bytes, fill: bytes, written: list) -> "threading.Thread":
    """Write ``head`` then ``fill`` forever (up to 1 GiB) into the named pipe ``fifo``, from a
    thread that stops when the reader closes the pipe."""
    import threading

    def feed():
        try:
            with open(fifo, "wb") as f:
                f.write(head)
                while sum(written) < 1 << 30:
                    f.write(fill)
                    written.append(len(fill))
        except BrokenPipeError:
            pass

    os.mkfifo(fifo)
    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    return writer


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_pipe_is_read_as_far_as_the_file_declares(small_vae, tmp_path):
    # a pipe carrying a whole .vae file and then zeros forever: the file is decoded, the
    # stream after it is left unread (the writer sees the pipe close)
    written = []
    writer = _feed_pipe(tmp_path / "pipe.vae", small_vae.read_bytes(), bytes(1 << 16), written)
    res = cli("decompress", tmp_path / "pipe.vae", tmp_path / "o.png")
    assert res.exit_code == 0, res.output
    writer.join(timeout=30)
    assert not writer.is_alive() and sum(written) < 16 << 20
    direct = tmp_path / "direct.png"
    assert cli("decompress", small_vae, direct).exit_code == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o.png")), np.asarray(Image.open(direct)))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("command", ["info", "decompress"])
def test_endless_stream_with_huge_declared_lengths_is_refused(small_vae, tmp_path, command):
    # a real header, then a million tiles whose first declares three 4 GiB streams, then "y\n"
    # forever: refused as soon as the lengths exceed what the header's image can hold
    head = small_vae.read_bytes()[:34] + struct.pack(">I", 1_000_000)
    head += struct.pack(">HHHHIII", 4, 4, 1, 1, *[0xFFFFFFFF] * 3)
    written = []
    writer = _feed_pipe(tmp_path / "pipe.vae", head, b"y\n" * 4096, written)
    args = ["info", tmp_path / "pipe.vae"] if command == "info" else \
        [command, tmp_path / "pipe.vae", tmp_path / "o.png"]
    assert_refused(cli(*args), "more data than a")
    writer.join(timeout=30)
    assert not writer.is_alive() and sum(written) < 16 << 20
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("ext", [".jpg", ".bmp"])
def test_alpha_to_a_format_without_transparency_is_refused_before_decoding(tmp_path, monkeypatch,
                                                                           ext):
    rgba = np.dstack([photo_crop(32, 40, seed=3), np.full((32, 40), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert cli("compress", tmp_path / "a.png", tmp_path / "a.vae").exit_code == 0

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before refusing")

    monkeypatch.setattr(codec, "decompress_array", no_decoding)
    assert_refused(cli("decompress", tmp_path / "a.vae", tmp_path / f"out{ext}"),
                   "cannot store transparency")
    assert listing(tmp_path) == ["a.png", "a.vae"]


# --------------------------------------------------------------------------------------------
# standard input and output ("-")


def test_pipes_give_the_same_bytes_as_files(small_png, small_vae, tmp_path):
    """`compress - -` and `decompress - -` read standard input and write standard output: the
    same .vae bytes and the same pixels as with files; the summary line goes to stderr so
    stdout carries nothing but the file."""
    runner = CliRunner()
    res = runner.invoke(main, ["compress", "-", "-"], input=small_png.read_bytes())
    assert res.exit_code == 0, res.output
    assert res.stdout_bytes == small_vae.read_bytes()
    assert re.match(r"standard input -> standard output: [\d,]+ bytes, ", res.stderr), res.stderr

    res = runner.invoke(main, ["info", "-"], input=small_vae.read_bytes())
    assert res.exit_code == 0 and f"standard input ({small_vae.stat().st_size:,} bytes)" in res.stdout

    res = runner.invoke(main, ["decompress", "-", "-"], input=small_vae.read_bytes())
    assert res.exit_code == 0, res.output
    assert res.stdout_bytes.startswith(b"\x89PNG\r\n\x1a\n")
    assert "standard input -> standard output: 64x48 RGB" in res.stderr
    direct = tmp_path / "direct.png"
    assert cli("decompress", small_vae, direct).exit_code == 0
    with Image.open(io.BytesIO(res.stdout_bytes)) as piped, Image.open(direct) as filed:
        assert np.array_equal(np.asarray(piped), np.asarray(filed))

    res = runner.invoke(main, ["compress", str(small_png), "-", "--quality", "2"])   # file in, pipe out
    assert res.exit_code == 0 and res.stdout_bytes[:4] == bitstream.MAGIC, res.output
    res = runner.invoke(main, ["decompress", "-", str(tmp_path / "o.png")], input=res.stdout_bytes)
    assert res.exit_code == 0 and (tmp_path / "o.png").exists(), res.output


@pytest.mark.parametrize("command, data, message", [
    ("compress", b"", "standard input is empty"),
    ("compress", b"not an image", "standard input is not an image"),
    ("decompress", b"", "standard input is empty"),
    ("decompress", b"not a .vae file", "not a vaecodec file")])
def test_bad_standard_input_is_refused(tmp_path, command, data, message):
    out = tmp_path / ("o.vae" if command == "compress" else "o.png")
    assert_refused(CliRunner().invoke(main, [command, "-", str(out)], input=data), message)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_binary_output_to_a_terminal_is_refused(small_png, small_vae, monkeypatch, command):
    class Terminal(io.BytesIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(cli_module, "_stdout", lambda: terminal)
    source = small_png if command == "compress" else small_vae
    assert_refused(cli(command, source, "-"), "to a terminal", "redirect standard output")
    assert terminal.getvalue() == b""


def test_standard_output_gets_all_of_a_partly_taken_write(small_vae, monkeypatch):
    """A write to a pipe may take only part of the data (the rest used to be lost silently
    when the reader was slow or gone): every byte is written, in as many calls as it takes."""
    class Trickle(io.BytesIO):
        def write(self, data):
            return super().write(bytes(data[:1000]))

    trickle = Trickle()
    monkeypatch.setattr(cli_module, "_stdout", lambda: trickle)
    res = cli("decompress", small_vae, "-")
    assert res.exit_code == 0, res.output
    png = trickle.getvalue()
    assert len(png) > 1000 and Image.open(io.BytesIO(png)).size == (64, 48)


def test_reader_that_closes_the_pipe_early_gets_a_one_line_error(tmp_path):
    """`vaecodec decompress x.vae - | head -c 10`: the decoder finds the pipe closed after the
    first 64 KiB and says so in one line with exit status 1 (it used to report success)."""
    noise = np.random.default_rng(1).integers(0, 256, (384, 384, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    assert cli("compress", tmp_path / "noise.png", tmp_path / "noise.vae", "-q", "8").exit_code == 0
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("VAECODEC_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "vaecodec", "decompress", str(tmp_path / "noise.vae"),
                             "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    try:
        assert proc.stdout.read(8) == b"\x89PNG\r\n\x1a\n"   # a PNG of some 400 KB has begun
        proc.stdout.close()
        assert proc.wait(timeout=300) == 1
        assert proc.stderr.read().decode().splitlines() == [
            "Error: standard output was closed before the whole file was written"]
    finally:
        proc.kill()
        proc.stderr.close()


def test_dot_slash_dash_is_a_file_named_dash(small_png, small_vae, tmp_path, monkeypatch):
    """Only a bare "-" is standard input/output; ./- reaches a file called "-" (pathlib turns
    "./-" into "-", so it used to read standard input)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-").write_bytes(small_png.read_bytes())
    assert cli("compress", "./-", "o.vae").exit_code == 0
    assert (tmp_path / "o.vae").read_bytes() == small_vae.read_bytes()
    assert_refused(cli("compress", small_png, "./-"), "exists; use --force")


def _vaecodec_process(args, tmp_path, stdin_file=None, close_stdin=False):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("VAECODEC_DEBUG", None)
    with open(stdin_file, "rb") if stdin_file else open(os.devnull, "rb") as f:
        return subprocess.run([sys.executable, "-m", "vaecodec", *map(str, args)], stdin=f,
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
                              preexec_fn=(lambda: os.close(0)) if close_stdin else None)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX descriptors")
def test_standard_input_redirected_from_a_file(small_png, small_vae, tmp_path):
    """`info - < file` checks the whole file as `info file` does (bytes after a complete file
    are refused, not ignored); `compress - x < x` is refused as output equal to the input,
    even with --force; a closed standard input is a one-line error, not an internal one."""
    doubled = tmp_path / "doubled.vae"
    doubled.write_bytes(small_vae.read_bytes() * 2)
    proc = _vaecodec_process(["info", "-"], tmp_path, stdin_file=doubled)
    assert proc.returncode == 1 and proc.stderr.splitlines() == [
        f"Error: standard input: file is corrupted or truncated (checksum mismatch); its last "
        f"{small_vae.stat().st_size} bytes follow a complete file"], proc.stderr
    victim = tmp_path / "victim.png"
    victim.write_bytes(small_png.read_bytes())
    proc = _vaecodec_process(["compress", "--force", "-", victim], tmp_path, stdin_file=victim)
    assert proc.returncode == 1 and "output path is the same as the input" in proc.stderr
    assert victim.read_bytes() == small_png.read_bytes()
    proc = _vaecodec_process(["info", "-"], tmp_path, close_stdin=True)
    assert proc.returncode == 1 and proc.stderr.splitlines() == ["Error: standard input is closed"]


# --------------------------------------------------------------------------------------------
# rough edges (issue "The command line people use")


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".tif"])
def test_compress_refuses_an_image_extension_without_force(small_png, small_vae, tmp_path, ext):
    """`compress a.png out.jpg` would write a .vae stream under a JPEG name: refused (as
    decompress refuses unknown extensions); --force writes it, with a note."""
    out = tmp_path / f"out{ext}"
    assert_refused(cli("compress", small_png, out), f"{out} has the extension of an image format",
                   f"name it {tmp_path / 'out.vae'}", "--force")
    assert listing(tmp_path) == []
    forced = cli("compress", small_png, out, "--force")
    assert forced.exit_code == 0, forced.output
    assert f"note: {out} does not end in .vae" in forced.stderr
    assert out.read_bytes() == small_vae.read_bytes()


def test_one_bit_image_is_coded_as_grey_with_a_note(tmp_path):
    bits = photo_crop(40, 56, seed=2).mean(axis=2) > 110
    src = tmp_path / "bits.png"
    Image.fromarray(bits).save(src)
    with Image.open(src) as im:
        assert im.mode == "1"
    result = cli("compress", src, tmp_path / "bits.vae")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "note: 1-bit image coded as 8-bit grey (it decodes as grey, mode L)"]
    assert "56x40 L" in result.stdout
    assert cli("decompress", tmp_path / "bits.vae", tmp_path / "back.png").exit_code == 0
    with Image.open(tmp_path / "back.png") as im:
        assert im.mode == "L" and im.size == (56, 40)
        back = np.asarray(im) > 127
    assert (back == bits).mean() > 0.9


@pytest.mark.parametrize("command", ["decompress", "info"])
def test_errors_about_a_damaged_file_name_it(small_vae, tmp_path, command):
    bad = bytearray(small_vae.read_bytes())
    bad[len(bad) // 2] ^= 0x01
    src = tmp_path / "x.vae"
    src.write_bytes(bytes(bad))
    args = [command, src] + ([tmp_path / "x.png"] if command == "decompress" else [])
    result = cli(*args)
    assert_refused(result)
    assert result.stderr == f"Error: {src}: file is corrupted or truncated (checksum mismatch)\n"
    (tmp_path / "y.vae").write_bytes(b"GIF89a" + bytes(60))     # and a foreign file
    result = cli(command, tmp_path / "y.vae", *([tmp_path / "y.png"] if command == "decompress" else []))
    assert result.stderr.startswith(f"Error: {tmp_path / 'y.vae'}: not a vaecodec file")


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_a_folder_as_output_is_one_refusal_with_or_without_the_slash(small_png, small_vae,
                                                                     tmp_path, command):
    """`compress img dir` and `compress img dir/` used to exit with 1 and 2 (the second as a
    usage error): both are now the same refusal, status 1, pointing at --out-dir."""
    (tmp_path / "dir").mkdir()
    src = small_png if command == "compress" else small_vae
    name = "small.vae" if command == "compress" else "small.png"
    for out in (f"{tmp_path}/dir", f"{tmp_path}/dir/"):
        result = cli(command, src, out)
        assert result.exit_code == 1
        assert_refused(result, f"cannot write {out}: it is a directory",
                       f"use --out-dir {out} to write {name} into it")
    missing = f"{tmp_path}/new/"
    assert_refused(cli(command, src, missing), "a name ending in '/' is a folder", "--out-dir")
    assert cli(command, src, missing).exit_code == 1
    assert listing(tmp_path) == ["dir"] and listing(tmp_path / "dir") == []


def test_printed_time_is_the_coding_and_the_time_since_the_process_started(small_png, tmp_path):
    """The line gives the encoding's own seconds, then the seconds since the process started
    (start-up, torch and model loading included), which match a clock outside the process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("VAECODEC_DEBUG", None)
    import time
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "vaecodec", "compress", str(small_png),
                             str(tmp_path / "t.vae"), "--verbose"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        seen = time.perf_counter() - start
        details = proc.stdout.readline()
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    m = re.search(r"quality 4, encoded in ([\d.]+) s \(([\d.]+) s since the process started\)$",
                  line.strip())
    assert m, line
    coding, since_start = float(m[1]), float(m[2])
    assert coding < since_start <= seen + 0.05          # 10 ms clock ticks, and rounding
    assert since_start > seen - 1.0, (since_start, seen)  # torch alone takes longer than that
    stages = dict((name, float(v)) for name, v in
                  re.findall(r"(start-up|reading|model loading|encoding|writing) ([\d.]+) s", details))
    assert list(stages) == ["start-up", "reading", "model loading", "encoding", "writing"], details
    assert stages["encoding"] == coding
    assert abs(sum(stages.values()) - since_start) < 0.03
    assert re.search(r"model release [\d.]+ \(fingerprint [0-9a-f]{16}\), \d+ threads?$",
                     details.strip()), details


def test_threads_option_sets_and_restores_the_torch_threads(small_png, small_vae, tmp_path):
    import torch
    before = torch.get_num_threads()
    result = cli("compress", small_png, tmp_path / "a.vae", "--threads", "1", "--verbose")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(", 1 thread")
    assert torch.get_num_threads() == before
    assert (tmp_path / "a.vae").read_bytes() == small_vae.read_bytes()
    result = cli("decompress", tmp_path / "a.vae", tmp_path / "a.png", "--threads", "3", "-v")
    assert result.exit_code == 0 and result.stdout.strip().endswith(", 3 threads"), result.output
    assert torch.get_num_threads() == before
    assert cli("compress", small_png, tmp_path / "b.vae", "--threads", "0").exit_code == 2


def test_quiet_prints_nothing_but_errors_and_verbose_adds_the_stages(small_png, tmp_path):
    src = tmp_path / "p.png"
    Image.fromarray(photo_crop(48, 64).mean(axis=2).astype(np.uint16) * 257).save(src)   # I;16
    quiet = cli("compress", src, tmp_path / "q.vae", "--quiet")
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == ""
    loud = cli("compress", src, tmp_path / "v.vae", "--verbose")
    assert loud.exit_code == 0
    assert loud.stderr.startswith("note: 16-bit image coded at 8 bits")
    first, second = loud.stdout.splitlines()
    assert first.startswith(f"{src} -> {tmp_path / 'v.vae'}: ")
    assert second.startswith("  start-up ") and ", model loading " in second
    quiet = cli("decompress", tmp_path / "q.vae", tmp_path / "q.jpg", "--quiet")
    assert quiet.exit_code == 0 and quiet.output == ""            # not even JPEG's lossy note
    failed = cli("decompress", tmp_path / "q.vae", tmp_path / "q.jpg", "--quiet")
    assert_refused(failed, "exists")
    assert cli("compress", src, tmp_path / "z.vae", "--quiet", "--verbose").exit_code == 2


def test_jpeg_and_webp_quality(small_vae, tmp_path):
    sizes = {}
    for q in ("40", "95"):
        out = tmp_path / f"q{q}.jpg"
        result = cli("decompress", small_vae, out, "--jpeg-quality", q)
        assert result.exit_code == 0, result.output
        assert f"note: JPEG output is lossy (re-encoded at quality {q})" in result.stderr
        sizes[q] = out.stat().st_size
    assert sizes["40"] < sizes["95"]
    default = tmp_path / "default.jpg"
    assert cli("decompress", small_vae, default).exit_code == 0
    assert default.read_bytes() == (tmp_path / "q95.jpg").read_bytes()   # 95 is the default
    lossless, lossy = tmp_path / "lossless.webp", tmp_path / "lossy.webp"
    assert cli("decompress", small_vae, lossless).exit_code == 0
    result = cli("decompress", small_vae, lossy, "--webp-quality", "50")
    assert result.exit_code == 0 and "WebP output is lossy (re-encoded at quality 50)" in result.stderr
    assert lossy.stat().st_size < lossless.stat().st_size
    with Image.open(lossless) as a, Image.open(lossy) as b, Image.open(default) as c:
        assert a.format == b.format == "WEBP" and a.size == b.size == (64, 48)
        decoded = np.asarray(a.convert("RGB"))
        assert not np.array_equal(decoded, np.asarray(b.convert("RGB")))
    direct = tmp_path / "direct.png"
    assert cli("decompress", small_vae, direct).exit_code == 0
    assert np.array_equal(np.asarray(Image.open(direct)), decoded)      # lossless is lossless
    for bad in (("--jpeg-quality", "0"), ("--jpeg-quality", "101"), ("--webp-quality", "-1")):
        assert cli("decompress", small_vae, tmp_path / "x.jpg", *bad).exit_code == 2


def test_background_flattens_alpha_for_jpeg(tmp_path):
    colour = photo_crop(32, 40, seed=3)
    alpha = np.zeros((32, 40), np.uint8)
    alpha[:, 20:] = 255                                      # left half transparent
    Image.fromarray(np.dstack([colour, alpha]), "RGBA").save(tmp_path / "a.png")
    assert cli("compress", tmp_path / "a.png", tmp_path / "a.vae").exit_code == 0
    assert_refused(cli("decompress", tmp_path / "a.vae", tmp_path / "a.jpg"),
                   "JPEG cannot store transparency", "--background COLOR")
    result = cli("decompress", tmp_path / "a.vae", tmp_path / "a.jpg", "--background", "#00ff00")
    assert result.exit_code == 0, result.output
    assert "40x32 RGB" in result.stdout
    with Image.open(tmp_path / "a.jpg") as im:
        assert im.mode == "RGB"
        px = np.asarray(im).astype(int)
    assert np.abs(px[4:-4, 2:16] - [0, 255, 0]).max() <= 8            # the colour where alpha is 0
    png = tmp_path / "flat.png"
    assert cli("decompress", tmp_path / "a.vae", png, "--background", "white").exit_code == 0
    with Image.open(png) as im, Image.open(tmp_path / "a.png") as src:
        assert im.mode == "RGB"
        assert (np.asarray(im)[:, :20] == 255).all()                   # exactly white
        kept = np.asarray(im)[:, 20:].astype(int) - np.asarray(src.convert("RGB"))[:, 20:]
        assert np.abs(kept).mean() < 20                                # the opaque half is the image
    assert cli("decompress", tmp_path / "a.vae", tmp_path / "b.jpg", "--background",
               "no-such-colour").exit_code == 2


def test_benchmark_refuses_to_overwrite_earlier_results(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(photo_crop(64, 96, seed=1)).save(data / "a.png")
    out = tmp_path / "results"
    args = ["benchmark", "--dataset", data, "--codecs", "jpeg", "--out", out, "--quiet"]
    first = cli(*args)
    assert first.exit_code == 0, first.output
    report = (out / "report.md").read_bytes()
    (out / "report.md").write_bytes(b"kept")
    message = assert_refused(cli(*args), f"{out} holds the results of an earlier run", "--force")
    assert "report.md" in message and (out / "report.md").read_bytes() == b"kept"
    assert cli(*args, "--reuse", "jpeg").exit_code == 0      # keeping some of them is asked for
    assert (out / "report.md").read_bytes() != b"kept"
    (out / "report.md").write_bytes(b"kept")
    forced = cli(*args, "--force")
    assert forced.exit_code == 0, forced.output
    assert (out / "report.md").read_bytes()[:20] == report[:20]
