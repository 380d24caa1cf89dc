"""``from_pretrained`` on Hugging Face model directories: v1 and v2 classifiers and their DeepLabv3."""

from __future__ import annotations

import pytest
import torch
import transformers

import mobilevit
from mobilevit.testing import hf_config, hf_v2_config, randomize_, structured_images


def hf_model(kind: str) -> transformers.PreTrainedModel:
    if kind == "mobilevitv2_050":
        return transformers.MobileViTV2ForImageClassification(hf_v2_config(kind))
    config = hf_config("mobilevit_xxs") if kind == "deeplabv3_mobilevit_xxs" else hf_v2_config("mobilevitv2_050")
    config.num_labels, config.output_stride = 21, 16
    if kind == "deeplabv3_mobilevit_xxs":
        return transformers.MobileViTForSemanticSegmentation(config)
    return transformers.MobileViTV2ForSemanticSegmentation(config)


@pytest.mark.parametrize("kind", ["mobilevitv2_050", "deeplabv3_mobilevit_xxs", "deeplabv3_mobilevitv2_050"])
def test_hf_directory_rebuilds_the_model_and_its_outputs(tmp_path, kind):
    ref = randomize_(hf_model(kind), 3, lambda m: m(pixel_values=structured_images(2, 128, 128, seed=1)))
    ref.save_pretrained(tmp_path / kind)
    ours = mobilevit.from_pretrained(tmp_path / kind).eval()
    assert ours.model_name == kind
    x = structured_images(2, 256, 256, seed=2)
    with torch.no_grad():
        expected = ref.eval()(pixel_values=x.flip(1)).logits  # HF's weights take BGR
        got = ours.forward_logits(x) if kind.startswith("deeplabv3") else ours(x)
    assert (got - expected).abs().max() <= 1e-4 * max(1.0, expected.abs().max().item())
