"""Write the conformance files of a model release (run once, when the release is made).

    python bitstream/conformance/make.py RELEASE_ID     # e.g. 2026.12; `make release` runs it
    python bitstream/conformance/make.py RELEASE_ID --add   # only the cases its folder lacks
    python bitstream/conformance/make.py --refused      # the files every decoder must refuse

Writes ``<RELEASE_ID>/<name>.vae``, the decoded reference ``<name>.png`` and
``<RELEASE_ID>/manifest.json`` holding, per file: the release and weights fingerprint it needs,
SHA-256 of its decoded latents (``z_hat`` as int64 then ``y_hat`` as float32, little-endian,
tile by tile; must match exactly on every machine) and SHA-256 of the decoded pixels (the
restored image's raw bytes; may differ by +-1 on other machines, see SPEC.md). Inputs are
deterministic crops of scikit-image's 'astronaut'.

A release's folder is frozen: it is written once and kept forever, and the test suite decodes
every file in every release folder, so no change to the package can stop a release's files
from decoding. ``make.py`` refuses to write into an existing release folder, except with
``--add``, which writes the cases added to :data:`CASES` since (such as a file of a newer
format version) and appends them to the manifest, never touching a file already there.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

CASES = [  # name, height, width, quality, mode
    ("rgb-64x64-q1", 64, 64, 1.0, "RGB"),
    ("grey-80x96-q4.5", 80, 96, 4.5, "L"),
    ("rgba-70x130-q8", 70, 130, 8.0, "RGBA"),
    ("rgb-300x5-q4", 300, 5, 4.0, "RGB"),   # thin: folded into 5 strips (format 3)
]


def source(height: int, width: int, mode: str) -> np.ndarray:
    from skimage import data
    rgb = data.astronaut()[100:100 + height, 150:150 + width].copy()
    if mode == "L":
        grey = rgb.mean(axis=2).round().astype(np.uint8)
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
    return rgb


def latent_sha256(data: bytes, model=None) -> str:
    from vaecodec.codec import latent_digest
    return latent_digest(data, model)


def decode_image(data: bytes, model=None):
    from vaecodec import codec, imageio
    d = codec.decompress_array(data, model=model)
    sections = {s.kind: s.data for s in d.sections}
    meta = imageio.ImageMeta(mode=d.header.mode, alpha=sections.get(2), icc_profile=sections.get(1))
    return imageio.to_image(d.rgb, meta)


def release_folders() -> list[Path]:
    """Every release's conformance folder (those with a manifest)."""
    return sorted(p.parent for p in HERE.glob("*/manifest.json"))


REFUSED = {  # file in refused/ -> the start of the message a decoder must give
    "newer-version.vae": "made by a newer vaecodec",
    "unreleased-weights.vae": "file was made with model weights that are no release",
    "unknown-release.vae": "file was made with model release 9999.99, which this vaecodec",
    "bad-checksum.vae": "file is corrupted or truncated",
    "bad-magic.vae": "not a vaecodec file",
}


def make_refused() -> None:
    """Files every decoder must refuse, independent of the releases."""
    from vaecodec import bitstream
    header = bitstream.Header(fingerprint=b"\x00" * 8, quality_milli=4000, height=16, width=16,
                              mode="RGB", tile_size=0, tile_overlap=0, latent_channels=192,
                              hyper_channels=128)
    tile = bitstream.TileStreams((4, 4), (1, 1), b"\x00" * 4, b"\x00" * 4, b"")
    good = bitstream.pack(bitstream.Container(header, (tile,)))
    unknown = bitstream.pack(bitstream.Container(
        bitstream.Header(**{**header.__dict__, "release": "9999.99"}), (tile,)))

    def with_crc(body: bytes) -> bytes:
        return body + struct.pack(">I", zlib.crc32(body))

    out = HERE / "refused"
    out.mkdir(exist_ok=True)
    body = bytearray(good[:-4])
    body[4] = bitstream.VERSION + 1
    (out / "newer-version.vae").write_bytes(with_crc(bytes(body)))
    (out / "unreleased-weights.vae").write_bytes(good)
    (out / "unknown-release.vae").write_bytes(unknown)
    bad = bytearray(good)
    bad[20] ^= 0x10
    (out / "bad-checksum.vae").write_bytes(bytes(bad))
    (out / "bad-magic.vae").write_bytes(with_crc(b"VAEX" + good[4:-4]))


def entry(name: str, data: bytes, image, quality: float, model=None) -> dict:
    """The manifest entry of the conformance file ``name`` holding ``data``, decoded to
    ``image``."""
    from vaecodec import bitstream
    header = bitstream.peek_header(data)
    return {"file": name, "release": header.release, "format": data[4],
            "fingerprint": header.fingerprint.hex(), "mode": image.mode, "width": header.width,
            "height": header.height, "quality": quality,
            "latents_sha256": latent_sha256(data, model),
            "pixels_sha256": hashlib.sha256(image.tobytes()).hexdigest()}


def make_release(release_id: str, out: Path | None = None, add: bool = False) -> Path:
    """Write the conformance files of the shipped release ``release_id`` (its encoder must be
    shipped) into ``out`` (default ``HERE/release_id``), which must not hold a manifest yet;
    with ``add``, only the cases its manifest lacks, appended to it (a file of such a case
    already there is refused, not overwritten)."""
    from vaecodec import bitstream, codec, imageio
    out = out or HERE / release_id
    manifest = []
    if (out / "manifest.json").exists():
        if not add:
            raise SystemExit(f"{out} holds a manifest: a release's conformance files are frozen "
                             "(--add writes only the cases it lacks)")
        manifest = json.loads((out / "manifest.json").read_text())
    done = {e["file"] for e in manifest}
    todo = [case for case in CASES if f"{case[0]}.vae" not in done]
    for name, *_ in todo:
        for suffix in (".vae", ".png"):
            if (out / f"{name}{suffix}").exists():
                raise SystemExit(f"{out / (name + suffix)} exists but is not in the manifest; not overwritten")
    model = codec.get_model(release=release_id)
    out.mkdir(parents=True, exist_ok=True)
    for name, h, w, q, mode in todo:
        rgb = source(h, w, mode)
        sections = []
        if mode == "RGBA":
            yy, xx = np.mgrid[0:h, 0:w]
            alpha = ((xx * 255) // max(1, w - 1)).astype(np.uint8)
            sections.append(bitstream.Section(2, imageio.encode_alpha(alpha)))
        data = codec.compress_array(rgb, q, mode=mode, sections=tuple(sections), model=model)
        (out / f"{name}.vae").write_bytes(data)
        image = decode_image(data)
        image.save(out / f"{name}.png")
        manifest.append({**entry(f"{name}.vae", data, image, q), "reference": f"{name}.png"})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _manifest(folder: Path) -> list:
    path = folder / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else []


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("release", nargs="?", help="release ID whose conformance files to write")
    parser.add_argument("--refused", action="store_true", help="write refused/ instead")
    parser.add_argument("--add", action="store_true",
                        help="write only the cases the release's folder lacks, adding them to its manifest")
    args = parser.parse_args(argv)
    if args.refused:
        make_refused()
        print(f"wrote {len(REFUSED)} files every decoder must refuse to {HERE / 'refused'}")
    elif args.release:
        before = len(_manifest(HERE / args.release))
        out = make_release(args.release, add=args.add)
        print(f"wrote {len(_manifest(out)) - before} conformance files for release {args.release} to {out}")
    else:
        parser.error("give a release ID or --refused")


if __name__ == "__main__":
    sys.exit(main())
