"""The int8 method of the exact networks (vaecodec.exactconv) gives the float64 method's integers
exactly: digit by digit, layer by layer, network by network and file by file."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vaecodec import codec, exactconv
from vaecodec.integer import ACT_MAX, CONTEXT_FRAC, CONTEXT_MAX, context_input
from conftest import ROOT, photo_crop

needs_int8 = pytest.mark.skipif(not exactconv.available(),
                                reason="no exact int8 matrix product on this machine")


@pytest.mark.parametrize("base, top", [(256, 127), (128, 64)])
def test_balanced_digits_rebuild_the_integers_within_their_ranges(base, top):
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randint(-2**24, 2**24 + 1, (5000,), generator=g).double(),
                   torch.tensor([0.0, 1, -1, top, top + 1, -base // 2, -base // 2 - 1, 2**24, -2**24,
                                 2**13, -2**13])])
    digits = exactconv.balanced_digits(x, base, top)
    assert sum(d.double() * base**i for i, d in enumerate(digits)).equal(x)
    for d in digits[:-1]:
        assert int(d.min()) >= -base // 2 and int(d.max()) <= base // 2 - 1
    assert int(digits[-1].min()) >= -base // 2 and int(digits[-1].max()) <= top
    assert len(digits) == 4   # 2**24 = 256**3 = 8·128**3
    # as many digits as the largest value needs, and at least one
    assert len(exactconv.balanced_digits(torch.zeros(3).double(), base, top)) == 1
    assert len(exactconv.balanced_digits(torch.full((3,), float(2**13)), 128, 64)) == 2


def reference_conv(x, weight, bias, transposed, stride):
    """The float64 method on ``x`` (H, W, C): exact below 2**53."""
    x = x.permute(2, 0, 1)[None]
    k = weight.shape[-1]
    if transposed:
        y = F.conv_transpose2d(x, weight, bias, stride=stride, padding=k // 2, output_padding=stride - 1)
    else:
        y = F.conv2d(x, weight, bias, stride=stride, padding=k // 2)
    return y[0].permute(1, 2, 0)


@needs_int8
@pytest.mark.parametrize("k, transposed, stride, cin, cout", [
    (3, False, 1, 40, 24), (5, False, 1, 7, 9), (5, False, 2, 16, 8), (1, False, 1, 33, 5),
    (5, True, 2, 24, 16), (3, True, 2, 8, 12)])
def test_conv_equals_the_float64_method_at_the_format_limits(k, transposed, stride, cin, cout):
    g = torch.Generator().manual_seed(k * 100 + cin)
    shape = (cin, cout, k, k) if transposed else (cout, cin, k, k)
    weight = torch.randint(-2**13, 2**13 + 1, shape, generator=g).double()
    weight.view(-1)[:4] = torch.tensor([2.0**13, -2.0**13, 8191, -8191])   # the extremes
    bias = torch.randint(-2**40, 2**40, (cout,), generator=g).double()
    for x in (torch.randint(0, ACT_MAX + 1, (11, 13, cin), generator=g).double(),   # hidden layers
              torch.randint(-2**19, 2**19 + 1, (6, 9, cin), generator=g).double(),  # context inputs
              torch.full((5, 4, cin), float(ACT_MAX), dtype=torch.float64),                              # all at the clamp
              torch.randint(-3, 4, (1, 1, cin), generator=g).double(),              # one position
              torch.randint(-99, 99, (4, 1, cin), generator=g).double(),            # one column
              torch.randint(-99, 99, (1, 5, cin), generator=g).double(),            # one row
              torch.randint(-99, 99, (13, 2, cin), generator=g).double()[::2]):     # a strided view
        layer = exactconv.prepare(weight, bias, transposed, stride)
        got = exactconv.conv(x, layer)
        assert got.dtype == torch.int64
        assert got.double().equal(reference_conv(x, weight, bias, transposed, stride))


def test_prepare_refuses_layers_outside_the_exact_range():
    with pytest.raises(ValueError, match="exact int8 range"):
        exactconv.prepare(torch.full((2, 3, 3, 3), float(2**13 + 1)), torch.zeros(2), False, 1)
    with pytest.raises(ValueError, match="exact int8 range"):
        exactconv.prepare(torch.ones(2, 1025, 3, 3), torch.zeros(2), False, 1)   # 9225 > 2**13


@needs_int8
def test_the_model_networks_give_the_same_integers_both_ways(model):
    g = torch.Generator().manual_seed(4)
    z = torch.randint(-40, 41, (1, model.N, 5, 7), generator=g).double()
    with exactconv.float64_reference():
        ref = model.h_s.parameters(z)
    got = model.h_s.parameters(z)
    assert all(a.equal(b) for a, b in zip(got, ref))
    for net in [*model.context, *model.spatial]:
        cin = net.weights[0].shape[1]
        x = context_input([torch.randn(1, cin, 20, 12, generator=g) * 30])
        with exactconv.float64_reference():
            ref = net.value(x)
        assert net.value(x).equal(ref)
    # the largest inputs the format allows
    x = torch.full((1, model.context[0].weights[0].shape[1], 4, 4), float(CONTEXT_MAX * 2**CONTEXT_FRAC), dtype=torch.float64)
    with exactconv.float64_reference():
        ref = model.context[0].value(x)
    assert model.context[0].value(x).equal(ref)


@needs_int8
def test_files_are_the_same_bytes_and_pixels_both_ways(model):
    rgb = photo_crop(136, 200, seed=7)
    data = codec.compress_array(rgb, 4.0, model=model)
    with exactconv.float64_reference():
        assert codec.compress_array(rgb, 4.0, model=model) == data
        ref = codec.decompress_array(data, model=model).rgb
    assert np.array_equal(codec.decompress_array(data, model=model).rgb, ref)


def test_a_machine_without_exact_int8_products_keeps_the_float64_method(monkeypatch):
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: torch.zeros(a.shape[0], b.shape[1], dtype=torch.int32))
    assert not exactconv._int_mm_exact()

    def saturating(a, b):   # int16 pair sums, as x86 without VNNI computes u8·s8
        return (a.long() @ b.long()).clamp(-2**15, 2**15 - 1).to(torch.int32)
    monkeypatch.setattr(torch, "_int_mm", saturating)
    assert not exactconv._int_mm_exact()

    def missing(a, b):
        raise RuntimeError("_int_mm is not implemented for this device")
    monkeypatch.setattr(torch, "_int_mm", missing)
    assert not exactconv._int_mm_exact()


def test_environment_forces_the_float64_method():
    script = ("import sys; sys.path.insert(0, %r)\n"
              "from vaecodec import exactconv; print(exactconv.available())") % str(ROOT)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, exactconv.ENV: "float64"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
    with exactconv.float64_reference():
        assert not exactconv.available()


def test_a_machine_with_only_slow_int8_products_keeps_the_float64_method(monkeypatch):
    """PyTorch's scalar fallback (no oneDNN) is exact but ~100x slower than float64."""
    def slow(a, b):
        import time
        time.sleep(0.01)
        return (a.double() @ b.double()).to(torch.int32)
    monkeypatch.setattr(torch, "_int_mm", slow)
    assert exactconv._int_mm_exact()
    assert not exactconv._int_mm_fast()


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN:UserWarning")
def test_no_int8_method_and_no_bf16_analysis_while_onednn_is_off():
    from vaecodec import hardware
    with torch.backends.mkldnn.flags(enabled=False):
        assert not exactconv.available()
        assert not hardware.native_bf16(torch.device("cpu"))


def test_balanced_digits_of_nothing():
    assert [d.shape for d in exactconv.balanced_digits(torch.zeros(0, 3, dtype=torch.float64), 256, 127)] \
        == [(0, 3)]
