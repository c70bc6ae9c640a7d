"""What the machine computes fast: device capability probes shared by training and refinement,
and the allocator setting that coding on a CPU needs (:func:`tune_malloc`)."""
from __future__ import annotations

import ctypes
import os
import platform
import threading
from pathlib import Path

import torch

# mallopt(3) parameters of glibc's malloc.h
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
# What tune_malloc sets: no allocation is served by its own mmap, and free memory at the top of
# the heap is kept up to 2 GiB (mallopt takes an int). This is what the GLIBC_TUNABLES of
# `make` and `vaecodec train` (mmap and trim thresholds of 4 GiB) do, which a process can only
# get from its environment at start-up; mallopt's own M_MMAP_THRESHOLD stops at 32 MiB, below
# the 48 MiB activations of a Kodak image's transforms (benchmarks/speed.md).
MALLOPT = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))
# the user's own settings of the same parameters, which tune_malloc leaves alone
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_")
USER_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold", "glibc.malloc.mmap_max")
OPT_OUT = "VAECODEC_MALLOPT"   # "0": leave the allocator as it is

_lock = threading.Lock()
_tuned: bool | None = None   # tune_malloc's result, once it has run


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 convolutions natively.

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: whether oneDNN has a bf16 kernel for this
    processor (AVX-512 and newer). On an AVX2-only CPU, bf16 autocast falls back to reference
    kernels: on a 2-core AMD EPYC (Zen 3, AVX2) one step of batch 8 x 256² took over 3 minutes
    in bf16 (cores shared) against 2.7 s in fp32. ``False`` while oneDNN is switched off
    (``torch.backends.mkldnn.flags(enabled=False)``), and for any other device type.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        if not torch.backends.mkldnn.enabled:   # switched off: only the reference kernels remain
            return False
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def _glibc():
    """The C library as a ``ctypes`` handle when it is glibc, else ``None``."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return None
        return ctypes.CDLL("libc.so.6")
    except (AttributeError, ValueError, OSError):   # no confstr, no such name, no such library
        return None


def _user_has_malloc_settings() -> bool:
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(name in os.environ for name in USER_SETTINGS) or any(t in tunables for t in USER_TUNABLES)


def tune_malloc() -> bool:
    """Set glibc's allocator to keep freed memory in the process (:data:`MALLOPT`), once per
    process; later calls return the first call's result. Returns whether it was set.

    Why: PyTorch allocates every large tensor with ``malloc``, and glibc serves an allocation
    above its mmap threshold (128 KiB at start, growing to at most 32 MiB) with a fresh ``mmap``
    and returns it to the kernel when freed, so every large activation of a transform is
    page-faulted in again: about 120,000 page faults and 0.18 s of system time per Kodak image
    (encode and decode), none with this setting (``benchmarks/speed.md``).

    A no-op (returns ``False``) where the C library is not glibc, where the environment already
    sets one of these parameters (``GLIBC_TUNABLES`` with ``glibc.malloc.mmap_threshold``,
    ``trim_threshold`` or ``mmap_max``, or ``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_MAX_``: the user's choice wins), and where
    ``VAECODEC_MALLOPT=0``. The cost: freed memory stays with the process (reused by the next
    tensors and images) instead of going back to the system, and a very large image peaks
    higher: an 8K photo's encode at 2.4-2.5 GiB instead of 2.25, its decode at 2.2 GiB instead
    of 1.8 (for 86 s less system time). Coding a large image therefore gives freed memory back
    between its phases (:func:`release_free_memory`): its encode then peaked at 2.2 GiB.
    """
    global _tuned
    with _lock:
        if _tuned is None:
            _tuned = False
            libc = None if os.environ.get(OPT_OUT) == "0" or _user_has_malloc_settings() else _glibc()
            if libc is not None:
                _tuned = all([libc.mallopt(param, value) == 1 for param, value in MALLOPT])
        return _tuned


def release_free_memory() -> bool:
    """Give the pages of freed memory back to the system (glibc's ``malloc_trim(0)``); returns
    whether it could (``False`` where the C library is not glibc).

    For the start of a phase that allocates large tensors of other sizes than the phase before
    it freed: under :func:`tune_malloc` (or ``make``'s ``GLIBC_TUNABLES``) freed memory stays
    in the process, in holes the new tensors may not fit, so the process would grow past both
    phases' needs. Refining an 8K image's latents, then entropy-coding them, peaked at 3.4-3.5
    GiB without it (:data:`vaecodec.coder.RELEASE_LATENTS`). Under glibc's default thresholds
    large tensors are unmapped when freed anyway, and this costs a walk of the heap.
    """
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0) >= 0)


def cpu_name() -> str:
    """The processor's model name from ``/proc/cpuinfo`` (Linux), else what :mod:`platform`
    knows; for benchmark reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
