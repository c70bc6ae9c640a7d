"""Samples/s of one training step (forward, loss, backward, Adam) under several settings.

Run with the allocator setting the launcher uses, e.g.::

    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296 \
        python benchmarks/train_speed.py --steps 6

All settings are timed interleaved in one process (the cores here are shared and noisy), so
compare the ratios within one run. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch

from vaecodec.model import MeanScaleHyperprior
from vaecodec.train import rd_loss


def time_setting(model, opt, batch, crop, precision, steps, channels_last=False):
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    x = torch.rand(batch, 3, crop, crop)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    level = torch.randint(0, 8, (batch,))
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        m = rd_loss(model, x, level, autocast)
        opt.zero_grad()
        m["loss"].backward()
        opt.step()
        times.append(time.perf_counter() - t)
    best = sorted(times[1:])[len(times[1:]) // 2]  # median after a warm-up step
    return batch / best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--N", type=int, default=128)
    ap.add_argument("--M", type=int, default=192)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    settings = [(16, 128, "fp32", 2), (16, 128, "bf16", 2), (16, 128, "bf16", 1),
                (8, 256, "fp32", 2), (8, 256, "bf16", 2)]
    results = {s: [] for s in settings}
    model = MeanScaleHyperprior(args.N, args.M)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    for _ in range(args.rounds):
        for s in settings:
            batch, crop, precision, threads = s
            torch.set_num_threads(threads)
            results[s].append(time_setting(model, opt, batch, crop, precision, args.steps))
    torch.set_num_threads(2)
    base = {crop: max(results[(b, crop, "fp32", 2)]) for (b, crop, _, _) in settings}
    print(f"N={args.N} M={args.M}, median step of {args.steps}, best of {args.rounds} rounds\n")
    print("| batch × crop | precision | threads | samples/s | vs fp32 |")
    print("|---|---|---|---|---|")
    for (batch, crop, precision, threads), r in results.items():
        sps = max(r)
        print(f"| {batch} × {crop}² | {precision} | {threads} | {sps:.2f} | {sps / base[crop]:.2f}× |")


if __name__ == "__main__":
    main()
