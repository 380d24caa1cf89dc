"""Write reference outputs of Apple ml-cvnets' own DeepLabv3 and SSDLite MobileViT models as test fixtures.

The models are built with ml-cvnets' classes, from the options of its YAML configs, given random
weights and run in eval mode on CPU; tests/convert/test_cvnets_reference.py then checks that our
converted models give the same outputs. Only small tensors are written (the random weights are not:
they are regenerated from the layout fixtures with :func:`reference_state`, which the test imports).

Needs a checkout of ml-cvnets at tag cvnets-v0.1 (MobileViT v1; not pip-installable, the PyPI
``cvnets`` is an unrelated project)::

    git clone https://github.com/apple/ml-cvnets /tmp/ml-cvnets-v01
    git -C /tmp/ml-cvnets-v01 checkout cvnets-v0.1      # d38a116fe134
    python scripts/cvnets_reference.py --cvnets-v01 /tmp/ml-cvnets-v01

Only what builds and runs the models is imported (cvnets.models.{segmentation,detection} and their
layers/modules; torch, numpy and, for the SSD module, torchvision). The fixtures in the repository
were made from a subset of that checkout (the forward code of every layer verbatim; option parsing,
profiling and registries of other models left out).

Options (argparse namespace with ml-cvnets' dotted names, as its YAML loader sets them):

- DeepLabv3: config/segmentation/deeplabv3_mobilevit_xx_small.yaml (output stride 16, ASPP 256
  channels at rates 6/12/18, swish in the encoder, ReLU in the head, 21 VOC classes);
- SSD: config/detection/ssd_mobilevit_xx_small_320.yaml (output strides 16..256 and global,
  proj_channels 512/256/256/128/128/64, aspect ratios {2, 3} and {2} on the global map, 81 classes).

ml-cvnets' MobileViT v1 weights take BGR images, so the official model is fed ``x.flip(1)`` where
``x`` is the RGB image of ``mobilevit.testing.structured_images``: our converter flips the stem for
the cvnets source by default, so ours(x) must equal official(x.flip(1)).

MobileViTv2 (ml-cvnets main: deeplabv3_mobilevitv2_050, ssdlite_mobilevitv2_050) is not covered
yet: building those needs main's ConvLayer2d, MobileViTBlockv2/LinearAttnFFN/LinearSelfAttention,
its DeepLabV3 (aux head, align_corners=True resize) and ssd_heads.py, not fetched so far.

Usage: ``python scripts/cvnets_reference.py --cvnets-v01 DIR [--out DIR]``
(default out: tests/fixtures/cvnets/reference).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from cvnets_fixtures import load_layout  # noqa: E402
from mobilevit.testing import structured_images  # noqa: E402

STATE_SEED = 2024  # reference_state(layout, seed=STATE_SEED)
SEG_INPUTS = {"256x256": (256, 256, 11), "192x224": (192, 224, 12)}  # name: (H, W, image seed)
DET_INPUTS = {"320x320": (320, 320, 13)}
SUBSAMPLE = (3, 8)  # resized logits / class logits: every 8th pixel (anchor) from the 3rd

COMMON_V01 = {
    "model.classification.name": "mobilevit",
    "model.classification.classifier_dropout": 0.1,
    "model.classification.mit.mode": "xx_small",
    "model.classification.mit.ffn_dropout": 0.0,
    "model.classification.mit.attn_dropout": 0.0,
    "model.classification.mit.dropout": 0.05,
    "model.classification.mit.number_heads": 4,
    "model.classification.mit.no_fuse_local_global_features": False,
    "model.classification.mit.conv_kernel_size": 3,
    "model.classification.activation.name": "swish",
    "model.normalization.name": "sync_batch_norm",
    "model.normalization.momentum": 0.1,
    "model.activation.name": "relu",
    "model.activation.inplace": False,
    "model.layer.global_pool": "mean",
    "model.layer.conv_init": "kaiming_normal",
    "model.layer.linear_init": "normal",
}
SEG_V01 = {
    **COMMON_V01,
    "model.segmentation.name": "encoder_decoder",
    "model.segmentation.n_classes": 21,
    "model.segmentation.lr_multiplier": 10,
    "model.segmentation.seg_head": "deeplabv3",
    "model.segmentation.output_stride": 16,
    "model.segmentation.classifier_dropout": 0.1,
    "model.segmentation.activation.name": "relu",
    "model.segmentation.deeplabv3.aspp_dropout": 0.1,
    "model.segmentation.deeplabv3.aspp_sep_conv": False,
    "model.segmentation.deeplabv3.aspp_out_channels": 256,
    "model.segmentation.deeplabv3.aspp_rates": [6, 12, 18],
}
DET_V01 = {
    **COMMON_V01,
    "model.detection.name": "ssd",
    "model.detection.n_classes": 81,  # set by ml-cvnets' COCO dataset (80 + background)
    "model.detection.ssd.anchors_aspect_ratio": [[2, 3], [2, 3], [2, 3], [2, 3], [2, 3], [2]],
    "model.detection.ssd.output_strides": [16, 32, 64, 128, 256, -1],
    "model.detection.ssd.proj_channels": [512, 256, 256, 128, 128, 64],
    "model.detection.ssd.center_variance": 0.1,
    "model.detection.ssd.size_variance": 0.2,
    "model.detection.ssd.iou_threshold": 0.5,
    "model.detection.ssd.nms_iou_threshold": 0.5,
}


def reference_state(layout: dict, seed: int = STATE_SEED) -> dict[str, torch.Tensor]:
    """A random state dict of the layout's keys and shapes, like ``cvnets_fixtures.random_state`` but
    scaled so the signal survives the depth: conv/linear weights N(0, 1/fan_in), norm weights
    1 + N(0, 0.01), biases and running means N(0, 0.01), running variances U(0.5, 1.5). (random_state's
    N(0, 0.01) everywhere shrinks activations until the outputs hardly depend on the image, which
    would hide, e.g., a missing BGR flip.)"""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout["state_dict"]:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(1, 10**6, (), generator=gen)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=gen)
        elif key.endswith("weight") and len(shape) >= 2:
            fan_in = 1
            for n in shape[1:]:
                fan_in *= n
            state[key] = torch.randn(shape, generator=gen) / fan_in**0.5
        elif key.endswith("weight"):
            state[key] = 1 + torch.randn(shape, generator=gen) * 0.1
        else:  # biases, running means
            state[key] = torch.randn(shape, generator=gen) * 0.1
    return state


def import_cvnets(checkout: Path) -> None:
    """Make ``checkout`` the ``cvnets`` (and ``utils``) package of this process."""
    for name in list(sys.modules):
        if name.split(".")[0] in ("cvnets", "utils"):
            del sys.modules[name]
    sys.path.insert(0, str(checkout.resolve()))


def namespace(options: dict) -> argparse.Namespace:
    opts = argparse.Namespace()
    for key, value in options.items():
        setattr(opts, key, value)
    return opts


def fill_random(model: torch.nn.Module, layout_name: str) -> dict:
    """Load reference_state(layout) into the official model, after checking the layout is its state_dict."""
    layout = load_layout(layout_name)
    official = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    expected = [(k, list(s)) for k, s in layout["state_dict"]]
    if official != expected:
        raise SystemExit(f"{layout_name}: the official state_dict differs from the layout fixture")
    model.load_state_dict(reference_state(layout, seed=STATE_SEED), strict=True)
    return {"layout": layout_name, "state_seed": STATE_SEED, "num_classes": layout["num_classes"]}


def subsample(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    start, step = SUBSAMPLE
    index = [slice(None)] * x.dim()
    for d in dims:
        index[d] = slice(start, None, step)
    return x[tuple(index)].contiguous()


@torch.no_grad()
def deeplabv3_v01(out: Path) -> None:
    from cvnets.models.segmentation import build_segmentation_model

    model = build_segmentation_model(namespace(SEG_V01)).eval()
    meta = fill_random(model, "deeplabv3_mobilevit_xxs_cvnets_v0.1")
    captured = {}
    model.seg_head.classifier.classifier.register_forward_hook(lambda m, i, o: captured.update(logits=o))
    tensors = {}
    for name, (h, w, seed) in SEG_INPUTS.items():
        x = structured_images(2, h, w, seed=seed)
        resized = model(x.flip(1))  # BGR, as ml-cvnets v1 weights take
        tensors[f"{name}.logits"] = captured["logits"].clone()
        tensors[f"{name}.resized_sub"] = subsample(resized, (2, 3))
        tensors[f"{name}.resized_sum"] = resized.sum(dim=(2, 3))
        meta.setdefault("inputs", {})[name] = {"height": h, "width": w, "seed": seed, "official_input": "x.flip(1)"}
    meta.update(
        model="deeplabv3_mobilevit_xxs",
        cvnets="cvnets-v0.1 (d38a116fe134)",
        config="config/segmentation/deeplabv3_mobilevit_xx_small.yaml",
        options={k: v for k, v in SEG_V01.items()},
        resize="UpSample(scale_factor=16, mode='bilinear', align_corners=False) in seg_head.classifier",
        subsample=list(SUBSAMPLE),
    )
    save(out, "deeplabv3_mobilevit_xxs_cvnets_v0.1", tensors, meta)


@torch.no_grad()
def ssd_v01(out: Path) -> None:
    from cvnets.models.detection import build_detection_model

    model = build_detection_model(namespace(DET_V01)).eval()
    meta = fill_random(model, "ssdlite_mobilevit_xxs_cvnets_v0.1")
    tensors = {}
    for name, (h, w, seed) in DET_INPUTS.items():
        x = structured_images(2, h, w, seed=seed)
        confidences, locations, anchors = model.ssd_forward(x.flip(1), is_prediction=True)
        plain_conf, plain_loc = model(x.flip(1))
        assert torch.equal(plain_conf, confidences) and torch.equal(plain_loc, locations)
        tensors[f"{name}.locations"] = locations
        tensors[f"{name}.confidences_sub"] = subsample(confidences, (1,))
        tensors[f"{name}.confidences_anchor_sum"] = confidences.sum(-1)
        tensors[f"{name}.confidences_class_sum"] = confidences.sum(1)
        tensors[f"{name}.anchors"] = anchors[0]  # [N, 4] (cx, cy, w, h) / image side, clipped to [0, 1]
        meta.setdefault("inputs", {})[name] = {"height": h, "width": w, "seed": seed, "official_input": "x.flip(1)"}
    meta.update(
        model="ssdlite_mobilevit_xxs",
        cvnets="cvnets-v0.1 (d38a116fe134)",
        config="config/detection/ssd_mobilevit_xx_small_320.yaml",
        options={k: v for k, v in DET_V01.items()},
        anchors_per_location=model.anchor_box_generator.num_anchors_per_os(),
        subsample=list(SUBSAMPLE),
    )
    save(out, "ssdlite_mobilevit_xxs_cvnets_v0.1", tensors, meta)


def save(out: Path, name: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().float().contiguous() for k, v in tensors.items()}, out / f"{name}.pt")
    (out / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    sizes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items())
    print(f"{name}: {sizes}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cvnets-v01", type=Path, required=True, help="ml-cvnets checkout at tag cvnets-v0.1")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "cvnets" / "reference")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    import_cvnets(args.cvnets_v01)
    deeplabv3_v01(args.out)
    ssd_v01(args.out)


if __name__ == "__main__":
    main()
