"""What GDN costs in one training step: the step time of the shipped architecture (N=128, M=192,
4 slices, checkerboard, 2 residual blocks per stage, bf16 autocast, batch 8 x 256²) against the
same model with its GDN/IGDN layers replaced by the identity.

    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296 \\
        python benchmarks/gdn_cost.py [--steps 3]

Variants: ``base``; ``no-gdn-half`` (without the two GDNs at 1/2 resolution, g_a's first and
g_s's last); ``no-gdn`` (without all six). Variants run interleaved, step by step, and the
fastest step of each is printed, so a busy neighbour on the shared cores slows all alike. The
stripped models are for timing only (they compute another function).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vaecodec.model import MeanScaleHyperprior  # noqa: E402
from vaecodec.train import rd_loss  # noqa: E402
from vaecodec.transforms import GDN  # noqa: E402


def model(variant: str) -> MeanScaleHyperprior:
    """The shipped architecture, with GDN layers swapped for ``nn.Identity`` per ``variant``."""
    m = MeanScaleHyperprior(128, 192, slices=4, checkerboard=True, blocks=2)
    half = {(m.g_a, "1"), (m.g_s, "5")}   # the GDNs on (B, 128, H/2, W/2)
    for seq in (m.g_a, m.g_s):
        for name, layer in list(seq.named_children()):
            if isinstance(layer, GDN) and (variant == "no-gdn" or (variant == "no-gdn-half" and (seq, name) in half)):
                seq._modules[name] = nn.Identity()
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up)")
    args = parser.parse_args()
    torch.manual_seed(0)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    x, level = torch.rand(8, 3, 256, 256), torch.randint(0, 8, (8,))
    models = {v: model(v) for v in ("base", "no-gdn-half", "no-gdn")}
    optimizers = {v: torch.optim.Adam(m.parameters(), 1e-4) for v, m in models.items()}
    times = {v: [] for v in models}
    for step in range(args.steps + 1):
        for v, m in models.items():
            start = time.perf_counter()
            loss = rd_loss(m, x, level, autocast)["loss"]
            optimizers[v].zero_grad()
            loss.backward()
            optimizers[v].step()
            if step:
                times[v].append(time.perf_counter() - start)
    base = min(times["base"])
    print("| variant | s/step (fastest) | vs base |\n|---|---:|---:|")
    for v, ts in times.items():
        print(f"| {v} | {min(ts):.3f} | {min(ts) / base:.2f}x |")


if __name__ == "__main__":
    main()
