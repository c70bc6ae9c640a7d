"""Coding speed: the synthesis' transposed convolution recast as convolution + pixel shuffle, the
transforms' coding layout, glibc's allocator setting, and benchmarks/speed.py."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from conftest import ROOT, photo_crop
from vaecodec import hardware
from vaecodec.transforms import SubpixelConvTranspose2d, deconv, synthesis_transform


# -- SubpixelConvTranspose2d --------------------------------------------------------------------

@pytest.mark.parametrize("kernel,stride", [(5, 2), (3, 2), (7, 2), (5, 3), (1, 2), (9, 4)])
def test_subpixel_convolution_equals_the_transposed_one(kernel, stride):
    torch.manual_seed(kernel * 10 + stride)
    layer = deconv(6, 4, kernel, stride).double()
    x = torch.randn(2, 6, 7, 9, dtype=torch.float64)
    sub = SubpixelConvTranspose2d.from_transposed(layer)
    expected = F.conv_transpose2d(x, layer.weight, layer.bias, stride=stride, padding=kernel // 2,
                                  output_padding=stride - 1)
    assert sub(x).shape == expected.shape == (2, 4, 7 * stride, 9 * stride)
    assert (sub(x) - expected).abs().max() < 1e-12   # float64: the same sums in another order


def test_subpixel_convolution_in_float32_and_channels_last_is_within_rounding():
    torch.manual_seed(0)
    layer = deconv(128, 3)   # the synthesis' last layer
    nn.init.normal_(layer.weight, std=0.05)
    x = torch.randn(1, 128, 16, 24)
    expected = F.conv_transpose2d(x.double(), layer.weight.double(), layer.bias.double(), stride=2,
                                  padding=2, output_padding=1)
    for sub, inp in ((SubpixelConvTranspose2d.from_transposed(layer), x),
                     (SubpixelConvTranspose2d.from_transposed(layer).to(memory_format=torch.channels_last),
                      x.contiguous(memory_format=torch.channels_last))):
        out = sub(inp)
        assert out.dtype == torch.float32
        # float32 rounding of sums of 128 x 9 products of size ~0.05 x 1: ~1e-6
        assert (out.double() - expected).abs().max() < 1e-5 * expected.abs().max()


def test_subpixel_convolution_keeps_the_parameters_and_follows_their_changes():
    layer = deconv(8, 3)
    sub = SubpixelConvTranspose2d.from_transposed(layer)
    assert sub.weight is layer.weight and sub.bias is layer.bias
    assert list(sub.state_dict()) == ["weight", "bias"]
    x = torch.randn(1, 8, 5, 6)
    with torch.no_grad():
        layer.weight.mul_(-2.0)   # in place, as load_state_dict writes
        layer.bias.add_(1.0)
    assert torch.allclose(sub(x), layer(x), atol=1e-5)
    other = deconv(8, 3)
    sub.load_state_dict(other.state_dict())
    assert torch.allclose(sub(x), other(x), atol=1e-5)


@pytest.mark.parametrize("layer", [
    nn.ConvTranspose2d(4, 4, 4, stride=2, padding=2, output_padding=1),     # even kernel
    nn.ConvTranspose2d(4, 4, 5, stride=2, padding=0),                       # other padding
    nn.ConvTranspose2d(4, 4, 5, stride=(2, 1), padding=2, output_padding=(1, 0)),
    nn.ConvTranspose2d(4, 4, 5, stride=2, padding=2, output_padding=1, groups=2),
    nn.ConvTranspose2d(4, 4, 5, stride=2, padding=2, output_padding=1, dilation=2),
])
def test_subpixel_convolution_refuses_other_transposed_convolutions(layer):
    with pytest.raises(ValueError, match="not a 'same' transposed convolution"):
        SubpixelConvTranspose2d.from_transposed(layer)


# -- the coding layout of a loaded model --------------------------------------------------------

def stored_synthesis(model) -> nn.Sequential:
    g_s = synthesis_transform(model.N, model.M, model.model.blocks)
    g_s.load_state_dict(model.model.g_s.state_dict())
    return g_s.eval()


def test_loaded_model_runs_the_coding_layout_with_the_stored_parameters(model):
    from vaecodec.model import MeanScaleHyperprior
    net = model.model
    assert isinstance(net.g_s[-1], SubpixelConvTranspose2d)
    assert net.g_s[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert net.g_a[0].weight.is_contiguous()   # the analysis as stored (memory, see coding_layout)
    plain = MeanScaleHyperprior(**net.architecture).state_dict()
    own = net.state_dict()
    assert list(own) == list(plain)   # same names, so an export of it writes the same tensors
    assert all(own[k].shape == plain[k].shape for k in plain)


def test_coding_layout_synthesis_equals_the_stored_one(model):
    torch.manual_seed(1)
    y = 4 * torch.randn(1, model.M, 8, 12)
    with torch.no_grad():
        expected = stored_synthesis(model)(y)
        out = model.synthesis(y)
    assert out.shape == expected.shape == (1, 3, 128, 192)
    # float32 transforms in another summation order: differences of a few 1e-6 on values ~1
    assert (out - expected).abs().max() < 1e-4
    assert (torch.round(out.clamp(0, 1) * 255) != torch.round(expected.clamp(0, 1) * 255)).float().mean() < 1e-3


def test_coding_layout_is_idempotent_and_leaves_the_entropy_model_in_plain_layout(model):
    from vaecodec import codec
    from vaecodec.coder import coding_layout
    last = model.model.g_s[-1]
    assert coding_layout(model.model) is model.model and model.model.g_s[-1] is last
    rgb = photo_crop(64, 128, seed=2)
    x = codec._pad_to_stride(torch.from_numpy(rgb).permute(2, 0, 1)[None]).float().div_(255.0)
    y, z = model.analyse(x, 4.0)
    streams = model.code_latents(y, z)
    assert streams == model.code_latents(y.contiguous(memory_format=torch.channels_last), z)
    x_hat = model.decompress(streams, 4.0)
    assert x_hat.is_contiguous(memory_format=torch.channels_last) and x_hat.shape == (1, 3, 64, 128)


# -- glibc's allocator ----------------------------------------------------------------------------

class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1


@pytest.fixture
def fresh_allocator(monkeypatch):
    """tune_malloc as if not yet run, with none of the user's malloc settings in the environment
    and a fake C library that records mallopt calls."""
    monkeypatch.setattr(hardware, "_tuned", None)
    for name in (*hardware.USER_SETTINGS, "GLIBC_TUNABLES", hardware.OPT_OUT):
        monkeypatch.delenv(name, raising=False)
    libc = FakeLibc()
    monkeypatch.setattr(hardware, "_glibc", lambda: libc)
    return libc


def test_tune_malloc_sets_glibc_once(fresh_allocator):
    assert hardware.tune_malloc() is True
    assert hardware.tune_malloc() is True
    assert fresh_allocator.calls == [(-4, 0), (-1, 2**31 - 1)]   # M_MMAP_MAX 0, M_TRIM_THRESHOLD


@pytest.mark.parametrize("env", [{"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"},
                                 {"GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=512:glibc.malloc.mmap_threshold=1"},
                                 {"MALLOC_MMAP_THRESHOLD_": "65536"}, {"MALLOC_MMAP_MAX_": "0"},
                                 {"VAECODEC_MALLOPT": "0"}])
def test_tune_malloc_leaves_the_users_setting_alone(fresh_allocator, monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert hardware.tune_malloc() is False
    assert fresh_allocator.calls == []


def test_tune_malloc_is_a_no_op_without_glibc(fresh_allocator, monkeypatch):
    monkeypatch.setattr(hardware, "_glibc", lambda: None)
    assert hardware.tune_malloc() is False
    assert hardware.tune_malloc() is False and fresh_allocator.calls == []


def test_glibc_detection_elsewhere(monkeypatch):
    def unknown(name):   # e.g. musl: no CS_GNU_LIBC_VERSION
        raise ValueError(name)
    monkeypatch.setattr(hardware.os, "confstr", unknown)
    assert hardware._glibc() is None
    monkeypatch.setattr(hardware.os, "confstr", lambda name: "musl 1.2")
    assert hardware._glibc() is None


PROBE = """
import resource, numpy as np
from vaecodec.hardware import tune_malloc
def faults():   # minor page faults of 10 allocations of 64 MiB, each written and freed
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        a = np.ones(64 << 20, np.uint8); del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
faults()
before = faults()
print(before, tune_malloc(), (faults(), faults())[1])
"""


@pytest.mark.skipif(hardware._glibc() is None, reason="glibc only")
def test_tune_malloc_keeps_large_freed_blocks_in_a_real_process():
    env = {k: v for k, v in os.environ.items()
           if k not in (*hardware.USER_SETTINGS, "GLIBC_TUNABLES", hardware.OPT_OUT)}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    before, tuned, after = out.stdout.split()
    assert tuned == "True"
    # glibc's defaults map a 64 MiB block afresh each time (16,384 pages, fewer with huge pages);
    # tuned, the freed block is reused without a fault
    assert int(before) > 1000 and int(after) < 100, out.stdout


RELEASE_PROBE = """
import numpy as np
from vaecodec.hardware import release_free_memory, tune_malloc
def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
tune_malloc()
keep = [np.ones(8 << 20, np.uint8) for _ in range(64)]   # 512 MiB in 8 MiB blocks, written
del keep[::2]   # 256 MiB freed in holes between live blocks: kept in the process
held = rss_mib()
print(held, release_free_memory(), rss_mib())
"""


@pytest.mark.skipif(hardware._glibc() is None, reason="glibc only")
def test_release_free_memory_gives_freed_holes_back_in_a_real_process():
    env = {k: v for k, v in os.environ.items()
           if k not in (*hardware.USER_SETTINGS, "GLIBC_TUNABLES", hardware.OPT_OUT)}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", RELEASE_PROBE], env=env, capture_output=True,
                         text=True, check=True)
    held, released, after = out.stdout.split()
    assert released == "True"
    assert int(held) - int(after) > 200, out.stdout   # the 256 MiB of holes, back to the system


def test_release_free_memory_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(hardware, "_glibc", lambda: None)
    assert hardware.release_free_memory() is False


# -- benchmarks/speed.py --------------------------------------------------------------------------

def load_speed_script():
    import importlib.util
    spec = importlib.util.spec_from_file_location("speed", ROOT / "benchmarks" / "speed.py")
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    return speed


def analysis_macs_per_pixel(N: int, M: int, blocks: int) -> float:
    """Multiply-accumulates per image pixel of g_a (convolutions, GDN, residual blocks)."""
    convs = 3 * N * 25 / 4 + N * N * 25 / 16 + N * N * 25 / 64 + N * M * 25 / 256
    gdn = N * N * (1 / 4 + 1 / 16 + 1 / 64)
    block = N * (N // 2) * 2 + (N // 2) ** 2 * 9
    return convs + gdn + blocks * block * (1 / 16 + 1 / 64)


def test_speed_script_on_one_small_image(model, tmp_path, monkeypatch):
    speed = load_speed_script()
    monkeypatch.setattr(speed.Reference, "SHAPE", (32, 48))   # a smaller reference: a quicker test
    data = tmp_path / "images"
    data.mkdir()
    Image.fromarray(photo_crop(128, 192)).save(data / "small.png")
    out = tmp_path / "speed.md"
    speed.main(["--images", "1", "--rounds", "1", "--dataset", str(data), "--out", str(out)])
    text = out.read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in text.splitlines()
            if line.startswith("| ") and "---" not in line}
    from vaecodec import exactconv
    method = "int8" if exactconv.available() else "float64"
    for stage in ("analysis transform", "hyper-analysis", f"exact hyper-synthesis ({method})",
                  f"channel context ({method})", f"checkerboard context ({method})", "range coding", "LRP",
                  "synthesis transform", "PNG write", "other"):
        assert stage in rows, stage
    # the exact networks' multiply-accumulates are counted whichever method ran
    assert float(rows[f"channel context ({method})"][0].strip().removesuffix(" k")) > 0
    macs = float(rows["analysis transform"][0].strip().removesuffix(" k")) * 1e3
    assert macs == pytest.approx(analysis_macs_per_pixel(model.N, model.M, model.blocks), abs=50)
    encode = [v.strip(" *") for v in rows["**encode** (target 0.30 s)"]]
    assert float(encode[1]) > 0 and encode[2] == "100 %"


def test_speed_script_replaces_its_own_block_and_keeps_the_rest(tmp_path):
    speed = load_speed_script()
    out = tmp_path / "speed.md"
    speed.write_block(out, "stages", ["first"])
    assert out.read_text() == "<!-- speed.py stages -->\nfirst\n<!-- /speed.py stages -->\n"
    out.write_text("# Speed\n\n" + out.read_text() + "\nwhat it says\n")
    speed.write_block(out, "allocator", ["a", "b"])
    speed.write_block(out, "stages", ["second"])
    assert out.read_text() == ("# Speed\n\n<!-- speed.py stages -->\nsecond\n<!-- /speed.py stages -->\n"
                               "\nwhat it says\n\n<!-- speed.py allocator -->\na\nb\n<!-- /speed.py allocator -->\n")
