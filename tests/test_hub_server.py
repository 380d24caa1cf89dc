"""The HubServer stand-in works with the real clients: huggingface_hub 2.4.0's hf_hub_download / snapshot_download
(through HF_ENDPOINT-equivalent monkeypatching, see conftest.py) and torch.hub.download_url_to_file."""

from __future__ import annotations

import hashlib
import os
import urllib.error
from pathlib import Path

import httpx2
import pytest
import torch.hub
from huggingface_hub import constants, hf_hub_download, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import _CACHED_NO_EXIST

from hub_server import HubServer

REPO = "timm/x"
WEIGHTS = bytes(range(256)) * 40 + b"tail"  # 10,244 bytes


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def hub(hf_hub_at: HubServer) -> HubServer:
    hf_hub_at.add_hub_file(REPO, "model.safetensors", WEIGHTS)
    hf_hub_at.add_hub_file(REPO, "config.json", b'{"architecture": "mobilevit_s"}')
    return hf_hub_at


def test_download_lands_in_the_fresh_cache_with_the_servers_bytes(hub: HubServer, tmp_path: Path):
    path = Path(hf_hub_download(repo_id=REPO, filename="model.safetensors"))

    assert path.read_bytes() == WEIGHTS
    assert path.is_relative_to(tmp_path / "hf_home" / "hub")
    assert path.parent.name == hub.commit(REPO)  # snapshots/<X-Repo-Commit>/model.safetensors
    assert (path.parents[2] / "refs" / "main").read_text() == hub.commit(REPO)
    assert path.resolve().name == _sha(WEIGHTS)  # blobs/<ETag>
    assert hub.requests == [
        ("HEAD", f"/{REPO}/resolve/main/model.safetensors"),
        ("GET", f"/{REPO}/resolve/main/model.safetensors"),
    ]
    assert hub.request_headers[0].get("authorization") is None  # no token sent

    # A second call with the server up only checks the metadata (HEAD), it downloads nothing.
    assert Path(hf_hub_download(repo_id=REPO, filename="model.safetensors")) == path
    assert [m for m, _ in hub.requests] == ["HEAD", "GET", "HEAD"]


def test_server_stopped_returns_the_cached_path(hub: HubServer):
    path = hf_hub_download(repo_id=REPO, filename="model.safetensors")
    hub.stop()
    hub.clear_log()

    assert hf_hub_download(repo_id=REPO, filename="model.safetensors") == path
    assert hub.requests == []


def test_server_stopped_and_not_cached_raises_local_entry_not_found(hub: HubServer, no_retry_sleep: list[float]):
    hub.stop()
    with pytest.raises(LocalEntryNotFoundError) as info:
        hf_hub_download(repo_id=REPO, filename="model.safetensors")
    assert isinstance(info.value.__cause__, httpx2.ConnectError)
    assert no_retry_sleep  # it retried with back-off before giving up (instant here)


def test_offline_mode_returns_cached_and_refuses_uncached(hub: HubServer, monkeypatch: pytest.MonkeyPatch):
    path = hf_hub_download(repo_id=REPO, filename="model.safetensors")
    hub.clear_log()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    assert constants.is_offline_mode()

    assert hf_hub_download(repo_id=REPO, filename="model.safetensors") == path
    with pytest.raises(LocalEntryNotFoundError) as info:
        hf_hub_download(repo_id=REPO, filename="config.json")
    assert isinstance(info.value.__cause__, OfflineModeIsEnabled)
    assert hub.requests == []  # offline mode blocks every request before it is sent


def test_hub_offline_fixture_sets_constant_and_env(hf_hub_at: HubServer, hub_offline: HubServer):
    assert constants.is_offline_mode()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(repo_id=REPO, filename="model.safetensors")
    assert hub_offline.requests == []


def test_local_files_only_uncached_raises_local_entry_not_found(hub: HubServer):
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(repo_id=REPO, filename="model.safetensors", local_files_only=True)
    assert hub.requests == []


def test_missing_file_raises_entry_not_found_and_is_remembered(hub: HubServer):
    with pytest.raises(RemoteEntryNotFoundError) as info:
        hf_hub_download(repo_id=REPO, filename="pytorch_model.bin")
    assert isinstance(info.value, EntryNotFoundError)
    assert info.value.response.status_code == 404
    assert [m for m, _ in hub.requests] == ["HEAD"]
    # The X-Repo-Commit on the 404 lets the client cache the absence (.no_exist/<commit>/pytorch_model.bin).
    assert try_to_load_from_cache(REPO, "pytorch_model.bin") is _CACHED_NO_EXIST


def test_missing_repo_raises_repository_not_found(hub: HubServer):
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id="timm/nope", filename="model.safetensors")


def test_unknown_commit_raises_revision_not_found(hub: HubServer):
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id=REPO, filename="model.safetensors", revision="0" * 40)


def test_commit_revision_and_new_commit(hub: HubServer):
    old = hub.commit(REPO)
    path = Path(hf_hub_download(repo_id=REPO, filename="config.json", revision=old))
    assert path.parent.name == old
    hub.clear_log()
    # Pinned to a commit that is cached: no request at all.
    assert Path(hf_hub_download(repo_id=REPO, filename="config.json", revision=old)) == path
    assert hub.requests == []

    new = hub.set_commit(REPO)
    moved = Path(hf_hub_download(repo_id=REPO, filename="config.json"))
    assert moved.parent.name == new != old
    assert hub.gets() == []  # same ETag => the blob is reused, only the snapshot link is new


def test_snapshot_download_uses_the_api_endpoints(hub: HubServer):
    hub.add_hub_file(REPO, "sub/extra.txt", b"extra")
    folder = Path(snapshot_download(repo_id=REPO))

    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert (folder / "sub" / "extra.txt").read_bytes() == b"extra"
    assert ("GET", f"/api/models/{REPO}/revision/main") in hub.requests
    assert ("GET", f"/api/models/{REPO}/tree/{hub.commit(REPO)}") in hub.requests


def test_short_body_fails_the_consistency_check_and_caches_nothing(hub: HubServer, tmp_path: Path):
    hub.truncate(f"hub/{REPO}/model.safetensors", at=1000, mode="short")
    with pytest.raises(OSError, match="Consistency check failed"):
        hf_hub_download(repo_id=REPO, filename="model.safetensors")
    assert try_to_load_from_cache(REPO, "model.safetensors") is None
    blobs = tmp_path / "hf_home" / "hub" / "models--timm--x" / "blobs"
    assert not blobs.exists() or not any(blobs.iterdir())


def test_dropped_connection_is_retried_from_the_start(hub: HubServer, no_retry_sleep: list[float]):
    hub.truncate(f"hub/{REPO}/model.safetensors", at=4096, mode="close", times=1)
    path = Path(hf_hub_download(repo_id=REPO, filename="model.safetensors"))

    assert path.read_bytes() == WEIGHTS
    assert len(hub.gets("model.safetensors")) == 2
    # httpx hands the body over in DOWNLOAD_CHUNK_SIZE (10 MB) pieces: the 4096 bytes never reached the file,
    # so the retry (after a 1 s back-off) asks for the whole file again.
    assert "range" not in hub.request_headers[-1]
    assert no_retry_sleep == [1]


def test_dropped_connection_is_resumed_with_a_range_request(
    hub: HubServer, no_retry_sleep: list[float], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1024)
    hub.truncate(f"hub/{REPO}/model.safetensors", at=4096, mode="close", times=1)
    path = Path(hf_hub_download(repo_id=REPO, filename="model.safetensors"))

    assert path.read_bytes() == WEIGHTS
    assert len(hub.gets("model.safetensors")) == 2
    assert hub.request_headers[-1].get("range") == "bytes=4096-"  # answered 206 with the rest


def test_connection_that_keeps_dropping_gives_up(hub: HubServer, no_retry_sleep: list[float]):
    hub.truncate(f"hub/{REPO}/model.safetensors", at=4096, mode="close")
    with pytest.raises(httpx2.RemoteProtocolError):
        hf_hub_download(repo_id=REPO, filename="model.safetensors")
    assert len(hub.gets("model.safetensors")) == 6  # first try + 5 resumes that get nothing
    assert try_to_load_from_cache(REPO, "model.safetensors") is None


def test_server_error_on_get_raises_and_caches_nothing(hub: HubServer):
    hub.fail(f"hub/{REPO}/model.safetensors", 500, times=1)
    with pytest.raises(HfHubHTTPError) as info:  # a 5xx on the GET is not retried (only 408 and 429 are)
        hf_hub_download(repo_id=REPO, filename="model.safetensors")
    assert info.value.response.status_code == 500
    assert try_to_load_from_cache(REPO, "model.safetensors") is None

    assert Path(hf_hub_download(repo_id=REPO, filename="model.safetensors")).read_bytes() == WEIGHTS


# -- plain URLs -----------------------------------------------------------------------------------------------------


def test_torch_download_url_to_file_with_hash(hf_hub_at: HubServer, tmp_path: Path):
    hf_hub_at.add_file("a.pt", WEIGHTS)
    dst = tmp_path / "a.pt"
    torch.hub.download_url_to_file(hf_hub_at.url("files/a.pt"), str(dst), hash_prefix=_sha(WEIGHTS)[:8], progress=False)
    assert dst.read_bytes() == WEIGHTS
    assert hf_hub_at.requests == [("GET", "/files/a.pt")]


def test_torch_download_url_to_file_mirror_layout(hf_hub_at: HubServer, tmp_path: Path):
    url = "https://docs-assets.developer.apple.com/ml-research/models/cvnets/classification/mobilevit_s.pt"
    hf_hub_at.add_url_file(url, WEIGHTS)
    mirrored = (
        f"{hf_hub_at.mirror}/docs-assets.developer.apple.com/ml-research/models/cvnets/classification/mobilevit_s.pt"
    )
    dst = tmp_path / "mobilevit_s.pt"
    torch.hub.download_url_to_file(mirrored, str(dst), progress=False)
    assert dst.read_bytes() == WEIGHTS
    assert Path(torch.hub.get_dir()).is_relative_to(tmp_path)  # TORCH_HOME is under tmp_path


@pytest.mark.parametrize("mode", ["close", "short"])
def test_torch_download_truncated_is_caught_only_by_the_hash(hf_hub_at: HubServer, tmp_path: Path, mode: str):
    hf_hub_at.add_file("a.pt", WEIGHTS)
    hf_hub_at.truncate("files/a.pt", at=1000, mode=mode)
    dst = tmp_path / "a.pt"
    with pytest.raises(RuntimeError, match="invalid hash value"):
        torch.hub.download_url_to_file(hf_hub_at.url("files/a.pt"), str(dst), hash_prefix=_sha(WEIGHTS), progress=False)
    assert not dst.exists()

    # Without a hash, urllib's read(n) treats the early end of the body as the end of the file: no error at all.
    torch.hub.download_url_to_file(hf_hub_at.url("files/a.pt"), str(dst), progress=False)
    assert dst.read_bytes() == WEIGHTS[:1000]


def test_torch_download_missing_file_is_http_404(hf_hub_at: HubServer, tmp_path: Path):
    with pytest.raises(urllib.error.HTTPError) as info:
        torch.hub.download_url_to_file(hf_hub_at.url("files/nope.pt"), str(tmp_path / "x"), progress=False)
    assert info.value.code == 404
    info.value.close()  # the error holds the response open


def test_range_and_head_on_plain_files(hf_hub_at: HubServer):
    hf_hub_at.add_file("dir/b.bin", WEIGHTS)
    url = hf_hub_at.url("files/dir/b.bin")
    head = httpx2.head(url)
    assert head.status_code == 200
    assert int(head.headers["content-length"]) == len(WEIGHTS)
    part = httpx2.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.content == WEIGHTS[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(WEIGHTS)}"
    assert httpx2.get(url, headers={"Range": f"bytes={len(WEIGHTS)}-"}).status_code == 416
