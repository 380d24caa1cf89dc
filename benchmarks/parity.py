"""Max absolute difference of our v1 and v2 classifiers against timm and Hugging Face, with random weights.

    python benchmarks/parity.py [--models ...] [--references timm hf] [--sizes 256x256 200x300 320x192]
                                [--json benchmarks/results/parity.json]

Hugging Face zero-fills odd-sided maps of v2 where timm and ml-cvnets resize them, so v2 is compared
with Hugging Face in its layout (``unfold_remainder="zero"``); at sizes whose maps stay even the two
layouts are the same.
"""

from __future__ import annotations

import argparse

import timm
import torch
import transformers

import common
import mobilevit
from mobilevit.export.bench import PEER_MODELS, PEERS
from mobilevit.models.mobilevitv2 import V2_CONFIGS
from mobilevit.testing import hf_config, hf_v2_config, randomize_, structured_images

SIZES = ["256x256", "200x300", "320x192"]
BATCH = 4


def image_size(text: str) -> tuple[int, int]:
    """``200x300`` -> (200, 300): height by width."""
    try:
        height, width = (int(side) for side in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write HEIGHTxWIDTH, e.g. 256x256") from None
    return height, width


def max_error(name: str, source: str, reference: torch.nn.Module, size: tuple[int, int]) -> float:
    layout = {"unfold_remainder": "zero"} if source == "hf" and name in V2_CONFIGS else {}
    ours = mobilevit.create_model(name, **layout).eval()
    ours.load_state_dict(mobilevit.convert_state_dict(reference.state_dict(), source))
    x = structured_images(BATCH, *size, seed=11)
    with torch.no_grad():
        # Hugging Face's copies take BGR: ours on RGB must equal theirs on the flipped image.
        expected = reference(pixel_values=x.flip(1)).logits if source == "hf" else reference(x)
        return (ours(x) - expected).abs().max().item()


def reference_model(name: str, source: str) -> torch.nn.Module:
    """timm's or Hugging Face's ``name`` with every parameter and BatchNorm statistic random."""
    if source == "timm":
        return randomize_(timm.create_model(name), seed=1)
    if name in V2_CONFIGS:
        hf = transformers.MobileViTV2ForImageClassification(hf_v2_config(name))
    else:
        hf = transformers.MobileViTForImageClassification(hf_config(name))
    return randomize_(hf, 2, lambda model: model(pixel_values=structured_images(BATCH, 128, 128, seed=123)))


def main() -> None:
    run = common.start_run()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(PEER_MODELS), choices=PEER_MODELS)
    parser.add_argument("--references", nargs="*", default=list(PEERS), choices=PEERS)
    parser.add_argument("--sizes", nargs="*", type=image_size, default=[image_size(s) for s in SIZES])
    common.add_json_arg(parser)
    args = parser.parse_args()
    machine = common.measured_on()

    rows = []
    for name in args.models:
        for source in args.references:
            reference = reference_model(name, source)
            row = {"model": name, "reference": source}
            for size in args.sizes:
                row[f"{size[0]}x{size[1]}"] = max_error(name, source, reference, size)
            rows.append(row)
            print(row, flush=True)
    units = {f"{h}x{w}": "error" for h, w in args.sizes}
    caption = f"Max absolute difference of the logits, batches of {BATCH} structured images, by input size"
    common.finish(run, args.json, [common.table("parity", rows, units, caption)], machine)


if __name__ == "__main__":
    main()
