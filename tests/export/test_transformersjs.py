"""The transformers.js export (mobilevit/export/transformersjs.py, ``mobilevit export --format transformers.js``):
its JSON files against what transformers.js reads, its ONNX files, its errors, and the folder run by
transformers.js itself in Node.js (tests/js/classify.mjs: ``pipeline('image-classification', DIR)``,
local files only) on PNG files, against PyTorch on the same files.

The PNGs are structured images padded to the shortest edge the preprocessor resizes to: transformers.js's
resize is then a no-op and both centre crops give the image back, so both sides see the same pixels
(their resize filters differ: docs/deployment.md). The models' heads give each image its own class and
spread the other logits 0.3 apart, so that neither the top-5 order nor fp16's top-1 hangs on a near-tie;
the q8 file is compared with ONNX Runtime running the same file.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ci_skips import ALLOWED_SKIPS
from mobilevit import create_model, from_pretrained
from mobilevit.cli import main
from mobilevit.data.transforms import pretrained_transform
from mobilevit.export import FP32_TOLERANCE
from mobilevit.export.onnx import OnnxRunner
from mobilevit.export.transformersjs import (
    DTYPE_FILES,
    PIXEL_VALUES,
    TRANSFORMERS_JS,
    export_transformersjs,
    label_names,
    model_config,
    preprocessor_config,
    rename_input,
)
from mobilevit.hub import URL_MIRROR_ENV
from mobilevit.testing import randomize_, structured_images

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

JS = Path(__file__).resolve().parents[1] / "js"
SIZE = 96  # shortest edge int(96 / crop_pct): 106 for v1 (0.9), 108 for v2 (0.888); even margins, so both crops agree
SPREAD = 0.3  # between the logits of the classes an image is not


def node_or_skip(js: Path = JS) -> str:
    """Node.js, with transformers.js installed in ``js``; else a skip that says what to install (CI fails
    on it: scripts/env.sh installs both there)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: the transformers.js test needs node and npm (scripts/env.sh test)")
    if not (js / "node_modules" / "@huggingface" / "transformers").is_dir():
        pytest.skip(
            f"{js}/node_modules is missing: run npm ci --ignore-scripts --prefix tests/js (scripts/env.sh test)"
        )
    return node


def classify(folder: Path, images: list[Path], dtype: str = "fp32") -> list[list[dict]]:
    """transformers.js's top-5 ``[{label, score}]`` of each image, from the folder's ``dtype`` file."""
    node = node_or_skip()
    command = [node, str(JS / "classify.mjs"), str(folder), *map(str, images), "--dtype", dtype]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=JS)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def spread_classifier(int8_classifier, fitted_head):
    """``spread_classifier(name)``: a randomised ``name`` whose head gives each of 8 structured SIZE x SIZE
    images its own class (logit margin 4) and spreads the other logits SPREAD apart, its classes named;
    and those images, in 8 bits as the PNGs hold them. The head is fitted to the 8-bit pixels: fitted to
    the float ones, v2's logits on the PNGs move by more than SPREAD."""

    def build(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
        model, images = int8_classifier(name, size=SIZE)
        images = (images * 255).round() / 255
        model = fitted_head(model, images)
        with torch.no_grad():
            model.head.fc.bias += SPREAD * torch.arange(model.num_classes)
        model.pretrained_cfg["label_names"] = [f"shape {i}" for i in range(model.num_classes)]
        return model, images

    return build


def write_pngs(model: torch.nn.Module, images: torch.Tensor, folder: Path) -> list[Path]:
    """Each image, edge-padded on every side to the shortest edge the model's preprocessor resizes to (so
    that transformers.js and PyTorch leave it as it is), as an 8-bit PNG."""
    shortest_edge = preprocessor_config(model.pretrained_cfg, tuple(images.shape[-2:]))["size"]["shortest_edge"]
    margin = (shortest_edge - images.shape[-1]) // 2
    assert 2 * margin == shortest_edge - images.shape[-1], "an odd margin: the two centre crops would differ"
    padded = F.pad(images, (margin,) * 4, mode="replicate")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(padded):
        pixels = (image * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        paths.append(folder / f"{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def pytorch_inputs(model: torch.nn.Module, pngs: list[Path], size: int = SIZE) -> torch.Tensor:
    """The PNGs preprocessed as the model's ``pretrained_cfg`` says, at ``size``."""
    transform = pretrained_transform({**model.pretrained_cfg, "input_size": (3, size, size)})
    return torch.stack([transform(Image.open(p)) for p in pngs])


def pytorch_top5(model: torch.nn.Module, x: torch.Tensor) -> list[list[tuple[str, float]]]:
    names = label_names(model)
    with torch.no_grad():
        probs, indices = model.eval()(x).softmax(1).topk(5)
    return [
        [(names[i], p) for p, i in zip(ps.tolist(), ids.tolist(), strict=True)]
        for ps, ids in zip(probs, indices, strict=True)
    ]


def assert_top5_matches(js: list[list[dict]], expected: list[list[tuple[str, float]]]) -> None:
    assert [[r["label"] for r in row] for row in js] == [[label for label, _ in row] for row in expected]
    diff = max(
        abs(r["score"] - p) for row, ref in zip(js, expected, strict=True) for r, (_, p) in zip(row, ref, strict=True)
    )
    assert diff <= 1e-3, diff


def top1(rows: list[list[dict]]) -> list[str]:
    return [row[0]["label"] for row in rows]


def assert_q8_is_onnxruntimes(js: list[list[dict]], q8: Path, x: torch.Tensor, names: list[str]) -> None:
    """The q8 file in transformers.js gives what ONNX Runtime gives it here: the same top-1 and, for each
    class it lists, nearly the same probability. Not the same: transformers.js 4.2's onnxruntime-node
    (1.24) does not compute v1's int8 graph exactly as this machine's ONNX Runtime does (up to 0.042 apart
    measured; v2's agree exactly), while a wrong file or preprocessing would change the top-1."""
    logits = OnnxRunner(q8)(x)
    assert top1(js) == [names[i] for i in logits.argmax(1).tolist()]
    probs = logits.softmax(1)
    diff = max(abs(r["score"] - probs[i, names.index(r["label"])].item()) for i, row in enumerate(js) for r in row)
    assert diff <= 0.1, diff


# the files, against what transformers.js reads


def test_config_names_the_model_type_and_labels():
    v1, v2 = create_model("mobilevit_xxs", num_classes=3), create_model("mobilevitv2_050", num_classes=3)
    v1.pretrained_cfg["label_names"] = ["cat", "dog", "bird"]
    config = model_config(v1, (256, 256))
    assert config["model_type"] == "mobilevit" and config["architectures"] == ["MobileViTForImageClassification"]
    assert config["id2label"] == {"0": "cat", "1": "dog", "2": "bird"}
    assert config["label2id"] == {"cat": 0, "dog": 1, "bird": 2}
    assert config["transformers.js_config"] == {"dtype": "fp32"}  # not q8, the browsers' default
    assert (config["mobilevit_model"], config["image_size"], config["num_channels"]) == ("mobilevit_xxs", 256, 3)
    config = model_config(v2, (192, 256))
    assert config["model_type"] == "mobilevitv2" and config["architectures"] == ["MobileViTV2ForImageClassification"]
    assert config["id2label"] == {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}  # Hugging Face's names
    assert config["image_size"] == [192, 256]


def test_imagenet_classifiers_get_imagenet_names_and_v3_its_base_family():
    """As ``mobilevit predict`` labels them; MobileViTv3 has no Hugging Face model_type."""
    names = model_config(create_model("mobilevit_xxs"), (256, 256))["id2label"]
    assert len(names) == 1000 and names["0"] == "tench" and names["999"] == "toilet tissue"
    assert model_config(create_model("mobilevitv3_xxs", num_classes=2), (256, 256))["model_type"] == "mobilevit"
    assert model_config(create_model("mobilevitv3_050", num_classes=2), (256, 256))["model_type"] == "mobilevitv2"


def test_preprocessor_config_is_our_evaluation_transform():
    cfg = create_model("mobilevit_xxs").pretrained_cfg  # as every published tag: 0.9, bicubic, RGB
    assert preprocessor_config(cfg, (256, 256)) == {
        "image_processor_type": "MobileViTImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": 284},  # int(256 / 0.9), as eval_transform
        "resample": 3,  # PIL's bicubic
        "do_center_crop": True,
        "crop_size": {"height": 256, "width": 256},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.0, 0.0, 0.0],
        "image_std": [1.0, 1.0, 1.0],
        "do_flip_channel_order": False,  # RGB: Hugging Face's MobileViT processor would flip to BGR
    }
    bilinear = {**cfg, "interpolation": "bilinear", "crop_pct": 1.0}
    config = preprocessor_config(bilinear, (160, 224))
    assert (config["resample"], config["size"], config["crop_size"]) == (
        2,
        {"shortest_edge": 224},
        {"height": 160, "width": 224},
    )


def test_a_bgr_models_mean_and_std_follow_the_flip():
    """Ours flips, then normalizes with the model's (BGR) channel order; transformers.js normalizes in RGB
    order, then flips: the per-channel values must be reversed to land on the same channels."""
    cfg = {"input_size": (3, 64, 64), "channel_order": "BGR", "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}
    config = preprocessor_config(cfg, (64, 64))
    assert config["do_flip_channel_order"] is True
    assert (config["image_mean"], config["image_std"]) == ([0.3, 0.2, 0.1], [0.6, 0.5, 0.4])


def test_an_interpolation_transformersjs_lacks_is_refused():
    with pytest.raises(ValueError, match="transformers.js cannot resize with 'lanczos' interpolation"):
        preprocessor_config({"interpolation": "lanczos"}, (64, 64))


def test_rename_input_keeps_the_graph_and_refuses_other_outputs(tmp_path):
    from onnx import TensorProto, helper

    def graph(output: str):
        node = helper.make_node("Relu", ["input"], [output])
        value = helper.make_tensor_value_info
        return helper.make_model(
            helper.make_graph(
                [node],
                "g",
                [value("input", TensorProto.FLOAT, [1, 2])],
                [value(output, TensorProto.FLOAT, [1, 2])],
            )
        )

    onnx.save(graph("logits"), tmp_path / "a.onnx")
    renamed = onnx.load(rename_input(tmp_path / "a.onnx", tmp_path / "b.onnx"))
    assert [i.name for i in renamed.graph.input] == [PIXEL_VALUES] and list(renamed.graph.node[0].input) == [
        PIXEL_VALUES
    ]
    x = torch.tensor([[-1.0, 2.0]])
    assert torch.equal(OnnxRunner(tmp_path / "b.onnx")(x), torch.tensor([[0.0, 2.0]]))
    onnx.save(graph("scores"), tmp_path / "c.onnx")
    with pytest.raises(ValueError, match="outputs \\['scores'\\], but transformers.js reads one output named 'logits'"):
        rename_input(tmp_path / "c.onnx", tmp_path / "d.onnx")


# errors


def test_segmentation_and_detection_are_refused(tmp_path):
    for name, task in (("deeplabv3_mobilevit_xxs", "segmentation"), ("ssdlite_mobilevit_xxs", "detection")):
        with pytest.raises(ValueError, match=f"transformers.js has no MobileViT {task} model"):
            export_transformersjs(create_model(name), tmp_path / name)
        assert not (tmp_path / name).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "deeplabv3_mobilevit_xxs"], "transformers.js export is for classifiers"),
        (["--model", "mobilevit_xxs", "--precision", "fp16"], "--precision does not apply to transformers.js"),
        (["--model", "mobilevit_xxs", "--int8"], "--int8 needs --calibration"),
    ],
)
def test_cli_errors_exit_2_before_exporting(tmp_path, capsys, args, message):
    assert main(["export", *args, "--format", TRANSFORMERS_JS, "-o", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_file_is_not_a_folder(tmp_path):
    (tmp_path / "out").write_text("")
    with pytest.raises(ValueError, match="is a file; transformers.js export writes a folder"):
        export_transformersjs(create_model("mobilevit_xxs", num_classes=2), tmp_path / "out")


@pytest.mark.parametrize(
    ("dtypes", "message"),
    [
        (("fp32", "int4"), "unknown transformers.js dtype 'int4'; choose from fp32, fp16, q8"),
        (("fp16",), "the folder needs its fp32 file"),
        (("fp32", "q8"), "q8 \\(int8\\) needs calibration images"),
    ],
)
def test_bad_dtypes_are_refused(tmp_path, dtypes, message):
    with pytest.raises(ValueError, match=message):
        export_transformersjs(create_model("mobilevit_xxs", num_classes=2), tmp_path / "out", dtypes=dtypes)
    assert not (tmp_path / "out").exists()


def test_a_missing_install_skips_and_ci_fails_on_it(tmp_path):
    """Without tests/js/node_modules the runs skip, saying what to install; CI's skip rule does not allow
    that reason, so there the skip fails (tests/ci_skips.py)."""
    with pytest.raises(pytest.skip.Exception) as skipped:
        node_or_skip(tmp_path)
    reason = str(skipped.value)
    assert "npm ci --ignore-scripts --prefix tests/js" in reason or "Node.js is not installed" in reason
    assert not any(allowed in reason for allowed in ALLOWED_SKIPS)


# the folder in transformers.js


@pytest.fixture(scope="module")
def v1_export(spread_classifier, tmp_path_factory):
    """A v1 folder with its fp32 file only (each dynamic export takes seconds), written over an earlier
    export's fp16 and q8 files, and the PNGs of its model's images."""
    model, images = spread_classifier("mobilevit_xxs")
    root = tmp_path_factory.mktemp("tjs-v1")
    for dtype in ("fp16", "q8"):
        stale = root / "model" / DTYPE_FILES[dtype]
        stale.parent.mkdir(parents=True, exist_ok=True)
        stale.write_bytes(b"an earlier export")
    report = export_transformersjs(model, root / "model", img_size=(SIZE, SIZE), dtypes=("fp32",))
    pngs = write_pngs(model, images, root / "images")
    return model, images, report, pngs


def test_folder_layout_and_onnx_file(v1_export):
    model, _, report, _ = v1_export
    folder = report.folder
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == ["config.json", "onnx/model.onnx", "preprocessor_config.json"]  # the earlier files went
    assert [n for n in report.notes if n.startswith("removed")] == [
        "removed onnx/model_fp16.onnx, an earlier export's fp16 file",
        "removed onnx/model_quantized.onnx, an earlier export's q8 file",
    ]
    assert json.loads((folder / "config.json").read_text()) == model_config(model, (SIZE, SIZE))
    assert json.loads((folder / "preprocessor_config.json").read_text())["size"] == {"shortest_edge": int(SIZE / 0.9)}
    fp32 = report.files["fp32"]
    assert fp32.path == folder / "onnx/model.onnx" and fp32.max_abs_diff <= FP32_TOLERANCE
    assert fp32.size_mb == fp32.path.stat().st_size / 1e6
    assert_transformersjs_graph(fp32.path)


def assert_transformersjs_graph(path: Path) -> None:
    """One input ``pixel_values`` [batch, 3, H, W] with a free batch (the pipeline stacks its images), one
    output ``logits``."""
    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == [PIXEL_VALUES] and [o.name for o in graph.output] == ["logits"]
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value


def test_v1_in_transformersjs_matches_pytorch(v1_export):
    """The same top-5 labels and probabilities as PyTorch on the same PNGs, all in one batch."""
    model, images, report, pngs = v1_export
    x = pytorch_inputs(model, pngs)
    assert (x - images).abs().max() <= 1e-6  # no resize, and the centre crop gave each image back
    expected = pytorch_top5(model, x)
    assert [row[0][0] for row in expected] == [f"shape {i}" for i in range(8)]  # each image its own class
    assert_top5_matches(classify(report.folder, pngs), expected)


def test_resized_images_are_preprocessed_as_ours(v1_export, tmp_path):
    """A landscape image that transformers.js must shrink (320x212 -> 160x106, then the centre crop): its
    pixel_values are ours to within 8/255 (measured: 6/255). Its resize (sharp's affine transform in Node)
    does not antialias as torchvision and Pillow do, which costs that much even on these smooth stripes;
    a crop one pixel off, a wrong shortest edge or swapped channels give 18/255 or more."""
    model, _, report, _ = v1_export
    yy, xx = torch.meshgrid(torch.arange(212.0), torch.arange(320.0), indexing="ij")
    smooth = torch.stack([xx / 319, 0.5 + 0.4 * torch.sin(yy / 13), 0.5 + 0.4 * torch.cos((xx + yy) / 17)])
    png = tmp_path / "landscape.png"
    Image.fromarray((smooth * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(png)
    node = node_or_skip()
    command = [node, str(JS / "preprocess.mjs"), str(report.folder), str(png), str(tmp_path / "pixels.bin")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=JS)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [1, 3, SIZE, SIZE]
    theirs = torch.from_numpy(np.fromfile(tmp_path / "pixels.bin", dtype=np.float32)).reshape(3, SIZE, SIZE)
    ours = pytorch_inputs(model, [png])[0]
    assert (theirs - ours).abs().max() <= 8 / 255


@pytest.mark.slow
def test_v2_with_q8_in_transformersjs(spread_classifier, tmp_path):
    """v2 with every dtype: fp32's top-5 as PyTorch's, fp16's top-1 as PyTorch's, q8 as in ONNX Runtime
    (and so with the top-1 agreement the export reported)."""
    model, images = spread_classifier("mobilevitv2_050")
    report = export_transformersjs(model, tmp_path / "model", img_size=(SIZE, SIZE), calibration=images)
    assert report.model_type == "mobilevitv2" and list(report.files) == ["fp32", "fp16", "q8"]
    for dtype, file in report.files.items():
        assert file.path == tmp_path / "model" / DTYPE_FILES[dtype]
        assert_transformersjs_graph(file.path)
    assert onnx.TensorProto.FLOAT16 in {t.data_type for t in onnx.load(report.files["fp16"].path).graph.initializer}
    assert any("int8 QDQ" in note for note in report.files["q8"].notes)
    pngs = write_pngs(model, images, tmp_path / "images")
    x = pytorch_inputs(model, pngs)
    expected = pytorch_top5(model, x)
    assert_top5_matches(classify(report.folder, pngs), expected)
    labels = [row[0][0] for row in expected]
    assert top1(classify(report.folder, pngs, "fp16")) == labels
    q8 = classify(report.folder, pngs, "q8")
    assert_q8_is_onnxruntimes(q8, report.files["q8"].path, x, label_names(model))
    agreement = sum(a == b for a, b in zip(top1(q8), labels, strict=True)) / len(labels)
    assert agreement == report.files["q8"].top1_agreement  # int8 on a random v2: 6/8 here


@pytest.mark.slow
def test_cli_from_a_model_directory_with_q8(spread_classifier, tmp_path, capsys):
    """``mobilevit export --checkpoint DIR --format transformers.js --int8``: a training output's model
    (its input size and class names), calibrated on a folder of PNGs; every dtype in transformers.js."""
    model, images = spread_classifier("mobilevit_xxs")
    model.pretrained_cfg["input_size"] = (3, SIZE, SIZE)
    directory = model.save_pretrained(tmp_path / "run" / "model")
    pngs = write_pngs(model, images, tmp_path / "images")
    out = tmp_path / "tjs"
    args = ["export", "--checkpoint", str(directory), "--format", TRANSFORMERS_JS, "-o", str(out)]
    assert main([*args, "--int8", "--calibration", str(tmp_path / "images"), "--calibration-images", "8"]) == 0
    printed = capsys.readouterr().out
    assert f"exported mobilevit_xxs at {SIZE}x{SIZE} to {out} (transformers.js)" in printed
    assert "model_type mobilevit (MobileViTForImageClassification in transformers.js)" in printed
    assert "onnx/model.onnx (dtype fp32):" in printed and "onnx/model_fp16.onnx (dtype fp16):" in printed
    assert re.search(r"onnx/model_quantized.onnx \(dtype q8\):\n(    .*\n)*    top-1 agreement with fp32 on 8", printed)
    loaded = from_pretrained(directory)
    x = pytorch_inputs(loaded, pngs)
    expected = pytorch_top5(loaded, x)
    assert_top5_matches(classify(out, pngs), expected)
    labels = [row[0][0] for row in expected]
    assert labels == [f"shape {i}" for i in range(8)]
    assert top1(classify(out, pngs, "fp16")) == labels
    q8 = classify(out, pngs, "q8")
    assert_q8_is_onnxruntimes(q8, out / DTYPE_FILES["q8"], x, label_names(loaded))
    agreement = float(re.search(r"top-1 agreement with fp32 on 8 calibration images: ([\d.]+)%", printed)[1])
    assert sum(a == b for a, b in zip(top1(q8), labels, strict=True)) / 8 == agreement / 100


@pytest.mark.slow
def test_cli_from_a_published_tag(hf_hub_at, monkeypatch, tmp_path, capsys):
    """``mobilevit export --model mobilevit_xxs.cvnets_in1k --format transformers.js``: published weights (timm's
    Hub copy, here random weights served on 127.0.0.1) with ImageNet's class names, in transformers.js."""
    import timm

    monkeypatch.setenv(URL_MIRROR_ENV, hf_hub_at.mirror)
    timm_model = randomize_(timm.create_model("mobilevit_xxs"), seed=1).eval()
    timm.models._hub.save_for_hf(timm_model, tmp_path / "timm", safe_serialization=True)
    for name in ("config.json", "model.safetensors"):
        hf_hub_at.add_hub_file("timm/mobilevit_xxs.cvnets_in1k", name, (tmp_path / "timm" / name).read_bytes())
    out = tmp_path / "tjs"
    args = ["export", "--model", "mobilevit_xxs.cvnets_in1k", "--format", TRANSFORMERS_JS, "-o", str(out)]
    assert main([*args, "--img-size", str(SIZE), str(SIZE)]) == 0
    assert f"exported mobilevit_xxs at {SIZE}x{SIZE} to {out} (transformers.js)" in capsys.readouterr().out
    published = create_model("mobilevit_xxs.cvnets_in1k", pretrained=True)
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"]["0"] == "tench" and len(config["id2label"]) == 1000
    pngs = write_pngs(published, structured_images(3, SIZE, SIZE, seed=9), tmp_path / "images")
    assert_top5_matches(classify(out, pngs), pytorch_top5(published, pytorch_inputs(published, pngs)))
