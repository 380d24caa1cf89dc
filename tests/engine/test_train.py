"""Training: a killed run resumes to exactly the weights of an uninterrupted one."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mobilevit
from mobilevit.testing import write_image_folder


def train_command(data: Path, output: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "mobilevit", "train",
        "--model", "mobilevit_xxs", "--data", str(data), "--output", str(output),
        "--epochs", "2", "--img-size", "32", "--min-size", "32", "--max-size", "48",
        "--size-divisor", "16", "--batch-size", "6", "--warmup-steps", "4",
        "--workers", "0", "--deterministic", "--save-every", "2", "--ema-momentum", "0.1",
        *extra,
    ]  # fmt: skip


def final_weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(output / "model" / "model.safetensors")


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    data = write_image_folder(tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(train_command(data, tmp_path / "whole"), check=True, env=env, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_command(data, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((killed / "checkpoints").glob("step-*.pt")) and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model").exists(), "the run finished before it was killed"
    checkpoints = sorted((killed / "checkpoints").glob("step-*.pt"))
    state = torch.load(checkpoints[-1], weights_only=True)
    assert state["epoch"] == 0 and state["sampler"]["batches_done"] > 0  # killed mid-epoch

    subprocess.run(
        train_command(data, killed, "--resume", "auto"), check=True, env=env, capture_output=True, timeout=300
    )
    whole, resumed = final_weights(tmp_path / "whole"), final_weights(killed)
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    # The run learned something, so equal weights are not equal initialisations.
    assert any(not torch.equal(whole[k], v) for k, v in load_file_init(tmp_path).items())


def load_file_init(tmp_path: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return mobilevit.create_model("mobilevit_xxs", num_classes=2).state_dict()


def tiny_config(data: Path, output: Path, **overrides):
    from mobilevit.engine.config import load_config

    options = dict(
        model="mobilevit_xxs", data=str(data), output=str(output), epochs=1, img_size=32, min_size=32,
        max_size=48, size_divisor=16, batch_size=8, warmup_steps=2, workers=0, ema_momentum=0.1,
    )  # fmt: skip
    return load_config(**{**options, **overrides})


@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images"), per_class=16)


def test_run_writes_metrics_tensorboard_plot_and_model(image_data, tmp_path):
    from mobilevit.engine.train import train

    metrics = train(tiny_config(image_data, tmp_path / "run", epochs=2))
    assert [m["epoch"] for m in metrics] == [1, 2]
    out = tmp_path / "run"
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,lr,train_loss") and len(rows) == 3
    assert "val_top1" in rows[0] and "val_ema_top1" in rows[0]  # the trained and the EMA weights
    assert (out / "best" / "model.safetensors").exists() and (out / "summary.json").exists()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "config.yaml").exists()
    model = mobilevit.from_pretrained(out / "model")
    assert model.num_classes == 2 and model.pretrained_cfg["label_names"] == ["bright", "dark"]
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)


def test_accumulation_halves_the_optimizer_steps(image_data, tmp_path):
    from mobilevit.engine.train import train

    plain = train(tiny_config(image_data, tmp_path / "a", multi_scale=False))
    accumulated = train(tiny_config(image_data, tmp_path / "b", multi_scale=False, accum_steps=2))
    assert plain[-1]["step"] == 4 and accumulated[-1]["step"] == 2


def test_bf16_autocast_and_grad_clip_train(image_data, tmp_path):
    from mobilevit.engine.train import train

    metrics = train(tiny_config(image_data, tmp_path / "run", amp="bf16", grad_clip=1.0, channels_last=True))
    assert math.isfinite(metrics[-1]["train_loss"])


def test_fp16_on_cpu_is_refused(image_data, tmp_path):
    from mobilevit.engine.train import Trainer

    with pytest.raises(ValueError, match="fp16 needs a GPU; on CPU use --amp bf16"):
        Trainer(tiny_config(image_data, tmp_path / "run", amp="fp16"))


def test_fine_tuning_from_a_timm_checkpoint(image_data, tmp_path):
    import timm
    from safetensors.torch import save_file

    from mobilevit.engine.train import train

    path = tmp_path / "timm.safetensors"
    save_file(timm.create_model("mobilevit_xxs").state_dict(), path)
    with pytest.warns(UserWarning, match="1000 classes but the model has 2"):
        metrics = train(tiny_config(image_data, tmp_path / "run", pretrained=str(path)))
    assert metrics[-1]["step"] > 0


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(image_data, tmp_path, monkeypatch):
    from mobilevit.engine import train as train_module
    from mobilevit.errors import NonFiniteLossError

    trainer = train_module.Trainer(tiny_config(image_data, tmp_path / "run", epochs=2))
    original = trainer.train_epoch

    def poisoned_second_epoch():
        if trainer.epoch == 1:
            with torch.no_grad():
                trainer.model.head.fc.bias.fill_(float("nan"))
        return original()

    monkeypatch.setattr(trainer, "train_epoch", poisoned_second_epoch)
    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 2.*last good checkpoint"):
        trainer.fit()
    (good,) = (tmp_path / "run" / "checkpoints").glob("step-*.pt")
    state = torch.load(good, weights_only=True)
    assert state["epoch"] == 1 and all(
        torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
    )


def test_unreadable_image_is_skipped_and_counted_or_stops_with_strict(image_data, tmp_path):
    import shutil

    from mobilevit.engine.train import train
    from mobilevit.errors import UnreadableImageError

    data = tmp_path / "data"
    shutil.copytree(image_data, data)
    (data / "train" / "dark" / "broken.png").write_bytes(b"\x89PNG not really")
    metrics = train(tiny_config(data, tmp_path / "run"))
    assert metrics[-1]["skipped"] == 1
    with pytest.raises(UnreadableImageError, match="cannot read sample .*--strict"):
        train(tiny_config(data, tmp_path / "strict", strict=True))


def test_failed_save_keeps_the_previous_checkpoint(image_data, tmp_path, monkeypatch):
    from mobilevit.engine.train import train

    real_save = torch.save
    calls = []

    def disk_full_after_first(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_after_first)
    with pytest.raises(OSError, match="No space left"):
        train(tiny_config(image_data, tmp_path / "run", epochs=2))
    files = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert len(files) == 1 and files[0].startswith("step-")  # no half-written file beside it
    monkeypatch.undo()
    assert torch.load(tmp_path / "run" / "checkpoints" / files[0], weights_only=True)["epoch"] == 1


def test_eval_cli_reports_metrics_and_writes_confusion_matrix(image_data, tmp_path, capsys):
    """In-process, as the other command tests (tests/test_cli.py runs the installed command itself)."""
    import json

    from mobilevit.cli import main
    from mobilevit.engine.train import train

    train(tiny_config(image_data, tmp_path / "run", epochs=2))
    (checkpoint,) = sorted((tmp_path / "run" / "checkpoints").glob("step-*.pt"))[-1:]
    capsys.readouterr()
    args = ["--data", str(image_data), "--workers", "0", "--output", str(tmp_path / "eval")]
    assert main(["eval", "--checkpoint", str(checkpoint), *args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 16 and 0 <= report["top1"] <= report["top5"] == 1.0
    assert set(report["per_class"]) == {"bright", "dark"}
    assert (tmp_path / "eval" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "model"), *args]) == 0
    text = capsys.readouterr().out
    assert "16 images: top-1" in text and "bright" in text


def test_eval_cli_errors(tmp_path, capsys):
    from mobilevit.cli import main

    assert main(["eval", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_ema_update_with_and_without_warmup():
    from mobilevit.engine.train import ema_update

    ema, current = [torch.zeros(3), torch.zeros(1, dtype=torch.long)], [torch.ones(3), torch.tensor([7])]
    ema_update(0.1, warmup=False)(ema, current, torch.tensor(5))
    assert torch.allclose(ema[0], torch.full((3,), 0.1)) and ema[1].item() == 7
    ema = [torch.zeros(3)]
    ema_update(0.1, warmup=True)(ema, [torch.ones(3)], torch.tensor(0))
    assert torch.allclose(ema[0], torch.full((3,), 0.9))  # step 0: momentum 1 - 1/10
    ema = [torch.zeros(3)]
    ema_update(0.1, warmup=True)(ema, [torch.ones(3)], torch.tensor(10_000))
    assert torch.allclose(ema[0], torch.full((3,), 0.1))  # late: the configured momentum


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="Debian's dataset-fashion-mnist is not installed (scripts/env.sh installs it as root)",
)
def test_learns_real_fashion_mnist(tmp_path, monkeypatch):
    """A short run on 4,000 real Fashion-MNIST images, evaluated on 1,000 test images."""
    from mobilevit.engine.train import train

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MOBILEVIT_DATA", raising=False)
    cfg = tiny_config(
        "fashion-mnist", tmp_path / "run", epochs=2, batch_size=64, multi_scale=False,
        limit_train=4000, limit_val=1000, ema=False, warmup_steps=20, crop_scale=(0.8, 1.0),
    )  # fmt: skip
    metrics = train(cfg)
    assert metrics[-1]["val_top1"] > 0.6, metrics  # chance is 0.1


def test_model_is_the_better_of_trained_and_ema_and_best_is_the_best_epoch(image_data, tmp_path, monkeypatch, caplog):
    import json
    import logging

    from mobilevit.engine import train as train_module
    from mobilevit.tasks.classification import Classification

    trainer = train_module.Trainer(tiny_config(image_data, tmp_path / "run", epochs=2))
    scores = iter([0.9, 0.3, 0.5, 0.6])  # epoch 1: trained, EMA; epoch 2: trained, EMA
    evaluated = []

    def scripted(self, model, loader, num_classes, device):
        evaluated.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"top1": next(scores), "top5": 1.0, "loss": 1.0}

    monkeypatch.setattr(Classification, "evaluate", scripted)
    with caplog.at_level(logging.INFO, logger="mobilevit.engine.train"):
        metrics = trainer.fit()
    assert [(m["val_top1"], m["val_ema_top1"]) for m in metrics] == [(0.9, 0.3), (0.5, 0.6)]
    out = tmp_path / "run"
    model, best = final_weights(out), load_file(out / "best" / "model.safetensors")
    assert all(torch.equal(v, evaluated[3][k]) for k, v in model.items())  # epoch 2's EMA
    assert all(torch.equal(v, evaluated[0][k]) for k, v in best.items())  # epoch 1's trained weights
    assert any(not torch.equal(v, evaluated[3][k]) for k, v in best.items())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == {
        "epoch": 2, "weights": "ema", "metric": "top1", "score": 0.6, "val_top1": 0.5, "val_ema_top1": 0.6
    }  # fmt: skip
    assert (summary["best"]["epoch"], summary["best"]["weights"], summary["best"]["score"]) == (1, "model", 0.9)
    assert "final model/: the EMA weights, val top1 0.6000 (trained (non-EMA) 0.5000)" in caplog.text
    assert "best/: epoch 1, trained (non-EMA) weights, val top1 0.9000" in caplog.text


def test_without_ema_only_the_trained_weights_are_evaluated(image_data, tmp_path):
    from mobilevit.engine.train import train

    metrics = train(tiny_config(image_data, tmp_path / "run", ema=False))
    assert "val_top1" in metrics[-1] and not any(k.startswith("val_ema_") for k in metrics[-1])
    assert (tmp_path / "run" / "best" / "model.safetensors").exists()


def test_warmup_is_capped_at_a_fraction_of_the_run_and_logged(image_data, tmp_path, caplog):
    import logging
    from dataclasses import replace

    from mobilevit.engine.train import Trainer, lr_factor

    options = dict(epochs=2, multi_scale=False, warmup_steps=3000, lr=0.002, warmup_lr=0.0002)
    with caplog.at_level(logging.INFO, logger="mobilevit.engine.train"):
        trainer = Trainer(tiny_config(image_data, tmp_path / "a", warmup_max_fraction=0.5, **options))
    assert (trainer.total_steps, trainer.warmup_steps) == (8, 4)  # 32 images in batches of 8, 2 epochs
    assert "warm-up shortened from 3000 to 4 steps: at most 0.5 of the run's 8 steps" in caplog.text
    assert [round(lr_factor(s, trainer.cfg, 8), 4) for s in (0, 2, 4)] == [0.1, 0.55, 1.0]  # reaches the peak
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mobilevit.engine.train"):
        # None (a recipe's `warmup_max_fraction: null`, as the paper's recipes have) turns the cap off.
        uncapped = Trainer(replace(tiny_config(image_data, tmp_path / "b", **options), warmup_max_fraction=None))
    assert uncapped.warmup_steps == 3000 and "warm-up shortened" not in caplog.text
    assert Trainer(tiny_config(image_data, tmp_path / "c", **options)).warmup_steps == 0  # default 0.1 of 8 steps


def test_fine_tuning_from_published_weights_by_name(image_data, tmp_path, hf_hub_at, monkeypatch):
    """`train --pretrained NAME.TAG`: the published weights (here timm's copy, served offline), a new
    two-class head and the fine-tuning defaults."""
    import timm
    import yaml
    from timm.models._hub import save_for_hf

    from mobilevit.cli import main

    folder = tmp_path / "published"
    save_for_hf(timm.create_model("mobilevit_xxs"), folder, safe_serialization=True)
    for name in ("config.json", "model.safetensors"):
        hf_hub_at.add_hub_file("timm/mobilevit_xxs.cvnets_in1k", name, (folder / name).read_bytes())
    monkeypatch.chdir(tmp_path)  # no config.json here is taken for the weights' own
    out = tmp_path / "run"
    args = ["train", "--data", str(image_data), "--model", "mobilevit_xxs", "--img-size", "32", "--epochs", "1"]
    with pytest.warns(UserWarning, match="1000 classes but the model has 2"):
        assert main([*args, "--workers", "0", "--output", str(out), "--pretrained", "mobilevit_xxs.cvnets_in1k"]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["lr"], config["warmup_steps"], config["min_lr"]) == (0.0009, 500, 1e-6)
    assert mobilevit.from_pretrained(out / "model").num_classes == 2
