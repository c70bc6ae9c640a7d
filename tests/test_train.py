"""Trainer: a few real steps on a tiny model, resume, export with fresh tables, DDP (gloo, 2 procs)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vaecodec.model import LAMBDAS, MeanScaleHyperprior
from vaecodec.train import TrainConfig, learning_rate, train
from vaecodec import weights
from conftest import ROOT, photo_crop


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    for i in range(6):
        Image.fromarray(photo_crop(160, 200, seed=37 * i)).save(d / f"img{i}.png")
    return d


def tiny(out, data, **kw):
    options = dict(N=16, M=24, crop=64, batch=2, minutes=5, max_steps=3, val_every=1000, threads=1)
    return TrainConfig(data=str(data), out=str(out), **{**options, **kw})


def test_train_resume_and_export(tmp_path, image_dir):
    ckpt = train(tiny(tmp_path / "run", image_dir))
    with safe_open(str(ckpt), "pt") as f:
        assert f.metadata()["step"] == "3"
    log = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["bpp"] > 0 for r in log)
    # a run that logged steps 4-5 and died before its next checkpoint: resuming redoes them
    with open(tmp_path / "run" / "log.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 1.0}\n{"step": 5, "loss": 1.0}\n')
    ckpt = train(tiny(tmp_path / "run", image_dir, resume=True))
    with safe_open(str(ckpt), "pt") as f:
        assert f.metadata()["step"] == "6"
    log = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert log[3]["loss"] != 1.0

    from vaecodec.train import load_checkpoint
    model = MeanScaleHyperprior(16, 24, checkerboard=True, blocks=2)   # the trainer's default
    assert load_checkpoint(ckpt, model) == 6
    fp = weights.export(model, tmp_path / "w", steps=6)
    loaded = weights.load(tmp_path / "w")
    assert loaded.fingerprint == fp and loaded.steps == 6
    restored, steps = weights.load_float_model(tmp_path / "w")
    assert steps == 6
    for k, v in model.state_dict().items():   # the training-only float nets are stored in float16
        if k.startswith(("h_s.", "context.", "spatial.")):
            assert torch.equal(restored.state_dict()[k], v.half().float()), k
        else:
            assert torch.equal(restored.state_dict()[k], v), k
    training = weights._read(tmp_path / "w" / "training.safetensors")[0]
    assert {v.dtype for k, v in training.items() if k.startswith(("h_s.", "context.", "spatial."))} == {torch.float16}
    # tables are rebuilt from the final parameters: they match the prior of this model
    from vaecodec.entropy import factorized_tables
    fresh = factorized_tables(model.prior)
    assert np.array_equal(fresh["freqs"], loaded.z_tables.freqs)
    # and the exported model codes an image
    x = torch.from_numpy(photo_crop(64, 128)).permute(2, 0, 1)[None].float() / 255
    s = loaded.compress(x, 2.5)
    assert loaded.decompress(s, 2.5).shape == x.shape


def test_weight_average_is_checkpointed_resumed_and_exported(tmp_path, image_dir):
    """The average follows the run (decay warms up from the first update), resumes with the
    checkpoint, and export loads it instead of the trained parameters."""
    from vaecodec.train import WeightAverage, load_checkpoint
    ckpt = train(tiny(tmp_path / "run", image_dir, average=0.5))
    tensors = load_file(str(ckpt))
    names = [n for n, _ in MeanScaleHyperprior(16, 24, checkerboard=True, blocks=2).named_parameters()]
    assert {f"average.{n}" for n in names} <= set(tensors)
    with safe_open(str(ckpt), "pt") as f:
        assert json.loads(f.metadata()["extra"])["average_updates"] == 3
    # the average lies between the start and the trained weights: not a copy of either
    moved = [n for n in names if not torch.equal(tensors[f"average.{n}"], tensors[f"model.{n}"])]
    assert moved
    ckpt = train(tiny(tmp_path / "run", image_dir, average=0.5, resume=True))
    with safe_open(str(ckpt), "pt") as f:
        assert json.loads(f.metadata()["extra"])["average_updates"] == 6
    tensors = load_file(str(ckpt))
    raw, averaged = (MeanScaleHyperprior(16, 24, checkerboard=True, blocks=2) for _ in range(2))
    assert load_checkpoint(ckpt, raw) == load_checkpoint(ckpt, averaged, averaged=True) == 6
    for n, p in averaged.named_parameters():
        assert torch.equal(p.detach(), tensors[f"average.{n}"]), n
    for n, p in raw.named_parameters():
        assert torch.equal(p.detach(), tensors[f"model.{n}"]), n
    # a plain --resume keeps the checkpoint's decay; --average 0 says that it drops the average
    ckpt = train(tiny(tmp_path / "run", image_dir, resume=True))
    with safe_open(str(ckpt), "pt") as f:
        extra = json.loads(f.metadata()["extra"])
    assert extra["average_decay"] == 0.5 and extra["average_updates"] == 9
    train(tiny(tmp_path / "run", image_dir, resume=True, average=0.0))
    assert not any(k.startswith("average.") for k in load_file(str(ckpt)))
    # one update with decay d moves the average (1 - d) of the way; the first updates use less decay
    model = torch.nn.Linear(2, 1)
    average = WeightAverage(model, 0.999)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update()   # decay min(0.999, 2/11)
    assert torch.allclose(average.shadow[0], start + 9 / 11)
    # a run without an average writes none, and export falls back to the trained weights
    ckpt = train(tiny(tmp_path / "plain", image_dir, average=0.0))
    assert not any(k.startswith("average.") for k in load_file(str(ckpt)))
    plain = MeanScaleHyperprior(16, 24, checkerboard=True, blocks=2)
    load_checkpoint(ckpt, plain, averaged=True)
    tensors = load_file(str(ckpt))
    for n, p in plain.named_parameters():
        assert torch.equal(p.detach(), tensors[f"model.{n}"]), n


def test_resume_keeps_the_long_schedule(tmp_path, image_dir):
    from vaecodec.train import checkpoint_config
    train(tiny(tmp_path / "run", image_dir, schedule=(0, 100)))
    ckpt = train(tiny(tmp_path / "run", image_dir, resume=True))
    assert checkpoint_config(ckpt)["schedule"] == [0, 100]
    log = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    cfg = TrainConfig(data=".", schedule=(0, 100), warmup=200, lr=5e-4)
    assert log[-1]["lr"] == pytest.approx(learning_rate(cfg, 2, 0.0, global_step=5))


def test_images_too_small_to_use_are_reported(tmp_path, image_dir, capsys):
    """The validation split takes img0 (160x200), too small for its 256 px centre crops: the
    trainer says so instead of silently validating on nothing."""
    train(tiny(tmp_path / "run", image_dir, max_steps=1))
    out = capsys.readouterr().out
    assert "loaded 5 training and 0 validation images" in out
    assert "skipped 1 validation image(s) smaller than 256 px on a side" in out
    assert "training image(s)" not in out     # 160x200 crops to 64 px: every one is used


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path, image_dir):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaecodec", "train", "--data", str(image_dir), "--out", str(out),
         "--N", "16", "--M", "24", "--crop", "64", "--batch", "2", "--minutes", "10", "--threads", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.stat().st_size > 0:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Error" not in stderr
    steps = [json.loads(l)["step"] for l in log.read_text().splitlines()]
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as f:
        assert int(f.metadata()["step"]) == steps[-1] >= 1
    assert "interrupted: continue with --resume" in stdout


def test_export_refuses_empty_tables(tmp_path, monkeypatch):
    model = MeanScaleHyperprior(16, 24)
    empty = {"freqs": np.zeros(0, np.int64), "lengths": np.zeros(0, np.int64),
             "offsets": np.zeros(0, np.int64)}
    monkeypatch.setattr(weights, "gaussian_tables", lambda scales: empty)
    with pytest.raises(weights.WeightsError, match="empty"):
        weights.export(model, tmp_path)
    assert not list(tmp_path.glob("*.safetensors"))


def test_a_diverged_run_stops_with_a_one_line_error_and_keeps_its_checkpoint(tmp_path, image_dir):
    from vaecodec.train import MAX_NONFINITE_STEPS, TrainingError
    ckpt = train(tiny(tmp_path / "run", image_dir))
    before = load_file(str(ckpt))
    # a checkpoint is due at every step: none may hold the weights of the step that diverged
    with pytest.raises(TrainingError, match=r"diverged: the loss was not finite for 20 steps in "
                                            r"a row .*lower --lr \(this run: 1e\+06\) and "
                                            r"resume from .*checkpoint.safetensors$"):
        train(tiny(tmp_path / "run", image_dir, resume=True, lr=1e6, warmup=0, max_steps=200,
                   checkpoint_minutes=1e-9))
    assert MAX_NONFINITE_STEPS == 20
    log = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) < 3 + 40 and log[-1]["loss"] is None   # strict JSON: null, not NaN
    model = MeanScaleHyperprior(16, 24, checkerboard=True, blocks=2)
    from vaecodec.train import load_checkpoint, rd_loss
    saved = load_checkpoint(ckpt, model)
    if saved == 3:   # re-saved before the first update of the resumed run: the same weights
        assert all(torch.equal(v, before[k]) for k, v in load_file(str(ckpt)).items()
                   if k.startswith("model."))
    assert saved >= 3
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    x = torch.from_numpy(photo_crop(64, 64)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        assert torch.isfinite(rd_loss(model, x, torch.tensor([3]), torch.autocast("cpu", enabled=False))["loss"])
    with pytest.raises(TrainingError, match=r"and start again$"):   # a fresh run: no checkpoint
        train(tiny(tmp_path / "fresh", image_dir, lr=1e6, warmup=0, max_steps=200))
    assert not (tmp_path / "fresh" / "checkpoint.safetensors").exists()


def test_learning_rate_warms_up_and_decays():
    cfg = TrainConfig(data=".", lr=1e-3, warmup=100, decay_fraction=0.2)
    assert learning_rate(cfg, 0, 0.0) == pytest.approx(1e-5)
    assert learning_rate(cfg, 500, 0.5) == pytest.approx(1e-3)
    assert learning_rate(cfg, 500, 1.0) == pytest.approx(2e-5)
    assert learning_rate(cfg, 500, 0.9) == pytest.approx(1e-3 * (0.02 + 0.98 * 0.5))   # half-way through the decay


def test_a_long_schedule_follows_the_global_step_across_runs():
    """With ``schedule`` the decay depends on the checkpoint's step, not on this run's budget:
    a run resumed half-way continues the same cosine (after warming up its fresh Adam)."""
    cfg = TrainConfig(data=".", lr=1e-3, warmup=100, schedule=(1000, 3000))
    assert learning_rate(cfg, 500, 0.99, global_step=1000) == pytest.approx(1e-3)
    assert learning_rate(cfg, 500, 0.0, global_step=2000) == pytest.approx(1e-3 * 0.51)   # half-way
    assert learning_rate(cfg, 500, 0.5, global_step=3000) == pytest.approx(2e-5)
    assert learning_rate(cfg, 500, 0.5, global_step=9000) == pytest.approx(2e-5)
    assert learning_rate(cfg, 500, 0.5, global_step=500) == pytest.approx(1e-3)   # before START
    assert learning_rate(cfg, 49, 0.0, global_step=2000) == pytest.approx(1e-3 * 0.51 * 0.5)   # warm-up


@pytest.mark.parametrize("field, value, message", [
    ("lr", 0.0, "lr must be a finite number > 0"),
    ("lr", float("nan"), "lr must be a finite number > 0"),
    ("minutes", float("inf"), "minutes must be a finite number > 0"),
    ("batch", 0, "batch must be an integer >= 1"),
    ("batch", 2.5, "batch must be an integer >= 1"),
    ("crop", 100, "crop must be a positive multiple of 64"),
    ("decay_fraction", 1.5, r"decay_fraction must be in \[0, 1\]"),
    ("precision", "fp16", "precision must be auto, bf16 or fp32"),
    ("sampling", "pixels", "sampling must be area or image"),
    ("lambdas", (0.1, 0.05), "expected 8"),
    ("lambdas", "12345678", "must be a sequence of numbers"),
    ("lambdas", (1, 2, 3, 4, 5, 6, 7, float("inf")), "positive finite"),
    ("lambdas", (float("nan"),) * 8, "positive finite"),
    ("lambdas", (1, 2, 3, 4, 5, 6, 7, 1e39), "positive finite"),
    ("lr", True, "lr must be a finite number > 0"),
    ("decay_fraction", False, "decay_fraction must be in"),
    ("seed", -1, "seed must be an integer >= 0"),
    ("seed", "abc", "seed must be an integer >= 0"),
    ("resume", "no", "resume must be True or False"),
    ("channels_last", 1, "channels_last must be True or False"),
    ("data", "", "data must be a non-empty path"),
    ("out", None, "out must be a non-empty path"),
    ("init", 5, "init must be a path"),
    ("average", 1.0, r"average must be in \[0, 1\)"),
    ("schedule", (3000, 1000), "schedule must be two steps START < END"),
    ("schedule", (1000,), "schedule must be two steps START < END"),
])
def test_train_config_refuses_unusable_values(field, value, message):
    with pytest.raises(ValueError, match=f"{message}"):
        TrainConfig(**{"data": ".", field: value})


@pytest.mark.parametrize("sampling,share", [("area", 0.75), ("image", 0.5)])
def test_crops_are_drawn_in_proportion_to_image_area(sampling, share):
    """A 64×192 image has 3× the pixels of a 64×64 one: with area sampling it gives 3/4 of the
    crops (each pixel about equally likely), with per-image sampling 1/2."""
    import random
    from vaecodec.train import random_batch, sampling_weights
    small = torch.zeros(3, 64, 64, dtype=torch.uint8)
    large = torch.full((3, 64, 192), 255, dtype=torch.uint8)
    images = [small, large]
    rng = random.Random(0)
    crops = random_batch(images, 2000, 64, rng, sampling_weights(images, sampling))
    from_large = (crops.flatten(1).mean(1) == 1.0).float().mean().item()
    assert abs(from_large - share) < 0.04, from_large      # binomial sd 0.01
    again = random_batch(images, 2000, 64, random.Random(0), sampling_weights(images, sampling))
    assert torch.equal(crops, again)                        # the seed fixes the draw


def test_train_config_accepts_its_defaults_and_normalises_lambdas():
    cfg = TrainConfig(data=".", lambdas=[str(v) for v in range(1, 9)])
    assert cfg.lambdas == tuple(float(v) for v in range(1, 9))
    assert TrainConfig(data=".").crop == 256


def test_auto_precision_follows_native_bf16(monkeypatch):
    import vaecodec.train as t
    cpu = torch.device("cpu")
    monkeypatch.setattr(t, "native_bf16", lambda device: False)
    assert t.resolve_precision("auto", cpu)[0] == "fp32"
    precision, why = t.resolve_precision("bf16", cpu)
    assert precision == "bf16" and why.startswith("warning")
    assert t.resolve_precision("fp32", cpu) == ("fp32", "as asked")
    monkeypatch.setattr(t, "native_bf16", lambda device: True)
    assert t.resolve_precision("auto", cpu)[0] == "bf16"
    with pytest.raises(ValueError, match="precision"):
        t.resolve_precision("fp16", cpu)


def test_no_native_bf16_on_an_avx2_cpu():
    """On an AVX2-only CPU, bf16 convolutions run on reference kernels (~80x slower)."""
    from vaecodec.hardware import native_bf16
    if torch.backends.cpu.get_cpu_capability() != "AVX2":
        pytest.skip("this CPU has AVX-512 (or no AVX2)")
    assert not native_bf16(torch.device("cpu"))


def test_ddp_gloo_two_processes(tmp_path, image_dir):
    # --standalone: torchrun picks a free port, so overlapping runs cannot collide
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vaecodec", "train", "--data", str(image_dir),
           "--out", str(tmp_path / "ddp"), "--max-steps", "2", "--crop", "64", "--batch", "2",
           "--N", "16", "--M", "24", "--threads", "1", "--precision", "fp32"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    with safe_open(str(tmp_path / "ddp" / "checkpoint.safetensors"), "pt") as f:
        assert f.metadata()["step"] == "2"


def test_set_lambdas_moves_gains_by_half_log_ratio():
    model = MeanScaleHyperprior(16, 24)
    old = model.lambdas.clone()
    gain, inv = model.log_gain.detach().clone(), model.log_inv_gain.detach().clone()
    new = old.clone()
    new[0] = old[0] / 4
    model.set_lambdas(new.tolist())
    assert torch.allclose(model.lambdas, new)
    assert torch.allclose(model.log_gain[0], gain[0] + 0.5 * np.log(0.25))
    assert torch.allclose(model.log_inv_gain[0], inv[0] - 0.5 * np.log(0.25))
    assert torch.equal(model.log_gain[1:], gain[1:])
    with pytest.raises(ValueError, match="increasing"):
        model.set_lambdas(list(reversed(new.tolist())))
    with pytest.raises(ValueError, match="expected 8"):
        model.set_lambdas([0.1, 0.2])


def test_resume_with_new_lambdas_keeps_them_in_the_checkpoint(tmp_path, image_dir):
    train(tiny(tmp_path / "run", image_dir, max_steps=1))
    ladder = (0.0006, 0.002, 0.0067, 0.013, 0.025, 0.0483, 0.0932, 0.18)
    ckpt = train(tiny(tmp_path / "run", image_dir, max_steps=1, resume=True, lambdas=ladder))
    from vaecodec.train import load_checkpoint
    model = MeanScaleHyperprior(16, 24, checkerboard=True, blocks=2)
    assert load_checkpoint(ckpt, model) == 2
    assert torch.allclose(model.lambdas, torch.tensor(ladder))
    # the weight average's gains moved with the trained ones (half the log ratio per level),
    # not left at the old ladder's: after one step they are still within a step of each other
    averaged = MeanScaleHyperprior(16, 24, checkerboard=True, blocks=2)
    load_checkpoint(ckpt, averaged, averaged=True)
    trained_first, averaged_first = model.log_gain[0].mean().item(), averaged.log_gain[0].mean().item()
    old_first = trained_first - 0.5 * np.log(ladder[0] / LAMBDAS[0])
    assert abs(averaged_first - trained_first) < 0.05
    assert abs(averaged_first - old_first) > 0.4   # ½·log(0.0006/0.0018) = -0.55


def test_cli_rejects_a_bad_lambda_ladder(tmp_path, image_dir):
    from click.testing import CliRunner
    from vaecodec.cli import main
    for bad in ("0.1,0.2", "a,b,c,d,e,f,g,h", "8,7,6,5,4,3,2,1", "1,2,3,4,5,6,7,nan", "1,2,3,4,5,6,7,inf"):
        r = CliRunner().invoke(main, ["train", "--data", str(image_dir), "--lambdas", bad])
        assert r.exit_code == 2 and "--lambdas" in r.output, r.output


@pytest.mark.parametrize("option,value", [
    ("--decay-fraction", "nan"), ("--decay-fraction", "1.5"), ("--decay-fraction", "-0.1"),
    ("--lr", "nan"), ("--lr", "-1e-4"), ("--lr", "0"), ("--lr", "inf"),
    ("--minutes", "nan"), ("--minutes", "-5"), ("--checkpoint-minutes", "0"),
    ("--batch", "0"), ("--crop", "32"), ("--crop", "100"), ("--max-steps", "-1"),
    ("--threads", "-2"), ("--N", "0"), ("--M", "-1"), ("--sampling", "pixel"),
])
def test_cli_refuses_a_bad_training_option_before_any_work(tmp_path, image_dir, option, value,
                                                            monkeypatch):
    """Each of these used to be accepted (NaN weights, a 0-sample batch, a silently ignored
    budget) or to end in an 'internal error' deep in torch."""
    from click.testing import CliRunner
    from vaecodec.cli import GLIBC_FAST_MALLOC, main
    monkeypatch.setenv("GLIBC_TUNABLES", GLIBC_FAST_MALLOC)   # no re-exec inside the test process
    args = {"--max-steps": "1", "--batch": "2", "--N": "16", "--M": "24", "--crop": "64",
            "--threads": "1", option: value}
    r = CliRunner().invoke(main, ["train", "--data", str(image_dir), "--out", str(tmp_path / "run"),
                                  *[x for kv in args.items() for x in kv]])
    assert r.exit_code == 2 and f"Invalid value for '{option}'" in r.output, r.output
    assert not (tmp_path / "run").exists()


def test_cli_val_every_and_too_small_images(tmp_path, image_dir, monkeypatch):
    from click.testing import CliRunner
    from vaecodec.cli import GLIBC_FAST_MALLOC, main
    monkeypatch.setenv("GLIBC_TUNABLES", GLIBC_FAST_MALLOC)   # no re-exec inside the test process
    tiny_args = ["--max-steps", "2", "--batch", "2", "--N", "16", "--M", "24", "--threads", "1"]
    data = tmp_path / "data"   # validation uses 256² centre crops: the held-out image needs 256 px
    data.mkdir()
    for i in range(2):
        Image.fromarray(photo_crop(256, 272, seed=11 * i)).save(data / f"img{i}.png")
    r = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(tmp_path / "run"),
                                  "--crop", "64", "--val-every", "2", *tiny_args])
    assert r.exit_code == 0, r.output
    log = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert ["val" in rec for rec in log] == [False, True]
    assert 0 < log[1]["val"]["q4"]["bpp"] and 0 < log[1]["val"]["q4"]["psnr"] < 60
    r = CliRunner().invoke(main, ["train", "--data", str(image_dir), "--out", str(tmp_path / "big"),
                                  "--crop", "512", *tiny_args])
    assert r.exit_code == 1 and "at least 512 px" in r.output, r.output


def test_datapack_keeps_one_crop_of_every_image(tmp_path, image_dir):
    import random
    from vaecodec.datapack import pack
    from vaecodec.train import list_images, split_validation
    count, total = pack(image_dir, tmp_path / "packed", side=180, quality=95)
    packed = list_images(tmp_path / "packed")
    sources = list_images(image_dir)
    assert count == len(sources) == 6 and total == sum(f.stat().st_size for f in packed)
    # same stems in the same order: the trainer holds out the same validation images
    assert [f.stem for f in split_validation(packed)[1]] == [f.stem for f in split_validation(sources)[1]]
    rng = random.Random(0)
    for src, f in zip(sources, packed):
        with Image.open(f) as im:
            assert im.format == "JPEG" and im.size == (180, 160)   # sources are 200 x 160
            crop = np.asarray(im.convert("RGB"), dtype=float)
        left, top = rng.randrange(200 - 180 + 1), rng.randrange(160 - 160 + 1)
        ref = np.asarray(Image.open(src).convert("RGB"), dtype=float)[top:top + 160, left:left + 180]
        assert 10 * np.log10(255**2 / np.mean((crop - ref) ** 2)) > 35   # the source's pixels, JPEG q95
    with pytest.raises(FileExistsError):
        pack(image_dir, tmp_path / "packed")
    with pytest.raises(ValueError, match="budget"):
        pack(image_dir, tmp_path / "small", side=180, max_bytes=10_000)
    assert not (tmp_path / "small").exists()


def test_resume_or_init_of_another_shape_is_a_one_line_error(tmp_path, image_dir, monkeypatch):
    """A checkpoint keeps its shape: resuming it with other --N/--M/--slices names the options
    to pass; a plain hyperprior (slices 1) may start a run with slices, not the reverse."""
    from click.testing import CliRunner
    from vaecodec.cli import GLIBC_FAST_MALLOC, main
    monkeypatch.setenv("GLIBC_TUNABLES", GLIBC_FAST_MALLOC)   # no re-exec inside the test process
    train(tiny(tmp_path / "plain", image_dir, max_steps=1, slices=1, checkerboard=False))
    ckpt = tmp_path / "plain" / "checkpoint.safetensors"
    args = ["--data", str(image_dir), "--crop", "64", "--batch", "2", "--max-steps", "1",
            "--N", "16", "--threads", "1"]
    r = CliRunner().invoke(main, ["train", *args, "--M", "24", "--out", str(tmp_path / "plain"), "--resume"])
    assert r.exit_code == 1 and "pass --N 16 --M 24 --slices 1" in r.output, r.output
    assert "internal error" not in r.output and len(r.output.strip().splitlines()[-1]) > 40
    r = CliRunner().invoke(main, ["train", *args, "--M", "32", "--out", str(tmp_path / "x"), "--init", str(ckpt)])
    assert r.exit_code == 1 and "--M 24" in r.output, r.output
    r = CliRunner().invoke(main, ["train", *args, "--M", "24", "--out", str(tmp_path / "sliced"), "--init", str(ckpt)])
    assert r.exit_code == 0, r.output
    sliced = tmp_path / "sliced" / "checkpoint.safetensors"
    from vaecodec.train import checkpoint_config
    assert checkpoint_config(sliced)["slices"] == 4
    r = CliRunner().invoke(main, ["train", *args, "--M", "24", "--slices", "1", "--out", str(tmp_path / "y"),
                                  "--init", str(sliced)])
    assert r.exit_code == 1 and "--slices 4" in r.output, r.output
    r = CliRunner().invoke(main, ["train", *args, "--M", "24", "--slices", "5", "--out", str(tmp_path / "z")])
    assert r.exit_code == 2 and "multiple of slices" in r.output and "internal" not in r.output, r.output


def test_export_of_a_file_that_is_no_checkpoint_is_a_one_line_error(tmp_path, image_dir, monkeypatch):
    """`vaecodec export` of an exported weights file, a stranger, a truncated checkpoint or one
    whose step is not ASCII digits names the file and what is expected; it used to be an
    "internal error"."""
    from click.testing import CliRunner
    from vaecodec.cli import GLIBC_FAST_MALLOC, main
    monkeypatch.setenv("GLIBC_TUNABLES", GLIBC_FAST_MALLOC)
    train(tiny(tmp_path / "run", image_dir, max_steps=1, slices=1))
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    r = CliRunner().invoke(main, ["export", str(ckpt), "--out", str(tmp_path / "w")])
    assert r.exit_code == 0 and (tmp_path / "w" / "synthesis.safetensors").exists(), r.output
    stranger = tmp_path / "notes.safetensors"
    stranger.write_text("not a checkpoint")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    superscript = tmp_path / "superscript.safetensors"   # "²".isdigit() is True, int("²") fails
    with safe_open(str(ckpt), "pt") as f:
        save_file(load_file(str(ckpt)), str(superscript), metadata={**f.metadata(), "step": "\u00b2"})
    for path in (tmp_path / "w" / "synthesis.safetensors", stranger, truncated, superscript):
        r = CliRunner().invoke(main, ["export", str(path), "--out", str(tmp_path / "w2")])
        assert r.exit_code == 1 and "internal" not in r.output, r.output
        assert r.output.startswith(f"Error: {path} is not a vaecodec training checkpoint"), r.output
        assert not (tmp_path / "w2").exists()
    r = CliRunner().invoke(main, ["export", str(ckpt), "--state", str(tmp_path / "s.safetensors"),
                                  "--no-average", "--float16"])
    assert r.exit_code == 2 and "--float16 and --no-average do not apply to --state" in r.output
    assert not (tmp_path / "s.safetensors").exists()


def test_train_runs_the_installed_package_whatever_the_working_directory(tmp_path, image_dir):
    """`vaecodec train` re-executes itself (to set glibc's malloc tunables) with `python -m`;
    a `vaecodec` folder in the working directory must not be imported instead (found by a
    tryout: an old copy there refused today's options)."""
    shadow = tmp_path / "vaecodec"
    shadow.mkdir()
    (shadow / "__init__.py").write_text('raise SystemExit("the shadow package was imported")\n')
    (shadow / "__main__.py").write_text("")
    from pathlib import Path
    exe = Path(sys.executable).parent / "vaecodec"
    if not exe.exists():
        pytest.skip("no vaecodec entry point next to the interpreter")
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}   # force the re-exec
    r = subprocess.run([str(exe), "train", "--data", str(image_dir), "--out", "run", "--N", "16", "--M", "24",
                        "--crop", "64", "--batch", "2", "--max-steps", "1", "--threads", "1"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "shadow" not in r.stderr + r.stdout, r.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoint.safetensors").exists()


GPU_SCRIPT = ROOT / "scripts" / "gpu-train.sh"


def run_gpu_script(tmp_path, **settings):
    """scripts/gpu-train.sh run on the CPU as it would run on a borrowed GPU machine: from a
    checkout holding the package, weights/ and .gpu/data, with constriction missing."""
    work = tmp_path / "checkout"
    (work / ".gpu" / "data").mkdir(parents=True)
    for name in ("vaecodec", "weights"):
        (work / name).symlink_to(ROOT / name)
    for i in range(3):
        Image.fromarray(photo_crop(288, 320, seed=11 * i)).save(work / ".gpu" / "data" / f"img{i}.jpg")
    block = tmp_path / "block"
    block.mkdir()
    (block / "constriction.py").write_text("raise ImportError('constriction is not installed')\n")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "PY": sys.executable, "DEV": "cpu", "BATCH": "1",
           "SLACK": "240", "RUN": str(tmp_path / "run"), "EXTRA_PATH": str(block), **settings}
    return subprocess.run(["bash", str(GPU_SCRIPT)], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600), out


@pytest.fixture(scope="module")
def shipped_step():
    return weights.load_float_model(ROOT / "weights")[1]


def check_gpu_export(out, shipped_step):
    """The export the script brings back is complete, loadable and past the shipped step."""
    import gzip
    files = sorted(p.name for p in (out / "weights").iterdir())
    assert files == sorted([weights.ANALYSIS_FILE, weights.CONTEXT_FILE, weights.HYPER_FILE,
                            weights.SPATIAL_FILE, weights.SYNTHESIS_FILE, weights.TRAINING_FILE])
    assert all((out / "weights" / f).stat().st_size < weights.MAX_FILE_BYTES for f in files)
    _, step = weights.load_float_model(out / "weights")
    log = [json.loads(l) for l in gzip.decompress((out / "log.jsonl.gz").read_bytes()).splitlines()]
    assert step == log[-1]["step"] > shipped_step


needs_shell = pytest.mark.skipif(not all(map(shutil.which, ("bash", "timeout", "gzip", "awk"))),
                                 reason="needs bash, timeout, gzip and awk")


@needs_shell
def test_gpu_script_trains_and_exports_without_constriction(tmp_path, shipped_step):
    r, out = run_gpu_script(tmp_path, MIN="0.05")
    assert r.returncode == 0, r.stdout + r.stderr
    check_gpu_export(out, shipped_step)
    assert "first try" not in (out / "train.txt").read_text()


@needs_shell
def test_gpu_script_retries_in_fp32_after_a_crash_at_start(tmp_path, shipped_step):
    # a python that crashes every training run that is not fp32, as a broken bf16 path would
    fake = tmp_path / "python"
    fake.write_text(f"""#!/bin/bash
if [ "$3" = train ] && [[ " $* " != *" --precision fp32 "* ]]; then echo "simulated crash" >&2; exit 3; fi
exec {sys.executable} "$@"
""")
    fake.chmod(0o755)
    r, out = run_gpu_script(tmp_path, MIN="0.8", PY=str(fake))
    assert r.returncode == 0, r.stdout + r.stderr
    console = (out / "train.txt").read_text()
    assert "first try (status 3) left no checkpoint" in console and "again in fp32" in console
    check_gpu_export(out, shipped_step)


@needs_shell
def test_gpu_script_needs_out_and_the_packed_data(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    r = subprocess.run(["bash", str(GPU_SCRIPT)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "OUT must name" in r.stderr
    r = subprocess.run(["bash", str(GPU_SCRIPT)], cwd=tmp_path, env=dict(env, OUT=str(tmp_path)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "run from the repository root" in r.stderr


def test_compact_training_state_round_trip(tmp_path):
    """`vaecodec export CHECKPOINT --state FILE`: one packed bfloat16 file, no Adam moments, that
    `--init` reads like a checkpoint (the weights widened back to float32)."""
    from click.testing import CliRunner
    from vaecodec.cli import main
    from conftest import randomised
    from vaecodec.train import load_checkpoint, save_checkpoint, save_training_state
    model = randomised(MeanScaleHyperprior(16, 24, slices=4, checkerboard=True, blocks=1), seed=2)
    optimizer = torch.optim.Adam(model.parameters())
    ckpt = tmp_path / "checkpoint.safetensors"
    cfg = TrainConfig(data=str(tmp_path), N=16, M=24, slices=4, checkerboard=True, blocks=1)
    save_checkpoint(ckpt, model, optimizer, 42, cfg, {})
    state = tmp_path / "state.safetensors"
    assert save_training_state(ckpt, state) == 42
    assert state.stat().st_size < ckpt.stat().st_size / 2
    restored = MeanScaleHyperprior(16, 24, slices=4, checkerboard=True, blocks=1)
    assert load_checkpoint(state, restored) == 42
    for k, v in model.state_dict().items():
        want = v.to(torch.bfloat16).float() if v.dtype == torch.float32 else v
        assert torch.equal(restored.state_dict()[k], want), k
    result = CliRunner().invoke(main, ["export", str(ckpt), "--state", str(tmp_path / "s2.safetensors")])
    assert result.exit_code == 0 and "step 42" in result.output
