"""Downloading published weights, the ecosystem's way.

- Hugging Face Hub repos go through ``huggingface_hub.hf_hub_download``: its cache, ``HF_HOME``,
  ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and tokens work as they do for timm and transformers.
- Plain URLs go through ``torch.hub.download_url_to_file`` with a SHA-256 check into torch's hub
  cache, as ``$TORCH_HOME/hub/checkpoints/<host>/<path>`` (timm and torchvision use that cache too). Setting
  ``MOBILEVIT_URL_MIRROR=https://mirror/prefix`` fetches ``https://host/path`` from
  ``https://mirror/prefix/host/path`` instead (for air-gapped networks and for tests).

A file is used only once it is complete and readable: downloads land in a temporary file that is
checked (hash, then parsed: a file cut short does not parse) before it is renamed into the cache.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from mobilevit.checkpoint_io import CONFIG_FILE, WEIGHT_FILES, read_state_dict
from mobilevit.errors import CheckpointError

URL_MIRROR_ENV = "MOBILEVIT_URL_MIRROR"


class DownloadError(OSError):
    """Weights could not be fetched; the message names the file, the reason and what to do."""


@dataclass(frozen=True)
class HubFile:
    """Weights in a Hugging Face Hub repo: the first of ``filenames`` that the repo has."""

    repo_id: str
    filenames: tuple[str, ...] = WEIGHT_FILES
    revision: str = "main"

    @property
    def address(self) -> str:
        return f"hf-hub:{self.repo_id}"


@dataclass(frozen=True)
class UrlFile:
    """Weights at a plain URL. ``sha256`` is the file's digest or a prefix of it (timm's legacy
    file names carry the first 8 hex digits); ``None`` where the publisher gives none."""

    url: str
    sha256: str | None = None

    @property
    def address(self) -> str:
        return self.url


Remote = HubFile | UrlFile


def url_cache_dir() -> Path:
    """Where plain-URL downloads are kept: ``$TORCH_HOME/hub/checkpoints`` (torch's own default)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it; plain URLs honour it too."""
    return bool(constants.HF_HUB_OFFLINE)


def mirrored(url: str) -> str:
    mirror = os.environ.get(URL_MIRROR_ENV)
    if not mirror:
        return url
    parts = urllib.parse.urlsplit(url)
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_readable(path: Path, address: str) -> None:
    try:
        read_state_dict(path)
    except (CheckpointError, OSError) as err:
        raise DownloadError(
            f"the file downloaded from {address} is not readable weights ({err}). Delete {path} if it "
            "exists and try again; if it keeps failing, the file on the server is damaged."
        ) from err


def _url_target(remote: UrlFile) -> Path:
    """``<cache>/<host>/<path>``: ml-cvnets reuses file names across folders (``mobilevitv2-1.5.pt``
    is an ImageNet-1k, a 384 and an ImageNet-22k checkpoint), so the name alone would collide."""
    parts = urllib.parse.urlsplit(remote.url)
    return url_cache_dir().joinpath(parts.netloc, *parts.path.strip("/").split("/"))


def _fetch_url(remote: UrlFile, progress: bool) -> Path:
    """The cached file of ``remote``, downloaded first if it is not there yet."""
    target = _url_target(remote)
    if target.is_file() and (remote.sha256 is None or _sha256(target).startswith(remote.sha256)):
        return target
    if hf_offline():
        raise DownloadError(
            f"offline (HF_HUB_OFFLINE is set) and {target.name} is not cached: download {remote.url} "
            f"on a machine with internet and put it in {target.parent}."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps the extension: the file is parsed by its format before it is renamed.
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".partial{target.suffix}", dir=target.parent)
    os.close(fd)
    url = mirrored(remote.url)
    try:
        torch.hub.download_url_to_file(url, tmp, progress=progress)
        digest = _sha256(Path(tmp))
        if remote.sha256 is not None and not digest.startswith(remote.sha256):
            raise DownloadError(
                f"{url} does not have the published SHA-256: expected {remote.sha256}..., got {digest}. "
                "The download was damaged or the file changed on the server; nothing was cached. Try again."
            )
        _check_readable(Path(tmp), url)
        os.replace(tmp, target)
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{url} answered HTTP {err.code} ({err.reason}): the file is not there.") from err
    except http.client.HTTPException as err:
        raise DownloadError(f"the download of {url} was cut short ({err!r}); nothing was cached. Try again.") from err
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        raise DownloadError(
            f"cannot download {url} ({err}). Without internet, download it elsewhere and put it in "
            f"{target.parent} as {target.name}."
        ) from err
    except OSError as err:
        if isinstance(err, DownloadError):
            raise
        raise DownloadError(f"downloading {url} failed ({err}); nothing was cached. Try again.") from err
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def _fetch_hub(remote: HubFile, weights: bool = True) -> Path:
    """The first of ``remote.filenames`` in the repo, through huggingface_hub's cache (and its own
    progress bar, which ``HF_HUB_DISABLE_PROGRESS_BARS`` turns off)."""
    not_cached = None
    for filename in remote.filenames:
        try:
            path = Path(hf_hub_download(remote.repo_id, filename, revision=remote.revision))
        except LocalEntryNotFoundError as err:  # a subclass of EntryNotFoundError: first. A later file may be cached
            not_cached = not_cached or err
            continue
        except EntryNotFoundError:
            continue
        except RepositoryNotFoundError as err:
            raise DownloadError(
                f"the Hub has no repo {remote.repo_id!r} (or it is private: log in with `hf auth login`)."
            ) from err
        except RevisionNotFoundError as err:
            raise DownloadError(f"{remote.repo_id} has no revision {remote.revision!r}.") from err
        except (HfHubHTTPError, OSError) as err:
            raise DownloadError(f"downloading {remote.repo_id}/{filename} failed: {err}") from err
        if weights:
            _check_readable(path, f"{remote.repo_id}/{filename}")
        return path
    if not_cached is not None:
        files = " or ".join(remote.filenames)
        raise DownloadError(
            f"{remote.repo_id}: {files} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and cannot be "
            "downloaded (offline, or no connection to the Hub). On a machine with internet run "
            f"`hf download {remote.repo_id} {remote.filenames[0]}` and copy the cache folder, or set HF_HUB_CACHE."
        ) from not_cached
    raise DownloadError(f"{remote.repo_id} has none of {', '.join(remote.filenames)}.")


def fetch(remote: Remote, progress: bool = True) -> Path:
    """The local path of ``remote``'s weights, downloaded and checked if they are not cached
    (``progress``: the plain-URL download's bar; the Hub's follows huggingface_hub's setting)."""
    if isinstance(remote, HubFile):
        return _fetch_hub(remote)
    return _fetch_url(remote, progress)


def fetch_first(remotes: tuple[Remote, ...], progress: bool = True) -> tuple[Remote, Path]:
    """The first of ``remotes`` that can be fetched (the others are mirrors of the same weights),
    and its path; every failure is reported when none can."""
    failures = []
    for remote in remotes:
        try:
            return remote, fetch(remote, progress)
        except DownloadError as err:
            failures.append(f"  {remote.address}: {err}")
    raise DownloadError("no copy of the weights could be fetched:\n" + "\n".join(failures))


def fetch_repo(repo_id: str) -> Path:
    """A local folder (huggingface_hub's snapshot) with the repo's ``config.json`` and weights."""
    weights = _fetch_hub(HubFile(repo_id))
    config = _fetch_hub(HubFile(repo_id, (CONFIG_FILE,)), weights=False)
    if config.parent != weights.parent:
        raise DownloadError(f"{repo_id}'s config and weights came from different revisions; download again.")
    return config.parent


def is_repo_id(name: str) -> bool:
    """``owner/name`` with nothing that makes it a local path."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and not Path(name).exists()
