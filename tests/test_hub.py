"""The download layer on its own: URL cache paths, the mirror, repo ids (the end-to-end downloads are
in tests/models/test_pretrained.py)."""

from __future__ import annotations

import io

import pytest
import torch

from mobilevit.hub import URL_MIRROR_ENV, UrlFile, fetch, is_repo_id, mirrored

CVNETS_V2 = "https://docs-assets.developer.apple.com/ml-research/models/cvnets-v2/classification/mobilevitv2"


def pt_bytes(value: float) -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.full((2,), value)}, buffer)
    return buffer.getvalue()


def test_same_file_name_in_two_folders_is_two_cache_entries(hf_hub_at, monkeypatch):
    """ml-cvnets names its ImageNet-1k, 384 and 22k checkpoints of one width alike: none may shadow another."""
    monkeypatch.setenv(URL_MIRROR_ENV, hf_hub_at.mirror)
    in1k, in22k = (
        f"{CVNETS_V2}/imagenet1k/256x256/mobilevitv2-1.5.pt",
        f"{CVNETS_V2}/imagenet21k_to_1k/256x256/mobilevitv2-1.5.pt",
    )
    hf_hub_at.add_url_file(in1k, pt_bytes(1.0))
    hf_hub_at.add_url_file(in22k, pt_bytes(2.0))
    first, second = fetch(UrlFile(in1k), progress=False), fetch(UrlFile(in22k), progress=False)
    assert first != second
    assert torch.load(first, weights_only=True)["w"][0] == 1.0
    assert torch.load(second, weights_only=True)["w"][0] == 2.0
    hf_hub_at.clear_log()
    assert fetch(UrlFile(in1k), progress=False) == first and not hf_hub_at.requests  # cached: no request


def test_mirror_keeps_host_and_path(monkeypatch):
    monkeypatch.delenv(URL_MIRROR_ENV, raising=False)
    assert mirrored("https://example.com/a/b.pt") == "https://example.com/a/b.pt"
    monkeypatch.setenv(URL_MIRROR_ENV, "http://mirror.local/files/")
    assert mirrored("https://example.com/a/b.pt") == "http://mirror.local/files/example.com/a/b.pt"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("apple/mobilevit-small", True),
        ("timm/mobilevit_s.cvnets_in1k", True),
        ("model.pt", False),
        ("a/b/c", False),
        ("./x", False),
    ],
)
def test_repo_ids_are_told_from_paths(name, expected):
    assert is_repo_id(name) is expected
