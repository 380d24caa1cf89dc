"""Training: a killed run resumes to exactly the weights of an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file


def make_image_folder(root: Path, per_class: int = 48, size: int = 40) -> Path:
    """Two classes a model can tell apart: bright squares and dark squares, with noise."""
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for label, level in (("bright", 200), ("dark", 60)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(per_class if split == "train" else 8):
                noise = torch.randint(-40, 40, (size, size, 3), generator=gen)
                pixels = (noise + level).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


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
    data = make_image_folder(tmp_path / "data")
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
    import mobilevit

    torch.manual_seed(0)
    return mobilevit.create_model("mobilevit_xxs", num_classes=2).state_dict()
