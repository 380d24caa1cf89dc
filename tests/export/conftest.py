"""A small randomised classifier shared by the export tests (exports copy it, never change it)."""

from __future__ import annotations

import pytest

from mobilevit import create_model
from mobilevit.testing import randomize_


@pytest.fixture(scope="session")
def model():
    # 10 classes: wider top-1 margins than 1000 random logits, so int8 agreement means something
    return randomize_(create_model("mobilevit_xxs", num_classes=10))
