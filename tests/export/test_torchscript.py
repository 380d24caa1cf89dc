"""TorchScript export: a frozen trace that matches PyTorch at the traced size and at others."""

from __future__ import annotations

import pytest
import torch

from mobilevit.export import FP32_TOLERANCE, export
from mobilevit.export.torchscript import run_torchscript
from mobilevit.testing import structured_images


@pytest.fixture(scope="module")
def traced(model, tmp_path_factory):
    return export(model, "torchscript", tmp_path_factory.mktemp("ts") / "m.pt", img_size=(128, 160), dynamic=True)


def test_export_is_checked(traced):
    assert traced.max_abs_diff <= FP32_TOLERANCE
    assert traced.path.is_file()


@pytest.mark.parametrize("shape", [(1, 128, 160), (2, 224, 96)], ids=["traced-size", "other-batch-and-size"])
def test_trace_matches_pytorch(model, traced, shape):
    x = structured_images(*shape, seed=5)
    torch.testing.assert_close(run_torchscript(traced.path, x), model(x), rtol=0, atol=FP32_TOLERANCE)


def test_int8_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="int8 is not supported for torchscript, use onnx or executorch"):
        export(model, "torchscript", tmp_path / "m.pt", int8=True, calibration=structured_images(2, 256, 256))
