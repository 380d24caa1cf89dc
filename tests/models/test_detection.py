"""SSDLite-MobileViT: torchvision's detection API, ml-cvnets' design, parameter counts and clear errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import mobilevit
from mobilevit.checkpoint_io import read_state_dict
from mobilevit.errors import CheckpointMismatchError
from mobilevit.models.detection import DETECTION_MODELS, SSDLiteMobileViT, ssdlite_mobilevit

NUM_CLASSES = 81  # COCO: 80 categories + background
SMALL = 160  # model input side for the fast tests; the design is the same at 320

# Paper (Table 3): SSDLite parameters in millions, quoted to one decimal.
PAPER_PARAMS_M = {"mobilevit_xxs": 1.7, "mobilevit_xs": 2.7, "mobilevit_s": 5.7}
# Published classifier parameters (1000 classes), minus what detection drops: the final 1x1 conv + BN and the fc.
CLASSIFIER_PARAMS = {"mobilevit_xxs": 1_272_024, "mobilevit_xs": 2_317_848, "mobilevit_s": 5_578_632}


def _model(variant: str = "mobilevit_xxs", **kwargs) -> SSDLiteMobileViT:
    torch.manual_seed(0)
    return ssdlite_mobilevit(variant, num_classes=NUM_CLASSES, **kwargs)


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {
            "boxes": torch.tensor([[10.0, 20.0, 120.0, 200.0], [150.0, 40.0, 300.0, 100.0]]),
            "labels": torch.tensor([1, 80]),
        },
        {"boxes": torch.tensor([[30.0, 30.0, 90.0, 150.0]]), "labels": torch.tensor([17])},
    ]


def _images() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.rand(3, 240, 300, generator=gen), torch.rand(3, 200, 200, generator=gen)]


def test_registered_names_map_to_backbones():
    assert {k: v for k, v in DETECTION_MODELS.items() if "mobilevit_" in k} == {
        "ssdlite_mobilevit_xxs": "mobilevit_xxs",
        "ssdlite_mobilevit_xs": "mobilevit_xs",
        "ssdlite_mobilevit_s": "mobilevit_s",
    }
    assert DETECTION_MODELS["ssdlite_mobilevitv2_100"] == "mobilevitv2_100"  # v2 backbones too
    model = _model("mobilevit_xs")
    assert model.model_name == "ssdlite_mobilevit_xs"
    assert model.num_classes == NUM_CLASSES
    assert model.pretrained_cfg["input_size"] == (3, 320, 320)
    assert model.pretrained_cfg["task"] == "detection"
    assert (model.pretrained_cfg["mean"], model.pretrained_cfg["std"]) == ((0.0,) * 3, (1.0,) * 3)
    transform = model.transform
    assert (transform.min_size, transform.max_size, transform.fixed_size) == ((320,), 320, (320, 320))
    assert (transform.image_mean, transform.image_std) == ([0.0] * 3, [1.0] * 3)
    assert model.neg_to_pos_ratio == 3


def test_train_returns_finite_losses_and_backward_reaches_every_part():
    model = _model(img_size=SMALL).train()
    losses = model(_images(), _targets())
    assert set(losses) == {"bbox_regression", "classification"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    for part in (model.backbone.body.stem, model.backbone.extra, model.head):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_image_without_boxes_trains():
    model = _model(img_size=SMALL).train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model(_images(), [_targets()[0], empty])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()

    losses = model(_images(), [empty, empty])  # no positives at all: nothing to regress, no hard negatives
    assert losses["bbox_regression"] == 0
    assert torch.isfinite(losses["classification"])


def test_eval_returns_boxes_in_input_image_coordinates():
    model = _model(img_size=SMALL, score_thresh=0.0, detections_per_img=50).eval()
    images = _images()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == len(images)
    for det, img in zip(detections, images, strict=True):
        assert set(det) == {"boxes", "labels", "scores"}
        n = det["boxes"].shape[0]
        assert 0 < n <= 50
        assert det["boxes"].shape == (n, 4) and det["scores"].shape == (n,) and det["labels"].shape == (n,)
        assert det["labels"].dtype == torch.int64
        assert det["labels"].min() >= 1 and det["labels"].max() < NUM_CLASSES
        assert ((det["scores"] >= 0) & (det["scores"] <= 1)).all()
        boxes, (h, w) = det["boxes"], img.shape[-2:]
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all()
        assert (boxes[:, 2:] >= boxes[:, :2]).all()

    # The model resizes a 240x300 image to SMALLxSMALL and maps the boxes back: the same as detecting on
    # the resized image ourselves and scaling x by 300/SMALL and y by 240/SMALL.
    resized = F.interpolate(images[0][None], size=(SMALL, SMALL), mode="bilinear", align_corners=False)[0]
    with torch.no_grad():
        on_resized = model([resized])[0]
    scale = torch.tensor([300 / SMALL, 240 / SMALL] * 2)
    torch.testing.assert_close(detections[0]["boxes"], on_resized["boxes"] * scale)
    torch.testing.assert_close(detections[0]["scores"], on_resized["scores"])


@pytest.mark.parametrize("img_size", [320, SMALL])
def test_one_box_prediction_per_anchor(img_size):
    model = _model(img_size=img_size).eval()
    images, _ = model.transform([torch.rand(3, 100, 130)])
    with torch.no_grad():
        features = list(model.backbone(images.tensors).values())
        out = model.head(features)
    anchors = model.anchor_generator(images, features)[0]
    per_location = model.anchor_generator.num_anchors_per_location()
    assert per_location == [6, 6, 6, 6, 6, 4]
    expected = sum(f.shape[-2] * f.shape[-1] * a for f, a in zip(features, per_location, strict=True))
    assert anchors.shape == (expected, 4)
    assert out["bbox_regression"].shape == (1, expected, 4)
    assert out["cls_logits"].shape == (1, expected, NUM_CLASSES)
    if img_size == 320:  # maps of 20, 10, 5, 3, 2 and 1 pixels a side
        assert [f.shape[-1] for f in features] == [20, 10, 5, 3, 2, 1]
        assert expected == (400 + 100 + 25 + 9 + 4) * 6 + 4


def _ssd_params(c4: int, c5: int, num_classes: int) -> int:
    """Parameters that ml-cvnets' SSD adds to the backbone, counted by hand from its design."""

    def separable(c_in: int, c_out: int, predictor: bool) -> int:  # depthwise 3x3 + BN, then 1x1
        return 9 * c_in + 2 * c_in + c_in * c_out + (c_out if predictor else 2 * c_out)

    extra = separable(c5, 256, False) + separable(256, 128, False) + separable(128, 128, False) + 128 * 64
    heads = 0
    for c_in, proj in zip((c4, c5, 256, 128, 128), (512, 256, 256, 128, 128), strict=True):
        heads += (c_in * proj + 2 * proj if c_in != proj else 0) + separable(proj, 6 * (4 + num_classes), True)
    heads += 64 * 4 * (4 + num_classes) + 4 * (4 + num_classes)  # global map: 1x1 conv with bias
    return extra + heads


@pytest.mark.parametrize("variant", sorted(PAPER_PARAMS_M))
def test_parameter_count_matches_design_and_paper(variant):
    model = _model(variant)
    cfg = model.config
    count = sum(p.numel() for p in model.parameters())
    dropped = cfg.channels[-1] * cfg.last_channels + 2 * cfg.last_channels + cfg.last_channels * 1000 + 1000
    expected = CLASSIFIER_PARAMS[variant] - dropped + _ssd_params(cfg.channels[3], cfg.channels[4], NUM_CLASSES)
    print(f"{model.model_name}: {count:,} parameters ({count / 1e6:.3f} M; paper {PAPER_PARAMS_M[variant]} M)")
    assert count == expected
    # Measured 1.755 / 2.742 / 5.739 M: the paper's figures are these truncated to one decimal.
    assert math.floor(count / 1e5) / 10 == PAPER_PARAMS_M[variant]


def test_classification_checkpoint_loads_into_backbone(tmp_path):
    classifier = mobilevit.create_model("mobilevit_xxs")
    state = classifier.state_dict()
    path = classifier.save_pretrained(tmp_path / "classifier") / "model.safetensors"
    model = mobilevit.create_model("ssdlite_mobilevit_xxs", pretrained=path)
    body = model.backbone.body.state_dict()
    assert set(body) == {k for k in state if not k.startswith(("final_conv.", "head."))}
    assert all(torch.equal(body[k], state[k]) for k in body)
    assert model.num_classes == NUM_CLASSES  # the classifier's 1000 classes are not the detector's

    # The documented prefix: every classifier key but the head's is a model key under backbone.body.
    model_keys = set(model.state_dict())
    assert all(f"backbone.body.{k}" in model_keys for k in body)

    other = mobilevit.create_model("mobilevit_s").save_pretrained(tmp_path / "other") / "model.safetensors"
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        mobilevit.create_model("ssdlite_mobilevit_xxs", pretrained=other)


def test_a_segmentation_backbone_initialises_a_detector(tmp_path):
    """The shapes recipe's second stage: a DeepLabv3 checkpoint's backbone into an SSDLite."""
    seg = mobilevit.create_model("deeplabv3_mobilevit_xxs", num_classes=3)
    path = seg.save_pretrained(tmp_path / "seg") / "model.safetensors"
    det = mobilevit.create_model("ssdlite_mobilevit_xxs", num_classes=3, pretrained=path)
    for key, value in seg.backbone.state_dict().items():
        assert torch.equal(det.backbone.body.state_dict()[key], value), key


def test_save_pretrained_writes_weights_and_config(tmp_path):
    model = _model(score_thresh=0.2, img_size=256)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == "ssdlite_mobilevit_xxs"
    assert config["num_classes"] == NUM_CLASSES
    assert config["model_args"] == {"score_thresh": 0.2, "img_size": 256}
    assert config["pretrained_cfg"]["input_size"] == [3, 256, 256]
    assert config["pretrained_cfg"]["task"] == "detection"

    rebuilt = ssdlite_mobilevit(DETECTION_MODELS[config["architecture"]], config["num_classes"], **config["model_args"])
    rebuilt.load_state_dict(read_state_dict(tmp_path / "model.safetensors"))
    saved = model.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in rebuilt.state_dict().items())
    assert rebuilt.score_thresh == 0.2 and rebuilt.transform.fixed_size == (256, 256)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (torch.rand(1, 64, 64), r"expected a \[3, H, W\] RGB tensor, got \(1, 64, 64\); convert grayscale"),
        (torch.rand(4, 64, 64), r"expected a \[3, H, W\] RGB tensor, got \(4, 64, 64\)"),
        (torch.rand(64, 64), r"expected a \[3, H, W\] RGB tensor, got \(64, 64\)"),
        (torch.zeros(3, 64, 64, dtype=torch.uint8), r"floating-point RGB in \[0, 1\], got torch.uint8"),
    ],
)
def test_bad_images_raise_value_error(image, message):
    model = _model(img_size=SMALL).eval()
    with pytest.raises(ValueError, match=message):
        model([image])


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"boxes": torch.rand(2, 5), "labels": torch.tensor([1, 2])}, r"'boxes' must be .* \[N, 4\].*got \(2, 5\)"),
        ({"boxes": torch.rand(4), "labels": torch.tensor([1])}, r"'boxes' must be .* \[N, 4\].*got \(4,\)"),
        ({"labels": torch.tensor([1])}, r"'boxes' must be .* \[N, 4\].*got NoneType"),
        (
            {"boxes": torch.tensor([[0.0, 0, 9, 9]]), "labels": torch.tensor([0])},
            r"labels must lie in 1..80 .*got 0..0",
        ),
        ({"boxes": torch.tensor([[0.0, 0, 9, 9]]), "labels": torch.tensor([81])}, r"labels must lie in 1..80 .*got 81"),
        ({"boxes": torch.tensor([[0.0, 0, 9, 9]]), "labels": torch.tensor([1.0])}, r"'labels' must be an int64 tensor"),
        ({"boxes": torch.tensor([[0.0, 0, 9, 9]]), "labels": torch.tensor([1, 2])}, r"int64 tensor of shape \[1\]"),
        ({"boxes": torch.tensor([[5.0, 0, 5, 9]]), "labels": torch.tensor([1])}, r"has no area; .* x2 > x1"),
    ],
)
def test_bad_targets_raise_value_error(target, message):
    model = _model(img_size=SMALL).train()
    with pytest.raises(ValueError, match=message):
        model([torch.rand(3, 64, 64)], [target])


def test_missing_or_miscounted_targets_raise_value_error():
    model = _model(img_size=SMALL).train()
    with pytest.raises(ValueError, match="training mode needs targets"):
        model([torch.rand(3, 64, 64)])
    with pytest.raises(ValueError, match=r"one target per image \(2\), got 1"):
        model([torch.rand(3, 64, 64)] * 2, _targets()[:1])


def test_bad_options_raise_value_error():
    with pytest.raises(ValueError, match="unknown backbone 'mobilevit_m'"):
        ssdlite_mobilevit("mobilevit_m")
    with pytest.raises(ValueError, match="unknown option.*score_threshold.*score_thresh"):
        ssdlite_mobilevit("mobilevit_xxs", score_threshold=0.5)
    with pytest.raises(ValueError, match="at least 2"):
        ssdlite_mobilevit("mobilevit_xxs", num_classes=1)


@pytest.mark.parametrize("backbone", ["mobilevitv2_050", "mobilevitv3_050"])
def test_v2_and_v3_backbones_train_and_detect(backbone):
    """SSDLite on MobileViTv2, as ml-cvnets' COCO recipe for v2 builds it, and on MobileViTv3."""
    model = mobilevit.create_model(f"ssdlite_{backbone}", num_classes=3, img_size=128).train()
    images = [torch.rand(3, 128, 128), torch.rand(3, 100, 150)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    losses = model(images, targets)
    assert set(losses) == {"bbox_regression", "classification"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and all(o["boxes"].shape[1] == 4 and len(o["boxes"]) == len(o["scores"]) for o in out)
