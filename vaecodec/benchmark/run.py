"""The driver: which codecs and images, what an earlier run left to reuse, the measurements
(serial or in worker processes) and the files written."""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import click

from .. import metrics
from .codecs import Codec, get_codec, parse_codecs
from .images import dataset_images, pixel_digest
from .measure import WORKER_CODECS, _init_worker, _run_task, aggregate
from .report import _json_safe, summarize, write_plots, write_report


def notice(message: str) -> None:
    """One line on stderr."""
    print(message, file=sys.stderr, flush=True)


def previous_records(out: Path, keep: Sequence[str]) -> dict[tuple[str, str], list[dict]]:
    """Measurements of an earlier run in ``out`` (``per-image.json``) for the codecs in ``keep``,
    keyed by ``(codec, image)``; ``{}`` when there is none. Each record says when and with how
    many parallel jobs it was measured (``measured``, ``jobs``); records written before they
    did take those of the run that stored them."""
    path = Path(out) / "per-image.json"
    if not path.exists():
        return {}
    stored = json.loads(path.read_text(encoding="utf-8"))
    meta = stored.get("meta", {})
    grouped: dict[tuple[str, str], list[dict]] = {}
    for r in stored.get("records", []):
        if r.get("codec") in keep:   # JSON stored NaN as null
            r = {k: (math.nan if v is None else v) for k, v in r.items()}
            r.setdefault("measured", meta.get("date", "unknown date"))
            r.setdefault("jobs", meta.get("jobs", 1))
            grouped.setdefault((r["codec"], r["image"]), []).append(r)
    return grouped


def _still_valid(records: list[dict], digest: str, size: tuple[int, int]) -> bool:
    """Whether stored ``records`` were measured on the image whose pixels hash to ``digest``
    (records older than the digest field: on an image of the same ``(width, height)``)."""
    for r in records:
        if "sha256" in r:
            if r["sha256"] != digest:
                return False
        elif (r.get("width"), r.get("height")) != size:
            return False
    return True


def run_benchmark(dataset: Path | None, codecs: list[str] | str, out: Path, jobs: int = 1,
                  limit: int | None = None, threads: int = 1,
                  progress: bool = True, reuse: Sequence[str] = ()) -> dict[str, Any]:
    """Run the benchmark and write its outputs (see the module docstring) into ``out``.

    ``dataset``: a directory of images, or ``None`` for scikit-image's sample photographs.
    ``codecs``: registry names (or a comma list); unavailable ones are skipped with a notice.
    ``jobs``: worker processes, parallel over images; ``limit``: use only the first N images;
    ``threads``: threads each codec may use (1 keeps timings comparable); ``reuse``: codecs
    whose measurements from an earlier run in ``out`` are kept instead of measured again.

    Returns ``{"dataset", "images", "results" (the ``results.json`` list), "bd", "psnr_at_bpp",
    "anchor", "skipped" ({name: reason}), "errors", "files" ({kind: path})}``. Raises
    :class:`click.UsageError` on an unknown codec or a missing/empty dataset directory, and
    :class:`click.ClickException` (writing nothing) when every measurement failed.
    """
    try:
        names = parse_codecs(codecs)
    except click.BadParameter as exc:
        raise click.UsageError(exc.format_message()) from exc
    if jobs < 1:
        raise click.UsageError("--jobs must be at least 1")
    dataset_name, sources = dataset_images(dataset, limit)

    available: list[Codec] = []
    skipped: dict[str, str] = {}
    for name in names:
        codec = get_codec(name, threads=threads)
        reason = codec.unavailable_reason()
        if reason is None:
            available.append(codec)
        else:
            skipped[name] = reason
            notice(f"skipping {name}: {reason}")
    if not available:
        raise click.UsageError("none of the requested codecs is available here")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kept = previous_records(out, reuse)
    for src in sources:
        stale = [c.name for c in available if (c.name, src.name) in kept]
        if stale:
            image = src.load()
            digest = pixel_digest(image)
            for name in stale:
                if _still_valid(kept[(name, src.name)], digest, image.size):
                    for r in kept[(name, src.name)]:
                        r["sha256"] = digest
                else:
                    notice(f"measuring {name} on {src.name} again: the stored measurement "
                           "was made on a different image")
                    del kept[(name, src.name)]
    if reuse and not kept:
        notice(f"nothing to reuse in {out / 'per-image.json'}: measuring every codec")
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results: list[dict[str, Any]] = [{"records": kept[(c.name, src.name)], "error": None}
                                     for src in sources for c in available
                                     if (c.name, src.name) in kept]
    tasks = [(src, codec.name) for src in sources for codec in available
             if (codec.name, src.name) not in kept]
    from tqdm import tqdm
    bar = tqdm(total=len(tasks), desc="benchmark", unit="task", disable=not progress or not tasks,
               file=sys.stderr)
    try:
        if jobs == 1:
            import torch  # MS-SSIM runs in torch: hold it to the same thread budget
            torch.set_num_threads(threads)
            for codec in available:  # reuse the already-loaded codec objects
                WORKER_CODECS[f"{codec.name}/{threads}"] = codec
            for src, name in tasks:
                bar.set_postfix_str(f"{name} {src.name}", refresh=False)
                results.append(_run_task(src, name, threads))
                bar.update()
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed
            ctx = multiprocessing.get_context("spawn")  # no fork of a threaded parent
            with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                                     initargs=(threads,)) as pool:
                futures = [pool.submit(_run_task, src, name, threads) for src, name in tasks]
                for fut in as_completed(futures):
                    results.append(fut.result())
                    bar.update()
    finally:
        bar.close()

    records = [r for res in results for r in res["records"]]
    for r in records:
        r.setdefault("measured", now)   # fresh measurements; reused ones keep theirs
        r.setdefault("jobs", jobs)
    order = {s.name: i for i, s in enumerate(sources)}
    records.sort(key=lambda r: (names.index(r["codec"]), order[r["image"]], str(r["quality"])))
    errors = [res["error"] for res in results if res["error"]]
    for err in errors:
        notice(f"error: {err}")

    entries = [aggregate(records, c) for c in available]
    entries = [e for e in entries if e["results"]["bpp"]]
    if errors and not entries:   # keep an earlier report in ``out`` rather than an empty one
        raise click.ClickException("nothing was measured (every codec failed, see the errors "
                                   "above); no files written")
    summary = summarize(entries)

    small = [r["image"] for r in records
             if min(r["width"], r["height"]) < metrics.MS_SSIM_MIN_SIDE]
    meta = {
        "dataset": dataset_name,
        "dataset_path": (str(Path(dataset).resolve()) if dataset is not None
                         else "scikit-image samples"),
        "num_images": len(sources),
        "images": [s.name for s in sources],
        "date": now,
        "measured": sorted({r["measured"] for r in records}),
        "machine": (f"{platform.machine()}, {os.cpu_count()} CPUs, "
                    f"Python {platform.python_version()}"),
        "threads": threads,
        "jobs": max((r["jobs"] for r in records), default=jobs),   # of the timings shown
        "msssim_note": (f"MS-SSIM is NaN for {len(set(small))} image(s) smaller than "
                        f"{metrics.MS_SSIM_MIN_SIDE} px on a side" if small else ""),
    }

    files = {
        "results": out / "results.json",
        "per_image_json": out / "per-image.json",
        "per_image_csv": out / "per-image.csv",
        "report": out / "report.md",
    }
    files["results"].write_text(json.dumps(_json_safe(entries), indent=2), encoding="utf-8")
    files["per_image_json"].write_text(
        json.dumps(_json_safe({"meta": meta, "records": records}), indent=2), encoding="utf-8")
    columns = ["image", "codec", "quality", "width", "height", "bytes", "bpp", "psnr-rgb",
               "ms-ssim-rgb", "encoding_time", "decoding_time"]
    with open(files["per_image_csv"], "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: r[k] for k in columns} for r in records)
    write_report(files["report"], meta, entries, summary, skipped, errors)
    plots = write_plots(entries, out, dataset_name)
    files["rd_psnr"], files["rd_msssim"] = plots

    return {
        "dataset": dataset_name,
        "images": meta["images"],
        "results": entries,
        "anchor": summary["anchor"],
        "bd": summary["bd"],
        "psnr_at_bpp": summary["psnr_at_bpp"],
        "head_to_head": summary["head_to_head"],
        "head_to_head_refined": summary["head_to_head_refined"],
        "skipped": skipped,
        "errors": errors,
        "files": {k: str(v) for k, v in files.items()},
    }
