"""Encode and decode speed in one process, stage by stage, against the machine's float32
bound (benchmarks/speed.md).

    python benchmarks/speed.py [--images N] [--rounds R] [--quality Q] [--dataset DIR] [--out FILE] [--float64]
    python benchmarks/speed.py --allocator [--images N] [--rounds R]   # malloc settings compared
    python benchmarks/speed.py --transforms [--rounds R]               # layouts of the transforms compared

Default mode: the first N Kodak images (evaluation only), each encoded
(``codec.compress_array`` from pixels in memory) and decoded (``codec.decompress_array``,
then the PNG file's bytes as ``vaecodec decompress`` writes them, in memory) R times, the
rounds interleaved with a fixed float32 workload timed in the same process: a 3x3 convolution
of 128 to 128 channels on 128x192 (channels-last, 3.6 G multiply-accumulates). Its speed is
the float32 bound this machine reaches now, and every time is also given as a multiple of it,
which stays comparable on a loaded machine where absolute seconds do not. Each stage is timed
by wrapping the very functions the codec calls (:class:`Stages`; whatever no stage covers is
"other"), and its multiply-accumulates are counted once per image size with PyTorch's
``FlopCounterMode`` (convolutions only, as executed, zero taps included). Medians over images x
rounds.

``--allocator``: the same encode + decode in one fresh process per setting of glibc's malloc
(glibc's defaults, ``mallopt`` with a 32 MiB mmap threshold, the library's own setting, the
``GLIBC_TUNABLES`` of ``make``), settings interleaved round by round; times, their ratio to
the reference workload, page faults and system time per image.

``--transforms``: ``g_a``, ``h_a`` and ``g_s`` as stored (NCHW, transposed convolutions) against
the layouts tried for coding, interleaved in one process, on the first image; and each of the
synthesis' transposed convolutions alone. Also how many rounded latents or decoded pixel values
each layout changes.

Writes its table into ``--out`` between ``<!-- speed.py MODE -->`` markers (``MODE``: stages,
allocator or transforms, and ``--threads N`` when given; text outside them is kept) and
prints it.
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout

from vaecodec import codec, entropy, exactconv, hardware, imageio  # noqa: E402
from vaecodec.transforms import (SubpixelConvTranspose2d, analysis_transform,  # noqa: E402
                                 hyper_analysis_transform, synthesis_transform)

KODAK = ROOT.parent / "shared" / "data" / "kodak"
OUT = Path(__file__).resolve().parent / "speed.md"
TARGETS = {"encode": 0.30, "decode": 0.35}   # seconds per Kodak image on 2 cores (issue 44)
ENCODE_STAGES = ("analysis transform", "hyper-analysis", "exact hyper-synthesis", "channel context",
                 "checkerboard context", "range coding")
DECODE_STAGES = ("range coding", "exact hyper-synthesis", "channel context", "checkerboard context",
                 "LRP", "synthesis transform", "PNG write")
EXACT = {"exact hyper-synthesis", "channel context", "checkerboard context"}
GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"


# ----------------------------------------------------------------------------- reference
class Reference:
    """The fixed float32 workload: ``conv2d`` of ``(1, 128, 128, 192)`` by ``(128, 128, 3, 3)``
    (``padding=1``, channels-last, fixed random values), 3.62e9 multiply-accumulates.
    ``seconds()``: the median of ``repeats`` runs."""

    SHAPE, CHANNELS, KERNEL = (128, 192), 128, 3

    def __init__(self, repeats: int = 3):
        gen = torch.Generator().manual_seed(0)
        c, k = self.CHANNELS, self.KERNEL
        self.x = torch.randn(1, c, *self.SHAPE, generator=gen).contiguous(memory_format=torch.channels_last)
        self.w = (0.03 * torch.randn(c, c, k, k, generator=gen)).contiguous(memory_format=torch.channels_last)
        self.macs = c * c * k * k * self.SHAPE[0] * self.SHAPE[1]
        self.repeats = repeats
        self.seconds()   # oneDNN prepares its kernel

    def run(self) -> torch.Tensor:
        with torch.no_grad():
            return F.conv2d(self.x, self.w, padding=1)

    def seconds(self) -> float:
        times = []
        for _ in range(self.repeats):
            start = time.perf_counter()
            self.run()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def gflops(self, seconds: float) -> float:
        return 2 * self.macs / seconds / 1e9


# ----------------------------------------------------------------------------- stages
class Stages:
    """Exclusive wall-clock seconds (and, while ``counter`` is a ``FlopCounterMode``, FLOPs)
    per named stage: :meth:`wrap` a function to make each of its calls count for a stage; the
    time of a stage called inside another counts for the inner one only."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.flops: dict[str, int] = defaultdict(int)
        self.counter = None
        self._stack: list[list] = []

    def _flops(self) -> int:
        return self.counter.get_total_flops() if self.counter is not None else 0

    def enter(self, name: str) -> None:
        self._stack.append([name, time.perf_counter(), self._flops(), 0.0, 0])

    def exit(self) -> None:
        name, start, flops, inner_s, inner_f = self._stack.pop()
        seconds, flops = time.perf_counter() - start, self._flops() - flops
        self.seconds[name] += seconds - inner_s
        self.flops[name] += flops - inner_f
        if self._stack:
            self._stack[-1][3] += seconds
            self._stack[-1][4] += flops

    def wrap(self, name: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self.enter(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self.exit()
        return timed

    def take(self) -> tuple[dict, dict]:
        """The seconds and FLOPs counted since the last call, and start again."""
        out = dict(self.seconds), dict(self.flops)
        self.seconds.clear()
        self.flops.clear()
        return out


@contextmanager
def instrumented(model, stages: Stages):
    """Count the codec's stages in ``stages`` while inside: the model's own methods and the
    exact networks as instance attributes, the hyper-analysis by forward hooks, the range
    coder's classes by their methods; all restored on exit."""
    own = {"analysis": "analysis transform", "synthesis": "synthesis transform",
           "slice_parameters": "channel context", "spatial_parameters": "checkerboard context"}
    for method, name in own.items():
        setattr(model, method, stages.wrap(name, getattr(model, method)))
    model.model.residual = stages.wrap("LRP", model.model.residual)   # the float model's LRP
    h_s = model.h_s
    h_s.parameters = stages.wrap("exact hyper-synthesis", h_s.parameters)
    h_a = model.model.h_a
    hooks = [h_a.register_forward_pre_hook(lambda *_: stages.enter("hyper-analysis")),
             h_a.register_forward_hook(lambda *_: stages.exit())]
    coder = [(cls, m) for cls in (entropy.IndexedEncoder, entropy.IndexedDecoder)
             for m in ("__init__", "encode", "decode", "finish") if m in vars(cls)]
    saved = [(cls, m, vars(cls)[m]) for cls, m in coder]
    for cls, m, fn in saved:
        setattr(cls, m, stages.wrap("range coding", fn))
    try:
        yield
    finally:
        for method in own:
            delattr(model, method)
        del model.model.residual
        del h_s.parameters
        for hook in hooks:
            hook.remove()
        for cls, m, fn in saved:
            setattr(cls, m, fn)


def encode(model, rgb: np.ndarray, quality: float) -> bytes:
    return codec.compress_array(rgb, quality, model=model)


def decode(model, data: bytes, stages: Stages) -> bytes:
    """The ``.vae`` bytes decoded and written as ``vaecodec decompress`` writes a PNG (in memory)."""
    rgb = codec.decompress_array(data, model=model).rgb
    return stages.wrap("PNG write", imageio.encode_png)(Image.fromarray(rgb, "RGB"), None)[0]


# ----------------------------------------------------------------------------- the machine
def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return ""
    return ", ".join(f for f, names in (("AVX-512", ("avx512f",)), ("AVX-512 BF16", ("avx512_bf16",)),
                                         ("AVX2", ("avx2",))) if all(n in flags for n in names))


def machine(load_before: float, allocator: bool = True) -> str:
    """Date, processor, versions, threads, the allocator setting (unless ``allocator`` is
    false) and the load average before and now, as one line."""
    allocator = ("glibc malloc set by the library (`mallopt`)" if hardware.tune_malloc()
                 else "glibc malloc as the environment left it"
                 + (f" (`GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']}`)" if "GLIBC_TUNABLES" in os.environ else "")
                 ) if allocator else "malloc as each row says"
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; {hardware.cpu_name()} ({cpu_flags() or 'no AVX'}), "
            f"{os.cpu_count()} cores; Python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; {allocator}; load average {load_before:.1f} before the "
            f"run, {load_after:.1f} after")


def kodak(dataset: Path, count: int) -> list[tuple[str, np.ndarray]]:
    files = sorted(p for p in dataset.iterdir() if p.suffix.lower() == ".png")[:count]
    if not files:
        sys.exit(f"no .png images in {dataset}")
    return [(f.stem, np.array(Image.open(f).convert("RGB"))) for f in files]


def command(args, mode: str = "") -> str:
    """The command line that gave a table, as Markdown code."""
    parts = ["python benchmarks/speed.py", mode, "" if mode == "--transforms" else f"--images {args.images}",
             f"--rounds {args.rounds}", f"--threads {args.threads}" if args.threads else "",
             "--float64" if args.float64 else ""]
    return "`" + " ".join(p for p in parts if p) + "`"


def median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else 0.0


# ----------------------------------------------------------------------------- default mode
def measure_stages(model, images, quality: float, rounds: int, reference: Reference) -> dict:
    """Per sample (image x round): encode and decode seconds, the stages' seconds, the
    reference's seconds around them; per image size: each stage's FLOPs."""
    stages = Stages()
    flops: dict[tuple, dict] = {}
    samples = []
    from torch.utils.flop_counter import FlopCounterMode
    with instrumented(model, stages):
        for name, rgb in images:   # warm-up and count: each image size once
            if rgb.shape in flops:
                continue
            data = encode(model, rgb, quality)
            decode(model, data, stages)
            # counted by the float64 method: the int8 products are the same arithmetic
            with FlopCounterMode(display=False) as counter, exactconv.float64_reference():
                stages.counter = counter
                stages.take()
                data = encode(model, rgb, quality)
                enc = stages.take()[1]
                decode(model, data, stages)
                dec = stages.take()[1]
                stages.counter = None
            flops[rgb.shape] = {"encode": enc, "decode": dec}
        stages.take()
        for _ in range(rounds):
            for name, rgb in images:
                before = reference.seconds()
                start = time.perf_counter()
                data = encode(model, rgb, quality)
                t_enc = time.perf_counter() - start
                enc = stages.take()[0]
                start = time.perf_counter()
                decode(model, data, stages)
                t_dec = time.perf_counter() - start
                dec = stages.take()[0]
                after = reference.seconds()
                samples.append({"image": name, "pixels": rgb.shape[0] * rgb.shape[1], "shape": rgb.shape,
                                "reference": (before + after) / 2, "encode": t_enc, "decode": t_dec,
                                "stages": {"encode": enc, "decode": dec}, "bytes": len(data)})
    return {"samples": samples, "flops": flops}


def stage_table(result: dict, reference: Reference) -> list[str]:
    samples, flops = result["samples"], result["flops"]
    method = "int8" if exactconv.available() else "float64"
    ref_s = median(s["reference"] for s in samples)
    bound = reference.gflops(ref_s) * 1e9   # FLOP/s
    best = reference.gflops(min(s["reference"] for s in samples))
    lines = [f"Reference workload: {Reference.CHANNELS}→{Reference.CHANNELS} 3×3 convolution on "
             f"{Reference.SHAPE[0]}×{Reference.SHAPE[1]}, float32, channels-last "
             f"({reference.macs / 1e9:.2f} G multiply-accumulates): median {ref_s * 1e3:.1f} ms, "
             f"**{bound / 1e9:.0f} GFLOP/s** (best {best:.0f}): the float32 bound used below.", "",
             "| stage | MACs/pixel | seconds | share | × reference | GFLOP/s | × bound |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for what, names in (("encode", ENCODE_STAGES), ("decode", DECODE_STAGES)):
        total = [s[what] for s in samples]
        t_total = median(total)
        macs_total = median(sum(flops[s["shape"]][what].values()) / 2 / s["pixels"] for s in samples)
        at_bound = median(sum(flops[s["shape"]][what].values()) / bound for s in samples)
        lines.append(f"| **{what}** (target {TARGETS[what]:.2f} s) | **{macs_total / 1e3:.1f} k** | "
                     f"**{t_total:.3f}** | 100 % | **{median(s[what] / s['reference'] for s in samples):.1f}** | "
                     f"{median(sum(flops[s['shape']][what].values()) / s[what] / 1e9 for s in samples):.0f} | "
                     f"**{t_total / at_bound:.2f}** |")
        for name in (*names, "other"):
            if name == "other":
                secs = [s[what] - sum(s["stages"][what].values()) for s in samples]
                fl = [0 for _ in samples]
            else:
                secs = [s["stages"][what].get(name, 0.0) for s in samples]
                fl = [flops[s["shape"]][what].get(name, 0) for s in samples]
            t = median(secs)
            macs = median(f / 2 / s["pixels"] for f, s in zip(fl, samples))
            gflops = median(f / x / 1e9 for f, x in zip(fl, secs) if x > 0) if any(fl) else 0.0
            far = t / median(f / bound for f in fl) if any(fl) else float("nan")
            label = name + (f" ({method})" if name in EXACT else "")
            lines.append(f"| {label} | {macs / 1e3:.1f} k | {t:.3f} | {100 * t / t_total:.0f} % | "
                         f"{median(x / s['reference'] for x, s in zip(secs, samples)):.2f} | "
                         + (f"{gflops:.0f} | {far:.1f} |" if any(fl) else "– | – |"))
    return lines


def run_stages(args) -> list[str]:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    model = codec.get_model()
    images = kodak(args.dataset, args.images)
    reference = Reference()
    result = measure_stages(model, images, args.quality, args.rounds, reference)
    samples = result["samples"]
    sizes = sorted({f"{s['shape'][1]}×{s['shape'][0]}" for s in samples})
    lines = [f"{command(args)} ({len(images)} images of `{args.dataset.name}` ({', '.join(sizes)}) × {args.rounds} rounds, "
             f"quality {args.quality:g}, release {model.release or 'none'}): {machine(load)}.", "",
             *stage_table(result, reference), "",
             "Seconds: median over images × rounds (a stage's median, so the stages need not add up "
             "to the total); × reference: the time over the reference workload's, timed just before "
             "and after each image; × bound: the time over that of the stage's multiply-accumulates "
             "at the reference's GFLOP/s. Encode starts from pixels in memory; decode ends with the "
             "PNG file's bytes (zlib level 1) in memory."]
    return lines


# ----------------------------------------------------------------------------- --allocator
ALLOCATOR_SETTINGS = {
    "glibc defaults": {"VAECODEC_MALLOPT": "0"},
    "mallopt: mmap threshold 32 MiB, trim threshold 2 GiB": {"VAECODEC_MALLOPT": "0", "SPEED_MALLOPT": "32MiB"},
    "mallopt: no mmap, trim threshold 2 GiB (the library's)": {},
    "GLIBC_TUNABLES (make, vaecodec train)": {"VAECODEC_MALLOPT": "0", "GLIBC_TUNABLES": GLIBC_TUNABLES},
}


def allocator_child(args) -> None:
    """One process of ``--allocator``: prints JSON of per-image seconds, reference seconds, minor
    page faults and system CPU seconds (encode + decode)."""
    import resource
    if os.environ.get("SPEED_MALLOPT") == "32MiB":
        libc = hardware._glibc()
        ok = libc.mallopt(hardware.M_MMAP_THRESHOLD, 32 << 20) == 1
        ok &= libc.mallopt(hardware.M_TRIM_THRESHOLD, 2**31 - 1) == 1
        if not ok:
            sys.exit("mallopt refused")
    model = codec.get_model()
    images = kodak(args.dataset, args.images)
    reference = Reference()
    stages = Stages()
    decode(model, encode(model, images[0][1], args.quality), stages)
    out = []
    for name, rgb in images:
        before = reference.seconds()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        data = encode(model, rgb, args.quality)
        t_enc = time.perf_counter() - start
        decode(model, data, stages)
        t_dec = time.perf_counter() - start - t_enc
        end = resource.getrusage(resource.RUSAGE_SELF)
        after = reference.seconds()
        out.append({"encode": t_enc, "decode": t_dec, "reference": (before + after) / 2,
                    "faults": end.ru_minflt - usage.ru_minflt, "system": end.ru_stime - usage.ru_stime,
                    "user": end.ru_utime - usage.ru_utime})
    print(json.dumps({"samples": out, "tuned": hardware.tune_malloc(),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_allocator(args) -> list[str]:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results = {name: [] for name in ALLOCATOR_SETTINGS}
    rss = defaultdict(list)
    for r in range(args.rounds):
        for name, env in ALLOCATOR_SETTINGS.items():
            child_env = {k: v for k, v in os.environ.items()
                         if k not in ("GLIBC_TUNABLES", "VAECODEC_MALLOPT", "SPEED_MALLOPT")}
            child_env.update(env, PYTHONPATH=str(ROOT))
            proc = subprocess.run([sys.executable, __file__, "--allocator-child", "--images", str(args.images),
                                   "--quality", str(args.quality), "--dataset", str(args.dataset),
                                   "--threads", str(torch.get_num_threads())],
                                  env=child_env, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{name}: {proc.stderr}")
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            results[name] += got["samples"]
            rss[name].append(got["peak_rss_mib"])
            print(f"round {r + 1}, {name}: " + ", ".join(f"{s['encode']:.2f}+{s['decode']:.2f} s"
                                                        for s in got["samples"]), file=sys.stderr, flush=True)
    base = results["glibc defaults"]
    base_ratio = median((s["encode"] + s["decode"]) / s["reference"] for s in base)
    lines = [f"{command(args, '--allocator')}: one "
             f"process per setting and round, settings interleaved, each process coding the first "
             f"{args.images} images of `{args.dataset.name}` at quality {args.quality:g} after one "
             f"untimed image; {machine(load, allocator=False)}.", "",
             "| malloc setting | encode s | decode s | (encode + decode) / reference | vs glibc defaults "
             "| page faults / image | CPU s / image: user + system | peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, samples in results.items():
        ratio = median((s["encode"] + s["decode"]) / s["reference"] for s in samples)
        lines.append(f"| {name} | {median(s['encode'] for s in samples):.3f} | {median(s['decode'] for s in samples):.3f} "
                     f"| {ratio:.1f} | {base_ratio / ratio:.2f}× | {median(s['faults'] for s in samples):,.0f} "
                     f"| {median(s['user'] for s in samples):.2f} + {median(s['system'] for s in samples):.3f} "
                     f"| {median(rss[name]):.0f} |")
    lines += ["", "vs glibc defaults: how many times faster, from the medians of (encode + decode) / reference."]
    return lines


# ----------------------------------------------------------------------------- --transforms
def stored_layout(model):
    """``g_a`` and ``g_s`` as stored: NCHW, transposed convolutions (the trained modules)."""
    g_a = analysis_transform(model.N, model.M, model.blocks)
    g_s = synthesis_transform(model.N, model.M, model.blocks)
    g_a.load_state_dict(model.model.g_a.state_dict())
    g_s.load_state_dict(model.model.g_s.state_dict())
    return g_a.eval(), g_s.eval()


def variant(g_s, recast: str, channels_last: bool):
    """A copy of the stored ``g_s`` with transposed convolutions recast (``"none"``, ``"last"``,
    ``"all"``) and weights channels-last or not."""
    g = copy.deepcopy(g_s)
    names = [n for n, m in g.named_children() if type(m) is torch.nn.ConvTranspose2d]
    for n in {"none": [], "last": names[-1:], "all": names}[recast]:
        setattr(g, n, SubpixelConvTranspose2d.from_transposed(getattr(g, n)))
    return g.to(memory_format=torch.channels_last) if channels_last else g


def interleaved(fns: dict, rounds: int) -> dict[str, list[float]]:
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return times


def run_transforms(args) -> list[str]:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    model = codec.get_model()
    (name, rgb), = kodak(args.dataset, 1)
    # the image as compress_array passes it: (1, 3, H, W) with the HWC array's strides, which
    # are channels-last ones
    x_codec = codec._pad_to_stride(torch.from_numpy(rgb).permute(2, 0, 1)[None]).float().div_(255.0)
    x = x_codec.contiguous()
    g_a, g_s = stored_layout(model)
    cl = torch.channels_last
    rows = []
    with torch.no_grad():
        y = model.analysis(x).contiguous()   # as the decoder gives it to g_s: NCHW
        ref_px = torch.round(g_s(y).clamp(0, 1) * 255)
        gain = model.gains(args.quality)[0][:, None, None]
        ref_y = torch.round(g_a(x) * gain)   # the latents coded at this quality
        analyses = {"stored (NCHW)": (g_a, x),
                    "as compress runs it: stored weights, the image in channels-last strides": (model.model.g_a, x_codec),
                    "channels-last weights (not adopted: memory of large images)":
                        (copy.deepcopy(g_a).to(memory_format=cl), x_codec)}
        syntheses = {"stored (NCHW, transposed)": (g_s, y),
                     "channels-last": (variant(g_s, "none", True), y.contiguous(memory_format=cl)),
                     "all recast, NCHW": (variant(g_s, "all", False), y),
                     "all recast, channels-last": (variant(g_s, "all", True), y.contiguous(memory_format=cl)),
                     "last recast, NCHW": (variant(g_s, "last", False), y),
                     "coding (`coding_layout`): channels-last, last recast": (model.model.g_s, y.contiguous(memory_format=cl))}
        y_gained = y * gain
        h_a = hyper_analysis_transform(model.N, model.M)
        h_a.load_state_dict(model.model.h_a.state_dict())
        hypers = {"stored (NCHW)": (h_a.eval(), y_gained),
                  "as compress runs it: stored weights, y in channels-last strides":
                      (model.model.h_a, y_gained.contiguous(memory_format=cl)),
                  "channels-last weights (not adopted)":
                      (copy.deepcopy(h_a).to(memory_format=cl), y_gained.contiguous(memory_format=cl))}
        ref_z = torch.round(h_a(y_gained))
        fns = {("g_a", k): functools.partial(g, v) for k, (g, v) in analyses.items()}
        fns.update({("h_a", k): functools.partial(g, v) for k, (g, v) in hypers.items()})
        fns.update({("g_s", k): functools.partial(g, v) for k, (g, v) in syntheses.items()})
        reference = Reference()
        fns[("ref", "")] = reference.run
        times = interleaved(fns, args.rounds)
        ref = times.pop(("ref", ""))
        for (which, k), t in times.items():
            base = times[(which, "stored (NCHW, transposed)" if which == "g_s" else "stored (NCHW)")]
            g, v = {"g_a": analyses, "h_a": hypers, "g_s": syntheses}[which][k]
            out = g(v)
            if which == "g_a":
                changed = int((torch.round(out * gain) != ref_y).sum())
                what = f"{changed} of {ref_y.numel():,} rounded latents y"
            elif which == "h_a":
                changed = int((torch.round(out) != ref_z).sum())
                what = f"{changed} of {ref_z.numel():,} rounded hyper-latents z"
            else:
                diff = (torch.round(out.clamp(0, 1) * 255) - ref_px).abs()
                what = f"{int((diff > 0).sum())} of {diff.numel():,} pixel values (max {int(diff.max())})"
            rows.append(f"| {which} | {k} | {median(t):.3f} | {median(a / r for a, r in zip(t, ref)):.2f} | "
                        f"{median(b / a for a, b in zip(t, base)):.2f}× | {what} |")
        # each transposed convolution of the synthesis alone
        layer_rows = []
        h = y
        for n, m in g_s.named_children():
            if type(m) is torch.nn.ConvTranspose2d:
                macs = m.in_channels * m.out_channels * m.kernel_size[0] ** 2 * h.shape[2] * h.shape[3]
                hl = h.contiguous(memory_format=cl)
                ways = {"NCHW": (m, h), "channels-last": (copy.deepcopy(m).to(memory_format=cl), hl),
                        "recast, NCHW": (SubpixelConvTranspose2d.from_transposed(copy.deepcopy(m)), h),
                        "recast, channels-last": (SubpixelConvTranspose2d.from_transposed(copy.deepcopy(m)).to(memory_format=cl), hl)}
                t = interleaved({k: functools.partial(g, v) for k, (g, v) in ways.items()}, args.rounds)
                layer_rows.append(f"| {n}: {m.in_channels}→{m.out_channels} on {h.shape[2]}×{h.shape[3]} | "
                                  f"{macs / 1e9:.2f} | " + " | ".join(f"{2 * macs / median(v) / 1e9:.0f}" for v in t.values()) + " |")
            h = m(h)
    return [f"{command(args, '--transforms')} ({name}, "
            f"{rgb.shape[1]}×{rgb.shape[0]}; all in one process, interleaved): {machine(load)}; reference "
            f"workload {reference.gflops(median(ref)):.0f} GFLOP/s.", "",
            "| transform | layout | seconds | × reference | speed-up | decoded values changed |",
            "|---|---|---:|---:|---:|---|", *rows, "",
            "Each transposed convolution of the synthesis alone, GFLOP/s of its 5×5 multiply-accumulates "
            "(the recast also computes 11 zero taps of every 36):", "",
            "| layer | G MACs | NCHW | channels-last | recast, NCHW | recast, channels-last |",
            "|---|---:|---:|---:|---:|---:|", *layer_rows]


# ----------------------------------------------------------------------------- output
def write_block(path: Path, mode: str, lines: list[str]) -> None:
    """Put ``lines`` between the ``<!-- speed.py MODE -->`` markers of ``path`` (appended, with
    the markers, when absent; the file is created when missing)."""
    begin, end = f"<!-- speed.py {mode} -->", f"<!-- /speed.py {mode} -->"
    block = "\n".join([begin, *lines, end])
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    path.write_text(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2, help="the first N images (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the images (default 2)")
    parser.add_argument("--quality", type=float, default=4.0)
    parser.add_argument("--dataset", type=Path, default=KODAK)
    parser.add_argument("--out", type=Path, default=OUT, help="Markdown file to write the table into")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--allocator", action="store_true", help="compare malloc settings (a process each)")
    mode.add_argument("--transforms", action="store_true", help="compare layouts of g_a, h_a and g_s")
    mode.add_argument("--allocator-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--float64", action="store_true",
                        help="run the exact entropy networks by the float64 method (default: int8 "
                             "products where this machine has them exact; the same results)")
    args = parser.parse_args(argv)
    if args.images < 1 or args.rounds < 1:
        parser.error("--images and --rounds must be at least 1")
    if args.float64 and (args.allocator or args.allocator_child):
        parser.error("--float64 applies to the stage and transform tables, not --allocator")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.allocator_child:
        return allocator_child(args)
    mode = "allocator" if args.allocator else "transforms" if args.transforms else "stages"
    run = {"allocator": run_allocator, "transforms": run_transforms, "stages": run_stages}[mode]
    if args.float64:
        with exactconv.float64_reference():
            lines = run(args)
    else:
        lines = run(args)
    print("\n".join(lines))
    write_block(args.out, mode + (f" --threads {args.threads}" if args.threads else "")
                + (" --float64" if args.float64 else ""), lines)


if __name__ == "__main__":
    main()
