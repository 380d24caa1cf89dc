"""CoreML export (mobilevit.export.coreml): an ML Program of every family and task whose spec is
validated everywhere (input, outputs, precision, op types, Core ML's rank limit), and which runs on
macOS only; a spec that differs from what was exported is rejected."""

from __future__ import annotations

import sys

import pytest
import torch

ct = pytest.importorskip("coremltools")

from mobilevit import create_model  # noqa: E402
from mobilevit.cli import main  # noqa: E402
from mobilevit.export import export  # noqa: E402
from mobilevit.export.coreml import program_ops, validate_coreml  # noqa: E402
from mobilevit.tasks import get_task  # noqa: E402
from mobilevit.testing import randomize_, structured_images  # noqa: E402

SHALLOW = {"transformer_depths": (1, 1, 1)}  # every op of the family, a shorter conversion
SEG_SIZE = (64, 96)


def coreml_max_rank(spec) -> int:
    """The largest tensor rank in a Core ML ML Program's main function (Core ML allows 5)."""
    (block,) = spec.mlProgram.functions["main"].block_specializations.values()
    ranks = [
        out.type.tensorType.rank for op in block.operations for out in op.outputs if out.type.HasField("tensorType")
    ]
    assert ranks, "the program has no typed tensors"
    return max(ranks)


@pytest.mark.parametrize(
    ("name", "img_size", "precision"),
    [
        ("mobilevit_xxs", (64, 96), "fp16"),
        pytest.param("mobilevit_xxs", (128, 128), "fp32", marks=pytest.mark.slow),
        ("mobilevitv2_050", (64, 96), "fp16"),
        # v1's rank-6 fold, which v3 on v1 keeps, and v2's, which v3 on v2 keeps, are checked above
        pytest.param("mobilevitv3_xxs", (64, 96), "fp16", marks=pytest.mark.slow),
        pytest.param("mobilevitv3_050", (64, 96), "fp16", marks=pytest.mark.slow),
    ],
    ids=lambda v: f"{v[0]}x{v[1]}" if isinstance(v, tuple) else None,
)
def test_mlpackage_has_image_input_and_logits(classifiers, tmp_path, name, img_size, precision):
    report = export(classifiers(name), "coreml", tmp_path / "m.mlpackage", img_size=img_size, precision=precision)
    spec = ct.utils.load_spec(str(report.path))
    (inp,), (out,) = spec.description.input, spec.description.output
    assert (inp.name, inp.type.imageType.height, inp.type.imageType.width) == ("image", *img_size)
    assert inp.type.imageType.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB
    assert (out.name, list(out.type.multiArrayType.shape)) == ("logits", [1, 10])
    assert coreml_max_rank(spec) <= 5  # Core ML's limit: the converter splits v1's rank-6 fold
    if sys.platform == "darwin":
        assert report.max_abs_diff < (5e-2 if precision == "fp16" else 1e-3)
    else:
        assert report.max_abs_diff is None
        assert any("need macOS" in note for note in report.notes)


def test_wrong_suffix_and_int8_are_refused(model, tmp_path):
    with pytest.raises(ValueError, match=r"\.mlpackage"):
        export(model, "coreml", tmp_path / "m.mlmodel", img_size=(64, 64))
    with pytest.raises(ValueError, match="int8 is not supported for coreml, use one of onnx, executorch, litert"):
        export(model, "coreml", tmp_path / "m.mlpackage", int8=True)


def test_missing_extra_names_the_install(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "coremltools", None)
    with pytest.raises(ImportError, match=r"pip install 'mobilevit\[coreml\]'"):
        export(model, "coreml", tmp_path / "m.mlpackage", img_size=(64, 64))


# segmentation and detection


def mil_dtypes(spec, op_types) -> set[str]:
    """The dtypes of the tensors that ops of ``op_types`` produce, read from the spec itself."""
    name = ct.proto.MIL_pb2.DataType.Name
    return {
        name(out.type.tensorType.dataType)
        for op in program_ops(spec)
        if op.type in op_types
        for out in op.outputs
        if out.type.HasField("tensorType")
    }


@pytest.fixture(scope="module")
def segmentation_exports(tmp_path_factory):
    """A 5-class DeepLabv3 exported at 64x96 in each precision: {precision: (report, spec)}."""
    model = randomize_(create_model("deeplabv3_mobilevit_xxs", num_classes=5, **SHALLOW)).eval()
    folder = tmp_path_factory.mktemp("coreml_seg")
    exports = {}
    for precision in ("fp16", "fp32"):
        report = export(model, "coreml", folder / f"{precision}.mlpackage", img_size=SEG_SIZE, precision=precision)
        exports[precision] = report, ct.utils.load_spec(str(report.path))
    return exports


def test_segmentation_outputs_logits_of_every_pixel(segmentation_exports):
    report, spec = segmentation_exports["fp16"]
    (inp,), (out,) = spec.description.input, spec.description.output
    assert (inp.name, inp.type.imageType.height, inp.type.imageType.width) == ("image", *SEG_SIZE)
    assert inp.type.imageType.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB
    assert (out.name, list(out.type.multiArrayType.shape)) == ("logits", [1, 5, *SEG_SIZE])
    assert coreml_max_rank(spec) <= 5
    (note,) = [n for n in report.notes if n.startswith("ML Program")]
    assert "output 'logits' [1, 5, 64, 96]; fp16 compute" in note and "upsample_bilinear" in note
    if sys.platform == "darwin":
        assert report.max_abs_diff < 5e-2
    else:
        assert report.max_abs_diff is None


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_precision_shows_in_the_spec(segmentation_exports, precision):
    _, spec = segmentation_exports[precision]
    if precision == "fp16":
        assert mil_dtypes(spec, {"conv", "linear", "matmul"}) == {"FLOAT16"}
        assert {"cast"} <= {op.type for op in program_ops(spec)}  # fp32 image in, fp32 logits out
    else:
        assert mil_dtypes(spec, {"conv", "linear", "matmul"}) == {"FLOAT32"}
        assert "FLOAT16" not in mil_dtypes(spec, {op.type for op in program_ops(spec)})
    (out,) = spec.description.output
    assert out.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32


def test_detection_exports_boxes_and_scores_before_nms(tmp_path):
    """The detector's file is its deployable module, as for ONNX and LiteRT: every anchor's boxes and
    scores, with NMS left to postprocess."""
    model = randomize_(create_model("ssdlite_mobilevit_xxs", num_classes=3, img_size=128, **SHALLOW)).eval()
    report = export(model, "coreml", tmp_path / "det.mlpackage", img_size=(128, 128))
    with torch.no_grad():
        boxes, scores = get_task("detection").deployable(model)(structured_images(1, 128, 128))
    spec = ct.utils.load_spec(str(report.path))
    (inp,) = spec.description.input
    assert (inp.name, inp.type.imageType.height, inp.type.imageType.width) == ("image", 128, 128)
    outputs = [(o.name, list(o.type.multiArrayType.shape)) for o in spec.description.output]
    assert outputs == [("boxes", list(boxes.shape)), ("scores", list(scores.shape))]
    assert scores.shape[2] == 3 and boxes.shape[1] == scores.shape[1] > 100
    assert not {op.type for op in program_ops(spec)} & {"non_maximum_suppression", "argsort", "topk"}
    assert coreml_max_rank(spec) <= 5
    assert any("NMS is not in the graph" in note for note in report.notes)
    assert any(f"outputs 'boxes' {list(boxes.shape)}, 'scores' {list(scores.shape)}; fp16" in n for n in report.notes)
    if sys.platform == "darwin":
        assert report.max_abs_diff < 5e-2
    else:
        assert report.max_abs_diff is None


def test_cli_exports_a_segmenter_and_prints_what_the_spec_holds(tmp_path, capsys):
    path = tmp_path / "seg.mlpackage"
    argv = ["export", "--model", "deeplabv3_mobilevit_xxs", "--format", "coreml", "--img-size", "64", "64"]
    assert main([*argv, "--precision", "fp32", "-o", str(path)]) == 0
    out = capsys.readouterr().out
    assert "output 'logits' [1, 21, 64, 64]; fp32 compute" in out and "op types: add, concat, conv," in out
    assert ("need macOS" in out) != (sys.platform == "darwin")
    assert path.is_dir()


def _retype_ops(spec, old: str, new: str, count: int | None = None):
    ops = [op for op in program_ops(spec) if op.type == old][:count]
    for op in ops:
        op.type = new
    return spec


def _halve_one_tensor(spec):
    """One fp16 tensor outside the convolutions and matrix products (a residual addition)."""
    add = next(op for op in program_ops(spec) if op.type == "add")
    add.outputs[0].type.tensorType.dataType = ct.proto.MIL_pb2.DataType.Value("FLOAT16")
    return spec


def _rank_six(spec):
    """A reshape to rank 6, as v1's patch fold would be without the converter's split."""
    reshape = next(op for op in program_ops(spec) if op.type == "reshape")
    reshape.outputs[0].type.tensorType.rank = 6
    return spec


def _gray_input(spec):
    spec.description.input[0].type.imageType.colorSpace = ct.proto.FeatureTypes_pb2.ImageFeatureType.GRAYSCALE
    return spec


@pytest.mark.parametrize(
    ("precision", "change", "message"),
    [
        pytest.param(
            "fp16",
            {"outputs": {"logits": (1, 5, 32, 48)}},
            r"outputs \{'logits': \(1, 5, 64, 96\)\} differ",
            id="output-shape",
        ),
        pytest.param(
            "fp16", {"outputs": {"masks": (1, 5, 64, 96)}}, "differ from the PyTorch model's", id="output-name"
        ),
        pytest.param(
            "fp16",
            {"outputs": {"logits": (1, 5, 64, 96), "scores": (1, 5)}},
            "differ from the PyTorch model's",
            id="extra-output",
        ),
        pytest.param("fp16", {"input_shape": (1, 3, 96, 64)}, r"expected \(96, 64, 'RGB'\)", id="input-size"),
        pytest.param("fp16", {"input_shape": (2, 3, 64, 96)}, r"of \[2, 3, 64, 96\]", id="input-batch"),
        pytest.param("fp16", {"precision": "fp32"}, r"outputs are \['FLOAT16'\], expected fp32", id="fp16-as-fp32"),
        pytest.param("fp32", {"precision": "fp16"}, r"outputs are \['FLOAT32'\], expected fp16", id="fp32-as-fp16"),
        pytest.param("fp32", {"spec": _halve_one_tensor}, "an fp32 program has fp16 tensors", id="fp16-tensor-in-fp32"),
        pytest.param(
            "fp16",
            {"spec": lambda s: _retype_ops(s, "softmax", "non_maximum_suppression", 1)},
            "unexpected ops non_max",
            id="unexpected-op",
        ),
        pytest.param("fp16", {"spec": lambda s: _retype_ops(s, "conv", "conv_transpose")}, "no conv op", id="no-conv"),
        pytest.param("fp16", {"spec": _rank_six}, "a tensor of rank 6; Core ML allows at most 5", id="rank-6"),
        pytest.param("fp16", {"spec": _gray_input}, "'GRAYSCALE'", id="gray-input"),
    ],
)
def test_validate_rejects_a_spec_that_differs(segmentation_exports, monkeypatch, precision, change, message):
    report, spec = segmentation_exports[precision]
    expected = {"input_shape": (1, 3, *SEG_SIZE), "outputs": {"logits": (1, 5, *SEG_SIZE)}, "precision": precision}
    assert validate_coreml(report.path, **expected).startswith("input 'image' RGB image 64x96")
    if "spec" in change:
        changed = change["spec"](ct.proto.Model_pb2.Model.FromString(spec.SerializeToString()))
        monkeypatch.setattr(ct.utils, "load_spec", lambda _: changed)
    with pytest.raises(ValueError, match=message):
        validate_coreml(report.path, **{**expected, **{k: v for k, v in change.items() if k != "spec"}})


@pytest.mark.parametrize(("precision", "written"), [(None, "fp16"), ("fp32", "fp32")])
def test_precision_defaults_to_fp16_and_the_package_size_is_reported(model, tmp_path, precision, written):
    """CoreML's own default is fp16 (the other formats' is fp32); the size is that of the package's files."""
    report = export(model, "coreml", tmp_path / "m.mlpackage", img_size=(64, 64), precision=precision)
    assert any(note.startswith("ML Program, ") and f"; {written} compute" in note for note in report.notes)
    files = [f for f in report.path.rglob("*") if f.is_file()]
    assert report.size_mb == sum(f.stat().st_size for f in files) / 1e6 > 0
