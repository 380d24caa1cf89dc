"""Helpers for parity tests and benchmarks: fully randomised reference models, structured images
and Hugging Face configs of our sizes (like ``torch.testing``, importable by users' own tests)."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from mobilevit.convert import convert_state_dict
from mobilevit.data.classification import fashion_mnist
from mobilevit.data.synthetic import structured_images as structured_images  # re-exported for tests
from mobilevit.models.factory import create_model
from mobilevit.models.mobilevit import MODEL_CONFIGS
from mobilevit.models.mobilevitv2 import V2_CONFIGS


def randomize_(model: nn.Module, seed: int = 0, calibrate: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """Give every parameter and every BatchNorm statistic of ``model`` random values.

    Nothing keeps its default init, so a wrong key mapping, a transposed tensor or a swapped q/k/v
    cannot hide behind ones and zeros. With random statistics alone, deep networks lose the input
    (the logits become nearly constant and any mapping "matches"), so the BatchNorm statistics are
    first measured on structured images by ``calibrate(model)`` and then perturbed at random.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float) -> torch.Tensor:
        return torch.randn(t.shape, generator=gen) * std

    def uniform(t: torch.Tensor, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(t.shape, generator=gen)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(normal(module.weight, 1.0 / math.sqrt(fan_in)))
                if module.bias is not None:
                    module.bias.copy_(normal(module.bias, 0.1))
            elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
                module.weight.copy_(uniform(module.weight, 0.5, 1.5))
                module.bias.copy_(normal(module.bias, 0.2))
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batches
            bn.train()
        (calibrate or _default_calibration)(model)
        for bn in bns:
            bn.eval()
            bn.momentum = 0.1
            bn.running_mean.add_(normal(bn.running_mean, 0.1) * bn.running_var.sqrt())
            bn.running_var.mul_(uniform(bn.running_var, 0.7, 1.3))
    return model


def _default_calibration(model: nn.Module) -> None:
    model(structured_images(4, 128, 128, seed=123))


def converted(name: str, state_dict: dict[str, torch.Tensor], source: str = "auto") -> nn.Module:
    """Our ``name`` in eval mode with another implementation's weights, converted and loaded strictly."""
    model = create_model(name)
    model.load_state_dict(convert_state_dict(state_dict, source))
    return model.eval()


def assert_matches(ours: torch.Tensor, ref: torch.Tensor, tol: float = 1e-4) -> None:
    """``ours`` equals the reference output ``ref`` (a batch of at least two) within ``tol``, max abs.

    The reference's first two outputs must differ by far more than ``tol``: a reference that ignores
    its input (collapsed activations) would match anything and prove nothing.
    """
    assert ours.shape == ref.shape, f"shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    assert (ref[0] - ref[1]).abs().max() > 100 * tol, "reference output ignores the input"
    err = (ours - ref).abs().max().item()
    assert err <= tol, f"max abs difference {err:.2e} > {tol:.2e}"


def write_image_folder(root: Path, per_class: int = 48, val_per_class: int = 8, size: int = 40) -> Path:
    """An ImageFolder dataset (``train/`` and ``val/``) of two classes a model can tell apart in a few
    steps: bright and dark noisy squares, as PNG files. Returns ``root``."""
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for label, level in (("bright", 200), ("dark", 60)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                noise = torch.randint(-40, 40, (size, size, 3), generator=gen)
                Image.fromarray((noise + level).clamp(0, 255).to(torch.uint8).numpy()).save(folder / f"{i}.png")
    return root


def write_fashion_folder(root: Path, classes: range, per_class: int, val_per_class: int) -> Path:
    """A small real ImageFolder: the first ``per_class`` training and ``val_per_class`` test images of
    each of Fashion-MNIST's ``classes``, read by the package's own loader and written as
    ``root/{train,val}/<class>/<n>.png`` (32x32 RGB). Returns ``root``."""
    for split, count, train in (("train", per_class, True), ("val", val_per_class, False)):
        dataset = fashion_mnist(train=train)
        taken = dict.fromkeys(classes, 0)
        for i, label in enumerate(dataset.targets.tolist()):
            if taken.get(label, count) >= count:
                continue
            folder = root / split / dataset.classes[label].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(dataset.data[i].numpy()).resize((32, 32), Image.BILINEAR).convert("RGB")
            image.save(folder / f"{i}.png")
            taken[label] += 1
            if min(taken.values()) >= count:
                break
    return root


def hf_config(name: str):
    """A Hugging Face MobileViTConfig for one of our sizes, built from the published table."""
    import transformers

    cfg = MODEL_CONFIGS[name]
    return transformers.MobileViTConfig(
        hidden_sizes=list(cfg.transformer_dims),
        neck_hidden_sizes=[cfg.stem_channels, *cfg.channels, cfg.last_channels],
        expand_ratio=cfg.expansion,
        hidden_dropout_prob=cfg.transformer_dropout,
        num_labels=1000,
    )


def hf_v2_config(name: str):
    """A Hugging Face MobileViTV2Config for one of our v2 sizes (HF derives every width from the multiplier)."""
    import transformers

    return transformers.MobileViTV2Config(width_multiplier=V2_CONFIGS[name].width_multiplier, num_labels=1000)


# AMD Zen 2: AVX2 without AVX-512 or VNNI, the x86 kind whose integer kernels differ from VNNI CPUs'.
CPU_WITHOUT_VNNI = "EPYC-Rome"
# What runs a file on the emulated CPU, by its suffix: argv is the file, the images (.npy), the outputs (.npy).
_EMULATED_RUNTIME_SCRIPTS = {
    ".onnx": """
import sys, numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
name, x = session.get_inputs()[0].name, np.load(sys.argv[2])
np.save(sys.argv[3], np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))]))
""",
    ".tflite": """
import sys, numpy as np, torch
from mobilevit.export.litert import LiteRTRunner
run, x = LiteRTRunner(sys.argv[1]), torch.from_numpy(np.load(sys.argv[2]))
np.save(sys.argv[3], torch.cat([run(image) for image in x.split(1)]).numpy())
""",
}


def run_on_emulated_cpu(path: str | Path, images: torch.Tensor, cpu: str = CPU_WITHOUT_VNNI) -> torch.Tensor:
    """The first output for each image of an ``.onnx`` file (ONNX Runtime) or a classifier's
    ``.tflite`` file (LiteRT), computed on an emulated x86 ``cpu`` (QEMU user mode, Debian's
    ``qemu-user``): its CPUID is the emulated CPU's, so the runtime takes that CPU's kernels. This
    shows what a file computes on a kind of CPU the machine at hand is not (e.g. AVX2 without VNNI)."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise FileNotFoundError("qemu-x86_64 not found: install QEMU user mode (apt-get install qemu-user)")
    script = _EMULATED_RUNTIME_SCRIPTS.get(Path(path).suffix)
    if script is None:
        raise ValueError(f"{path}: only {', '.join(_EMULATED_RUNTIME_SCRIPTS)} files run on an emulated CPU")
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = Path(tmp) / "x.npy", Path(tmp) / "y.npy"
        np.save(inputs, images.detach().cpu().float().numpy())
        command = [qemu, "-cpu", cpu, sys.executable, "-c", script, str(path), str(inputs), str(outputs)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{path} on an emulated {cpu} failed:\n{done.stderr[-2000:]}")
        return torch.from_numpy(np.load(outputs))
