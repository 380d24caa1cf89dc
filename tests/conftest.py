"""Shared fixtures: photos and small saved segmentation and detection models for the prediction tests
(test_predict.py, tasks/), and an offline stand-in for the Hugging Face Hub and for plain download URLs (see
hub_server.py).

huggingface_hub reads its environment variables once, at import (``huggingface_hub.constants``), and its code reads
them back as ``constants.NAME`` at call time. So pointing an already-imported huggingface_hub somewhere else is done
by monkeypatching the attributes of ``huggingface_hub.constants``; the environment variables are set as well, for
code that reads ``os.environ`` itself and for subprocesses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ci_skips import pytest_runtest_makereport  # noqa: F401  (the hook: under CI=true, unexpected skips fail)
from hub_server import HubServer
from mobilevit import create_model
from mobilevit.testing import randomize_

_TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_OIDC_ID_TOKEN")


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Real photos (scikit-image's samples) by key: RGB PNG and JPEG ones, a grayscale one, an RGBA one, a
    128x128 astronaut (small/astronaut.png), a photo with chelsea's stem in another folder (other/chelsea.png),
    a truncated JPEG and a missing path."""
    skimage_data = pytest.importorskip("skimage.data")
    root = tmp_path_factory.mktemp("photos")
    files = {
        "astronaut": ("astronaut.png", skimage_data.astronaut()),
        "chelsea": ("chelsea.jpg", skimage_data.chelsea()),  # 451 x 300
        "coffee": ("coffee.jpeg", skimage_data.coffee()),
        "camera": ("camera.png", skimage_data.camera()),  # grayscale
        "small_astronaut": ("small/astronaut.png", skimage_data.astronaut()[::4, ::4]),
        "same_stem": ("other/chelsea.png", skimage_data.coffee()[::4, ::4]),
    }
    paths = {}
    for key, (name, pixels) in files.items():
        (root / name).parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(root / name)
        paths[key] = str(root / name)
    rgba = np.dstack([skimage_data.coffee(), np.full(skimage_data.coffee().shape[:2], 128, np.uint8)])
    Image.fromarray(rgba).save(root / "coffee_rgba.png")
    paths["rgba"] = str(root / "coffee_rgba.png")
    (root / "truncated.jpg").write_bytes((root / "chelsea.jpg").read_bytes()[:2000])
    paths["truncated"] = str(root / "truncated.jpg")
    paths["missing"] = str(root / "missing.png")
    return paths


@pytest.fixture(scope="session")
def seg_labels() -> list[str]:
    return ["background", "sky", "road", "tree"]


@pytest.fixture(scope="session")
def seg_dir(tmp_path_factory: pytest.TempPathFactory, seg_labels: list[str]) -> Path:
    """A randomised DeepLabv3 saved with ``seg_labels`` and a 64x64 input (small: fast tests)."""
    model = randomize_(create_model("deeplabv3_mobilevit_xxs", num_classes=len(seg_labels)))
    model.pretrained_cfg.update(label_names=seg_labels, input_size=(3, 64, 64))
    return model.save_pretrained(tmp_path_factory.mktemp("seg") / "model")


@pytest.fixture(scope="session")
def det_labels() -> list[str]:
    return ["background", "cat", "dog"]


@pytest.fixture(scope="session")
def det_dir(tmp_path_factory: pytest.TempPathFactory, det_labels: list[str]) -> Path:
    """A fresh SSDLite saved with ``det_labels``, its class logits scaled up: its scores then spread out
    instead of sitting near 1/K, so a score threshold keeps some boxes and runtimes agree on their order."""
    torch.manual_seed(0)
    model = create_model("ssdlite_mobilevit_xxs", num_classes=len(det_labels))
    with torch.no_grad():
        for predictor in model.head.predictors:
            conv = predictor.loc_cls if isinstance(predictor.loc_cls, nn.Conv2d) else predictor.loc_cls.pw_conv
            conv.weight.view(-1, 4 + model.num_classes, *conv.weight.shape[1:])[:, 4:] *= 10
    model.pretrained_cfg["label_names"] = det_labels
    return model.save_pretrained(tmp_path_factory.mktemp("det") / "model")


@pytest.fixture
def hub_server(tmp_path_factory: pytest.TempPathFactory):
    """A running HubServer on an empty root (fill it with ``add_hub_file`` / ``add_file`` / ``add_url_file``)."""
    with HubServer(tmp_path_factory.mktemp("hub_root")) as server:
        yield server


@pytest.fixture
def hf_hub_at(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> HubServer:
    """Point huggingface_hub (already imported or not) at ``hub_server`` and at a fresh HF_HOME under tmp_path, with
    offline mode off, no token, no telemetry, no Xet; torch.hub's cache goes under tmp_path too. Returns the
    server. Nothing reaches the internet: every Hub request goes to 127.0.0.1."""
    import huggingface_hub.hf_api
    import huggingface_hub.utils._cache_manager
    from huggingface_hub import constants
    from huggingface_hub.utils._http import close_session

    home = tmp_path / "hf_home"
    cache = home / "hub"
    endpoint = hub_server.endpoint
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "TORCH_HOME": str(tmp_path / "torch_home"),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in (*_TOKEN_ENV, "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)

    patches = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HUGGINGFACE_HUB_CACHE": str(cache),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(home / ".check_for_update_done"),
        "HF_HUB_OFFLINE": False,
        # With telemetry on, every request's user agent runs agent detection, which fetches
        # {ENDPOINT}/api/agent-harnesses once per process and writes it under HF_HOME.
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
    }
    for name, value in patches.items():
        monkeypatch.setattr(constants, name, value)
    # Captured at import, not read back from constants: the module-level HfApi behind huggingface_hub.model_info,
    # list_repo_files, ... and scan_cache_dir's default cache.
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
    monkeypatch.setattr(huggingface_hub.utils._cache_manager, "HF_HUB_CACHE", str(cache))

    try:
        import torch.hub
    except ImportError:  # pragma: no cover - torch is a dependency of the package
        pass
    else:
        monkeypatch.setattr(torch.hub, "_hub_dir", None)  # so torch.hub.get_dir() follows TORCH_HOME

    close_session()  # a fresh shared httpx client, built with the proxy settings above
    return hub_server


@pytest.fixture
def hub_offline(hf_hub_at: HubServer, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    """``hf_hub_at`` with offline mode on, as ``HF_HUB_OFFLINE=1`` at import would set it: huggingface_hub's
    ``constants.HF_HUB_OFFLINE`` (what ``constants.is_offline_mode()`` returns) and the environment variable (for
    code that reads os.environ). Requests are still logged if anything bypasses offline mode."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hf_hub_at


@pytest.fixture
def no_retry_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Make huggingface_hub's retry back-off (1 s, 2 s, ... between attempts) instant; returns the waits asked for.
    Patches time.sleep for the test's duration (the HubServer threads never sleep)."""
    import time

    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    return waits
