"""Trained weights on disk: export (with freshly built entropy tables) and loading.

Safetensors files (never pickle), each under 16 MiB; a folder of them is an *export*, and an
export with a ``release.json`` is a model release (:mod:`vaecodec.releases`):

- ``synthesis.safetensors``: the *decoder*: the synthesis transform ``g_s``, the gains, the
  probability tables of ``z`` (per channel, from the learned prior) and of ``y`` (per entry of
  the scale table).
- ``hyper.safetensors``: the rest of the decoder's core, the integer hyper-synthesis
  (:mod:`vaecodec.integer`); older exports kept it in ``synthesis.safetensors``.
- ``context.safetensors`` (models with channel slices only): the rest of the decoder, the
  integer channel-context networks and the float latent residual prediction networks.
- ``spatial.safetensors`` (models with a checkerboard context only): the integer checkerboard
  context networks.
- ``analysis.safetensors``: the analysis and hyper-analysis transforms (encoder only).
- ``training.safetensors``: the float entropy model that coding never runs (its exact integer
  versions are what the decoder uses): the float hyper-synthesis, channel and checkerboard
  context networks (float16) and the learned prior's parameters (float32, as the z tables are
  built from it). Encoder-side refinement (``--refine``) differentiates it, and with the files
  above it restores the full float model, so training can start from a release
  (``vaecodec train --init weights``). Exports in format 1 kept the float context networks in
  the decoder files; they are still read.

Format 2 stores tensors *packed* (lossless): each tensor's bytes, little-endian, are split into
byte planes (all first bytes, then all second bytes, ...) and deflated with zlib, held as a
``uint8`` tensor under the tensor's own name; the file's ``packed`` metadata (JSON) maps each
packed name to its dtype and shape. Integer networks shrink by ~35 %. ``float_dtype`` at export
stores the float transforms (``g_a``, ``h_a``, ``g_s``, LRP) in float16 instead of float32,
for releases whose decoder must fit 12 MiB; they are widened to float32 at load.

The SHA-256 over names, dtypes, shapes and bytes of every decoder tensor (as unpacked, without
the training-only ones) gives the 8-byte *fingerprint* written into every ``.vae`` file: it is
what defines decodability. Each file's metadata also holds the SHA-256 of all its own tensors as
stored (``sha256``), checked at load, so damage to any file (the encoder's too, which the
fingerprint does not cover) is refused instead of silently producing poor files. Tables are
rebuilt from the final parameters at every export and never recomputed at run time.
"""
from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .entropy import Tables, factorized_tables, gaussian_tables, scale_table
from .integer import (CONTEXT_FRAC, IntegerHyperSynthesis, IntegerNetwork, quantize_hyper_synthesis,
                      quantize_network)
from .coder import Coder
from .model import MeanScaleHyperprior

WEIGHTS_FORMAT = "vaecodec-weights-2"
READABLE_FORMATS = ("vaecodec-weights-1", WEIGHTS_FORMAT)
ANALYSIS_FILE, SYNTHESIS_FILE = "analysis.safetensors", "synthesis.safetensors"
TRAINING_FILE, CONTEXT_FILE = "training.safetensors", "context.safetensors"
SPATIAL_FILE, HYPER_FILE = "spatial.safetensors", "hyper.safetensors"
# decoder files besides synthesis, each with the prefix of its training-only float tensors
EXTRA_DECODER_FILES = ((CONTEXT_FILE, "context."), (SPATIAL_FILE, "spatial."))
MAX_FILE_BYTES = 16 * 2**20


# float parameters the decoder needs besides the exact integer networks and tables
SYNTHESIS_PREFIXES = ("g_s.", "log_gain", "log_inv_gain", "lambdas")   # in synthesis.safetensors
DECODER_PREFIXES = SYNTHESIS_PREFIXES + ("lrp.",)                     # lrp.*: context.safetensors
# the float entropy model that encoder-side refinement (vaecodec.refine) differentiates
REFINE_PREFIXES = ("h_s.", "prior.", "context.", "spatial.")
# float transforms that export's float_dtype applies to
TRANSFORM_PREFIXES = ("g_a.", "h_a.", "g_s.", "lrp.")
FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16}


class WeightsError(RuntimeError):
    """Weights missing, incomplete or from an incompatible version."""


def _digest(tensors: dict[str, torch.Tensor]) -> bytes:
    """SHA-256 over sorted names, dtypes, shapes and raw bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.digest()


def fingerprint(tensors: dict[str, torch.Tensor]) -> bytes:
    """First 8 bytes of SHA-256 over sorted names, dtypes, shapes and raw bytes."""
    return _digest(tensors)[:8]


def default_weights_dir() -> Path:
    """``$VAECODEC_WEIGHTS``, else the newest shipped release (:mod:`vaecodec.releases`)."""
    env = os.environ.get("VAECODEC_WEIGHTS")
    if env:
        return resolve(env)
    from . import releases
    try:
        return releases.newest().folder
    except releases.ReleaseError as exc:
        raise WeightsError(str(exc)) from None


def resolve(weights_dir: str | Path) -> Path:
    """The export folder ``weights_dir`` names: itself, or, for a folder of releases (such as
    the repository's ``weights/``), its newest release."""
    d = Path(weights_dir)
    if not (d / SYNTHESIS_FILE).exists() and d.is_dir():
        from . import releases
        found = releases.shipped(d)
        if found:
            return found[-1].folder
    return d


def _byte_planes(a: np.ndarray) -> bytes:
    """The little-endian bytes of ``a`` regrouped by significance: every element's first byte,
    then every second byte, ... (deflate finds the runs in the high bytes)."""
    a = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))
    return a.view(np.uint8).reshape(-1, a.dtype.itemsize).T.tobytes()


def pack_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """``tensors`` as format 2 stores them: each as a ``uint8`` tensor of its deflated byte
    planes. Returns the stored tensors and the ``packed`` metadata (JSON: name -> [dtype,
    shape])."""
    stored, info = {}, {}
    for name, t in tensors.items():
        # numpy has no bfloat16: its bits travel as int16
        a = (t.contiguous().view(torch.int16) if t.dtype == torch.bfloat16 else t.contiguous()).numpy()
        stored[name] = torch.frombuffer(bytearray(zlib.compress(_byte_planes(a), 9)), dtype=torch.uint8)
        info[name] = [str(t.dtype).removeprefix("torch."), list(t.shape)]
    return stored, json.dumps(info, sort_keys=True, separators=(",", ":"))


def unpack_tensors(stored: dict[str, torch.Tensor], packed: str) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_tensors`. Raises ``ValueError`` for malformed data."""
    info = json.loads(packed)
    out = dict(stored)
    for name, (dtype, shape) in info.items():
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype) or name not in stored:
            raise ValueError(f"packed tensor {name!r} of unknown dtype {dtype!r} or missing")
        bits = torch.int16 if torch_dtype == torch.bfloat16 else torch_dtype
        np_dtype = torch.empty((), dtype=bits).numpy().dtype.newbyteorder("<")
        planes = zlib.decompress(stored[name].numpy().tobytes())
        count = int(np.prod(shape, dtype=np.int64))
        if len(planes) != count * np_dtype.itemsize:
            raise ValueError(f"packed tensor {name!r} holds {len(planes)} bytes, not {count} values")
        raw = np.frombuffer(planes, np.uint8).reshape(np_dtype.itemsize, count).T.copy()
        out[name] = torch.from_numpy(raw.view(np_dtype).reshape(shape).astype(np_dtype.newbyteorder("="))).view(torch_dtype)
    return out


def _stored(prefix: str, quantized: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An integer network's tensors under ``prefix`` as stored: weights (``|w| <= 2**13``) in
    int16; :func:`load` widens them back to int64."""
    return {prefix + k: v.to(torch.int16) if k.endswith("weight") else v for k, v in quantized.items()}


def _training_only(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The float networks under ``prefix`` that coding never runs (their exact integer versions
    are what the decoder uses), stored as float16: relative error ~2e-4, negligible for
    continuing training, and half the bytes that every weights commit adds to the repository."""
    return {k: v.to(torch.float16).contiguous() for k, v in state.items() if k.startswith(prefix)}


@torch.no_grad()
def export(model: MeanScaleHyperprior, out_dir: str | Path, steps: int = 0,
           float_dtype: str = "float32") -> bytes:
    """Write the weight files for ``model`` into ``out_dir`` (all or none); returns the
    fingerprint.

    Builds the z tables from the prior's current parameters and the y tables from the scale
    table. ``float_dtype`` (``"float32"`` or ``"float16"``) is how the float transforms are
    stored. Raises :class:`WeightsError` if a table came out empty or a file exceeds 16 MiB.
    """
    if float_dtype not in FLOAT_DTYPES:
        raise WeightsError(f"float_dtype must be one of {', '.join(FLOAT_DTYPES)}, got {float_dtype!r}")
    transform_dtype = FLOAT_DTYPES[float_dtype]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.float().eval().cpu()
    state = {k: v.to(transform_dtype) if k.startswith(TRANSFORM_PREFIXES) else v
             for k, v in model.state_dict().items()}
    scales = scale_table()
    z_tables = factorized_tables(model.prior)
    y_tables = gaussian_tables(scales)
    for name, tab in (("z", z_tables), ("y", y_tables)):
        if len(tab["lengths"]) == 0 or tab["lengths"].min() < 2:
            raise WeightsError(f"refusing to export: empty {name} probability table")
    synthesis = {k: v.contiguous() for k, v in state.items() if k.startswith(SYNTHESIS_PREFIXES)}
    hyper = _stored("h_s_int.", quantize_hyper_synthesis(model.h_s, np.log(scales)))
    context = {k: v.contiguous() for k, v in state.items() if k.startswith("lrp.")}
    for i, net in enumerate(model.context):
        context.update(_stored(f"context_int.{i}.", quantize_network(net, frac_in=CONTEXT_FRAC)))
    spatial = {}
    for i, net in enumerate(model.spatial):
        spatial.update(_stored(f"spatial_int.{i}.", quantize_network(net, frac_in=CONTEXT_FRAC)))
    for name, tab in (("z", z_tables), ("y", y_tables)):
        for part, arr in tab.items():
            synthesis[f"tables.{name}.{part}"] = torch.from_numpy(
                arr.astype(np.int32 if part == "freqs" else np.int64))
    synthesis["scale_table"] = torch.from_numpy(scales)
    analysis = {k: v.contiguous() for k, v in state.items()
                if k.startswith("g_a.") or k.startswith("h_a.")}
    training = {k: v.contiguous() for k, v in state.items() if k.startswith("prior.")}
    training.update(_training_only(state, "h_s."))
    fp = fingerprint({**synthesis, **hyper, **context, **spatial})
    training.update(_training_only(state, "context."))
    training.update(_training_only(state, "spatial."))
    meta = {"format": WEIGHTS_FORMAT, "N": str(model.N), "M": str(model.M), "slices": str(model.slices),
            "checkerboard": str(int(model.checkerboard)), "blocks": str(model.blocks),
            "fingerprint": fp.hex(), "steps": str(steps)}
    files = [(SYNTHESIS_FILE, synthesis), (HYPER_FILE, hyper), (ANALYSIS_FILE, analysis),
             (TRAINING_FILE, training)]
    if model.slices > 1:
        files.append((CONTEXT_FILE, context))
    if model.checkerboard:
        files.append((SPATIAL_FILE, spatial))
    _write(out_dir, files, meta)
    return fp


def repack(src: str | Path, out_dir: str | Path) -> bytes:
    """Rewrite the export in ``src`` (any readable format) into ``out_dir`` in the current
    format, every tensor unchanged (so the fingerprint stays): training-only float networks
    move to the training file and tensors are stored packed. Returns the fingerprint; raises
    :class:`WeightsError` if ``src`` is unusable."""
    src, out_dir = resolve(src), Path(out_dir)
    load(src, refine=True)   # every file present, undamaged and of one export
    synthesis, meta = _read(src / SYNTHESIS_FILE)
    model = _model(meta, _lambdas(synthesis, src), src)
    names = [SYNTHESIS_FILE, HYPER_FILE, ANALYSIS_FILE, TRAINING_FILE] + [f for f, _ in _extra_decoder_files(model)]
    files = {f: _read(src / f)[0] for f in names if (src / f).exists()}
    for fname, prefix in EXTRA_DECODER_FILES:
        for k in [k for k in files.get(fname, {}) if k.startswith(prefix)]:
            files[TRAINING_FILE][k] = files[fname].pop(k)
    if HYPER_FILE not in files:   # format 1 exports before the hyper-synthesis had its own file
        files[HYPER_FILE] = {k: files[SYNTHESIS_FILE].pop(k) for k in list(files[SYNTHESIS_FILE])
                             if k.startswith("h_s_int.")}
    keep = ("N", "M", "slices", "checkerboard", "blocks", "fingerprint", "steps")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(out_dir, list(files.items()), {"format": WEIGHTS_FORMAT, **{k: meta[k] for k in keep if k in meta}})
    fp = load(out_dir, refine=True).fingerprint
    if fp.hex() != meta.get("fingerprint"):
        raise WeightsError(f"repacking {src} changed its fingerprint")
    return fp


def _write(out_dir: Path, files: list[tuple[str, dict[str, torch.Tensor]]], meta: dict[str, str]) -> None:
    """Write ``files`` (name, tensors) packed into ``out_dir`` with ``meta``, all or none, and
    remove decoder files of an earlier export that this one lacks."""
    written = []
    try:   # every file is written and checked before any replaces its predecessor
        for fname, tensors in files:
            tmp = out_dir / (fname + ".tmp")
            written.append(tmp)
            try:
                stored, packed = pack_tensors(tensors)
                save_file(stored, str(tmp), metadata={**meta, "packed": packed,
                                                      "sha256": _digest(stored).hex()})
                os.chmod(tmp, 0o644)
            except Exception as exc:   # safetensors' own error type for I/O failures, OSError
                raise WeightsError(f"cannot write {out_dir / fname}: {_reason(exc)}") from None
            if tmp.stat().st_size > MAX_FILE_BYTES:
                raise WeightsError(f"{fname} would exceed 16 MiB")
        for (fname, _), tmp in zip(files, written):
            try:
                os.replace(tmp, out_dir / fname)
            except OSError as exc:
                raise WeightsError(f"cannot write {out_dir / fname}: {exc.strerror or exc}") from None
    finally:
        for tmp in written:
            tmp.unlink(missing_ok=True)
    for fname in {CONTEXT_FILE, SPATIAL_FILE} - {f for f, _ in files}:
        (out_dir / fname).unlink(missing_ok=True)   # no file of an earlier export may linger


def _reason(exc: Exception) -> str:
    """The gist of a write error: the OS's words where there are some."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split("I/O error: ")[-1].split(" at path ")[0]


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.exists():
        raise WeightsError(f"model weights not found: {path} (train or install weights first)")
    if path.is_dir():
        raise WeightsError(f"{path} is a directory, not a weights file")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error type for damaged files
        raise WeightsError(f"cannot read weights file {path}: {exc}") from None
    if meta.get("format") not in READABLE_FORMATS:
        raise WeightsError(f"{path} is not a vaecodec weights file of a known format "
                           f"({', '.join(READABLE_FORMATS)})")
    if "sha256" in meta and _digest(tensors).hex() != meta["sha256"]:
        raise WeightsError(f"{path} is damaged (checksum mismatch)")
    if "packed" in meta:
        try:
            tensors = unpack_tensors(tensors, meta["packed"])
        except (ValueError, TypeError, zlib.error) as exc:
            raise WeightsError(f"{path} is damaged ({exc})") from None
    return tensors, meta


def _meta_int(meta: dict[str, str], key: str, default: int | None = None) -> int:
    """The non-negative integer stored under ``key`` in weights metadata, written by
    :func:`export` as plain ASCII digits; ``default`` when absent (``None``: required). Anything
    else (``" 1"``, ``"+1"``, ``"1.0"``, non-ASCII digits that Python's ``int()`` would accept)
    raises ``ValueError``, so only what export writes is read back."""
    if key not in meta:
        if default is None:
            raise ValueError(f"no {key!r}")
        return default
    value = meta[key]
    if not (value.isascii() and value.isdigit() and len(value) <= 18):
        raise ValueError(f"{key} {value!r} is not a non-negative integer")
    return int(value)


def _lambdas(synthesis: dict[str, torch.Tensor], d: Path) -> torch.Tensor:
    """The λ ladder that every synthesis file holds; :class:`WeightsError` when the file named
    synthesis.safetensors is another of the weights files."""
    if "lambdas" not in synthesis:
        raise WeightsError(f"{d / SYNTHESIS_FILE} is not a synthesis weights file (no lambdas)")
    return synthesis["lambdas"]


def _model(meta: dict[str, str], lambdas: torch.Tensor, d: Path) -> MeanScaleHyperprior:
    """An untrained model of the exported shape; exports from before channel slices have no
    ``slices`` and are the plain hyperprior, those from before the checkerboard context no
    ``checkerboard``, those from before residual blocks no ``blocks``. Raises
    :class:`WeightsError` on a bad shape."""
    try:
        checkerboard = _meta_int(meta, "checkerboard", 0)
        if checkerboard > 1:
            raise ValueError(f"checkerboard {checkerboard} is neither 0 nor 1")
        return MeanScaleHyperprior(_meta_int(meta, "N"), _meta_int(meta, "M"), lambdas=lambdas.tolist(),
                                   slices=_meta_int(meta, "slices", 1), checkerboard=bool(checkerboard),
                                   blocks=_meta_int(meta, "blocks", 0))
    except ValueError as exc:
        raise WeightsError(f"weights in {d} have an invalid shape ({exc})") from None


def _steps(meta: dict[str, str], d: Path) -> int:
    """The training steps an export records (0 if it records none); :class:`WeightsError` if
    the value is not what :func:`export` writes."""
    try:
        return _meta_int(meta, "steps", 0)
    except ValueError as exc:
        raise WeightsError(f"weights in {d} have invalid metadata ({exc})") from None


def _load_state(model: MeanScaleHyperprior, state: dict[str, torch.Tensor], d: Path):
    """``model.load_state_dict(state, strict=False)``; a tensor whose shape differs from the
    one the metadata's ``N``/``M``/``slices``/``blocks`` give, or a tensor the model has no
    place for, is a :class:`WeightsError`."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError:
        result = None
    if result is None or result.unexpected_keys:
        raise WeightsError(f"weights in {d} do not match the shape in their metadata (N {model.N}, "
                           f"M {model.M}, slices {model.slices}, blocks {model.blocks})") from None
    return result


def _read_of_export(d: Path, fname: str, meta: dict[str, str]) -> dict[str, torch.Tensor]:
    """The tensors of ``d/fname``, which must come from the export whose synthesis metadata is
    ``meta`` (same fingerprint); :class:`WeightsError` otherwise."""
    tensors, own = _read(d / fname)
    if own.get("fingerprint") != meta.get("fingerprint"):
        raise WeightsError(f"{d} holds {fname.split('.')[0]} and synthesis weights of different exports")
    return tensors


def _extra_decoder_files(model: MeanScaleHyperprior) -> list[tuple[str, str]]:
    """The decoder files besides synthesis that ``model``'s shape needs, with the prefix of
    their training-only tensors."""
    needed = {CONTEXT_FILE: model.slices > 1, SPATIAL_FILE: model.checkerboard}
    return [(f, prefix) for f, prefix in EXTRA_DECODER_FILES if needed[f]]


def load(weights_dir: str | Path | None = None, encoder: bool = True,
         refine: bool = False) -> Coder:
    """Load an export as a :class:`vaecodec.coder.Coder`, ready to ``compress``/``decompress``
    (its float transforms in the layout coding runs fastest, :func:`vaecodec.coder.coding_layout`).
    The first load in a process also sets glibc's allocator (:func:`vaecodec.hardware.tune_malloc`).

    ``encoder=False`` skips the analysis file (decoding needs only the synthesis file).
    ``refine=True`` (with ``encoder``) also loads the float entropy model that encoder-side
    refinement differentiates (:mod:`vaecodec.refine`): the float hyper-synthesis and prior
    from the training file, the float context networks from the decoder files.
    Raises :class:`WeightsError` when files are missing or inconsistent.
    """
    from .hardware import tune_malloc
    tune_malloc()   # once per process; glibc's default thresholds page-fault every large tensor
    d = resolve(weights_dir) if weights_dir else default_weights_dir()
    synthesis, meta = _read(d / SYNTHESIS_FILE)
    model = _model(meta, _lambdas(synthesis, d), d)
    extra = _extra_decoder_files(model)
    floats = {}   # the decoder files' float halves, kept for refine
    if "h_s_int.shift" not in synthesis:   # the hyper-synthesis in a file of its own
        extra.insert(0, (HYPER_FILE, None))
    for fname, training_only in extra:   # decoder halves; the float halves are for training
        tensors = _read_of_export(d, fname, meta)
        synthesis = {**synthesis, **{k: v for k, v in tensors.items()
                                     if not (training_only and k.startswith(training_only))}}
        if training_only:
            floats.update((k, v) for k, v in tensors.items() if k.startswith(training_only))
    fp = fingerprint(synthesis)
    if fp.hex() != meta.get("fingerprint"):
        damaged = " or ".join([SYNTHESIS_FILE, *(f for f, _ in extra)])
        raise WeightsError(f"weights in {d}: {damaged} is damaged (fingerprint mismatch)")
    state = {k: v for k, v in synthesis.items() if k.startswith(DECODER_PREFIXES)}
    if encoder:
        state.update(_read_of_export(d, ANALYSIS_FILE, meta))
    if encoder and refine:
        state.update(floats)
        state.update(_read_of_export(d, TRAINING_FILE, meta))
    needed = DECODER_PREFIXES + (("g_a.", "h_a.") if encoder else ()) \
        + (REFINE_PREFIXES if encoder and refine else ())
    missing = [k for k in _load_state(model, state, d).missing_keys if k.startswith(needed)]
    if missing:
        raise WeightsError(f"weights in {d} are incomplete (missing {missing[0]})")

    def integer(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v.to(torch.int64) if v.dtype == torch.int16 else v
                for k, v in synthesis.items() if k.startswith(prefix)}

    try:
        h_s = IntegerHyperSynthesis(integer("h_s_int."))
        context = [IntegerNetwork(integer(f"context_int.{i}.")) for i in range(model.slices - 1)]
        spatial = [IntegerNetwork(integer(f"spatial_int.{i}.")) for i in range(len(model.spatial))]
    except KeyError as exc:
        raise WeightsError(f"weights in {d} are incomplete (missing {exc})") from None

    def tables(name: str) -> Tables:
        return Tables(*(synthesis[f"tables.{name}.{p}"].numpy() for p in ("freqs", "lengths", "offsets")))

    return Coder(model.eval(), h_s, context, tables("z"), tables("y"), fp, spatial,
                 release=_release_id(d, fp), steps=_steps(meta, d), can_refine=encoder and refine)


def _release_id(d: Path, fp: bytes) -> str:
    """The release ID of the export in ``d`` (``""`` when it is no release); a release
    description that does not match the weights is a :class:`WeightsError`."""
    from . import releases
    try:
        release = releases.read(d)
    except releases.ReleaseError as exc:
        raise WeightsError(str(exc)) from None
    if release is None:
        return ""
    if release.fingerprint != fp:
        raise WeightsError(f"weights in {d} do not match its release description "
                           f"(fingerprint {fp.hex()}, release {release.id} has {release.fingerprint.hex()})")
    if release.coding not in releases.CODING_VERSIONS:
        raise WeightsError(f"release {release.id} needs entropy coding version {release.coding}, "
                           "which this vaecodec does not implement; upgrade vaecodec")
    return release.id


def load_float_model(weights_dir: str | Path) -> tuple[MeanScaleHyperprior, int]:
    """The full float model (all trainable parameters) from an export, and its step count.

    Used to continue training from published weights. Raises :class:`WeightsError`.
    """
    d = resolve(weights_dir)
    state, metas = {}, []
    for fname in (SYNTHESIS_FILE, ANALYSIS_FILE, TRAINING_FILE):
        tensors, meta = _read(d / fname)
        state.update(tensors)
        metas.append(meta)
    meta = metas[0]   # the shape the decoder reads, from synthesis.safetensors
    if any(m.get("fingerprint") != meta.get("fingerprint") for m in metas):
        raise WeightsError(f"{d} holds weights files of different exports")
    model = _model(meta, _lambdas(state, d), d)
    for fname, _ in _extra_decoder_files(model):
        state.update(_read(d / fname)[0])
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise WeightsError(f"weights in {d} cannot restore the float model (missing {missing[0]})")
    trainable = tuple(f"{name}." for name, _ in model.named_children()) + ("log_gain", "log_inv_gain")
    _load_state(model, {k: v for k, v in state.items() if k in own or k.startswith(trainable)}, d)
    return model, _steps(meta, d)
