"""Samples/s of one training step (forward, loss, backward, Adam) under several settings.

    python benchmarks/train_speed.py [--steps 4] [--rounds 2]

The glibc allocator setting only takes effect when a process starts, so every measurement runs
in a child process, with or without ``GLIBC_TUNABLES``; settings alternate round by round (the
cores here are shared and noisy: compare the ratios within one run). Prints a Markdown table;
the baseline is the plain fp32 eager loop without the allocator setting. bf16 settings are
skipped on a CPU without native bf16 (``vaecodec.hardware.native_bf16``): there autocast falls
back to reference kernels and one step takes minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from vaecodec.cli import GLIBC_FAST_MALLOC  # noqa: E402  (the setting the launcher uses)

# (batch, crop, precision, threads, allocator setting, channels_last)
SETTINGS = [(16, 128, "fp32", 2, False, False), (16, 128, "fp32", 2, True, False),
            (16, 128, "bf16", 2, True, False), (16, 128, "bf16", 1, True, False),
            (16, 128, "bf16", 2, True, True),
            (8, 256, "fp32", 2, False, False), (8, 256, "fp32", 2, True, False),
            (8, 256, "fp32", 2, True, True), (8, 256, "bf16", 2, True, False),
            (8, 256, "bf16", 2, True, True)]


def child(batch: int, crop: int, precision: str, threads: int, channels_last: bool, steps: int,
          N: int, M: int) -> float:
    """Median samples/s of ``steps`` training steps after one warm-up step (the trainer's
    default model: checkerboard context, 2 residual blocks per stage)."""
    import torch
    from vaecodec.model import MeanScaleHyperprior
    from vaecodec.train import rd_loss
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = MeanScaleHyperprior(N, M, checkerboard=True, blocks=2).to(memory_format=layout)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    x = torch.rand(batch, 3, crop, crop).contiguous(memory_format=layout)
    level = torch.randint(0, model.num_qualities, (batch,))
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        m = rd_loss(model, x, level, autocast)
        opt.zero_grad()
        m["loss"].backward()
        opt.step()
        times.append(time.perf_counter() - t)
    rest = sorted(times[1:])
    return batch / rest[len(rest) // 2]


def cpu_name() -> str:
    """The processor's model name (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--N", type=int, default=128)
    ap.add_argument("--M", type=int, default=192)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        b, c, p, t, cl = json.loads(args.child)
        print(json.dumps(child(b, c, p, t, cl, args.steps, args.N, args.M)))
        return
    import torch
    from vaecodec.hardware import native_bf16
    bf16 = native_bf16(torch.device("cpu"))
    results: dict[tuple, list[float]] = {s: [] for s in SETTINGS}
    for _ in range(args.rounds):
        for s in SETTINGS:
            if s[2] == "bf16" and not bf16:
                continue
            batch, crop, precision, threads, tuned, cl = s
            env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
            env["PYTHONPATH"] = str(ROOT)
            if tuned:
                env["GLIBC_TUNABLES"] = GLIBC_FAST_MALLOC
            out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps),
                                  "--N", str(args.N), "--M", str(args.M),
                                  "--child", json.dumps([batch, crop, precision, threads, cl])],
                                 env=env, capture_output=True, text=True, check=True)
            results[s].append(float(out.stdout.strip().splitlines()[-1]))
    print(f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, kernels "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {'yes' if bf16 else 'no'}")
    print(f"N={args.N} M={args.M}; median of {args.steps} steps, best of {args.rounds} rounds\n")
    print("| batch × crop | precision | threads | glibc malloc tuned | channels_last | samples/s | vs plain fp32 |")
    print("|---|---|---|---|---|---|---|")
    for s, r in results.items():
        batch, crop, precision, threads, tuned, cl = s
        row = (f"| {batch} × {crop}² | {precision} | {threads} | {'yes' if tuned else 'no'} | "
               f"{'yes' if cl else 'no'} | ")
        if not r:
            print(row + "skipped: no native bf16 | |")
            continue
        base = max(results[(batch, crop, "fp32", 2, False, False)])
        print(row + f"{max(r):.2f} | {max(r) / base:.2f}× |")


if __name__ == "__main__":
    main()
