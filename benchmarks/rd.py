"""Rate-distortion benchmark of vaecodec against JPEG, WebP, AVIF, JPEG XL and JPEG 2000.

A thin wrapper around :data:`vaecodec.benchmark.benchmark_command` (also ``vaecodec benchmark``)::

    python benchmarks/rd.py --help
    python benchmarks/rd.py --codecs jpeg,webp,avif,jpegxl,jpeg2000 --limit 4
    python benchmarks/rd.py --dataset ../shared/data/kodak --jobs 2 --out benchmarks/results/kodak

Outputs land in ``benchmarks/results/<dataset name>/`` unless ``--out`` says otherwise.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from vaecodec.benchmark import benchmark_command  # noqa: E402

if __name__ == "__main__":
    benchmark_command(prog_name="rd.py")
