"""CoreML export (mobilevit.export.coreml): an ML Program of every family whose spec is validated
everywhere, within Core ML's rank limit, and which runs on macOS only."""

from __future__ import annotations

import sys

import pytest

ct = pytest.importorskip("coremltools")

from mobilevit.export import export  # noqa: E402


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


@pytest.mark.parametrize(("precision", "written"), [(None, "fp16"), ("fp32", "fp32")])
def test_precision_defaults_to_fp16_and_the_package_size_is_reported(model, tmp_path, precision, written):
    """CoreML's own default is fp16 (the other formats' is fp32); the size is that of the package's files."""
    report = export(model, "coreml", tmp_path / "m.mlpackage", img_size=(64, 64), precision=precision)
    assert any(note.startswith(f"ML Program, {written},") for note in report.notes)
    files = [f for f in report.path.rglob("*") if f.is_file()]
    assert report.size_mb == sum(f.stat().st_size for f in files) / 1e6 > 0
