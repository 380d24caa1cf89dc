"""The ``mobilevit`` command line (mobilevit.cli), run as a user would run it: info and list, and
their errors; which loader the flags of eval, predict and export pick. The other commands are tested
with what they run: train and eval in engine/test_train.py, predict in test_predict.py, export in
export/test_export.py, bench in export/test_bench.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import timm
import torch

from mobilevit import create_model
from mobilevit.cli import main
from mobilevit.export import FORMATS
from mobilevit.export.transformersjs import TRANSFORMERS_JS
from mobilevit.models.summary import count_macs
from mobilevit.testing import randomize_, write_image_folder


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mobilevit", *args], capture_output=True, text=True, timeout=120)


def test_info_table():
    result = run_cli("info", "mobilevit_s")
    assert result.returncode == 0, result.stderr
    assert "parameters: 5,578,632" in result.stdout
    assert "stages.4       32  (1, 160, 8, 8)" in result.stdout


def test_info_json_non_square(capsys):
    assert main(["info", "mobilevit_xxs", "--img-size", "200", "300", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 1_272_024
    assert [s["shape"] for s in info["stages"]] == [
        [1, 16, 100, 150],
        [1, 24, 50, 75],
        [1, 48, 25, 38],
        [1, 64, 13, 19],
        [1, 80, 7, 10],
    ]
    assert [s["stride"] for s in info["stages"]] == [2, 4, 8, 16, 32]
    assert info["macs"] == count_macs(timm.create_model("mobilevit_xxs").eval(), torch.zeros(1, 3, 200, 300))


def test_info_prints_params_and_macs_of_v3(capsys):
    """The figures published for MobileViTv3-0.5 (arXiv 2209.15159): 1.4 M parameters (the exact count
    of the official config) and 0.481 GMACs at 256x256."""
    assert main(["info", "mobilevitv3_050"]) == 0
    out = capsys.readouterr().out
    params = re.search(r"parameters: ([\d,]+)", out)
    macs = re.search(r"MACs: +([\d.]+) G", out)
    assert "mobilevitv3_050 at 256x256" in out
    assert params and params[1] == "1,429,985"
    assert macs and float(macs[1]) == pytest.approx(0.481, rel=0.01)


def test_list(capsys):
    assert main(["list", "*mobilevit_xxs"]) == 0
    assert capsys.readouterr().out.split() == ["deeplabv3_mobilevit_xxs", "mobilevit_xxs", "ssdlite_mobilevit_xxs"]
    assert main(["list", "ssdlite_mobilevit_*", "--task", "detection"]) == 0
    assert capsys.readouterr().out.split() == [f"ssdlite_mobilevit_{s}" for s in ("s", "xs", "xxs")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "mobilevit_m"], "unknown model 'mobilevit_m'. Did you mean mobilevit_s or mobilevit_xs"),
        (["info", "mobilevit_q"], "Valid names: deeplabv3_mobilevit_s, "),
        (["info", "mobilevit_s", "--img-size", "16", "16"], "at least 32"),
    ],
)
def test_errors_exit_2_with_a_message(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_image_size_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exited:  # argparse's exit, in-process: test_info_table runs the command itself
        main(["info", "mobilevit_s", "--img-size", "0", "10"])
    assert exited.value.code == 2
    assert "image size must be positive" in capsys.readouterr().err


# -- loading: --checkpoint / --pretrained / --model / --weights map to create_model or from_pretrained -------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A training checkpoint of a two-class model whose trained and EMA weights differ, the same two sets
    of weights saved as model directories, and images of the two classes."""
    root = tmp_path_factory.mktemp("run")
    data = write_image_folder(root / "data", per_class=1, val_per_class=4, size=32)
    weights = {name: randomize_(create_model("mobilevit_xxs", num_classes=2), seed=s) for s, name in enumerate("ab")}
    dirs = {}
    for name, model in weights.items():
        model.pretrained_cfg.update(label_names=["bright", "dark"], input_size=(3, 32, 32))
        dirs[name] = model.save_pretrained(root / name)
    ema = {f"module.{k}": v for k, v in weights["b"].state_dict().items()}  # AveragedModel's keys
    checkpoint = {"model_name": "mobilevit_xxs", "model": weights["a"].state_dict(), "ema": ema, "num_classes": 2}
    torch.save({**checkpoint, "classes": ["bright", "dark"], "config": {"img_size": 32}}, root / "step-00000010.pt")
    return root / "step-00000010.pt", dirs, data


def eval_report(capsys, tmp_path, *args: str) -> dict:
    assert main(["eval", *args, "--workers", "0", "--output", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    del report["checkpoint"]
    return report


def test_eval_takes_the_ema_or_the_trained_weights_of_a_training_checkpoint(run, capsys, tmp_path):
    checkpoint, dirs, data = run
    ema = eval_report(capsys, tmp_path, "--checkpoint", str(checkpoint), "--data", str(data))
    trained = eval_report(capsys, tmp_path, "--checkpoint", str(checkpoint), "--data", str(data), "--weights", "model")
    assert ema == eval_report(capsys, tmp_path, "--checkpoint", str(dirs["b"]), "--data", str(data))
    assert trained == eval_report(capsys, tmp_path, "--checkpoint", str(dirs["a"]), "--data", str(data))
    assert ema["loss"] != trained["loss"]


def test_a_plain_weights_file_needs_model_to_name_it(run, capsys, tmp_path):
    _, dirs, data = run
    weights = str(dirs["b"] / "model.safetensors")
    assert main(["eval", "--checkpoint", weights, "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "plain weights file" in err and "--model NAME" in err
    args = ["--data", str(data), "--img-size", "32"]
    named = eval_report(capsys, tmp_path, "--checkpoint", weights, "--model", "mobilevit_xxs", *args)
    assert named == eval_report(capsys, tmp_path, "--checkpoint", str(dirs["b"]), *args)


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_model_must_name_what_the_checkpoint_holds(run, capsys, tmp_path, command):
    _, dirs, _ = run
    args = {"eval": [], "predict": [str(tmp_path / "image.png")], "export": ["--format", "onnx", "-o", "m.onnx"]}
    assert main([command, *args[command], "--checkpoint", str(dirs["a"]), "--model", "mobilevit_s"]) == 2
    assert f"--model mobilevit_s but {dirs['a']} holds a mobilevit_xxs" in capsys.readouterr().err


def test_a_source_that_cannot_be_fetched_is_an_error_not_a_traceback(hub_offline, capsys):
    """``owner/name`` that is no local path is a Hub repo id; offline and not cached, it cannot be loaded."""
    assert main(["predict", "photo.jpg", "--checkpoint", "runs/model"]) == 2
    err = capsys.readouterr().err
    assert "runs/model: model.safetensors or pytorch_model.bin is not in the Hugging Face cache" in err
    assert "Traceback" not in err


def test_help_names_every_export_format(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    described = capsys.readouterr().out.lower().replace(" ", "")
    formats = (*FORMATS, TRANSFORMERS_JS)
    assert FORMATS and all(fmt in described for fmt in formats), (formats, described)
