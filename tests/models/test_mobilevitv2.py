"""MobileViTv2 equals timm's and Hugging Face's after converting their (fully random) weights."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
import transformers

import mobilevit
from mobilevit.models.mobilevitv2 import V2_CONFIGS, MobileViTV2Features, fold_v2, unfold_v2
from mobilevit.testing import assert_matches, converted, hf_v2_config, randomize_, structured_images

NAMES = ["mobilevitv2_050", "mobilevitv2_100", "mobilevitv2_200"]


@pytest.fixture(scope="module")
def timm_models():
    return {n: randomize_(timm.create_model(n), seed=i) for i, n in enumerate(NAMES)}


@pytest.fixture(scope="module")
def hf_models():
    def calibrate(model):
        model(pixel_values=structured_images(4, 128, 128, seed=123))

    return {
        n: randomize_(transformers.MobileViTV2ForImageClassification(hf_v2_config(n)), 10 + i, calibrate)
        for i, n in enumerate(NAMES)
    }


@pytest.mark.parametrize("name", sorted(V2_CONFIGS))
def test_parameter_count_equals_timm(name):
    ours = mobilevit.create_model(name)
    ref = timm.create_model(name)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("size", [(256, 256), (200, 300)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", NAMES)
def test_matches_timm(timm_models, name, size):
    """200x300 gives odd maps at strides 16 and 32: the resize before each v2 block matches too."""
    ref = timm_models[name]
    ours = converted(name, ref.state_dict())
    x = structured_images(2, *size)
    with torch.no_grad():
        assert_matches(ours(x), ref(x))


@pytest.mark.parametrize("size", [(256, 256), (192, 320)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", NAMES)
def test_matches_hugging_face_on_bgr(hf_models, name, size):
    """Hugging Face's copies take BGR: ours on RGB equals theirs on the same image flipped. HF zero-fills
    odd-sided maps instead of resizing them (see MobileViTV2Block), so only sizes whose maps stay even
    down to stride 32 (multiples of 64) can agree."""
    ref = hf_models[name]
    ours = converted(name, ref.state_dict())
    x = structured_images(2, *size, seed=1)
    with torch.no_grad():
        expected = ref(pixel_values=x.flip(1)).logits
        assert_matches(ours(x), expected)
        assert (ours(x.flip(1)) - expected).abs().max() > 1e-2


@pytest.mark.parametrize("name", NAMES)
def test_hugging_face_layout_matches_at_sizes_that_are_not_multiples_of_32(hf_models, name):
    """With ``unfold_remainder="zero"`` (HF's odd-map rule) ours equals HF's at 200x300; with the
    official resize it does not, so the option is what makes them agree."""
    ref = hf_models[name]
    state = mobilevit.convert_state_dict(ref.state_dict())
    hf_layout = mobilevit.create_model(name, unfold_remainder="zero").eval()
    hf_layout.load_state_dict(state)
    official = mobilevit.create_model(name).eval()
    official.load_state_dict(state)
    x = structured_images(2, 200, 300, seed=1)
    with torch.no_grad():
        expected = ref(pixel_values=x.flip(1)).logits
        assert_matches(hf_layout(x), expected)
        assert (official(x) - expected).abs().max() > 1e-2


def test_unfold_equals_f_unfold_and_fold_inverts_it():
    x = torch.randn(2, 5, 6, 8)
    patches = unfold_v2(x, 2)  # [B, d, P, N]
    assert torch.equal(patches, F.unfold(x, 2, stride=2).reshape(2, 5, 4, 12))
    assert torch.equal(fold_v2(patches, 2, 6, 8), x)


def test_source_detection_tells_v1_from_v2(timm_models, hf_models):
    v1_hf = transformers.MobileViTForImageClassification(transformers.MobileViTConfig()).state_dict()
    assert mobilevit.convert.detect_source(list(v1_hf)) == "hf"
    assert mobilevit.convert.detect_source(list(hf_models[NAMES[0]].state_dict())) == "hf"
    assert mobilevit.convert.detect_source(list(timm_models[NAMES[0]].state_dict())) == "timm"
    assert "mobilevitv2_100" in mobilevit.list_models(task="classification")


def test_features_only_loads_classifier_weights(timm_models, tmp_path):
    name = NAMES[0]
    classifier = converted(name, timm_models[name].state_dict())
    torch.save(classifier.state_dict(), tmp_path / "v2.pt")
    backbone = mobilevit.create_model(name, features_only=True, out_indices=(2, 4), pretrained=tmp_path / "v2.pt")
    assert isinstance(backbone, MobileViTV2Features)
    assert backbone.feature_info.reduction() == [8, 32]
    x = structured_images(1, 256, 256)
    with torch.no_grad():
        maps = backbone.eval()(x)
        assert [m.shape[1] for m in maps] == backbone.feature_info.channels()
        assert torch.allclose(maps[-1], classifier.forward_features(x))


def test_save_pretrained_round_trip(timm_models, tmp_path):
    name = NAMES[0]
    model = converted(name, timm_models[name].state_dict())
    model.reset_classifier(10)
    reloaded = mobilevit.from_pretrained(model.save_pretrained(tmp_path / name)).eval()
    assert reloaded.num_classes == 10 and reloaded.pretrained_cfg["crop_pct"] == 0.888
    x = structured_images(1, 256, 256)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model.eval()(x))
