"""The rewrite into XNNPACK's ops (mobilevit.export.xnnpack): each replacement computes what torch's own
module computes, in eager mode and lowered alone into one XNNPACK partition with nothing outside it, and
the rewritten models match the originals of every family."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mobilevit import create_model
from mobilevit.export.xnnpack import (
    BatchedMatmulAttention,
    MapGroupNorm,
    RowLayerNorm,
    SpatialMeanSelfAttention,
    fold_norm_affines,
    for_xnnpack,
)
from mobilevit.models.mobilevit_block import MobileViTBlock, MultiHeadAttention, TransformerEncoderLayer, unfold
from mobilevit.models.mobilevitv2 import LinearSelfAttention, LinearTransformerLayer
from mobilevit.testing import randomize_, structured_images

TOLERANCE = 1e-5


def random(module: nn.Module) -> nn.Module:
    """Every weight random (no BatchNorm to calibrate here)."""
    return randomize_(module, calibrate=lambda _: None).eval()


def tokens(rows: int, dim: int) -> torch.Tensor:
    """[rows, dim] with structure: pixel values of a structured image, offset and scaled per row."""
    pixels = structured_images(1, rows, dim, seed=4)[0, 0]
    return pixels * torch.linspace(0.5, 3.0, rows)[:, None] + torch.linspace(-1.0, 1.0, rows)[:, None]


def maps(batch: int, dim: int, height: int, width: int) -> torch.Tensor:
    """[batch, dim, height, width]: the channels of structured images of several seeds, centred."""
    images = [structured_images(batch, height, width, seed=seed) for seed in range(dim // 3 + 1)]
    return torch.cat(images, dim=1)[:, :dim] * 2 - 0.5


# (torch's module, its replacement, an input): attention takes the sequence length as a second input
CASES = {
    "layer_norm": (lambda: nn.LayerNorm(24), RowLayerNorm, lambda: (tokens(32, 24),)),
    "group_norm": (lambda: nn.GroupNorm(1, 16), MapGroupNorm, lambda: (maps(2, 16, 4, 16),)),
    "multi_head_attention": (lambda: MultiHeadAttention(24, 4), BatchedMatmulAttention, lambda: (tokens(32, 24), 8)),
    "linear_self_attention": (lambda: LinearSelfAttention(16), SpatialMeanSelfAttention, lambda: (maps(2, 16, 4, 16),)),
}


@pytest.mark.parametrize("case", CASES)
def test_each_replacement_computes_torchs_module(case):
    make, rewrite, inputs = CASES[case]
    original = random(make())
    args = inputs()
    with torch.no_grad():
        expected = original(*args)
        got = rewrite(original).eval()(*args)
    assert expected.std() > 0.1  # not a degenerate input
    assert (got - expected).abs().max().item() <= TOLERANCE


class _Wrapped(nn.Module):
    """One module as a model of one tensor input (attention's sequence length fixed), as it is exported."""

    def __init__(self, module: nn.Module, *rest) -> None:
        super().__init__()
        self.module, self.rest = module, rest

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x, *self.rest)


@pytest.mark.parametrize("case", CASES)
def test_each_replacement_runs_whole_in_xnnpack(case, tmp_path):
    """Lowered alone: one partition, nothing on portable kernels, and the ExecuTorch runtime's result
    equals torch's module (this caught a softmax that ExecuTorch 1.5 applies to the wrong axis)."""
    pytest.importorskip("executorch.exir")
    from mobilevit.export.executorch import ExecuTorchRunner, export_executorch

    make, _, inputs = CASES[case]
    x, *rest = inputs()
    original = _Wrapped(random(make()), *rest).eval()
    path, where = export_executorch(original, tmp_path / f"{case}.pte", x)
    assert (where.partitions, where.outside) == (1, {})
    with torch.no_grad():
        assert (ExecuTorchRunner(path)(x) - original(x)).abs().max().item() <= TOLERANCE


LAYERS = {
    "v1": (lambda: TransformerEncoderLayer(24, 48, 4, 0.0, 0.0), lambda: (tokens(32, 24), 8)),
    "v2": (lambda: LinearTransformerLayer(16, 32, 0.0, 0.0), lambda: (maps(2, 16, 4, 16),)),
}


@pytest.mark.parametrize("layer", LAYERS)
def test_norm_affines_fold_into_the_projection_that_reads_them(layer):
    make, inputs = LAYERS[layer]
    original = random(make())
    folded = copy.deepcopy(original)
    fold_norm_affines(folded)
    assert folded.norm1.weight is folded.norm1.bias is folded.norm2.weight is None
    assert not torch.equal(folded.mlp.fc1.weight, original.mlp.fc1.weight)
    with torch.no_grad():
        expected = original(*inputs())
        assert (folded(*inputs()) - expected).abs().max().item() <= TOLERANCE
        # the folded norms rewrite too, into their affine-free forms
        rewritten = for_xnnpack(original)
        assert (rewritten(*inputs()) - expected).abs().max().item() <= TOLERANCE
    assert all(
        isinstance(m.affine, nn.Identity) for m in rewritten.modules() if isinstance(m, RowLayerNorm | MapGroupNorm)
    )


def test_unfold_as_one_transpose_equals_the_slices():
    x = maps(2, 6, 8, 12)
    for p in (1, 2, 4):
        assert torch.equal(unfold(x, p, by_slices=False), unfold(x, p))


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "mobilevitv3_050"])
def test_rewritten_model_matches_and_the_original_is_untouched(name):
    model = randomize_(create_model(name, num_classes=10)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rewritten = for_xnnpack(model)
    kinds = {type(m) for m in rewritten.modules()}
    assert not kinds & {nn.LayerNorm, nn.GroupNorm, MultiHeadAttention, LinearSelfAttention}
    assert all(not b.unfold_by_slices for b in rewritten.modules() if isinstance(b, MobileViTBlock))
    x = structured_images(2, 96, 128, seed=6)  # odd-sided maps in the last stage: the resizes too
    with torch.no_grad():
        assert (rewritten(x) - model(x)).abs().max().item() <= 1e-4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(b.unfold_by_slices for b in model.modules() if isinstance(b, MobileViTBlock))


def test_group_norm_with_groups_is_refused():
    with pytest.raises(ValueError, match="only GroupNorm\\(1\\)"):
        MapGroupNorm(nn.GroupNorm(2, 16))
