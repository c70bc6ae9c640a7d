"""Entropy coding round trips bit-exactly, including symbols far outside every table."""
import numpy as np
import pytest

from vaecodec.entropy import (EntropyCodingError, EscapeReader, Tables, decode_indexed,
                              encode_indexed, gaussian_tables, quantize_pmf, scale_table)


@pytest.fixture(scope="module")
def y_tables():
    return Tables(**gaussian_tables(scale_table()))


def roundtrip(symbols, indexes, tables):
    data, esc = encode_indexed(symbols, indexes, tables)
    reader = EscapeReader(esc)
    out = decode_indexed(data, indexes, tables, reader)
    reader.finish()
    return out, data, esc


def test_random_gaussian_symbols_roundtrip_and_rate(y_tables):
    rng = np.random.default_rng(1)
    scales = scale_table()
    idx = rng.integers(0, len(scales), size=(2, 192, 12, 8))
    sym = np.round(rng.normal(size=idx.shape) * scales[idx]).astype(np.int64)
    out, data, esc = roundtrip(sym, idx, y_tables)
    assert np.array_equal(out, sym)
    # the coded size is close to the ideal information content under the same Gaussians
    from statistics import NormalDist
    ideal = 0.0
    for s, k in zip(sym.ravel()[:4000], idx.ravel()[:4000]):
        d = NormalDist(0, scales[k])
        ideal -= np.log2(max(d.cdf(s + 0.5) - d.cdf(s - 0.5), 1e-300))
    ideal *= sym.size / 4000
    assert 8 * len(data) < 1.05 * ideal + 64
    assert esc == b""


def test_extreme_symbols_escape_and_roundtrip(y_tables):
    idx = np.array([0, 0, 63, 63, 10, 10, 0, 5])
    sym = np.array([10**9, -10**9, 2**40, -2**40, 0, 1, -(2**62), 7])
    out, data, esc = roundtrip(sym, idx, y_tables)
    assert np.array_equal(out, sym)
    assert len(esc) > 0


def test_all_symbols_in_one_table_and_empty_input(y_tables):
    sym = np.arange(-50, 51)
    out, _, _ = roundtrip(sym, np.zeros_like(sym), y_tables)
    assert np.array_equal(out, sym)
    out, data, esc = roundtrip(np.zeros(0, np.int64), np.zeros(0, np.int64), y_tables)
    assert out.size == 0


def test_damaged_stream_is_refused_or_different(y_tables):
    rng = np.random.default_rng(2)
    idx = rng.integers(0, 64, size=5000)
    sym = np.round(rng.normal(size=idx.size) * scale_table()[idx]).astype(np.int64)
    data, esc = encode_indexed(sym, idx, y_tables)
    with pytest.raises(EntropyCodingError):
        decode_indexed(data[:-3], idx, y_tables, EscapeReader(esc))   # not a whole word
    with pytest.raises(EntropyCodingError):
        EscapeReader(b"\x80\x80").read(1)                              # truncated varint


def test_quantize_pmf_exact_total_and_floor():
    freq = quantize_pmf(np.array([0.5, 0.25, 0.25 - 1e-12, 0.0, 1e-30]))
    assert freq.sum() == 2**16 and freq.min() >= 1
    assert abs(freq[0] / 2**16 - 0.5) < 1e-3


def test_trailing_data_after_last_symbol_is_refused(y_tables):
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 64, size=2000)
    sym = np.round(rng.normal(size=idx.size) * scale_table()[idx]).astype(np.int64)
    data, esc = encode_indexed(sym, idx, y_tables)
    with pytest.raises(EntropyCodingError, match="past its last symbol"):
        decode_indexed(data + b"\x12\x34\x56\x78" * 3, idx, y_tables, EscapeReader(esc))
