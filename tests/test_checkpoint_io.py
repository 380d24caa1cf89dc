"""Checkpoint files (mobilevit.checkpoint_io: read_state_dict, atomic_write) as models load them: every
layout loads through create_model(pretrained=...) and from_pretrained (training checkpoints too), and
every bad file gets a clear error that names the problem (the mismatch errors of models/weights.py
included)."""

from __future__ import annotations

import json
import warnings

import pytest
import timm
import torch
import transformers
from safetensors.torch import save_file

import mobilevit
from mobilevit.checkpoint_io import atomic_write, read_state_dict
from mobilevit.errors import CheckpointError, CheckpointMismatchError
from mobilevit.testing import hf_config, randomize_, structured_images

NAME = "mobilevit_xxs"


@pytest.fixture(scope="module")
def reference():
    """A random timm model, its state dict and its output on structured images."""
    model = randomize_(timm.create_model(NAME), seed=7)
    x = structured_images(2, 128, 160, seed=4)
    with torch.no_grad():
        return model.state_dict(), x, model(x)


@pytest.fixture(scope="module")
def hf_model():
    def calibrate(model):
        model(pixel_values=structured_images(4, 128, 128, seed=123))

    return randomize_(transformers.MobileViTForImageClassification(hf_config(NAME)), 3, calibrate)


def output(model, x):
    with torch.no_grad():
        return model.eval()(x)


WRITERS = {
    "safetensors": lambda sd, d: save_file(sd, d / "w.safetensors") or d / "w.safetensors",
    "pt-bare": lambda sd, d: torch.save(sd, d / "w.pt") or d / "w.pt",
    "pth-state_dict": lambda sd, d: torch.save({"state_dict": sd, "epoch": 3}, d / "w.pth") or d / "w.pth",
    "pth-model": lambda sd, d: torch.save({"model": sd, "args": {"lr": 0.1}}, d / "w.pth") or d / "w.pth",
    "pt-model_state": lambda sd, d: torch.save({"model_state": sd, "step": 10}, d / "w.pt") or d / "w.pt",
}


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_timm_weights_load_from_every_file_layout(reference, tmp_path, layout):
    state, x, expected = reference
    path = WRITERS[layout](state, tmp_path)
    model = mobilevit.create_model(NAME, pretrained=path)
    assert (output(model, x) - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("weights_file", ["model.safetensors", "pytorch_model.bin"])
def test_hugging_face_directory_loads(hf_model, tmp_path, weights_file):
    if weights_file == "model.safetensors":
        hf_model.save_pretrained(tmp_path)
    else:
        hf_model.config.to_json_file(tmp_path / "config.json")
        torch.save(hf_model.state_dict(), tmp_path / weights_file)
    assert (tmp_path / weights_file).exists()
    x = structured_images(2, 96, 96, seed=9)
    with torch.no_grad():
        expected = hf_model(pixel_values=x.flip(1)).logits
    for model in (mobilevit.create_model(NAME, pretrained=tmp_path), mobilevit.from_pretrained(tmp_path)):
        assert model.model_name == NAME
        assert (output(model, x) - expected).abs().max() <= 1e-4


def test_save_pretrained_round_trip(reference, tmp_path):
    state, x, _ = reference
    model = mobilevit.create_model(NAME, drop_rate=0.2, pretrained=tmp_path_write(state, tmp_path))
    model.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["architecture"] == NAME and config["model_args"] == {"drop_rate": 0.2}
    restored = mobilevit.from_pretrained(tmp_path / "saved")
    assert restored.head.drop.p == 0.2
    assert torch.equal(output(restored, x), output(model, x))


def test_features_only_round_trip_and_classifier_weights(reference, tmp_path):
    state, x, _ = reference
    path = tmp_path_write(state, tmp_path)
    backbone = mobilevit.create_model(NAME, features_only=True, out_indices=(1, 3), pretrained=path)
    classifier = mobilevit.create_model(NAME, pretrained=path).eval()
    backbone.save_pretrained(tmp_path / "backbone")
    restored = mobilevit.from_pretrained(tmp_path / "backbone")
    assert restored.out_indices == (1, 3)
    with torch.no_grad():
        trunk = classifier.stages[1](classifier.stages[0](classifier.stem(x)))
        assert torch.equal(output(restored, x)[0], trunk)
        assert torch.equal(output(backbone, x)[0], trunk)


def tmp_path_write(state, directory):
    path = directory / "timm.safetensors"
    save_file(state, path)
    return path


def test_other_class_count_reinitialises_only_the_head(reference, tmp_path):
    state, x, _ = reference
    path = tmp_path_write(state, tmp_path)
    with pytest.warns(UserWarning, match="1000 classes but the model has 5.*re-initialised"):
        model = mobilevit.create_model(NAME, num_classes=5, pretrained=path)
    full = mobilevit.create_model(NAME, pretrained=path)
    assert model.head.fc.weight.shape == (5, 320)
    with torch.no_grad():
        assert torch.equal(model.eval().forward_features(x), full.eval().forward_features(x))


def test_same_class_count_loads_without_warning(reference, tmp_path):
    path = tmp_path_write(reference[0], tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mobilevit.create_model(NAME, pretrained=path)


def test_wrong_size_lists_shape_mismatches(reference, tmp_path):
    path = tmp_path_write(reference[0], tmp_path)
    with pytest.raises(CheckpointMismatchError) as info:
        mobilevit.create_model("mobilevit_xs", pretrained=path)
    err = info.value
    assert err.mismatched and "shape mismatches" in str(err)
    assert ("stages.0.0.expand.conv.weight", (32, 16, 1, 1), (64, 16, 1, 1)) in err.mismatched
    assert not err.missing and not err.unexpected
    assert "head.fc.weight checkpoint (1000, 320) vs model (1000, 384)" in str(err)


def test_missing_and_unexpected_keys_are_listed(reference, tmp_path):
    state = dict(reference[0])
    del state["stem.bn.running_var"]
    state["stages.9.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    save_file(state, path)
    with pytest.raises(CheckpointMismatchError) as info:
        mobilevit.create_model(NAME, pretrained=path)
    assert info.value.missing == ["stem.bn.running_var"]
    assert info.value.unexpected == ["stages.9.extra.weight"]
    assert "missing keys (1): stem.bn.running_var" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.safetensors"):
        mobilevit.create_model(NAME, pretrained=tmp_path / "nope.safetensors")


def test_truncated_safetensors(reference, tmp_path):
    path = tmp_path_write(reference[0], tmp_path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        mobilevit.create_model(NAME, pretrained=path)


def test_corrupt_pickle(tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(b"definitely not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_state_dict(path)


class _Payload:
    """Unpickling this would create a file: proof of code execution."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_with_code_is_refused_and_not_executed(reference, tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": reference[0], "payload": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refusing to load .*weights_only=True"):
        mobilevit.create_model(NAME, pretrained=path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: a careless loader runs it
    assert marker.exists()


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "w.h5"
    path.write_bytes(b"\x89HDF")
    with pytest.raises(CheckpointError, match="unsupported checkpoint file .*w.h5.*safetensors"):
        read_state_dict(path)


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="without model.safetensors or pytorch_model.bin"):
        read_state_dict(tmp_path)
    with pytest.raises(CheckpointError, match="names no architecture"):
        mobilevit.from_pretrained(tmp_path)


def test_checkpoint_without_tensors(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(CheckpointError, match="holds no tensors.*epoch, lr"):
        read_state_dict(path)


def test_from_pretrained_needs_a_self_describing_source(reference, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*model.safetensors"):
        mobilevit.from_pretrained(tmp_path / "model.safetensors")
    torch.save(reference[0], tmp_path / "w.pt")
    for path in (tmp_path_write(reference[0], tmp_path), tmp_path / "w.pt"):
        with pytest.raises(CheckpointError, match=r"plain weights file.*create_model\(NAME, pretrained=path\)"):
            mobilevit.from_pretrained(path)


def training_checkpoint(path, **fields):
    """A checkpoint as ``mobilevit train`` writes it (``step-N.pt``): trained and EMA weights apart."""
    torch.manual_seed(0)
    trained, ema = (randomize_(mobilevit.create_model(NAME, num_classes=3), seed=s).state_dict() for s in (1, 2))
    ema = {**{f"module.{k}": v for k, v in ema.items()}, "n_averaged": torch.tensor(5)}  # AveragedModel's keys
    checkpoint = {"model_name": NAME, "model": trained, "ema": ema, "classes": ["a", "b", "c"], "step": 10}
    torch.save({**checkpoint, "config": {"img_size": 64}, **fields}, path)
    return path


def test_training_checkpoint_loads_its_ema_or_trained_weights(tmp_path):
    path = training_checkpoint(tmp_path / "step-00000010.pt", num_classes=3, model_args={"drop_rate": 0.3})
    raw = torch.load(path, weights_only=True)
    ema = mobilevit.from_pretrained(path)
    trained = mobilevit.from_pretrained(path, weights="model")
    for model, state in ((ema, {k.removeprefix("module."): v for k, v in raw["ema"].items()}), (trained, raw["model"])):
        assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
        assert model.pretrained_cfg["label_names"] == ["a", "b", "c"]
        assert model.pretrained_cfg["input_size"] == (3, 64, 64) and model.head.drop.p == 0.3
    assert not torch.equal(ema.head.fc.weight, trained.head.fc.weight)
    with pytest.raises(ValueError, match="weights must be one of ema, model, got 'best'"):
        mobilevit.from_pretrained(path, weights="best")


def test_training_checkpoint_without_ema_or_class_count(tmp_path):
    """Older or EMA-less runs: the trained weights, and the class count read off the classifier."""
    path = training_checkpoint(tmp_path / "step-00000010.pt", ema=None)
    model = mobilevit.from_pretrained(path)
    assert model.num_classes == 3
    assert torch.equal(model.head.fc.weight, torch.load(path, weights_only=True)["model"]["head.fc.weight"])


def test_class_count_defaults_to_the_checkpoint_classifier(reference, tmp_path):
    """A plain weights file of another class count, no num_classes: the model takes the file's, no warning."""
    model = randomize_(mobilevit.create_model(NAME, num_classes=7))
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = mobilevit.create_model(NAME, pretrained=path)
    assert loaded.num_classes == 7 and loaded.pretrained_cfg["num_classes"] == 7
    assert torch.equal(loaded.head.fc.weight, model.head.fc.weight)
    segmenter = mobilevit.create_model("deeplabv3_mobilevit_xxs", pretrained=path)  # a classifier's head is not its
    assert segmenter.num_classes == 21


def test_atomic_write_keeps_previous_file_on_failure(tmp_path):
    target = tmp_path / "ckpt.safetensors"
    target.write_bytes(b"previous")

    def failing_write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, failing_write)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]


def test_atomic_write_gives_files_the_umask_permissions(tmp_path):
    import os
    from pathlib import Path

    from mobilevit.checkpoint_io import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "f.txt", lambda tmp: Path(tmp).write_text("x"))
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("name", "family", "size"),
    [
        ("mobilevitv2_075", "MobileViTv2", "mobilevitv2_050"),
        ("deeplabv3_mobilevit_xs", "MobileViT v1", "deeplabv3_mobilevit_xxs"),
    ],
)
def test_mismatch_names_the_models_family_and_sizes(tmp_path, name, family, size):
    path = tmp_path / "other.safetensors"
    save_file(mobilevit.create_model(size).state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match=f"one of {size}, .* is a {family} checkpoint"):
        mobilevit.create_model(name, pretrained=path)
