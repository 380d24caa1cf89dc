"""TorchScript export (mobilevit.export.torchscript): a frozen trace that matches PyTorch at the traced
size and at others, for every family (v1, v2, v3 on v1, v3 on v2)."""

from __future__ import annotations

import functools

import pytest
import torch

from mobilevit.export import FP32_TOLERANCE, export
from mobilevit.export.torchscript import TorchScriptRunner
from mobilevit.testing import structured_images

TRACED, OTHER = (1, 128, 160), (2, 224, 96)


@pytest.fixture(scope="module")
def traced(classifiers, tmp_path_factory):
    """``traced(name)``: the dynamic export of ``classifiers(name)`` traced at 128x160, made on first use."""
    folder = tmp_path_factory.mktemp("ts")

    @functools.cache
    def exported(name: str):
        return export(classifiers(name), "torchscript", folder / f"{name}.pt", img_size=TRACED[1:], dynamic=True)

    return exported


def test_export_is_checked(traced):
    report = traced("mobilevit_xxs")
    assert report.max_abs_diff <= FP32_TOLERANCE
    assert report.path.is_file()


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("mobilevit_xxs", TRACED),
        ("mobilevit_xxs", OTHER),
        ("mobilevitv2_050", OTHER),
        ("mobilevitv3_xxs", OTHER),
        ("mobilevitv3_050", OTHER),
    ],
    ids=lambda p: {TRACED: "traced-size", OTHER: "other-batch-and-size"}.get(p, p),
)
def test_trace_matches_pytorch(classifiers, traced, name, shape):
    report = traced(name)
    assert report.max_abs_diff <= FP32_TOLERANCE
    x = structured_images(*shape, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(TorchScriptRunner(report.path)(x), classifiers(name)(x), rtol=0, atol=FP32_TOLERANCE)


def test_int8_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="int8 is not supported for torchscript, use one of onnx, executorch, litert"):
        export(model, "torchscript", tmp_path / "m.pt", int8=True, calibration=structured_images(2, 256, 256))
