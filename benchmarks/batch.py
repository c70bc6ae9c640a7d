"""Many files: a per-file command-line loop against one batch call (benchmarks/batch.md).

    python benchmarks/batch.py [--dataset ../shared/data/kodak] [--limit N] [--no-decompress]

For every image of the dataset (Kodak's 24 by default) it times, as wall-clock seconds of real
processes started the way a shell starts them:

- the loop: one ``vaecodec compress IMAGE OUT.vae`` process per image (Python start-up, torch
  import and model loading paid for every file);
- one batch call: ``vaecodec compress IMAGES... --out-dir DIR`` (paid once), with torch's
  default threads (one per core), with ``--threads 1``, and with ``--jobs 2 --threads 1``
  (two worker processes of one thread);

then the same for ``decompress``, and prints a Markdown table of seconds and images per
second, with the date, the CPU, its core count and the load average before the run (on a
shared machine the load changes the numbers). It also says whether the loop and the batch
call wrote the same bytes. Scratch files go to a temporary folder.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from vaecodec.hardware import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KODAK = ROOT.parent / "shared" / "data" / "kodak"


def vaecodec(*args: str) -> float:
    """Run ``python -m vaecodec ARGS`` (this checkout's package); its wall-clock seconds.
    Raises ``CalledProcessError`` (with its stderr) if it fails."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONSAFEPATH="1")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vaecodec", *args], check=True, env=env, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def measure(command: str, inputs: list[Path], suffix: str, tmp: Path, rows: list, same: dict) -> list[Path]:
    """Time ``command`` on ``inputs`` four ways (a process per file, one batch call, with
    --threads 1, with --jobs 2 --threads 1), appending ``(command, how, seconds)`` to ``rows``
    and to ``same[command]`` whether the batch and --jobs 2 outputs equal the loop's. Returns
    the loop's outputs, sorted."""
    loop, one, two = tmp / "loop", tmp / "batch", tmp / "jobs2"
    loop.mkdir(parents=True)
    what = "image" if command == "compress" else "file"
    seconds = sum(vaecodec(command, str(f), str(loop / f"{f.stem}{suffix}")) for f in inputs)
    rows.append((command, f"loop: one process per {what}", seconds))
    rows.append((command, "batch: one call, --out-dir",
                 vaecodec(command, *map(str, inputs), "--out-dir", str(one))))
    rows.append((command, "batch: --threads 1",
                 vaecodec(command, *map(str, inputs), "--out-dir", str(tmp / "t1"), "--threads", "1")))
    rows.append((command, "batch: --jobs 2 --threads 1",
                 vaecodec(command, *map(str, inputs), "--out-dir", str(two), "--jobs", "2",
                          "--threads", "1")))
    same[command] = (same_files(loop, one), same_files(loop, two))
    return sorted(one.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=KODAK)
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--no-decompress", action="store_true", help="time compress only")
    args = parser.parse_args()
    images = sorted(p for p in args.dataset.iterdir() if p.suffix.lower() == ".png")[:args.limit]
    if not images:
        sys.exit(f"no .png images in {args.dataset}")
    n = len(images)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows, same = [], {}
    with tempfile.TemporaryDirectory(prefix="vaecodec-batch-") as tmp:
        tmp = Path(tmp)
        vae = measure("compress", images, ".vae", tmp / "c", rows, same)
        if not args.no_decompress:
            measure("decompress", vae, ".png", tmp / "d", rows, same)
    print(f"{n} images of {args.dataset.name}, {date}, {cpu_name()}, {os.cpu_count()} cores, "
          f"load average {load:.2f} before the run, Python {platform.python_version()}"
          + (f", GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']}" if "GLIBC_TUNABLES" in os.environ else ""))
    print()
    print("| command | how | seconds | images/s |")
    print("|---|---|---:|---:|")
    for command, how, s in rows:
        print(f"| {command} | {how} | {s:.1f} | {n / s:.2f} |")
    print()
    for command, (batch_same, jobs_same) in same.items():
        print(f"{command}: batch output {'identical to' if batch_same else 'DIFFERS from'} the loop's, "
              f"--jobs 2 output {'identical' if jobs_same else 'differs'}")


if __name__ == "__main__":
    main()
