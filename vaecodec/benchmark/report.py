"""Reading the curves: Bjøntegaard deltas, PSNR at fixed rates, and the report and plots."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import metrics
from .codecs import REFINED

ANCHOR = "jpeg"  # BD metrics are relative to this codec
SUBJECT = "vaecodec"  # and the head-to-head table compares this one with each other codec
BPP_TARGETS = (0.25, 0.5, 1.0)  # rates (bpp) at which the report reads each curve's PSNR


def _msssim_db(values: Sequence[float]) -> list[float]:
    # NaN (or None, as results.json stores NaN) where MS-SSIM was undefined (tiny images)
    return [metrics.ms_ssim_db(v) if v is not None and v == v else float("nan") for v in values]


def summarize(entries: list[dict[str, Any]], anchor: str = ANCHOR) -> dict[str, Any]:
    """BD-rate (%) and BD-PSNR (dB) against ``anchor`` (PSNR-RGB; also BD-rate on MS-SSIM in dB)
    and PSNR (dB) at :data:`BPP_TARGETS` bpp for every codec's mean curve."""
    ref = next((e for e in entries if e["codec"] == anchor), None)
    bd: dict[str, dict[str, float]] = {}
    at: dict[str, dict[str, float]] = {}
    for e in entries:
        r = e["results"]
        at[e["codec"]] = {str(t): metrics.psnr_at_bpp(r["bpp"], r["psnr-rgb"], t)
                          for t in BPP_TARGETS}
        if ref is None:
            continue
        rr = ref["results"]
        bd[e["codec"]] = _bd(rr, r)
    return {"anchor": anchor if ref is not None else None, "bd": bd, "psnr_at_bpp": at,
            "head_to_head": head_to_head(entries),
            "head_to_head_refined": head_to_head(entries, REFINED)}


def head_to_head(entries: list[dict[str, Any]], subject: str = SUBJECT) -> dict[str, dict]:
    """BD-rate (%) and BD-PSNR (dB) of ``subject`` against every other codec directly, over the
    rate range the two curves share (PSNR-RGB; also BD-rate on MS-SSIM in dB). Anchored
    BD-rates (each codec vs JPEG, each over its own overlap with JPEG) cannot be subtracted to
    rank two codecs; these can.
    ``{}`` when ``subject`` was not run."""
    test = next((e["results"] for e in entries if e["codec"] == subject), None)
    if test is None:
        return {}
    return {e["codec"]: _bd(e["results"], test) for e in entries if e["codec"] != subject}


def _bd(ref: dict[str, Any], test: dict[str, Any]) -> dict[str, float]:
    """Bjøntegaard deltas of the ``test`` curve against the ``ref`` curve: BD-rate (%) and
    BD-PSNR (dB) on PSNR-RGB, and BD-rate (%) on MS-SSIM in dB (NaN when a curve has none)."""
    out = {"bd_rate_psnr_pct": metrics.bd_rate(ref["bpp"], ref["psnr-rgb"],
                                               test["bpp"], test["psnr-rgb"]),
           "bd_psnr_db": metrics.bd_psnr(ref["bpp"], ref["psnr-rgb"],
                                         test["bpp"], test["psnr-rgb"]),
           "bd_rate_msssim_pct": float("nan")}
    if "ms-ssim-rgb" in ref and "ms-ssim-rgb" in test:
        out["bd_rate_msssim_pct"] = metrics.bd_rate(ref["bpp"], _msssim_db(ref["ms-ssim-rgb"]),
                                                    test["bpp"], _msssim_db(test["ms-ssim-rgb"]))
    return out


def _json_safe(obj):
    """NaN/inf -> None so the JSON is standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def _fmt(value, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def write_plots(entries: list[dict[str, Any]], out: Path, dataset_name: str) -> list[Path]:
    """``rd-psnr.png`` (PSNR-RGB vs bpp) and ``rd-msssim.png`` (MS-SSIM in dB vs bpp)."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    paths = []
    max_bpp = max((max(e["results"]["bpp"]) for e in entries if e["results"]["bpp"]), default=1.0)
    xmax = min(max_bpp * 1.03, 3.0)
    for metric, fname, ylabel in (
            ("psnr-rgb", "rd-psnr.png", "PSNR-RGB [dB]"),
            ("ms-ssim-rgb", "rd-msssim.png", "MS-SSIM [dB]  (−10·log10(1 − MS-SSIM))")):
        fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
        ys_visible: list[float] = []
        for e in entries:
            x = np.asarray(e["results"]["bpp"], dtype=float)
            y = np.asarray(e["results"][metric], dtype=float)
            if metric == "ms-ssim-rgb":
                y = np.asarray(_msssim_db(list(y)), dtype=float)
            ok = np.isfinite(x) & np.isfinite(y)
            if not ok.any():
                continue
            ax.plot(x[ok], y[ok], marker="o", markersize=3, linewidth=1.5, label=e["name"])
            ys_visible += list(y[ok & (x <= xmax)])
        if ys_visible:
            lo, hi = min(ys_visible), max(ys_visible)
            pad = 0.04 * (hi - lo or 1.0)
            ax.set_ylim(lo - pad, hi + pad)
            ax.legend(loc="lower right")
        else:
            ax.text(0.5, 0.5, "no finite values\n(MS-SSIM needs images of at least 161×161 px)",
                    ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(0, xmax)
        ax.set_xlabel("bits per pixel [bpp]")
        ax.set_ylabel(ylabel)
        ax.set_title(f"Rate-distortion on {dataset_name}")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = out / fname
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(path: Path, meta: dict[str, Any], entries: list[dict[str, Any]],
                 summary: dict[str, Any], skipped: dict[str, str], errors: list[str]) -> None:
    """``report.md``: settings, BD tables against the anchor, PSNR at fixed rates, per-quality
    tables."""
    earlier = [m for m in meta.get("measured", []) if m != meta["date"]]
    lines = [f"# Rate-distortion benchmark: {meta['dataset']}", ""]
    lines += [f"- images: {meta['num_images']} ({meta['dataset_path']})",
              f"- date: {meta['date']}; machine: {meta['machine']}"
              + (f"; measurements reused from {', '.join(earlier)}" if earlier else ""),
              f"- threads per codec: {meta['threads']}; parallel jobs: {meta['jobs']}"
              + (" (times with several jobs share the CPU and are noisier)"
                 if meta["jobs"] > 1 else ""),
              "- bpp = 8·file bytes (headers included) / (H·W); PSNR-RGB over all RGB values "
              "(peak 255, capped at 100 dB); per-quality values are means over images; "
              "BD metrics use these mean curves (PCHIP interpolation).", ""]
    if meta.get("msssim_note"):
        lines += [f"- note: {meta['msssim_note']}", ""]
    lines += ["## Codecs", "", "| codec | library and settings |", "| --- | --- |"]
    lines += [f"| {e['name']} | {e['description']} |" for e in entries]
    lines += [f"| {name} | skipped: {reason} |" for name, reason in skipped.items()]
    lines.append("")
    anchor = summary["anchor"]
    if anchor:
        anchor_label = next(e["name"] for e in entries if e["codec"] == anchor)
        lines += [f"## Bjøntegaard deltas against {anchor_label}", "",
                  "Negative BD-rate = fewer bits than the anchor at equal quality; "
                  "positive BD-PSNR = higher PSNR at equal rate. `–` = the curves do not overlap.",
                  "", "| codec | BD-rate PSNR [%] | BD-PSNR [dB] | BD-rate MS-SSIM [%] |",
                  "| --- | ---: | ---: | ---: |"]
        for e in entries:
            b = summary["bd"][e["codec"]]
            lines.append(f"| {e['name']} | {_fmt(b['bd_rate_psnr_pct'], 1, True)} | "
                         f"{_fmt(b['bd_psnr_db'], 2, True)} | "
                         f"{_fmt(b['bd_rate_msssim_pct'], 1, True)} |")
        lines.append("")
    else:
        lines += [f"_No BD tables: the anchor codec ({ANCHOR}) was not run._", ""]
    for key, codec in (("head_to_head", SUBJECT), ("head_to_head_refined", REFINED)):
        if not summary.get(key):
            continue
        subject = next(e["name"] for e in entries if e["codec"] == codec)
        lines += [f"## {subject} head to head", "",
                  f"Bjøntegaard deltas of {subject} against each codec directly, over the rates "
                  f"the two curves share (negative BD-rate = {subject} needs fewer bits). The "
                  "anchored table above measures each codec against JPEG over its own overlap "
                  "with JPEG, so its rows cannot be subtracted to rank two codecs.", "",
                  f"| {subject} vs | BD-rate PSNR [%] | BD-PSNR [dB] | BD-rate MS-SSIM [%] |",
                  "| --- | ---: | ---: | ---: |"]
        for e in entries:
            b = summary[key].get(e["codec"])
            if b is not None:
                lines.append(f"| {e['name']} | {_fmt(b['bd_rate_psnr_pct'], 1, True)} | "
                             f"{_fmt(b['bd_psnr_db'], 2, True)} | "
                             f"{_fmt(b['bd_rate_msssim_pct'], 1, True)} |")
        lines.append("")
    targets = [str(t) for t in BPP_TARGETS]
    lines += ["## PSNR-RGB at fixed rates", "",
              "Interpolated on each mean curve; `–` = outside the codec's rate range.", "",
              "| codec | " + " | ".join(f"{t} bpp [dB]" for t in targets) + " |",
              "| --- |" + " ---: |" * len(targets)]
    for e in entries:
        at = summary["psnr_at_bpp"][e["codec"]]
        lines.append(f"| {e['name']} | " + " | ".join(_fmt(at[t]) for t in targets) + " |")
    lines.append("")
    lines += ["## Per-quality results", ""]
    for e in entries:
        r = e["results"]
        lines += [f"### {e['name']}", "",
                  "| quality | mean bytes | bpp | PSNR-RGB [dB] | MS-SSIM | encode [ms] | "
                  "decode [ms] |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for i, q in enumerate(e["qualities"]):
            lines.append(f"| {q} | {_fmt(e['mean_bytes'][i], 0)} | {_fmt(r['bpp'][i], 3)} | "
                         f"{_fmt(r['psnr-rgb'][i])} | {_fmt(r['ms-ssim-rgb'][i], 4)} | "
                         f"{_fmt(1000 * r['encoding_time'][i], 1)} | "
                         f"{_fmt(1000 * r['decoding_time'][i], 1)} |")
        lines.append("")
    if errors:
        lines += ["## Errors", ""] + [f"- {err}" for err in errors] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
