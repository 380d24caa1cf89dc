"""The ``mobilevit`` command line (mobilevit.cli), run as a user would run it: info and list, and
their errors. The other commands are tested with what they run: train and eval in
engine/test_train.py, predict in test_predict.py, export in export/test_export.py, bench in
export/test_bench.py."""

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
from mobilevit.models.summary import count_macs, count_params


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
    assert main(["info", "mobilevitv3_s"]) == 0
    out = capsys.readouterr().out
    params = re.search(r"parameters: ([\d,]+)", out)
    macs = re.search(r"MACs: +([\d.]+) G", out)
    assert params and int(params[1].replace(",", "")) == count_params(create_model("mobilevitv3_s"))
    assert macs and float(macs[1]) > 0


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
