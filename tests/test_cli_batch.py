"""Many files in one run: `compress IN... --out-dir DIR`, `decompress IN... --out-dir DIR`
(issue "The command line people use"): names, folders, --recursive, refusals per file, the
summary line, --jobs, --quiet/--verbose, and the usage errors of mixing the two forms."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import ROOT, photo_crop
from vaecodec import batch, bitstream, codec
from vaecodec.cli import main

SUMMARY = re.compile(r"^(\d+) files? (compressed|decompressed)(?:, (\d+) failed)?"
                     r"(?:: ([\d,]+) bytes in, ([\d,]+) bytes out, mean ([\d.]+) bpp)?, "
                     r"([\d.]+) files/s \(([\d.]+) s since the process started\)$")


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def tree(root: Path) -> list[str]:
    """Every file under ``root``, as sorted relative POSIX paths."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def summary(result) -> re.Match:
    m = SUMMARY.match(result.stdout.splitlines()[-1])
    assert m, result.stdout
    return m


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """photos/{a.png, b.jpg, notes.txt, .hidden.png, sub/c.png, sub/deeper/d.tif}."""
    root = tmp_path_factory.mktemp("batch") / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(photo_crop(48, 64, seed=1)).save(root / "a.png")
    Image.fromarray(photo_crop(40, 72, seed=2)).save(root / "b.jpg", quality=95)
    Image.fromarray(photo_crop(32, 32, seed=3)).save(root / ".hidden.png")
    (root / "notes.txt").write_text("not an image")
    Image.fromarray(photo_crop(64, 48, seed=4)).save(root / "sub" / "c.png")
    Image.fromarray(photo_crop(36, 52, seed=5)).save(root / "sub" / "deeper" / "d.tif")
    return root


@pytest.fixture(scope="module")
def singles(photos, tmp_path_factory) -> dict[str, bytes]:
    """The .vae bytes of each photo from the one-file form, by relative name."""
    out = tmp_path_factory.mktemp("singles")
    found = {}
    for rel in ("a.png", "b.jpg", "sub/c.png", "sub/deeper/d.tif"):
        target = out / (rel.replace("/", "_") + ".vae")
        assert cli("compress", photos / rel, target).exit_code == 0
        found[rel] = target.read_bytes()
    return found


def test_a_folder_and_files_into_an_output_folder(photos, singles, tmp_path):
    out = tmp_path / "vae"                                   # created
    result = cli("compress", photos, photos / "sub" / "c.png", "--out-dir", out)
    assert result.exit_code == 0, result.output
    assert tree(out) == ["a.vae", "b.vae", "c.vae"]          # not notes.txt, .hidden.png, sub/
    assert (out / "a.vae").read_bytes() == singles["a.png"]  # the same bytes as one file at a time
    assert (out / "b.vae").read_bytes() == singles["b.jpg"]
    assert (out / "c.vae").read_bytes() == singles["sub/c.png"]
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{photos / 'a.png'} -> {out / 'a.vae'}: {len(singles['a.png']):,} bytes")
    assert lines[1].startswith(f"{photos / 'b.jpg'} -> {out / 'b.vae'}: ")
    assert lines[2].startswith(f"{photos / 'sub' / 'c.png'} -> {out / 'c.vae'}: ")
    m = summary(result)
    assert (m[1], m[2], m[3]) == ("3", "compressed", None)
    names = ("a.png", "b.jpg", "sub/c.png")
    assert int(m[4].replace(",", "")) == sum((photos / n).stat().st_size for n in names)
    assert int(m[5].replace(",", "")) == sum(len(singles[n]) for n in names)
    pixels = {"a.png": 48 * 64, "b.jpg": 40 * 72, "sub/c.png": 64 * 48}
    assert float(m[6]) == pytest.approx(np.mean([8 * len(singles[n]) / pixels[n] for n in names]),
                                        abs=5e-4)
    assert float(m[7]) == pytest.approx(3 / float(m[8]), rel=0.02, abs=0.006)
    assert result.stderr == ""


def test_recursive_mirrors_the_subfolders_and_decompress_writes_the_chosen_format(photos, singles,
                                                                                 tmp_path):
    vae = tmp_path / "vae"
    result = cli("compress", photos, "--out-dir", vae, "--recursive")
    assert result.exit_code == 0, result.output
    assert tree(vae) == ["a.vae", "b.vae", "sub/c.vae", "sub/deeper/d.vae"]
    assert (vae / "sub" / "deeper" / "d.vae").read_bytes() == singles["sub/deeper/d.tif"]
    (vae / "sub" / "stray.png").write_bytes(b"x")           # decompress takes only .vae files
    for fmt, pillow in (("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP"), ("tif", "TIFF")):
        out = tmp_path / fmt
        result = cli("decompress", vae, "-o", out, "-r", "--format", fmt)
        assert result.exit_code == 0, result.output
        assert tree(out) == [f"a.{fmt}", f"b.{fmt}", f"sub/c.{fmt}", f"sub/deeper/d.{fmt}"]
        with Image.open(out / "sub" / f"c.{fmt}") as im:
            assert im.format == pillow and im.size == (48, 64)
        assert summary(result).group(1, 2, 3) == ("4", "decompressed", None)
    # JPEG's lossy note is said once for the run, not per file
    assert result.stderr == "" and cli("decompress", vae, "-o", tmp_path / "j2", "--format",
                                       "jpg").stderr.count("note: JPEG output is lossy") == 1
    direct = tmp_path / "direct.png"
    assert cli("decompress", vae / "a.vae", direct).exit_code == 0
    assert np.array_equal(np.asarray(Image.open(direct)), np.asarray(Image.open(tmp_path / "png" / "a.png")))


def test_a_failing_file_is_one_line_and_the_run_goes_on(photos, singles, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but no image")
    missing = tmp_path / "missing.png"
    out = tmp_path / "out"
    result = cli("compress", photos / "a.png", bad, missing, photos / "b.jpg", "--out-dir", out)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    errors = result.stderr.splitlines()
    assert errors == [f"Error: {missing}: no such file or folder",
                      f"Error: {bad} is not an image Pillow can read"], errors
    assert tree(out) == ["a.vae", "b.vae"]
    assert (out / "b.vae").read_bytes() == singles["b.jpg"]
    assert summary(result).group(1, 2, 3) == ("2", "compressed", "2")
    # a damaged .vae among good ones: named, the others decoded
    damaged = tmp_path / "damaged.vae"
    data = bytearray(singles["a.png"])
    data[len(data) // 2] ^= 4
    damaged.write_bytes(bytes(data))
    result = cli("decompress", out, damaged, "--out-dir", tmp_path / "png")
    assert result.exit_code == 1
    assert result.stderr == f"Error: {damaged}: file is corrupted or truncated (checksum mismatch)\n"
    assert tree(tmp_path / "png") == ["a.png", "b.png"]


def test_existing_outputs_are_refused_without_force(photos, singles, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.vae").write_bytes(b"precious")
    result = cli("compress", photos, "--out-dir", out)
    assert result.exit_code == 1
    assert result.stderr == f"Error: {photos / 'a.png'}: {out / 'a.vae'} exists; use --force to overwrite\n"
    assert (out / "a.vae").read_bytes() == b"precious"
    assert (out / "b.vae").read_bytes() == singles["b.jpg"]
    result = cli("compress", photos, "--out-dir", out, "--force")
    assert result.exit_code == 0, result.output
    assert (out / "a.vae").read_bytes() == singles["a.png"]
    assert tree(out) == ["a.vae", "b.vae"]                  # no temporary files left


def test_inputs_that_would_write_the_same_output_are_refused(tmp_path):
    for name in ("x.png", "x.jpg", "y.png"):
        Image.fromarray(photo_crop(32, 32, seed=len(name))).save(tmp_path / name)
    out = tmp_path / "out"
    result = cli("compress", tmp_path / "x.png", tmp_path / "x.jpg", tmp_path / "y.png",
                 tmp_path / "y.png", "--out-dir", out)         # y.png named twice: coded once
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: {tmp_path / 'x.png'}: {out / 'x.vae'} would also be written from "
        f"{tmp_path / 'x.jpg'}; code them into separate --out-dir folders",
        f"Error: {tmp_path / 'x.jpg'}: {out / 'x.vae'} would also be written from "
        f"{tmp_path / 'x.png'}; code them into separate --out-dir folders"]
    assert tree(out) == ["y.vae"]
    assert summary(result).group(1, 2, 3) == ("1", "compressed", "2")


def test_an_empty_folder_is_an_error_and_nothing_is_created(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    Image.fromarray(photo_crop(32, 32)).save(tmp_path / "empty" / "sub" / "deep.png")
    result = cli("compress", tmp_path / "empty", "--out-dir", tmp_path / "out")
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {tmp_path / 'empty'}: no images in this folder "
                             "(--recursive also searches its subfolders)\n")
    assert not (tmp_path / "out").exists()
    assert summary(result).group(1, 2, 3) == ("0", "compressed", "1")


def test_the_model_is_loaded_once(photos, tmp_path, monkeypatch):
    from vaecodec import weights
    loads = []
    real = weights.load

    def counting(*args, **kwargs):
        loads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(weights, "load", counting)
    codec._load.cache_clear()
    try:
        result = cli("compress", photos, "--out-dir", tmp_path / "v", "-r")
        assert result.exit_code == 0, result.output
        assert len(loads) == 1
        result = cli("decompress", tmp_path / "v", "--out-dir", tmp_path / "p", "-r")
        assert result.exit_code == 0, result.output
        assert len(loads) == 2            # the decoder of the files' release, once for 4 files
    finally:
        codec._load.cache_clear()


def test_jobs_give_the_same_files(photos, tmp_path):
    """Two worker processes write the same bytes as one process with the same thread count."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli("compress", photos, "-r", "-o", one, "--threads", "1").exit_code == 0
    result = cli("compress", photos, "-r", "-o", two, "--threads", "1", "--jobs", "2", "--verbose")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"4 files to compress into {two} with 2 processes of 1 thread"
    assert tree(one) == tree(two)
    for name in tree(one):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert summary(result).group(1, 2, 3) == ("4", "compressed", None)
    result = cli("decompress", two, "-r", "-o", tmp_path / "png", "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert tree(tmp_path / "png") == ["a.png", "b.png", "sub/c.png", "sub/deeper/d.png"]


def test_quiet_and_verbose(photos, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    quiet = cli("compress", photos / "a.png", bad, "-o", tmp_path / "q", "--quiet")
    assert quiet.exit_code == 1 and quiet.stdout == ""
    assert quiet.stderr == f"Error: {bad} is not an image Pillow can read\n"
    loud = cli("compress", photos / "a.png", "-o", tmp_path / "v", "--verbose", "--threads", "1")
    assert loud.exit_code == 0
    lines = loud.stdout.splitlines()
    assert lines[0] == f"1 file to compress into {tmp_path / 'v'} with 1 process of 1 thread"
    assert lines[2].startswith("  reading ") and lines[2].endswith(", 1 thread")
    assert SUMMARY.match(lines[3])


def test_progress_bar_only_on_a_terminal(monkeypatch, capsys):
    class Terminal:
        def __init__(self):
            self.text = ""

        def write(self, s):
            self.text += s

        def flush(self):
            pass

        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    reporter = batch.Reporter(3, "compress", quiet=False)
    reporter.bar.update()
    reporter.close()
    assert "compress:" in terminal.text and "1/3" in terminal.text
    for quiet, total in ((True, 3), (False, 1)):      # none with --quiet, nor for one file
        terminal.text = ""
        reporter = batch.Reporter(total, "compress", quiet=quiet)
        reporter.bar.update()
        reporter.close()
        assert terminal.text == ""
    monkeypatch.undo()
    reporter = batch.Reporter(3, "compress", quiet=False)   # stderr is no terminal here
    assert reporter.bar.disable
    reporter.close()


@pytest.mark.parametrize("args, message", [
    (["a.png", "b.png", "c.vae"], "give INPUT OUTPUT, or any number of inputs with --out-dir DIR"),
    (["a.png"], "give INPUT OUTPUT"),
    (["a.png", "a.vae", "--jobs", "2"], "--jobs works with --out-dir DIR"),
    (["a.png", "a.vae", "-r", "-j", "2"], "--recursive, --jobs work with --out-dir DIR"),
    (["-", "a.png", "--out-dir", "x"], "standard input ('-') has no name"),
    (["a.png", "--out-dir", "-"], "--out-dir must be a folder"),
    (["a.png", "-o", "x", "--jobs", "0"], "--jobs"),
])
def test_mixing_the_forms_is_a_usage_error(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = cli("compress", *args)
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert os.listdir(tmp_path) == []
    result = cli("decompress", "a.vae", "a.png", "--format", "jpg")
    assert result.exit_code == 2 and "--format works with --out-dir DIR" in result.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum, status, line", [(signal.SIGTERM, 143, "Error: terminated"),
                                                  (signal.SIGINT, 130, "Error: interrupted")])
def test_a_signal_stops_the_workers_at_once_and_leaves_no_file(tmp_path, signum, status, line):
    """SIGTERM (or Ctrl-C's SIGINT) to the command stops its workers in the middle of their
    files (it does not wait for them): exit status 143 (130), one line, no output and no
    temporary file."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        Image.fromarray(photo_crop(256, 256, seed=i)).save(src / f"p{i}.png")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("VAECODEC_DEBUG", None)
    out = tmp_path / "out"
    # 1000 refinement steps of a 256x256 image take minutes: the workers are busy
    proc = subprocess.Popen([sys.executable, "-m", "vaecodec", "compress", str(src), "-o", str(out),
                             "--jobs", "2", "--threads", "1", "--refine", "1000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path,
                            # as from a terminal: an ignored SIGINT would be inherited (a shell's
                            # background job, or a test before this one) and Ctrl-C never seen
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        time.sleep(12)
        assert proc.poll() is None
        proc.send_signal(signum)
        start = time.monotonic()
        assert proc.wait(timeout=120) == status
        assert time.monotonic() - start < 60
        assert proc.stderr.read().splitlines() == [line]
        assert proc.stdout.read() == ""
    finally:
        proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    assert os.listdir(out) == []
