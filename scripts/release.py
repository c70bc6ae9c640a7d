"""Turn a training checkpoint into a model release: ``make release CHECKPOINT=...``.

    python scripts/release.py runs/main/checkpoint.safetensors [--id 2027.01] [--data DIR]

Training is not releasing. This is the one way a model becomes a release (see the README,
"Releases", and :mod:`vaecodec.releases`):

1. export the checkpoint (fresh entropy tables; float transforms in float16 unless
   ``--float32``) into ``build/release/<ID>``, or repack an export folder unchanged;
2. score it against the newest release on the training folder's held-out validation split
   (``benchmarks/validation.py``) and refuse unless its BD-rate is at least ``--min-gain``
   percent better (1 % by policy); refuse a decoder over 12 MiB after the first release;
3. move it to ``weights/<ID>/`` with its ``release.json``, and drop the encoder files of the
   release it supersedes (its decoder stays forever);
4. write its conformance files, ``bitstream/conformance/<ID>/``;
5. bump the package version's minor number in ``pyproject.toml``.

Then commit ``weights/<ID>``, the conformance folder and ``pyproject.toml`` together, and rerun
the Kodak benchmark for the README.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vaecodec import releases, weights  # noqa: E402

MIN_GAIN = 1.0                      # percent of BD-rate on the validation split, by policy
MAX_DECODER_BYTES = 12 * 2**20      # a release's decoder files, after the first release


def next_id(existing: list[str], today: dt.date) -> str:
    """``YYYY.MM`` of ``today``, or ``YYYY.MM.N`` (N = 2, 3, ...) when that is taken."""
    base = f"{today.year}.{today.month:02d}"
    if base not in existing:
        return base
    n = 2
    while f"{base}.{n}" in existing:
        n += 1
    return f"{base}.{n}"


def bump_minor(version: str) -> str:
    """``"0.2.0"`` -> ``"0.3.0"``."""
    major, minor, *_ = version.split(".")
    return f"{major}.{int(minor) + 1}.0"


def set_version(pyproject: Path) -> tuple[str, str]:
    """Bump the minor version in ``pyproject``; returns (old, new)."""
    text = pyproject.read_text()
    match = re.search(r'^version = "([0-9]+\.[0-9]+\.[0-9]+)"$', text, re.M)
    if not match:
        raise SystemExit(f"no version line in {pyproject}")
    old = match.group(1)
    new = bump_minor(old)
    pyproject.write_text(text[:match.start(1)] + new + text[match.end(1):])
    return old, new


def stage(source: Path, out: Path, float_dtype: str) -> bytes:
    """Export ``source`` (a checkpoint file, or an export folder repacked unchanged) to
    ``out``; returns the fingerprint."""
    if out.exists():
        shutil.rmtree(out)
    if source.is_dir():
        return weights.repack(source, out)
    from vaecodec.model import MeanScaleHyperprior
    from vaecodec.train import checkpoint_config, load_checkpoint, saved_architecture
    model = MeanScaleHyperprior(**saved_architecture(checkpoint_config(source)))
    steps = load_checkpoint(source, model, averaged=True)   # the weight average, if any
    return weights.export(model, out, steps=steps, float_dtype=float_dtype)


def validation_gain(reference: Path, candidate: Path, data: str) -> float:
    """BD-rate (%) of ``candidate`` against ``reference`` on the held-out validation split of
    ``data``, printing both curves and the per-source lines."""
    spec = importlib.util.spec_from_file_location("validation", ROOT / "benchmarks" / "validation.py")
    validation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(validation)
    from vaecodec import metrics
    files, images = validation.validation_images(data)
    qs = list(range(1, 9))
    cache = ROOT / "build" / "validation-cache"
    cache.mkdir(parents=True, exist_ok=True)
    ref = validation.score(reference, images, qs, 0, cache)
    cand = validation.score(candidate, images, qs, 0, cache)
    print(validation.line(f"release {reference.name}", ref, ref, qs, True))
    print(validation.line("candidate", cand, ref, qs, False))
    for name, indices in validation.source_groups(files).items():
        print(validation.line(f"  {name} ({len(indices)} images)", validation.subset(cand, indices),
                              validation.subset(ref, indices), qs, False))
    return metrics.bd_rate(ref["bpp"], ref["psnr"], cand["bpp"], cand["psnr"])


def make_release(source: Path, *, base: Path, release_id: str | None = None, data: str | None = None,
                 min_gain: float = MIN_GAIN, float_dtype: str = "float16", today: dt.date | None = None,
                 pyproject: Path | None = None, conformance: bool = True,
                 staging: Path | None = None) -> releases.Release:
    """Make ``source`` the newest release under ``base`` (steps 1-5 of the module docstring);
    ``data=None`` skips the validation (only allowed for the first release). Returns it."""
    today = today or dt.date.today()
    shipped = releases.shipped(base)
    release_id = release_id or next_id([r.id for r in shipped], today)
    problem = releases.release_id_problem(release_id) or (
        f"release {release_id} exists" if any(r.id == release_id for r in shipped) else None)
    if problem or not release_id:
        raise SystemExit(f"cannot release: {problem or 'empty release ID'}")
    staging = staging or ROOT / "build" / "release" / release_id
    fp = stage(source, staging, float_dtype)
    if any(r.fingerprint == fp for r in shipped):
        raise SystemExit(f"cannot release: fingerprint {fp.hex()} is already a release")
    decoder = sum(f.stat().st_size for f in staging.glob("*.safetensors")
                  if f.name not in releases.ENCODER_FILES)
    if shipped:
        if decoder > MAX_DECODER_BYTES:
            raise SystemExit(f"cannot release: its decoder takes {decoder / 2**20:.1f} MiB, more than "
                             f"the {MAX_DECODER_BYTES / 2**20:.0f} MiB a release may (export in float16)")
        if data is None:
            raise SystemExit("cannot release: a release after the first must beat the newest on "
                             "the validation split (--data)")
        gain = validation_gain(shipped[-1].folder, staging, data)
        if not gain <= -min_gain:
            raise SystemExit(f"cannot release: BD-rate {gain:+.2f} % against release {shipped[-1].id} "
                             f"on the validation split; the policy asks for at most -{min_gain:g} %")
        print(f"BD-rate against release {shipped[-1].id}: {gain:+.2f} % (policy: at most -{min_gain:g} %)")
    folder = base / release_id
    shutil.move(str(staging), folder)
    pyproject = pyproject or ROOT / "pyproject.toml"
    old, new = set_version(pyproject)
    steps = int(weights._steps(weights._read(folder / weights.SYNTHESIS_FILE)[1], folder))
    release = releases.Release(
        id=release_id, number=shipped[-1].number + 1 if shipped else 1, fingerprint=fp, version=new,
        date=today.isoformat(), steps=steps, coding=max(releases.CODING_VERSIONS), folder=folder,
        files={f.name: f.stat().st_size for f in sorted(folder.glob("*.safetensors"))})
    releases.write(release)
    for previous in shipped:   # only the newest release keeps an encoder
        for f in releases.ENCODER_FILES:
            (previous.folder / f).unlink(missing_ok=True)
    if conformance:
        spec = importlib.util.spec_from_file_location("make_conformance",
                                                      ROOT / "bitstream" / "conformance" / "make.py")
        make = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(make)
        make.make_release(release_id)
    print(f"release {release_id}: fingerprint {fp.hex()}, step {steps}, {releases.describe_sizes(release)}; "
          f"vaecodec {old} -> {new}")
    return release


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Make a model release from a training checkpoint.")
    parser.add_argument("source", type=Path, help="checkpoint file (or an export folder, repacked as is)")
    parser.add_argument("--id", dest="release_id", help="release ID (default: YYYY.MM of today)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "train"),
                        help="training folder whose held-out validation split is scored")
    parser.add_argument("--min-gain", type=float, default=MIN_GAIN,
                        help="BD-rate gain (percent) required on the validation split")
    parser.add_argument("--float32", action="store_true",
                        help="store the float transforms in float32 (the first release did)")
    args = parser.parse_args(argv)
    if not args.source.exists():
        parser.error(f"{args.source} does not exist")
    base = ROOT / "weights"
    make_release(args.source, base=base, release_id=args.release_id,
                 data=args.data if releases.shipped(base) else None, min_gain=args.min_gain,
                 float_dtype="float32" if args.float32 else "float16")


if __name__ == "__main__":
    main()
