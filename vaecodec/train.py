"""Training loop: rate + λ·distortion with variable-rate gain units, resumable, time-boxed.

Loss per sample (Ballé et al. 2018; Cui et al. 2021 for the per-level λ):
``bpp(y~, z~) + λ_q · 255² · MSE(x, x_hat)`` where ``bpp = -log2 p / (H·W)`` of the noisy
latents and ``q`` is a quality level drawn uniformly per sample.

Runs on CPU (bf16 autocast where the CPU computes bf16 natively), CUDA, or several processes
under ``torchrun`` (DDP, gloo on CPU, NCCL on CUDA). Checkpoints are safetensors files holding
the model, the Adam state and the step counter; ``--resume`` continues from the newest one.
"""
from __future__ import annotations

import itertools
import json
import math
import numbers
import os
import random
import re
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from safetensors.torch import load_file, save_file

from .entropy import bits
from .hardware import native_bf16
from .model import MAX_BLOCKS, SLICES, STRIDE, MeanScaleHyperprior, check_lambdas, gain_shift

PRECISIONS = ("auto", "bf16", "fp32")   # see resolve_precision
AVERAGE = 0.999   # default decay of the weight average (WeightAverage)
SAMPLINGS = ("area", "image")            # see sampling_weights
MAX_NONFINITE_STEPS = 20   # consecutive skipped (non-finite) steps that stop a run as diverged
RESIDUAL_BLOCK = re.compile(r"g_[as]\.res\d+_\d+\.")   # parameters of transforms' residual blocks
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


def _one_of(choices: tuple[str, ...]) -> str:
    """``("a", "b", "c")`` -> ``"a, b or c"``, for error messages that name the valid choices."""
    return f"{', '.join(choices[:-1])} or {choices[-1]}"


class TrainingError(ValueError):
    """A training run that cannot start as asked (no usable images, a checkpoint of another
    shape); the message is for the user."""


@dataclass
class TrainConfig:
    """Options of ``vaecodec train`` (see ``vaecodec train --help``)."""
    data: str
    out: str = "runs/train"
    N: int = 128
    M: int = 192
    slices: int = SLICES             # channel slices of y (1: no channel context)
    checkerboard: bool = True        # checkerboard spatial context within each slice
    blocks: int = 2                  # residual bottleneck blocks per transform stage (ELIC)
    crop: int = 256
    batch: int = 8
    lr: float = 5e-4
    warmup: int = 200
    minutes: float = 60.0
    max_steps: int = 0
    decay_fraction: float = 0.15
    precision: str = "auto"          # "auto", "bf16" or "fp32"; see resolve_precision
    device: str = "cpu"
    seed: int = 0
    checkpoint_minutes: float = 5.0
    val_every: int = 500
    resume: bool = False
    init: str = ""
    threads: int = 0
    lambdas: tuple[float, ...] = ()   # empty: the checkpoint's ladder, else model.LAMBDAS
    channels_last: bool = True       # NHWC tensors: 1.7-1.8x faster bf16 steps (train-speed.md)
    average: float | None = None     # decay of the weight average exported (0: none; None: a
                                     # resumed checkpoint's, else AVERAGE); see WeightAverage
    schedule: tuple[int, ...] = ()   # (start, end) global steps of one long decay; see learning_rate
    sampling: str = "area"           # crops' images: "area" (per pixel) or "image"; sampling_weights

    def __post_init__(self):
        """Refuse a value the loop cannot use, with a one-line ``ValueError`` naming the field
        (the CLI checks the same ranges while parsing; this guards the Python API)."""
        def number(value) -> bool:
            return isinstance(value, numbers.Real) and not isinstance(value, bool)

        def integer(value) -> bool:
            return isinstance(value, numbers.Integral) and not isinstance(value, bool)

        def finite_positive(name):
            value = getattr(self, name)
            if not (number(value) and math.isfinite(value) and value > 0):
                raise ValueError(f"TrainConfig.{name} must be a finite number > 0, got {value!r}")

        for name in ("lr", "minutes", "checkpoint_minutes"):
            finite_positive(name)
        for name, least in (("N", 1), ("M", 1), ("slices", 1), ("batch", 1), ("val_every", 1),
                            ("warmup", 0), ("max_steps", 0), ("threads", 0), ("seed", 0),
                            ("blocks", 0)):
            value = getattr(self, name)
            if not integer(value) or value < least:
                raise ValueError(f"TrainConfig.{name} must be an integer >= {least}, got {value!r}")
        if self.blocks > MAX_BLOCKS:
            raise ValueError(f"TrainConfig.blocks must be at most {MAX_BLOCKS}, got {self.blocks!r}")
        if not isinstance(self.checkerboard, bool):
            raise ValueError(f"TrainConfig.checkerboard must be True or False, got {self.checkerboard!r}")
        if self.M % self.slices:
            raise ValueError(f"TrainConfig.M ({self.M}) must be a multiple of slices ({self.slices})")
        if not integer(self.crop) or self.crop < STRIDE or self.crop % STRIDE:
            raise ValueError(f"TrainConfig.crop must be a positive multiple of {STRIDE}, "
                             f"got {self.crop!r}")
        if not (number(self.decay_fraction) and 0 <= self.decay_fraction <= 1):
            raise ValueError(f"TrainConfig.decay_fraction must be in [0, 1], got {self.decay_fraction!r}")
        if self.average is not None and not (number(self.average) and 0 <= self.average < 1):
            raise ValueError(f"TrainConfig.average must be in [0, 1), got {self.average!r}")
        schedule = tuple(self.schedule)
        if schedule and not (len(schedule) == 2 and all(integer(v) and v >= 0 for v in schedule)
                             and schedule[0] < schedule[1]):
            raise ValueError(f"TrainConfig.schedule must be two steps START < END, got {self.schedule!r}")
        self.schedule = schedule
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"TrainConfig.sampling must be {_one_of(SAMPLINGS)}, got {self.sampling!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be {_one_of(PRECISIONS)}, got {self.precision!r}")
        for name in ("data", "out", "device"):
            value = getattr(self, name)
            if not isinstance(value, (str, os.PathLike)) or not str(value):
                raise ValueError(f"TrainConfig.{name} must be a non-empty path or name, got {value!r}")
        if not isinstance(self.init, (str, os.PathLike)):
            raise ValueError(f"TrainConfig.init must be a path ('' for none), got {self.init!r}")
        for name in ("resume", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TrainConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.lambdas:
            self.lambdas = check_lambdas(self.lambdas)


# ------------------------------------------------------------------------------------- data
def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted. Raises ``FileNotFoundError`` if none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"training folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images in {folder}")
    return files


def split_validation(files: list[Path], every: int = 40) -> tuple[list[Path], list[Path]]:
    """Deterministic train/validation split of the training folder (every 40th file, sorted)."""
    val = files[::every]
    train = [f for i, f in enumerate(files) if i % every]
    return train, val


def load_uint8(files: list[Path], min_side: int) -> list[torch.Tensor]:
    """Decode images once to ``(3, H, W)`` uint8 tensors; images smaller than ``min_side`` skipped."""
    images = []
    for f in files:
        with Image.open(f) as im:
            arr = np.asarray(im.convert("RGB"))
        if min(arr.shape[:2]) >= min_side:
            images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous())
    return images


def sampling_weights(images: list[torch.Tensor], sampling: str = "area") -> list[float] | None:
    """Cumulative weights with which :func:`random_batch` picks each crop's image.

    ``"area"``: in proportion to the image's pixel count ``H·W``, so every training pixel is
    about equally likely to be seen whatever the size of its image; ``"image"``: every image
    equally often (returns ``None``). Uniform per image over-weights small images: in
    ``../shared/data/train`` the 500 BSDS500 JPEGs (481×321, 4:2:0 chroma) would make 74 % of
    the crops for 54 % of the pixels, and their half-resolution chroma teaches the model that
    colour detail is rare. Raises ``ValueError`` for another ``sampling``.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be {_one_of(SAMPLINGS)}, got {sampling!r}")
    if sampling == "image":
        return None
    return list(itertools.accumulate(float(im.shape[1] * im.shape[2]) for im in images))


def random_batch(images: list[torch.Tensor], batch: int, crop: int, rng: random.Random,
                 cum_weights: list[float] | None = None) -> torch.Tensor:
    """Random crops with random horizontal/vertical flips, ``(batch, 3, crop, crop)`` in [0, 1],
    on the device the images are on. Each crop's image is drawn with ``cum_weights``
    (:func:`sampling_weights`; ``None``: uniformly)."""
    out = torch.empty(batch, 3, crop, crop, dtype=torch.uint8, device=images[0].device)
    for i in range(batch):
        if cum_weights is None:
            im = images[rng.randrange(len(images))]
        else:
            im = rng.choices(images, cum_weights=cum_weights)[0]
        top = rng.randrange(im.shape[1] - crop + 1)
        left = rng.randrange(im.shape[2] - crop + 1)
        c = im[:, top:top + crop, left:left + crop]
        if rng.random() < 0.5:
            c = c.flip(2)
        if rng.random() < 0.5:
            c = c.flip(1)
        out[i] = c
    return out.float().div_(255.0)


# -------------------------------------------------------------------------------- precision
def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """The precision to train in, and a one-line reason to show the user.

    ``"auto"`` picks bf16 autocast where :func:`native_bf16` holds and fp32 elsewhere; ``"bf16"``
    and ``"fp32"`` are kept as asked (bf16 without native support comes with a warning).
    Raises ``ValueError`` for any other value.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be {_one_of(PRECISIONS)}, got {precision!r}")
    native = native_bf16(device)
    if precision == "auto":
        return ("bf16", "auto: native bf16 on this device") if native else \
               ("fp32", "auto: this device has no native bf16")
    if precision == "bf16" and not native:
        return "bf16", ("warning: this device has no native bf16; bf16 autocast runs on slow "
                        "reference kernels (use --precision fp32 or auto)")
    return precision, "as asked"


# ------------------------------------------------------------------------------------- loss
def rd_loss(model: MeanScaleHyperprior, x: torch.Tensor, level: torch.Tensor, autocast) -> dict:
    """Mean over the batch of ``bpp + λ·255²·MSE``; also returns bpp, MSE and PSNR (dB)."""
    with autocast:
        out = model(x, level)
    pixels = x.shape[2] * x.shape[3]
    y_bits = -torch.log2(out.y_likelihoods).flatten(1).sum(1)
    z_bits = -torch.log2(out.z_likelihoods).flatten(1).sum(1)
    bpp = (y_bits + z_bits) / pixels
    mse = (out.x_hat.float() - x).pow(2).flatten(1).mean(1)
    lmbda = model_lambdas(model)[level]
    loss = (bpp + lmbda * 255.0**2 * mse).mean()
    psnr = (10 * torch.log10(1.0 / mse.detach().clamp_min(1e-10))).mean()
    return {"loss": loss, "bpp": bpp.mean().detach(), "mse": mse.mean().detach(), "psnr": psnr}


def model_lambdas(model) -> torch.Tensor:
    return (model.module if hasattr(model, "module") else model).lambdas


@torch.no_grad()
def validate(model: MeanScaleHyperprior, images: list[torch.Tensor], crop: int = 256) -> dict:
    """Rate (bpp of the rounded latents under the entropy model) and PSNR on centre crops.

    Evaluated at qualities 1, 4 and 8 with deterministic rounding, as the coder would see them.
    """
    model.eval()
    device = next(model.parameters()).device
    results = {}
    for q in (1, 4, 8):
        gain, inv_gain = model.gains(q)
        bpps, psnrs = [], []
        for im in images:
            t, l = (im.shape[1] - crop) // 2, (im.shape[2] - crop) // 2
            x = im[None, :, t:t + crop, l:l + crop].to(device).float() / 255.0
            y = model.g_a(x) * gain[:, None, None]
            z_hat = torch.round(model.h_a(y))
            y_hat, y_likelihoods = model.latents(y, model.h_s(z_hat), noisy=False)
            rate = bits(y_likelihoods) + bits(model.prior.likelihood(z_hat))
            x_hat = model.g_s(y_hat * inv_gain[:, None, None]).clamp(0, 1)
            mse = torch.mean((torch.round(x_hat * 255) / 255 - x) ** 2)
            bpps.append(float(rate) / crop**2)
            psnrs.append(float(10 * torch.log10(1 / mse)))
        results[f"q{q}"] = {"bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs))}
    model.train()
    return results


# ---------------------------------------------------------------------------- weight average
class WeightAverage:
    """Exponential moving average of the parameters, kept beside the trained ones and exported
    instead of them (Polyak & Juditsky 1992; as ``tf.train.ExponentialMovingAverage``).

    After ``n`` updates the decay is ``min(decay, (1 + n) / (10 + n))``, so an average started
    from loaded weights follows the run within a few hundred steps. ``decay`` 0.999 averages over
    about the last 1,000 steps. Saved in checkpoints as ``average.<parameter>`` tensors with the
    update count in the metadata; ``--resume`` continues it, ``--init`` starts a new one.
    """

    def __init__(self, model: torch.nn.Module, decay: float, updates: int = 0):
        self.decay, self.updates = decay, updates
        self.names = [name for name, _ in model.named_parameters()]
        self.params = [p for _, p in model.named_parameters()]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current parameters (call after each optimiser step)."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - decay)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The average as checkpoint entries ``average.<parameter name>``."""
        return {f"average.{n}": s.detach().cpu().contiguous() for n, s in zip(self.names, self.shadow)}

    def restore(self, tensors: dict[str, torch.Tensor], updates: int) -> bool:
        """Take the average from checkpoint ``tensors``; False (and unchanged) when it has none."""
        if not all(f"average.{n}" in tensors for n in self.names):
            return False
        with torch.no_grad():
            for n, s in zip(self.names, self.shadow):
                s.copy_(tensors[f"average.{n}"])
        self.updates = updates
        return True

    @torch.no_grad()
    def follow_ladder(self, old, new) -> None:
        """Move the averaged gains as :meth:`MeanScaleHyperprior.set_lambdas` moved the trained
        ones (by :func:`vaecodec.model.gain_shift`) for a λ ladder changed from ``old`` to
        ``new`` (each ``num_qualities`` floats), so the average exports gains of the new ladder
        from the first step."""
        shadow = dict(zip(self.names, self.shadow))
        shift = gain_shift(old, new).to(shadow["log_gain"].device)[:, None]
        shadow["log_gain"].add_(shift)
        shadow["log_inv_gain"].sub_(shift)


# ------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path: Path, model, optimizer, step: int, config: TrainConfig, extra: dict,
                    average: WeightAverage | None = None) -> None:
    """Model, Adam moments, the weight average (if any) and step in one safetensors file,
    written atomically."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if average is not None:
        tensors.update(average.tensors())
        extra = {**extra, "average_updates": average.updates, "average_decay": average.decay}
    for i, p in enumerate(optimizer.param_groups[0]["params"]):
        state = optimizer.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"adam.{i}.{key}"] = state[key].detach().cpu().contiguous()
    meta = {"step": str(step), "config": json.dumps(asdict(config)), "extra": json.dumps(extra)}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_state(model, state: dict, new_slices_ok: bool = False) -> None:
    """Load ``state`` into ``model``. With ``new_slices_ok``, channel-context, LRP and
    checkerboard networks and residual blocks of the transforms that ``state`` lacks (a model
    trained without them) keep their initialisation, which leaves the model's function
    unchanged (their last layers are zero); every other parameter must be present. Raises
    ``RuntimeError`` on a mismatch."""
    if new_slices_ok:
        fresh = {k: v for k, v in model.state_dict().items()
                 if k.startswith(("context.", "lrp.", "spatial.")) or RESIDUAL_BLOCK.match(k)}
        state = {**fresh, **state}
    model.load_state_dict(state)


def save_training_state(checkpoint: Path, path: Path) -> int:
    """Write the compact training state of ``checkpoint`` to ``path``: one safetensors file
    holding the model (no Adam moments) with its float tensors in bfloat16, packed
    (:func:`vaecodec.weights.pack_tensors`), ~15 MiB for the shipped architecture instead of
    ~110 MiB; ``--init`` and ``--resume`` read it like a checkpoint (a fresh optimiser). It is
    what the repository keeps of training between releases. Returns the step; raises
    :class:`TrainingError` for an unusable checkpoint or a state over 16 MiB."""
    from .weights import MAX_FILE_BYTES, pack_tensors
    meta = checkpoint_metadata(checkpoint)
    try:
        tensors = {k: v.to(torch.bfloat16) if v.dtype == torch.float32 else v
                   for k, v in load_file(str(checkpoint)).items() if k.startswith("model.")}
    except Exception as exc:   # safetensors' own error type
        raise TrainingError(f"{checkpoint} is damaged ({str(exc).splitlines()[0][:120]})") from None
    stored, packed = pack_tensors(tensors)
    tmp = path.with_name(path.name + ".tmp")
    save_file(stored, str(tmp), metadata={"step": meta["step"], "config": meta.get("config", "{}"),
                                          "packed": packed})
    if tmp.stat().st_size > MAX_FILE_BYTES:
        tmp.unlink()
        raise TrainingError(f"the training state of {checkpoint} would exceed 16 MiB")
    os.replace(tmp, path)
    return int(meta["step"])


def load_checkpoint(path: Path, model, optimizer=None, new_slices_ok: bool = False,
                    averaged: bool = False) -> int:
    """Restore from :func:`save_checkpoint` (or a compact state of :func:`save_training_state`);
    returns the step. Adam state only if ``optimizer`` is given. ``averaged``: load the weight
    average (:class:`WeightAverage`) into ``model`` instead of the trained parameters, where the
    checkpoint has one (for export).
    ``new_slices_ok``: see :func:`load_state` (for ``--init``). Raises :class:`TrainingError`
    when ``path`` is not a checkpoint or is damaged or incomplete."""
    meta = checkpoint_metadata(path)
    step = int(meta["step"])
    try:
        tensors = load_file(str(path))
        if "packed" in meta:   # a compact training state: widened to the model's float32
            from .weights import unpack_tensors
            tensors = {k: v.float() if v.dtype == torch.bfloat16 else v
                       for k, v in unpack_tensors(tensors, meta["packed"]).items()}
        state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        if averaged:
            state.update({k[8:]: v for k, v in tensors.items() if k.startswith("average.")})
        load_state(model, state, new_slices_ok)
    except Exception as exc:   # safetensors' own error type; load_state_dict's RuntimeError
        raise TrainingError(f"{path} is damaged or incomplete ({str(exc).splitlines()[0][:120]})") from None
    if optimizer is not None:
        for i, p in enumerate(optimizer.param_groups[0]["params"]):
            if f"adam.{i}.exp_avg" in tensors:
                optimizer.state[p] = {
                    "step": torch.tensor(float(step)),
                    "exp_avg": tensors[f"adam.{i}.exp_avg"].to(p.device),
                    "exp_avg_sq": tensors[f"adam.{i}.exp_avg_sq"].to(p.device)}
    return step


def trim_log(path: Path, step: int) -> None:
    """Drop the JSONL log records after ``step`` (written after the last checkpoint by a run that
    then crashed or was stopped), so a resumed run's log counts each step once. Atomic rewrite."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [l for l in lines if json.loads(l).get("step", 0) <= step]
    if len(kept) != len(lines):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)


def learning_rate(cfg: TrainConfig, step: int, elapsed_fraction: float, global_step: int = 0) -> float:
    """``step`` counts from the start of this run. Linear warm-up over ``warmup`` steps, constant, cosine decay to 2% over the final
    ``decay_fraction`` of the time (or step) budget.

    With ``cfg.schedule`` ``(start, end)``, the decay follows the *global* step count instead
    (``global_step``, carried by checkpoints): cosine from ``lr`` at ``start`` to 2% at ``end``
    and 2% after, the same curve however the steps are split into resumed runs (each run still
    warms up its fresh Adam moments over ``warmup`` steps)."""
    lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
    if cfg.schedule:
        start, end = cfg.schedule
        t = min(1.0, max(0.0, (global_step - start) / (end - start)))
        return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))
    start = 1.0 - cfg.decay_fraction
    if elapsed_fraction > start:
        t = min(1.0, (elapsed_fraction - start) / max(1e-9, cfg.decay_fraction))
        lr *= 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))
    return lr


# ------------------------------------------------------------------------------------- loop
class TrainingStopped(KeyboardInterrupt):
    """Raised by :func:`train` after a requested stop (Ctrl-C, SIGTERM) once the checkpoint is saved.

    ``reported`` tells the CLI that the user has already been told how to resume.
    """

    reported = True


class StopRequest:
    """Turns the first SIGINT (Ctrl-C) or SIGTERM into a request to stop after the current step.

    The loop then writes its checkpoint and :func:`train` raises :class:`TrainingStopped`; a second
    Ctrl-C interrupts at once. Handlers are installed only in the main thread and restored on exit.
    """

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def train(cfg: TrainConfig) -> Path:
    """Train until ``cfg.minutes`` or ``cfg.max_steps``; returns the final checkpoint path.

    Ctrl-C or SIGTERM stops after the current step, writes the checkpoint (so ``--resume`` loses
    nothing) and then raises :class:`TrainingStopped` (a ``KeyboardInterrupt``).
    """
    with StopRequest() as stop_request:
        return _train(cfg, stop_request)


def _train(cfg: TrainConfig, stop_request: StopRequest) -> Path:
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = 0
    if distributed:
        dist.init_process_group("nccl" if cfg.device.startswith("cuda") else "gloo")
        rank = dist.get_rank()
        if cfg.device.startswith("cuda"):
            cfg.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + rank)
    rng = random.Random(cfg.seed * 1000 + rank)
    device = torch.device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    train_files, val_files = split_validation(list_images(cfg.data))
    t0 = time.time()
    images = load_uint8(train_files, cfg.crop)
    val_images = load_uint8(val_files, 256)
    if not images:
        raise TrainingError(f"no training image in {cfg.data} is at least {cfg.crop} px on each side")
    if device.type == "cuda":
        # crops are cut on the GPU: the host only picks offsets (uint8 copies, no transfers)
        images = [im.to(device) for im in images]
        torch.backends.cudnn.benchmark = True
    if rank == 0:
        print(f"loaded {len(images)} training and {len(val_images)} validation images "
              f"in {time.time() - t0:.0f}s", flush=True)
        for kind, kept, files, side in (("training", images, train_files, cfg.crop),
                                         ("validation", val_images, val_files, 256)):
            if len(kept) < len(files):
                print(f"skipped {len(files) - len(kept)} {kind} image(s) smaller than {side} px "
                      f"on a side", flush=True)
    cum_weights = sampling_weights(images, cfg.sampling)
    if rank == 0:
        print(f"crops drawn {'in proportion to image area' if cum_weights else 'equally from every image'} "
              f"(--sampling {cfg.sampling})", flush=True)

    model = MeanScaleHyperprior(cfg.N, cfg.M, slices=cfg.slices, checkerboard=cfg.checkerboard,
                                blocks=cfg.blocks).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step = 0
    ckpt = out / "checkpoint.safetensors"
    if cfg.resume and ckpt.exists():
        saved = checkpoint_config(ckpt)
        check_architecture(ckpt, saved_architecture(saved), cfg, init=False)
        step = load_checkpoint(ckpt, model, optimizer)
        if not cfg.schedule and saved.get("schedule"):   # a long schedule goes on
            cfg.schedule = tuple(saved["schedule"])
        if rank == 0:
            print(f"resumed from {ckpt} at step {step}"
                  + (f"; learning-rate schedule {cfg.schedule[0]}:{cfg.schedule[1]}" if cfg.schedule else ""),
                  flush=True)
    elif cfg.init:
        if Path(cfg.init).is_dir():   # an exported weights folder
            from .weights import load_float_model
            exported, step = load_float_model(cfg.init)
            check_architecture(cfg.init, exported.architecture, cfg, init=True)
            load_state(model, exported.state_dict(), new_slices_ok=True)
        else:
            check_architecture(cfg.init, saved_architecture(checkpoint_config(Path(cfg.init))), cfg, init=True)
            step = load_checkpoint(Path(cfg.init), model, new_slices_ok=True)
        if rank == 0:
            print(f"initialised from {cfg.init} (step {step})", flush=True)
    before = [float(v) for v in model.lambdas]   # the checkpoint's ladder
    if cfg.lambdas:
        model.set_lambdas(cfg.lambdas)
        if rank == 0:   # both ladders: a level changed by mistake shows at once
            print("λ ladder: " + ", ".join(f"{v:g}" for v in before) + " -> "
                  + ", ".join(f"{v:g}" for v in cfg.lambdas) + " (levels changed: "
                  + ", ".join(str(i + 1) for i, (a, b) in enumerate(zip(before, cfg.lambdas))
                              if abs(a - b) > 1e-6 * b) + ")", flush=True)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)   # the values stay; only the layout changes
    ddp_model = model
    if distributed:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model)
    extra = json.loads(checkpoint_metadata(ckpt).get("extra", "{}")) if cfg.resume and ckpt.exists() else {}
    if cfg.average is None:   # a resumed run keeps its checkpoint's decay
        cfg.average = float(extra.get("average_decay", AVERAGE))
    average = WeightAverage(model, cfg.average) if cfg.average > 0 else None
    if average is not None and extra:
        if average.restore(load_file(str(ckpt)), int(extra.get("average_updates", 0))):
            if cfg.lambdas:
                average.follow_ladder(before, cfg.lambdas)
            if rank == 0:
                print(f"weight average resumed ({average.updates} updates, decay {average.decay:g})", flush=True)
    elif extra.get("average_updates") and rank == 0:
        print(f"note: the checkpoint's weight average ({extra['average_updates']} updates) is not "
              f"kept (--average 0); the next checkpoint holds none", flush=True)

    precision, why = resolve_precision(cfg.precision, device)
    if rank == 0:
        print(f"precision: {precision} ({why})", flush=True)
    if precision == "bf16":
        autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        autocast = nullcontext()

    if rank == 0 and cfg.resume:
        trim_log(out / "log.jsonl", step)
    log = open(out / "log.jsonl", "a") if rank == 0 else None
    bar = None
    if rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=cfg.max_steps or None, initial=0, unit="step", dynamic_ncols=True,
                   mininterval=5.0)
    start, last_ckpt, first_step = time.time(), time.time(), step
    budget = cfg.minutes * 60
    ema, nonfinite = None, 0
    while True:
        elapsed = time.time() - start
        frac = elapsed / budget if budget > 0 else 0.0
        if cfg.max_steps:
            frac = max(frac, (step - first_step) / cfg.max_steps)
        stop = frac >= 1.0 or stop_request.requested
        if distributed:
            flag = torch.tensor([1.0 if stop else 0.0])
            dist.all_reduce(flag)
            stop = bool(flag.item() > 0)
        if stop:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step - first_step, frac, step)
        x = random_batch(images, cfg.batch, cfg.crop, rng, cum_weights).to(device)
        x = x.contiguous(memory_format=memory_format)
        level = torch.randint(0, model.num_qualities, (cfg.batch,), device=device)
        m = rd_loss(ddp_model, x, level, autocast)
        optimizer.zero_grad(set_to_none=True)
        m["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        finite = bool(torch.isfinite(grad_norm))
        if finite and rank == 0 and time.time() - last_ckpt > cfg.checkpoint_minutes * 60:
            # saved before the update, as weights just seen to give a finite loss: a diverging
            # run never replaces its last good checkpoint
            save_checkpoint(ckpt, model, optimizer, step, cfg, {}, average)
            last_ckpt = time.time()
        if finite:   # skip the rare non-finite step instead of poisoning Adam
            optimizer.step()
            if average is not None:
                average.update()
            nonfinite = 0
        else:
            nonfinite += 1
            if nonfinite >= MAX_NONFINITE_STEPS:   # diverged: keep the last checkpoint as it is
                if rank == 0:
                    bar.close()
                    log.close()
                then = f"resume from {ckpt}" if ckpt.exists() else "start again"
                raise TrainingError(
                    f"training diverged: the loss was not finite for {nonfinite} steps in a row "
                    f"(step {step + 1}); lower --lr (this run: {cfg.lr:g}) and {then}")
        step += 1
        vals = {k: float(v.detach()) for k, v in m.items()}
        ema = vals if ema is None else {k: 0.98 * ema[k] + 0.02 * vals[k] for k in vals}
        if rank == 0:
            sps = (step - first_step) * cfg.batch / max(1e-9, time.time() - start)
            bar.update(1)
            bar.set_postfix(bpp=f"{ema['bpp']:.3f}", psnr=f"{ema['psnr']:.2f}",
                            loss=f"{ema['loss']:.3f}", sps=f"{sps:.1f}", refresh=False)
            record = {"step": step, "time": round(time.time() - start, 1),
                      "lr": optimizer.param_groups[0]["lr"], "samples_per_s": round(sps, 2),
                      **{k: v if math.isfinite(v) else None for k, v in vals.items()}}   # JSON
            if step % cfg.val_every == 0 and val_images:
                record["val"] = validate(model, val_images)
                bar.write(f"step {step} validation: {json.dumps(record['val'])}")
            log.write(json.dumps(record) + "\n")
            if step % 20 == 0:
                log.flush()
    if rank == 0:
        bar.close()
        if not nonfinite or not ckpt.exists():   # after failing steps, the last one is better
            save_checkpoint(ckpt, model, optimizer, step, cfg, {}, average)
        log.close()
        print(f"stopped at step {step}; checkpoint {ckpt}", flush=True)
    if distributed:
        # Orderly teardown (hardening, not a proven fix: a rank once aborted at exit in CI and
        # it could not be reproduced): every rank waits for rank 0's checkpoint, the DDP wrapper
        # (which holds the process group's communication hooks) goes first, then the group.
        dist.barrier()
        del ddp_model
        dist.destroy_process_group()
    if stop_request.requested:
        if rank == 0:
            print(f"interrupted: continue with --resume --out {cfg.out}", flush=True)
        raise TrainingStopped
    return ckpt


def saved_architecture(config: dict) -> dict:
    """``N``, ``M``, ``slices``, ``checkerboard`` and ``blocks`` of a checkpoint's config
    (checkpoints from before channel slices hold the plain hyperprior, ``slices`` 1, without
    checkerboard; those from before residual blocks have ``blocks`` 0)."""
    return {"N": config.get("N", 128), "M": config.get("M", 192), "slices": config.get("slices", 1),
            "checkerboard": config.get("checkerboard", False), "blocks": config.get("blocks", 0)}


def check_architecture(source, saved: dict, cfg: TrainConfig, init: bool) -> None:
    """Raise a one-line :class:`TrainingError` naming the options to pass when the checkpoint or
    export ``source`` holds a model of another shape (``saved``: ``N``, ``M``, ``slices``) than
    ``cfg``. With ``init``, a model without channel context (and without checkerboard) may
    start a run with slices, a model without checkerboard one with checkerboard, and a model
    without residual blocks one with blocks."""
    want = {"N": cfg.N, "M": cfg.M, "slices": cfg.slices, "checkerboard": cfg.checkerboard,
            "blocks": cfg.blocks}
    saved = {"blocks": 0, **saved}
    if init and saved["slices"] == 1 and not saved["checkerboard"]:   # a checkerboard network's
        saved = {**saved, "slices": cfg.slices}                       # shape depends on slices
    if init and not saved["checkerboard"]:
        saved = {**saved, "checkerboard": cfg.checkerboard}
    if init and not saved["blocks"]:
        saved = {**saved, "blocks": cfg.blocks}
    if saved != want:
        blocks = saved["blocks"] or want["blocks"]   # name --blocks where either model has some

        def options(arch: dict) -> str:
            return " ".join(f"--{k} {arch[k]}" for k in ("N", "M", "slices")) + \
                (f" --blocks {arch['blocks']}" if blocks else "") + \
                (" --checkerboard" if arch["checkerboard"] else " --no-checkerboard")
        raise TrainingError(f"{source} holds a model with {options(saved)}, this run asks for "
                            f"{options(want)}; pass {options(saved)}")


def checkpoint_metadata(path: Path) -> dict[str, str]:
    """A checkpoint's safetensors metadata (``step``, ``config``, ``extra``). Raises
    :class:`TrainingError` when ``path`` is not a checkpoint of :func:`save_checkpoint` (an
    exported weights file, another kind of file, a damaged header)."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        step = meta.get("step", "")
        ok = step.isascii() and step.isdigit() and isinstance(json.loads(meta.get("config", "{}")), dict)
    except Exception:   # safetensors and json raise their own error types
        ok = False
    if not ok:
        raise TrainingError(f"{path} is not a vaecodec training checkpoint or is damaged "
                            "(the checkpoint.safetensors that vaecodec train writes into --out)")
    return meta


def checkpoint_config(path: Path) -> dict:
    """The TrainConfig a checkpoint was written with, as a dict ({} if absent). Raises
    :class:`TrainingError` as :func:`checkpoint_metadata`."""
    return json.loads(checkpoint_metadata(path).get("config", "{}"))
