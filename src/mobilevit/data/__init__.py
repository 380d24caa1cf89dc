"""Datasets, transforms and the multi-scale sampler."""

import os
from pathlib import Path

from mobilevit.data.sampler import MultiScaleBatchSampler


def cache_dir() -> Path:
    """Where downloaded and generated data are kept: ``$XDG_CACHE_HOME/mobilevit``."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mobilevit"


__all__ = ["MultiScaleBatchSampler", "cache_dir"]
