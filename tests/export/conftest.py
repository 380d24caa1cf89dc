"""What the export tests share: small randomised classifiers of every family, and int8-friendly ones
(exports copy them, never change them)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from mobilevit import create_model
from mobilevit.testing import randomize_, structured_images


@pytest.fixture(scope="session")
def classifiers():
    """``classifiers(name)``: a randomised 10-class ``name``, made on first use. 10 classes give wider
    top-1 margins than 1000 random logits, so int8 agreement means something. mobilevit_xxs has
    randomize_'s default seed and the other families seed 5, the weights their tests were written on."""

    @functools.cache
    def classifier(name: str) -> nn.Module:
        return randomize_(create_model(name, num_classes=10), seed=0 if name == "mobilevit_xxs" else 5)

    return classifier


@pytest.fixture(scope="session")
def model(classifiers):
    """The v1 classifier most export tests use."""
    return classifiers("mobilevit_xxs")


def with_fitted_head(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Give each image its own class with a clear margin (least squares on the pooled features): a
    random head's top-1 hangs on margins smaller than any int8 error, a trained one's does not."""
    with torch.no_grad():
        features = model.forward_head(model.forward_features(images), pre_logits=True)
        mean, n = features.mean(0), len(images)
        weight = torch.linalg.lstsq(features - mean, 4 * (torch.eye(n) - 1 / n)).solution.T
        model.reset_classifier(n)
        model.head.fc.weight.copy_(weight)
        model.head.fc.bias.copy_(-weight @ mean)
    return model.eval()


@pytest.fixture(scope="session")
def int8_classifier():
    """``int8_classifier(name, size=128, **kwargs)``: a fresh randomised ``name`` whose head gives each
    of 8 structured size x size images its own class (see :func:`with_fitted_head`), and those images; for the int8
    exports (ONNX, ExecuTorch, LiteRT), whose top-1 agreement with fp32 is then meaningful."""

    def build(name: str, size: int = 128, **kwargs) -> tuple[nn.Module, torch.Tensor]:
        images = structured_images(8, size, size, seed=1)
        return with_fitted_head(randomize_(create_model(name, **kwargs)), images), images

    return build


@pytest.fixture(scope="session")
def fitted_head():
    """:func:`with_fitted_head`, for a test that fits a head to images of its own."""
    return with_fitted_head


@pytest.fixture(scope="module")
def detector() -> nn.Module:
    """A fresh 3-class detector with its class logits scaled up: the scores spread out, so its
    detections are not near-ties that fp32 rounding could reorder."""
    torch.manual_seed(0)
    model = create_model("ssdlite_mobilevit_xxs", num_classes=3).eval()
    with torch.no_grad():
        for predictor in model.head.predictors:
            conv = predictor.loc_cls if isinstance(predictor.loc_cls, nn.Conv2d) else predictor.loc_cls.pw_conv
            conv.weight.view(-1, 4 + model.num_classes, *conv.weight.shape[1:])[:, 4:] *= 10
    return model
