"""unfold/fold against torch's own im2col/col2im, and the block's resize path."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mobilevit.models.mobilevit_block import MobileViTBlock, fold, unfold


def test_unfold_equals_torch_im2col():
    x = torch.randn(2, 5, 8, 12)
    batch, dim = x.shape[:2]
    cols = F.unfold(x, kernel_size=2, stride=2)  # [B, d*P, N], channel-major like ours
    expected = cols.reshape(batch, dim, 4, -1).permute(0, 2, 3, 1).reshape(batch * 4, -1, dim)
    assert torch.equal(unfold(x, 2), expected)


def test_fold_equals_torch_col2im_and_inverts_unfold():
    x = torch.randn(3, 7, 6, 10)
    patches = unfold(x, 2)
    assert patches.shape == (3 * 4, 3 * 5, 7)
    cols = patches.reshape(3, 4, 15, 7).permute(0, 3, 1, 2).reshape(3, 7 * 4, 15)
    assert torch.equal(fold(patches, 2, 6, 10), F.fold(cols, (6, 10), kernel_size=2, stride=2))
    assert torch.equal(fold(patches, 2, 6, 10), x)


def test_block_keeps_shape_for_odd_sizes():
    block = MobileViTBlock(channels=8, dim=16, depth=1, ffn_dim=32).eval()
    for size in [(7, 7), (8, 8), (5, 12)]:
        x = torch.randn(2, 8, *size)
        assert block(x).shape == x.shape


def test_fold_channels_last_is_the_same_tensor_in_channels_last_memory():
    x = torch.randn(2, 6, 8, 4)
    patches = unfold(x.contiguous(memory_format=torch.channels_last), 2)
    assert torch.equal(patches, unfold(x, 2))
    folded = fold(patches, 2, 8, 4, channels_last=True)
    assert torch.equal(folded, x)
    assert folded.is_contiguous(memory_format=torch.channels_last)
