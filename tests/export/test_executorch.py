"""ExecuTorch export (mobilevit.export.executorch): fp32 parity with PyTorch for every family, int8
agreement on top-1, every op inside one XNNPACK partition, the missing-extra message.

Lowering to XNNPACK is slow, int8 slowest, so only a 256x256 fp32 program of a shallow XXS is built in
the default run.
"""

from __future__ import annotations

import sys

import pytest
import torch

from mobilevit import create_model
from mobilevit.export import FP32_TOLERANCE, export
from mobilevit.export.executorch import ExecuTorchRunner, export_executorch, placement, run_executorch
from mobilevit.export.xnnpack import Placement
from mobilevit.testing import randomize_, structured_images


@pytest.fixture(scope="module")
def shallow():
    """XXS with one transformer layer per block: every op of the full model, half the export time;
    full-depth models of every family are exported by the slow tests."""
    return randomize_(create_model("mobilevit_xxs", num_classes=10, transformer_depths=(1, 1, 1))).eval()


@pytest.fixture(scope="module")
def program_256(shallow, tmp_path_factory):
    """One fp32 program for [2, 3, 256, 256] inputs and its op placement, shared by the tests that only
    run or inspect it."""
    pytest.importorskip("executorch.exir")
    example = structured_images(2, 256, 256, seed=1)
    return export_executorch(shallow, tmp_path_factory.mktemp("executorch") / "xxs.pte", example)


def max_abs_diff(model, runner, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (runner(x) - model(x)).abs().max().item()


def test_fp32_matches_pytorch(shallow, program_256):
    path, _ = program_256
    runner = ExecuTorchRunner(path)
    for seed in (1, 2):  # the export example and images it never saw
        assert max_abs_diff(shallow, runner, structured_images(2, 256, 256, seed=seed)) <= FP32_TOLERANCE
    assert not list(path.parent.glob(".*.tmp"))  # written atomically: no temporary file left


def test_every_op_runs_in_one_xnnpack_partition(program_256):
    _, where = program_256
    assert (where.partitions, where.outside) == (1, {})
    assert where.delegated > 300
    assert str(where) == f"1 XNNPACK partition holding {where.delegated} ops, none outside"


def test_placement_sees_ops_left_to_portable_kernels():
    """The check above could not fail if ``placement`` missed fallbacks: torch's own LayerNorm has no
    XNNPACK kernel, so lowered as it is, it stays outside between two delegated linears."""
    pytest.importorskip("executorch.exir")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 8)).eval()
    exported = torch.export.export(model, (torch.randn(4, 8),))
    lowered = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    where = placement(lowered.exported_program().graph_module)
    assert where == Placement(2, 2, {"native_layer_norm_default": 1})
    assert "outside XNNPACK: native_layer_norm_default x1" in str(where)


def test_run_rejects_another_shape(program_256):
    with pytest.raises(ValueError, match=r"exported for inputs of shape \(2, 3, 256, 256\), got \(1, 3, 256, 256\)"):
        run_executorch(program_256[0], structured_images(1, 256, 256))


@pytest.mark.slow
def test_fp32_matches_pytorch_when_blocks_resize(shallow, tmp_path):
    """At 160x224 the last MobileViT block sees a 5x7 map and resizes it to 6x8 and back."""
    example = structured_images(1, 160, 224, seed=1)
    path, where = export_executorch(shallow, tmp_path / "xxs_160x224.pte", example)
    assert (where.partitions, where.outside) == (1, {})  # the resizes too
    assert max_abs_diff(shallow, ExecuTorchRunner(path), structured_images(1, 160, 224, seed=3)) <= FP32_TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "mobilevitv3_050"])
def test_export_of_every_family_matches_pytorch(classifiers, tmp_path, name):
    """Full-depth models through ``export()``, which checks the program and says where its ops run."""
    pytest.importorskip("executorch")
    report = export(classifiers(name), "executorch", tmp_path / f"{name}.pte", img_size=(64, 64))
    assert report.path.is_file()
    assert report.max_abs_diff <= FP32_TOLERANCE
    assert any(note.startswith("1 XNNPACK partition") and note.endswith("none outside") for note in report.notes)


@pytest.mark.slow
def test_int8_agrees_with_fp32_on_top1(int8_classifier, tmp_path):
    pytest.importorskip("executorch.exir")
    model, images = int8_classifier("mobilevit_xxs")
    calibration = structured_images(4, 128, 128, seed=2)
    path, where = export_executorch(model, tmp_path / "xxs_int8.pte", images[:1], int8=True, calibration=calibration)
    assert (where.partitions, where.outside) == (1, {})
    runner = ExecuTorchRunner(path)
    int8 = torch.cat([runner(x) for x in images.split(1)])
    with torch.no_grad():
        fp32 = model(images)
    assert fp32.argmax(1).tolist() == list(range(8))
    assert (int8.argmax(1) == fp32.argmax(1)).sum() >= 6
    params = sum(p.numel() for p in model.parameters())
    assert path.stat().st_size < 2 * params  # int8 weights: about 1 byte per parameter, fp32 would be 4


def test_int8_needs_calibration(shallow, tmp_path):
    pytest.importorskip("executorch.exir")
    with pytest.raises(ValueError, match="calibration"):
        export_executorch(shallow, tmp_path / "x.pte", structured_images(1, 64, 64), int8=True)


def test_missing_extra_says_what_to_install(shallow, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "executorch", None)  # as if not installed
    hint = r"pip install 'mobilevit\[executorch\]'"
    with pytest.raises(ImportError, match=hint):
        export_executorch(shallow, tmp_path / "x.pte", structured_images(1, 64, 64))
    with pytest.raises(ImportError, match=hint):
        run_executorch(tmp_path / "x.pte", structured_images(1, 64, 64))
