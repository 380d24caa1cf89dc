"""Prediction (mobilevit.predict) and ``mobilevit predict`` on real photos (scikit-image's samples):
loading checkpoints, class names, top-k, bad files (every task), the task check, JSON output and the
ONNX Runtime backend. What segmentation and detection write for an image is tested with their tasks
(tasks/test_segmentation_task.py, tasks/test_detection_task.py), preprocessing in data/test_images.py."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from mobilevit import create_model, from_pretrained
from mobilevit.cli import main
from mobilevit.data.images import preprocess, read_image
from mobilevit.predict import predict
from mobilevit.tasks.classification import imagenet_class_names
from mobilevit.testing import randomize_, structured_images

LABELS = [f"label {i}" for i in range(6)]
SIZE = 64  # a small input keeps the tests fast


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A training output: save_pretrained with the class names training stores in pretrained_cfg."""
    model = randomize_(create_model("mobilevit_xxs", num_classes=len(LABELS)))
    model.pretrained_cfg.update(label_names=LABELS, input_size=(3, SIZE, SIZE))
    return model.save_pretrained(tmp_path_factory.mktemp("run") / "model")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["predict", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_for_good_images_and_errors_for_bad_ones(capsys, photos, model_dir):
    images = [photos[k] for k in ("astronaut", "truncated", "camera", "missing", "chelsea", "rgba")]
    code, out, err = run_cli(capsys, *images, "--checkpoint", str(model_dir), "--topk", "3")
    assert code == 2  # some images failed, the others were still classified
    assert "truncated.jpg" in err and "missing.png" in err and "No such file" in err
    for key in ("astronaut", "camera", "chelsea", "rgba"):
        assert photos[key] in out
    assert "truncated" not in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("1 ", "2 ", "3 "))]
    assert len(rows) == 4 * 3
    assert {" ".join(row[1:-1]) for row in rows} <= set(LABELS)


def test_json_matches_the_model(capsys, photos, model_dir):
    images = [photos["chelsea"], photos["missing"], photos["coffee"]]
    code, out, _ = run_cli(capsys, *images, "--checkpoint", str(model_dir), "--topk", "4", "--json")
    assert code == 2
    report = json.loads(out)
    assert [e["image"] for e in report["errors"]] == [photos["missing"]]
    assert [r["image"] for r in report["results"]] == [photos["chelsea"], photos["coffee"]]
    model = from_pretrained(model_dir).eval()
    for result in report["results"]:
        x = preprocess(read_image(result["image"]), model.pretrained_cfg)
        assert x.shape == (3, SIZE, SIZE)
        with torch.no_grad():
            probs = model(x[None]).softmax(1)[0]
        top = probs.topk(4)
        preds = result["predictions"]
        assert [p["index"] for p in preds] == top.indices.tolist()
        assert [p["label"] for p in preds] == [LABELS[i] for i in top.indices.tolist()]
        assert [p["prob"] for p in preds] == pytest.approx(top.values.tolist(), abs=1e-5)  # batched vs one image


def test_all_good_images_exit_zero(capsys, photos, model_dir):
    code, out, err = run_cli(capsys, photos["astronaut"], "--checkpoint", str(model_dir), "--topk", "10")
    assert code == 0 and not err
    assert len([line for line in out.splitlines() if "%" in line]) == len(LABELS)  # top-k capped at the classes


def test_training_checkpoint_file(capsys, photos, tmp_path):
    state = create_model("mobilevit_xxs", num_classes=3).state_dict()
    checkpoint = {"model_name": "mobilevit_xxs", "model": state, "ema": None, "classes": ["a", "b", "c"]}
    torch.save({**checkpoint, "config": {"img_size": SIZE}}, tmp_path / "step-00000010.pt")
    code, out, _ = run_cli(capsys, photos["coffee"], "--checkpoint", str(tmp_path / "step-00000010.pt"), "--json")
    assert code == 0
    assert {p["label"] for p in json.loads(out)["results"][0]["predictions"]} == {"a", "b", "c"}


def test_published_weights_file_gets_imagenet_names(capsys, photos, tmp_path):
    from safetensors.torch import save_file

    save_file(create_model("mobilevit_xxs").state_dict(), tmp_path / "weights.safetensors")
    argv = [photos["chelsea"], "--pretrained", str(tmp_path / "weights.safetensors"), "--model", "mobilevit_xxs"]
    code, out, _ = run_cli(capsys, *argv, "--json", "--topk", "2")
    assert code == 0
    (result,) = json.loads(out)["results"]
    imagenet = imagenet_class_names()
    assert imagenet[0] == "tench" and imagenet[281] == "tabby" and len(imagenet) == 1000
    assert [p["label"] for p in result["predictions"]] == [imagenet[p["index"]] for p in result["predictions"]]


def test_plain_weights_file_needs_the_model_name(capsys, photos, tmp_path):
    from safetensors.torch import save_file

    save_file(create_model("mobilevit_xxs").state_dict(), tmp_path / "weights.safetensors")
    code, _, err = run_cli(capsys, photos["chelsea"], "--pretrained", str(tmp_path / "weights.safetensors"))
    assert code == 2 and "--model" in err


@pytest.mark.slow  # a dynamic ONNX export of its own
def test_onnxruntime_gives_the_eager_top_k(photos, model_dir):
    pytest.importorskip("onnxruntime")
    model = from_pretrained(model_dir).eval()
    images = [photos[k] for k in ("astronaut", "chelsea", "camera", "missing")]
    eager, eager_errors = predict(images, model, LABELS, k=3)
    onnx, onnx_errors = predict(images, model, LABELS, k=3, backend="onnxruntime")
    assert eager_errors == onnx_errors and len(eager) == 3
    for a, b in zip(eager, onnx, strict=True):
        assert [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]
        assert [p["prob"] for p in a["predictions"]] == pytest.approx([p["prob"] for p in b["predictions"]], abs=1e-5)


def test_unknown_backend_is_refused(model_dir):
    with pytest.raises(ValueError, match="onnxruntime"):
        predict([], create_model("mobilevit_xxs", num_classes=2), ["a", "b"], backend="tflite")


def test_the_model_names_its_own_classes(photos, model_dir):
    """``predict(paths, model)``: the labels saved with the model, no names passed."""
    model = from_pretrained(model_dir)
    (result,), errors = predict([photos["chelsea"]], model)
    assert not errors and result["predictions"]
    assert [p["label"] for p in result["predictions"]] == [LABELS[p["index"]] for p in result["predictions"]]
    published = create_model("mobilevit_xxs")  # 1000 classes and no names of its own: ImageNet's
    (result,), _ = predict([photos["chelsea"]], published, k=1)
    assert result["predictions"][0]["label"] == imagenet_class_names()[result["predictions"][0]["index"]]


def test_names_that_do_not_fit_the_model_are_refused(photos, model_dir):
    with pytest.raises(ValueError, match="2 class names for a model of 6 classes"):
        predict([photos["chelsea"]], from_pretrained(model_dir), ["a", "b"])


@pytest.mark.parametrize("name", ["mobilevitv2_050", "mobilevitv3_xxs"])
def test_predict_with_a_v2_or_v3_checkpoint(capsys, tmp_path, name):
    labels = [f"label {i}" for i in range(5)]
    model = randomize_(create_model(name, num_classes=len(labels)))
    model.pretrained_cfg.update(label_names=labels, input_size=(3, 64, 64))
    checkpoint = model.save_pretrained(tmp_path / name)
    image = tmp_path / "image.png"
    Image.fromarray((structured_images(1, 80, 96)[0].permute(1, 2, 0) * 255).byte().numpy()).save(image)
    assert main(["predict", str(image), "--checkpoint", str(checkpoint), "--topk", "3", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    reloaded = from_pretrained(checkpoint).eval()
    assert type(reloaded) is type(model)
    with torch.no_grad():
        top = reloaded(preprocess(read_image(image), reloaded.pretrained_cfg)[None]).softmax(1)[0].topk(3)
    assert [p["label"] for p in result["predictions"]] == [labels[i] for i in top.indices.tolist()]
    assert [p["prob"] for p in result["predictions"]] == pytest.approx(top.values.tolist(), abs=1e-5)


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_unreadable_images_are_reported_and_the_others_processed(capsys, photos, seg_dir, det_dir, tmp_path, task):
    model_dir = seg_dir if task == "segmentation" else det_dir
    images = [photos["truncated"], photos["small_astronaut"], photos["missing"]]
    code, out, err = run_cli(capsys, *images, "--checkpoint", str(model_dir), "--output-dir", str(tmp_path), "--json")
    assert code == 2
    assert "truncated.jpg" in err and "missing.png" in err and "No such file" in err
    report = json.loads(out)
    assert [e["image"] for e in report["errors"]] == [photos["truncated"], photos["missing"]]
    assert [r["image"] for r in report["results"]] == [photos["small_astronaut"]]
    written = sorted(p.name for p in tmp_path.iterdir())
    expected = ["astronaut_mask.png", "astronaut_overlay.png"] if task == "segmentation" else ["astronaut_boxes.png"]
    assert written == expected


def test_task_mismatch_is_an_error(capsys, photos, seg_dir):
    code, out, err = run_cli(capsys, photos["small_astronaut"], "--checkpoint", str(seg_dir), "--task", "detection")
    assert code == 2 and not out
    assert "--task detection, but" in err and "holds a segmentation model (deeplabv3_mobilevit_xxs)" in err
