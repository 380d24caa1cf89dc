"""Check on real weights which channel order each published classifier expects (needs internet).

For every v1 and v2 ImageNet tag (or those matching ``--pattern``), from each of its hosts, prints the
top-5 classes on scikit-image's bundled photos (cat, coffee, rocket, astronaut) as the package loads
the weights, and with the stem's input channels reversed. The order that names the photos is the
right one; the package's choice (``Copy.bgr`` in ``src/mobilevit/models/pretrained.py``) should win.

    python benchmarks/check_channel_order.py --pattern 'mobilevitv2_100*' --hosts timm cvnets

It only prints, for a reader to judge, and writes no result file: the benchmarks page has no figure of it.
"""

from __future__ import annotations

import argparse

import torch
from skimage import data

import mobilevit
from mobilevit.data.images import preprocess
from mobilevit.models.pretrained import PUBLISHED_WEIGHTS
from mobilevit.tasks.classification import imagenet_class_names

PHOTOS = {"cat": data.chelsea, "coffee": data.coffee, "rocket": data.rocket, "astronaut": data.astronaut}


def top5(model: torch.nn.Module, images: torch.Tensor, names: list[str]) -> list[str]:
    with torch.no_grad():
        probs = model(images).softmax(1)
    return [", ".join(f"{names[i]} {p:.2f}" for p, i in zip(*row.topk(5), strict=True)) for row in probs]


def flipped_stem(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        model.stem.conv.weight.copy_(model.stem.conv.weight.flip(1))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pattern", default="*", help="shell-style filter on model.tag (default: every classifier)")
    parser.add_argument("--hosts", nargs="*", help="hosts to try (default: each tag's every host)")
    args = parser.parse_args()
    from PIL import Image

    names = imagenet_class_names()
    for tag in mobilevit.list_pretrained(args.pattern, task="classification"):
        weights = PUBLISHED_WEIGHTS[tag]
        for host in args.hosts or weights.hosts:
            if host not in weights.hosts:
                continue
            try:
                model = mobilevit.create_model(tag, pretrained=True, host=host).eval()
            except OSError as err:
                print(f"{tag} from {host}: {err}")
                continue
            images = torch.stack(
                [preprocess(Image.fromarray(load()), model.pretrained_cfg) for load in PHOTOS.values()]
            )
            as_loaded = top5(model, images, names)
            reversed_ = top5(flipped_stem(model), images, names)
            print(f"\n{tag} from {host} ({model.pretrained_cfg['source']})")
            for photo, loaded, other in zip(PHOTOS, as_loaded, reversed_, strict=True):
                print(f"  {photo:<10} as loaded:  {loaded}")
                print(f"  {'':<10} stem flipped: {other}")


if __name__ == "__main__":
    main()
