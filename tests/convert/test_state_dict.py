"""Key conversion: source detection, renaming and its error paths."""

from __future__ import annotations

import pytest
import torch

import mobilevit
from mobilevit.convert import detect_source


@pytest.fixture(scope="module")
def native_state():
    return mobilevit.create_model("mobilevit_xxs").state_dict()


def test_native_keys_pass_through_unchanged(native_state):
    assert detect_source(list(native_state)) == "mobilevit"
    converted = mobilevit.convert_state_dict(native_state)
    assert converted.keys() == native_state.keys()
    assert all(converted[k] is native_state[k] for k in native_state)


def test_ddp_module_prefix_is_removed(native_state):
    wrapped = {f"module.{k}": v for k, v in native_state.items()}
    assert mobilevit.convert_state_dict(wrapped).keys() == native_state.keys()


def test_explicit_source_matches_auto():
    import timm

    state = timm.create_model("mobilevit_xxs").state_dict()
    assert detect_source(list(state)) == "timm"
    auto, explicit = mobilevit.convert_state_dict(state), mobilevit.convert_state_dict(state, "timm")
    assert auto.keys() == explicit.keys()


def test_unknown_source_is_rejected(native_state):
    with pytest.raises(ValueError, match="unknown source 'keras'.*auto, timm, hf, cvnets"):
        mobilevit.convert_state_dict(native_state, "keras")


def test_undetectable_keys_name_the_options():
    with pytest.raises(ValueError, match="cannot tell which MobileViT port.*fc.weight.*source='timm'"):
        mobilevit.convert_state_dict({"fc.weight": torch.zeros(2, 2)})


def test_incomplete_hf_attention_is_reported():
    state = {
        "mobilevit.encoder.layer.2.transformer.layer.0.attention.attention.query.weight": torch.zeros(4, 4),
        "mobilevit.encoder.layer.2.transformer.layer.0.attention.attention.key.weight": torch.zeros(4, 4),
    }
    with pytest.raises(ValueError, match="incomplete attention weights.*query, key and value"):
        mobilevit.convert_state_dict(state, "hf")
