"""The core install (``pip install mobilevit``, no extras) loads, runs and exports models; training and the
evaluations that plot or score with the train extra say which extra to install.

Each check runs in a subprocess where the train extra's packages cannot be imported, as if they were not
installed: ``sys.modules[name] = None`` makes ``import name`` (and the import of any of its submodules) raise
ModuleNotFoundError. Its results are compared with the same calls made here, with everything installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from packaging.requirements import Requirement
from PIL import Image

import mobilevit
from mobilevit.errors import require_extra
from mobilevit.hub import URL_MIRROR_ENV
from mobilevit.predict import predict
from mobilevit.testing import assert_matches, randomize_, structured_images

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"
CORE = {"torch", "torchvision", "safetensors", "huggingface-hub", "numpy", "pyyaml", "tqdm", "pillow"}
TRAIN_STACK = ("tensorboard", "matplotlib", "torchmetrics", "pycocotools")  # import names = distribution names
HINT = "pip install 'mobilevit[train]'"
BLOCK = f"import sys\nfor name in {TRAIN_STACK!r}:\n    sys.modules[name] = None\n"
CLI = BLOCK + "from mobilevit.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def run_core(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``code`` (with ``args`` as sys.argv[1:]) run by this Python without the train extra's packages."""
    command = [sys.executable, "-c", BLOCK + textwrap.dedent(code), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=600)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def requirement_names(requirements: list[str]) -> set[str]:
    return {Requirement(r).name.lower().replace("_", "-") for r in requirements}


def test_the_core_dependencies_are_the_light_set_and_train_holds_the_rest():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    extras = project["optional-dependencies"]
    assert requirement_names(project["dependencies"]) == CORE
    assert requirement_names(extras["train"]) == set(TRAIN_STACK)  # what the subprocesses here block
    assert "train" in Requirement(extras["test"][0]).extras


def test_require_extra_passes_an_installed_module_and_names_the_install_of_a_missing_one():
    require_extra("train", "Plotting", "json", "email.mime")
    with pytest.raises(ImportError, match=r"^Plotting needs no_such_module \(.*\): pip install 'mobilevit\[train\]'$"):
        require_extra("train", "Plotting", "json", "no_such_module")


def test_the_blocker_blocks(tmp_path):
    """Without this, every test below could pass with the training stack loaded."""
    code = """
        import importlib
        for name in ("tensorboard", "torch.utils.tensorboard", "matplotlib.figure", "torchmetrics.detection",
                     "pycocotools.coco"):
            try:
                importlib.import_module(name)
            except ModuleNotFoundError:
                print(name, "blocked")
            else:
                print(name, "imported")
    """
    result = run_core(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:-1] == [
        "tensorboard blocked",
        "torch.utils.tensorboard blocked",
        "matplotlib.figure blocked",
        "torchmetrics.detection blocked",
        "pycocotools.coco blocked",
    ]


@pytest.fixture
def timm_xxs_served(hf_hub_at, monkeypatch, tmp_path):
    """Random weights in timm's Hub layout, served as mobilevit_xxs's published weights to subprocesses
    (hf_hub_at sets the environment they inherit)."""
    monkeypatch.setenv(URL_MIRROR_ENV, hf_hub_at.mirror)
    model = randomize_(timm.create_model("mobilevit_xxs"), seed=1).eval()
    folder = tmp_path / "timm_xxs"
    timm.models._hub.save_for_hf(model, folder, safe_serialization=True)
    for name in ("config.json", "model.safetensors"):
        hf_hub_at.add_hub_file("timm/mobilevit_xxs.cvnets_in1k", name, (folder / name).read_bytes())
    return model


def test_models_published_weights_and_predict_of_every_task(timm_xxs_served, photos, seg_dir, det_dir, tmp_path):
    code = """
        import json
        import torch
        import mobilevit
        from mobilevit.predict import predict

        photo, seg_dir, det_dir = sys.argv[1:]
        assert mobilevit.create_model("mobilevit_xxs").num_classes == 1000
        model = mobilevit.create_model("mobilevit_xxs", pretrained=True).eval()
        with torch.no_grad():
            torch.save(model(torch.load("x.pt")), "logits.pt")
        results = {
            "classification": predict([photo], model),
            "segmentation": predict([photo], mobilevit.from_pretrained(seg_dir), output_dir="seg"),
            "detection": predict([photo], mobilevit.from_pretrained(det_dir), output_dir="det"),
        }
        print(json.dumps(results))
    """
    x = structured_images(2, 256, 256, seed=3)
    torch.save(x, tmp_path / "x.pt")
    result = run_core(code, photos["coffee"], str(seg_dir), str(det_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    with torch.no_grad():
        assert_matches(torch.load(tmp_path / "logits.pt"), timm_xxs_served(x))
    published = mobilevit.create_model("mobilevit_xxs", pretrained=True)
    seg, det = mobilevit.from_pretrained(seg_dir), mobilevit.from_pretrained(det_dir)
    here = {
        "classification": predict([photos["coffee"]], published),
        "segmentation": predict([photos["coffee"]], seg, output_dir=tmp_path / "seg_here"),
        "detection": predict([photos["coffee"]], det, output_dir=tmp_path / "det_here"),
    }
    for task, (results, errors) in here.items():
        theirs, their_errors = found[task]
        assert their_errors == errors == []
        assert labelled(theirs) == labelled(results)
        assert measured(theirs) == pytest.approx(measured(results), abs=1e-3)
    assert len(measured(found["detection"][0])) > 4  # boxes were found and compared
    mask = found["segmentation"][0][0]["mask_png"]
    assert Image.open(tmp_path / mask).size == Image.open(photos["coffee"]).size


def labelled(results: list[dict]) -> list[tuple[str, int]]:
    """The (label, index) pairs of every image's predictions, classes or detections, in order."""
    items = [i for r in results for i in r.get("predictions", []) + r.get("classes", []) + r.get("detections", [])]
    return [(i["label"], i["index"]) for i in items]


def measured(results: list[dict]) -> list[float]:
    """The probabilities, class fractions, scores and box corners of every image, in order."""
    items = [i for r in results for i in r.get("predictions", []) + r.get("classes", []) + r.get("detections", [])]
    return [x for i in items for x in (i.get("prob", i.get("fraction", i.get("score"))), *i.get("box", ()))]


def test_cli_help_and_onnx_export(tmp_path):
    help_text = run_cli("--help", cwd=tmp_path)
    assert help_text.returncode == 0 and "predict" in help_text.stdout
    args = ["export", "--model", "mobilevit_xxs", "--format", "onnx", "--img-size", "64", "64", "-o", "m.onnx"]
    exported = run_cli(*args, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "m.onnx").stat().st_size > 1_000_000  # the weights are in the file


def test_training_names_the_train_extra_before_reading_data(tmp_path):
    result = run_cli("train", "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("mobilevit train: error: Training needs tensorboard (")
    assert HINT in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_evaluations_that_plot_or_score_with_the_train_extra_name_it_before_reading_data(tmp_path, det_dir):
    # The data folders do not exist: the extra is checked first, so the run fails on it, not on the data.
    classifier = randomize_(mobilevit.create_model("mobilevit_xxs", num_classes=2))
    classifier.save_pretrained(tmp_path / "classifier")
    out = tmp_path / "eval"
    args = ["--checkpoint", str(tmp_path / "classifier"), "--data", str(tmp_path / "nowhere"), "--output", str(out)]
    classification = run_cli("eval", *args, cwd=tmp_path)
    assert classification.returncode == 2
    assert "error: Classification evaluation needs matplotlib (" in classification.stderr
    assert HINT in classification.stderr and not out.exists()

    detection = run_cli("eval", "--checkpoint", str(det_dir), "--data", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert detection.returncode == 2
    assert "error: Detection evaluation needs torchmetrics (" in detection.stderr and HINT in detection.stderr
