"""Regenerate the conformance files for the current weights (run after every weights export).

    python bitstream/conformance/make.py

Writes ``<name>.vae``, the decoded reference ``<name>.png`` and ``manifest.json`` holding, per
file: the weights fingerprint it needs, SHA-256 of its decoded latents (``z_hat`` as int64 then
``y_hat`` as float32, little-endian, tile by tile; must match exactly on every machine) and
SHA-256 of the decoded pixels (the restored image's raw bytes; may differ by +-1 on other
machines, see SPEC.md). Inputs are deterministic crops of scikit-image's 'astronaut'.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

CASES = [  # name, height, width, quality, mode
    ("rgb-64x64-q1", 64, 64, 1.0, "RGB"),
    ("grey-80x96-q4.5", 80, 96, 4.5, "L"),
    ("rgba-70x130-q8", 70, 130, 8.0, "RGBA"),
]


def source(height: int, width: int, mode: str) -> np.ndarray:
    from skimage import data
    rgb = data.astronaut()[100:100 + height, 150:150 + width].copy()
    if mode == "L":
        grey = rgb.mean(axis=2).round().astype(np.uint8)
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
    return rgb


def latent_sha256(model, data: bytes) -> str:
    from vaecodec.codec import latent_digest
    return latent_digest(data, model)


def decode_image(model, data: bytes):
    from vaecodec import codec, imageio
    d = codec.decompress_array(data, model=model)
    sections = {s.kind: s.data for s in d.sections}
    meta = imageio.ImageMeta(mode=d.header.mode, alpha=sections.get(2), icc_profile=sections.get(1))
    return imageio.to_image(d.rgb, meta)


REFUSED = {  # file in refused/ -> the start of the message a decoder must give
    "newer-version.vae": "made by a newer vaecodec",
    "foreign-weights.vae": "file was made with other model weights",
    "bad-checksum.vae": "file is corrupted or truncated",
    "bad-magic.vae": "not a vaecodec file",
}


def make_refused() -> None:
    """Files every decoder must refuse, independent of the weights."""
    import struct
    import zlib
    from vaecodec import bitstream
    header = bitstream.Header(fingerprint=b"\x00" * 8, quality_milli=4000, height=16, width=16,
                              mode="RGB", tile_size=0, tile_overlap=0, latent_channels=192,
                              hyper_channels=128)
    tile = bitstream.TileStreams((4, 4), (1, 1), b"\x00" * 4, b"\x00" * 4, b"")
    good = bitstream.pack(bitstream.Container(header, (tile,)))

    def with_crc(body: bytes) -> bytes:
        return body + struct.pack(">I", zlib.crc32(body))

    out = HERE / "refused"
    out.mkdir(exist_ok=True)
    body = bytearray(good[:-4])
    body[4] = bitstream.VERSION + 1
    (out / "newer-version.vae").write_bytes(with_crc(bytes(body)))
    (out / "foreign-weights.vae").write_bytes(good)
    bad = bytearray(good)
    bad[20] ^= 0x10
    (out / "bad-checksum.vae").write_bytes(bytes(bad))
    (out / "bad-magic.vae").write_bytes(with_crc(b"VAEX" + good[4:-4]))


def main() -> None:
    from vaecodec import bitstream, codec, imageio
    model = codec.get_model()
    for old in HERE.glob("*.vae"):
        old.unlink()
    for old in HERE.glob("*.png"):
        old.unlink()
    manifest = []
    for name, h, w, q, mode in CASES:
        rgb = source(h, w, mode)
        sections = []
        if mode == "RGBA":
            yy, xx = np.mgrid[0:h, 0:w]
            alpha = ((xx * 255) // max(1, w - 1)).astype(np.uint8)
            sections.append(bitstream.Section(2, imageio.encode_alpha(alpha)))
        data = codec.compress_array(rgb, q, mode=mode, sections=tuple(sections), model=model)
        (HERE / f"{name}.vae").write_bytes(data)
        image = decode_image(model, data)
        image.save(HERE / f"{name}.png")
        manifest.append({"file": f"{name}.vae", "reference": f"{name}.png",
                         "fingerprint": model.coding.fingerprint.hex(), "mode": image.mode,
                         "width": w, "height": h, "quality": q,
                         "latents_sha256": latent_sha256(model, data),
                         "pixels_sha256": hashlib.sha256(image.tobytes()).hexdigest()})
    make_refused()
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(manifest)} conformance files for weights {model.coding.fingerprint.hex()}")


if __name__ == "__main__":
    main()
