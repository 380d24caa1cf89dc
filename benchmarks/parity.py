"""Max absolute difference of our v1 and v2 classifiers against timm and Hugging Face, with random weights.

python benchmarks/parity.py [--models ...] [--json parity.json]

Hugging Face zero-fills odd-sided maps of v2 where timm and ml-cvnets resize them, so v2 is compared
with Hugging Face in its layout (``unfold_remainder="zero"``); at sizes whose maps stay even the two
layouts are the same.
"""

from __future__ import annotations

import argparse

import timm
import torch
import transformers

import mobilevit
from common import print_table, write_json
from mobilevit.export.bench import PEER_MODELS
from mobilevit.models.mobilevitv2 import V2_CONFIGS
from mobilevit.testing import hf_config, hf_v2_config, randomize_, structured_images

SIZES = [(256, 256), (200, 300), (320, 192)]


def max_error(name: str, source: str, reference: torch.nn.Module, size: tuple[int, int]) -> float:
    layout = {"unfold_remainder": "zero"} if source == "hf" and name in V2_CONFIGS else {}
    ours = mobilevit.create_model(name, **layout).eval()
    ours.load_state_dict(mobilevit.convert_state_dict(reference.state_dict(), source))
    x = structured_images(4, *size, seed=11)
    with torch.no_grad():
        # Hugging Face's copies take BGR: ours on RGB must equal theirs on the flipped image.
        expected = reference(pixel_values=x.flip(1)).logits if source == "hf" else reference(x)
        return (ours(x) - expected).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(PEER_MODELS), choices=PEER_MODELS)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    def calibrate_hf(model):
        model(pixel_values=structured_images(4, 128, 128, seed=123))

    rows = []
    for name in args.models:
        if name in V2_CONFIGS:
            hf = transformers.MobileViTV2ForImageClassification(hf_v2_config(name))
        else:
            hf = transformers.MobileViTForImageClassification(hf_config(name))
        refs = {"timm": randomize_(timm.create_model(name), seed=1), "hf": randomize_(hf, 2, calibrate_hf)}
        for source, reference in refs.items():
            row = {"model": name, "reference": source}
            for size in SIZES:
                row[f"{size[0]}x{size[1]}"] = f"{max_error(name, source, reference, size):.1e}"
            rows.append(row)
    print_table(rows, ["model", "reference", *[f"{h}x{w}" for h, w in SIZES]])
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
