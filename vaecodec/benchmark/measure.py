"""Measuring: one codec on one image over its quality sweep (in this process or a worker), and
the per-quality means over images."""
from __future__ import annotations

import math
import os
import time
import warnings
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .. import metrics
from .codecs import Codec, get_codec
from .images import ImageSource, pixel_digest


def measure(codec: Codec, image: Image.Image, quality) -> dict[str, Any]:
    """Encode and decode ``image`` at ``quality``: file size in bytes, bpp, PSNR-RGB (dB),
    MS-SSIM, encoding and decoding wall time (seconds, ``time.perf_counter``)."""
    t0 = time.perf_counter()
    data = codec.encode(image, quality)
    t1 = time.perf_counter()
    recon = codec.decode(data)
    t2 = time.perf_counter()
    if recon.size != image.size:
        raise RuntimeError(f"{codec.name} decoded {recon.size}, expected {image.size}")
    width, height = image.size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # small images: MS-SSIM NaN, noted
        msssim = metrics.ms_ssim_rgb(image, recon)
    return {
        "bytes": len(data),
        "bpp": metrics.bpp(len(data), height, width),
        "psnr-rgb": metrics.psnr_rgb(image, recon),
        "ms-ssim-rgb": msssim,
        "encoding_time": t1 - t0,
        "decoding_time": t2 - t1,
    }


# codec objects of this process by "name/threads", loaded once and kept for every task
WORKER_CODECS: dict[str, Codec] = {}


def _init_worker(threads: int) -> None:
    """Process-pool initializer: limit every library to ``threads`` threads."""
    # torch (MS-SSIM, vaecodec) is imported later and reads OMP_NUM_THREADS then
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


def _run_task(source: ImageSource, codec_name: str, threads: int) -> dict[str, Any]:
    """Benchmark one image with one codec over its whole sweep (runs in a worker or inline)."""
    key = f"{codec_name}/{threads}"
    codec = WORKER_CODECS.get(key)
    if codec is None:
        codec = WORKER_CODECS[key] = get_codec(codec_name, threads=threads)
    records: list[dict[str, Any]] = []
    try:
        codec.load()
        image = source.load()
        width, height = image.size
        digest = pixel_digest(image)
        for quality in codec.qualities:
            rec = {"image": source.name, "codec": codec.name, "quality": quality,
                   "width": width, "height": height, "sha256": digest}
            rec.update(measure(codec, image, quality))
            records.append(rec)
    except Exception as exc:  # report and go on with the other images/codecs
        return {"records": records,
                "error": f"{codec_name} on {source.name}: {type(exc).__name__}: {exc}"}
    return {"records": records, "error": None}


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else float("nan")


def aggregate(records: list[dict[str, Any]], codec: Codec) -> dict[str, Any]:
    """Per-quality means over images of bpp, PSNR-RGB (dB), MS-SSIM and times (s), in
    CompressAI's layout, points ordered by increasing mean bpp."""
    points = []
    for quality in codec.qualities:
        rows = [r for r in records if r["codec"] == codec.name and r["quality"] == quality]
        if not rows:
            continue
        points.append({
            "quality": quality,
            "bytes": _mean([r["bytes"] for r in rows]),
            "bpp": _mean([r["bpp"] for r in rows]),
            "psnr-rgb": _mean([r["psnr-rgb"] for r in rows]),
            # NaN unless defined for every image (too small ones have none), so that the mean
            # is always over the same images as bpp and PSNR
            "ms-ssim-rgb": float(np.mean([r["ms-ssim-rgb"] for r in rows])),
            "encoding_time": _mean([r["encoding_time"] for r in rows]),
            "decoding_time": _mean([r["decoding_time"] for r in rows]),
            "images": len(rows),
        })
    points.sort(key=lambda p: p["bpp"])
    keys = ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")
    return {
        "name": codec.label,
        "codec": codec.name,
        "description": codec.description,
        "qualities": [p["quality"] for p in points],
        "images": [p["images"] for p in points],
        "mean_bytes": [p["bytes"] for p in points],
        "results": {k: [p[k] for p in points] for k in keys},
    }
