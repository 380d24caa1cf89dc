"""Published weights by name, downloaded for real from an offline stand-in of their hosts.

The server (tests/hub_server.py) holds files made from random weights in each source's own format:
timm's safetensors and config (written by timm's ``save_for_hf``), Hugging Face's ``save_pretrained``
directories, and ml-cvnets ``.pt`` state dicts. huggingface_hub's own client fetches the Hub files
(through ``HF_ENDPOINT``), the URL fetcher the others (through ``MOBILEVIT_URL_MIRROR``). Every loaded
model is compared with the model its file was made from.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from pathlib import Path

import pytest
import timm
import torch
import transformers
from safetensors.torch import save as safetensors_bytes
from test_parity import to_cvnets

import mobilevit
from cvnets_fixtures import load_layout, random_state
from mobilevit.cli import main as cli_main
from mobilevit.data.segmentation import VOC_CLASSES
from mobilevit.hub import URL_MIRROR_ENV, DownloadError, HubFile, UrlFile
from mobilevit.models.pretrained import PUBLISHED_WEIGHTS
from mobilevit.models.registry import REGISTRY, get_weights
from mobilevit.tasks import task_for
from mobilevit.testing import assert_matches, hf_config, hf_v2_config, randomize_, structured_images

README = Path(__file__).parents[2] / "README.md"


def pt_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def cached_files() -> list[Path]:
    return [p for p in (Path(torch.hub.get_dir()) / "checkpoints").rglob("*") if p.is_file()]


def url_of(name: str, host: str) -> str:
    return next(c.remote.url for c in PUBLISHED_WEIGHTS[name].copies if c.host == host)


def repo_of(name: str, host: str) -> str:
    return next(c.remote.repo_id for c in PUBLISHED_WEIGHTS[name].copies if c.host == host)


@pytest.fixture
def hosts(hf_hub_at, monkeypatch):
    """The stand-in server, reached for Hub repos and (through the mirror) for plain URLs."""
    monkeypatch.setenv(URL_MIRROR_ENV, hf_hub_at.mirror)
    return hf_hub_at


@pytest.fixture(scope="module")
def timm_xxs():
    return randomize_(timm.create_model("mobilevit_xxs"), seed=1).eval()


def serve_timm(server, model, repo_id: str, tmp_path: Path) -> None:
    """timm's own Hub layout (config.json + model.safetensors), written by timm."""
    folder = tmp_path / repo_id.replace("/", "--")
    timm.models._hub.save_for_hf(model, folder, safe_serialization=True)
    for name in ("config.json", "model.safetensors"):
        server.add_hub_file(repo_id, name, (folder / name).read_bytes())


def serve_hf(server, model, repo_id: str, tmp_path: Path) -> None:
    folder = tmp_path / repo_id.replace("/", "--")
    model.save_pretrained(folder)
    for file in folder.iterdir():
        server.add_hub_file(repo_id, file.name, file.read_bytes())


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


# -- the table ---------------------------------------------------------------------------------------------------


def test_every_tag_names_a_registered_model_and_sound_copies():
    assert len(PUBLISHED_WEIGHTS) >= 40
    for name, weights in PUBLISHED_WEIGHTS.items():
        assert weights.model in REGISTRY, name
        assert re.fullmatch(r"[a-z0-9_]+", weights.tag), name
        assert weights.copies and len(set(weights.hosts)) == len(weights.hosts), name
        for copy in weights.copies:
            assert copy.layout in ("timm", "hf", "cvnets")
            if isinstance(copy.remote, UrlFile):
                assert copy.remote.url.startswith("https://"), name
            if copy.host == "timm-url":  # timm's legacy file names carry their SHA-256's first 8 digits
                assert re.search(rf"-{copy.remote.sha256}\.pth$", copy.remote.url), name


def test_every_published_weights_family_is_covered():
    names = set(PUBLISHED_WEIGHTS)
    for expected in (
        "mobilevit_s.cvnets_in1k",
        "mobilevitv2_150.cvnets_in22k_ft_in1k_384",
        "mobilevitv2_050.cvnets_in1k_384",
        "deeplabv3_mobilevit_s.cvnets_voc",
        "deeplabv3_mobilevitv2_100.cvnets_voc",
        "deeplabv3_mobilevitv2_200.cvnets_ade20k",
        "ssdlite_mobilevit_s.cvnets_coco",
        "ssdlite_mobilevitv2_200.cvnets_coco",
    ):
        assert expected in names
    # timm's 16, each from timm's Hub repo first
    timm_tags = [w for w in PUBLISHED_WEIGHTS.values() if "timm" in w.hosts]
    assert len(timm_tags) == 16
    assert all(w.copies[0].remote == HubFile(f"timm/{w.name}") for w in timm_tags)


def test_default_tag_and_explicit_tag_give_the_same_weights():
    assert get_weights("mobilevit_s") is get_weights("mobilevit_s.cvnets_in1k")
    assert get_weights("mobilevitv2_150").tag == "cvnets_in1k"


def test_unknown_tag_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid tags: cvnets_in1k, cvnets_in1k_384, cvnets_in22k_ft_in1k"):
        mobilevit.create_model("mobilevitv2_150.in21k", pretrained=True)


def test_model_without_weights_says_so():
    with pytest.raises(ValueError, match="no published weights for mobilevitv3_s"):
        mobilevit.create_model("mobilevitv3_s", pretrained=True)


def test_list_pretrained_filters_and_cli_prints_source_metric_license(capsys):
    assert mobilevit.list_pretrained("mobilevit_x*") == ["mobilevit_xs.cvnets_in1k", "mobilevit_xxs.cvnets_in1k"]
    assert set(mobilevit.list_pretrained(task="detection")) == {n for n in PUBLISHED_WEIGHTS if n.startswith("ssd")}
    assert cli_main(["list", "--pretrained"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(PUBLISHED_WEIGHTS)
    line = next(line for line in lines if line.startswith("mobilevit_s.cvnets_in1k "))
    assert "top-1 78.3" in line and "timm, timm-url, hf, cvnets" in line and "license" in line


def test_tag_without_download_sets_its_preprocessing():
    model = mobilevit.create_model("mobilevitv2_175.cvnets_in22k_ft_in1k_384")
    assert model.pretrained_cfg["input_size"] == (3, 384, 384)
    assert model.pretrained_cfg["crop_pct"] == 1.0
    segmenter = mobilevit.create_model("deeplabv3_mobilevitv2_100.cvnets_ade20k")
    assert segmenter.num_classes == 150 and segmenter.model_args()["output_stride"] == 8
    names = task_for(segmenter).class_names(segmenter)  # ml-cvnets' ADE20K order: its label 0 ("other") is ignored
    assert len(names) == 150 and names[:3] == ["wall", "building", "sky"] and names[-1] == "flag"


# -- downloads, each compared with the model its file was made from -----------------------------------------------


def test_timm_hub_copy_is_the_default(hosts, timm_xxs, tmp_path):
    serve_timm(hosts, timm_xxs, "timm/mobilevit_xxs.cvnets_in1k", tmp_path)
    ours = mobilevit.create_model("mobilevit_xxs", pretrained=True)
    x = structured_images(2, 256, 256, seed=3)
    assert_matches(outputs(ours, x), outputs(timm_xxs, x))
    assert ours.pretrained_cfg["source"] == "hf-hub:timm/mobilevit_xxs.cvnets_in1k"
    assert hosts.gets("/resolve/") == ["/timm/mobilevit_xxs.cvnets_in1k/resolve/main/model.safetensors"]


def test_cache_is_reused_with_the_server_stopped_and_offline(hosts, hub_offline, timm_xxs, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    serve_timm(hosts, timm_xxs, "timm/mobilevit_xxs.cvnets_in1k", tmp_path)
    first = mobilevit.create_model("mobilevit_xxs.cvnets_in1k", pretrained=True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hosts.stop()
    again = mobilevit.create_model("mobilevit_xxs.cvnets_in1k", pretrained=True)
    x = structured_images(2, 256, 256, seed=5)
    assert torch.equal(outputs(first, x), outputs(again, x))


def test_offline_with_nothing_cached_names_file_and_folder(hub_offline):
    with pytest.raises(DownloadError) as err:
        mobilevit.create_model("mobilevit_xs", pretrained=True)
    message = str(err.value)
    assert "timm/mobilevit_xs.cvnets_in1k: model.safetensors or pytorch_model.bin is not in" in message
    assert "hf download timm/mobilevit_xs.cvnets_in1k model.safetensors" in message
    assert "mobilevit_xs.pt" in message and str(Path(torch.hub.get_dir()) / "checkpoints") in message


def test_hugging_face_copy_flips_the_bgr_stem(hosts, tmp_path):
    ref = randomize_(transformers.MobileViTForImageClassification(hf_config("mobilevit_xxs")), seed=2).eval()
    serve_hf(hosts, ref, "apple/mobilevit-xx-small", tmp_path)
    ours = mobilevit.create_model("mobilevit_xxs.cvnets_in1k", pretrained=True, host="hf")
    x = structured_images(2, 256, 256, seed=4)
    with torch.no_grad():
        assert_matches(outputs(ours, x), ref(pixel_values=x.flip(1)).logits)
    by_repo = mobilevit.from_pretrained("apple/mobilevit-xx-small")
    assert torch.equal(outputs(by_repo, x), outputs(ours, x))
    # what `mobilevit train --pretrained apple/mobilevit-xx-small` loads
    weights_of_repo = mobilevit.create_model("mobilevit_xxs", pretrained="apple/mobilevit-xx-small")
    assert torch.equal(outputs(weights_of_repo, x), outputs(ours, x))


def test_hugging_face_v2_copy_keeps_its_rgb_stem(hosts, tmp_path):
    ref = randomize_(transformers.MobileViTV2ForImageClassification(hf_v2_config("mobilevitv2_100")), seed=3).eval()
    serve_hf(hosts, ref, "apple/mobilevitv2-1.0-imagenet1k-256", tmp_path)
    ours = mobilevit.create_model("mobilevitv2_100", pretrained=True, host="hf")
    x = structured_images(2, 256, 256, seed=6)
    with torch.no_grad():
        assert_matches(outputs(ours, x), ref(pixel_values=x).logits)


def test_timm_repo_id_loads_with_from_pretrained(hosts, timm_xxs, tmp_path):
    serve_timm(hosts, timm_xxs, "timm/mobilevit_xxs.cvnets_in1k", tmp_path)
    ours = mobilevit.from_pretrained("timm/mobilevit_xxs.cvnets_in1k")
    x = structured_images(2, 256, 256, seed=7)
    assert_matches(outputs(ours, x), outputs(timm_xxs, x))


def test_missing_copies_fall_back_to_ml_cvnets_url(hosts, timm_xxs):
    hosts.add_url_file(url_of("mobilevit_xxs.cvnets_in1k", "cvnets"), pt_bytes(to_cvnets(timm_xxs.state_dict())))
    ours = mobilevit.create_model("mobilevit_xxs.cvnets_in1k", pretrained=True)
    x = structured_images(2, 256, 256, seed=8)
    assert_matches(outputs(ours, x), outputs(timm_xxs, x))  # to_cvnets made a BGR model; the stem is flipped back
    assert ours.pretrained_cfg["source"].endswith("/cvnets/classification/mobilevit_xxs.pt")


def test_wrong_hash_is_refused_and_nothing_is_cached(hosts, timm_xxs):
    url = url_of("mobilevit_xxs.cvnets_in1k", "timm-url")  # our random file cannot have the published hash
    hosts.add_url_file(url, safetensors_bytes(timm_xxs.state_dict()))
    with pytest.raises(DownloadError, match="does not have the published SHA-256: expected ad385b40"):
        mobilevit.create_model("mobilevit_xxs", pretrained=True, host="timm-url")
    assert not cached_files()


def test_truncated_and_missing_files_give_their_errors(hosts, timm_xxs):
    url = url_of("mobilevit_xxs.cvnets_in1k", "cvnets")
    path = hosts.add_url_file(url, pt_bytes(to_cvnets(timm_xxs.state_dict())))
    key = "files/" + str(path.relative_to(hosts.root / "files"))
    hosts.truncate(key, at=path.stat().st_size // 2, mode="short")
    with pytest.raises(DownloadError, match="not readable weights"):
        mobilevit.create_model("mobilevit_xxs", pretrained=True, host="cvnets")
    assert not cached_files()
    with pytest.raises(DownloadError, match="HTTP 404"):
        mobilevit.create_model("mobilevit_xs", pretrained=True, host="cvnets")
    with pytest.raises(DownloadError, match="no repo 'timm/mobilevit_xs.cvnets_in1k'"):
        mobilevit.create_model("mobilevit_xs", pretrained=True, host="timm")
    with pytest.raises(ValueError, match="not published on 'github'; its hosts: timm, timm-url, hf, cvnets"):
        mobilevit.create_model("mobilevit_xs", pretrained=True, host="github")


def test_segmenter_from_hugging_face(hosts, tmp_path):
    config = hf_config("mobilevit_xxs")
    config.num_labels, config.output_stride = 21, 16
    ref = randomize_(transformers.MobileViTForSemanticSegmentation(config), seed=4).eval()
    serve_hf(hosts, ref, "apple/deeplabv3-mobilevit-xx-small", tmp_path)
    ours = mobilevit.create_model("deeplabv3_mobilevit_xxs", pretrained=True).eval()
    x = structured_images(2, 256, 256, seed=9)
    with torch.no_grad():
        assert_matches(ours.forward_logits(x), ref(pixel_values=x.flip(1)).logits)
    assert ours.num_classes == 21 and ours.pretrained_cfg["input_size"] == (3, 512, 512)


def test_classifier_weights_initialise_a_fine_tuned_model(hosts, timm_xxs, tmp_path):
    """What ``mobilevit train --pretrained mobilevit_xxs.cvnets_in1k`` does: a new head, the published backbone."""
    serve_timm(hosts, timm_xxs, "timm/mobilevit_xxs.cvnets_in1k", tmp_path)
    with pytest.warns(UserWarning, match="1000 classes but the model has 10"):
        tuned = mobilevit.create_model("mobilevit_xxs", num_classes=10, pretrained="mobilevit_xxs.cvnets_in1k")
    x = structured_images(2, 256, 256, seed=10)
    with torch.no_grad():
        assert_matches(tuned.eval().forward_features(x), timm_xxs.forward_features(x))
    segmenter = mobilevit.create_model("deeplabv3_mobilevit_xxs", pretrained="mobilevit_xxs.cvnets_in1k")
    assert torch.equal(segmenter.backbone.stem.conv.weight, tuned.stem.conv.weight)


@pytest.mark.parametrize(
    ("tag", "layout", "flipped"),
    [
        ("deeplabv3_mobilevit_xxs.cvnets_voc", "deeplabv3_mobilevit_xxs_cvnets_v0.1", True),
        ("deeplabv3_mobilevitv2_050.cvnets_voc", "deeplabv3_mobilevitv2_050_cvnets_main", False),
        ("ssdlite_mobilevit_xxs.cvnets_coco", "ssdlite_mobilevit_xxs_cvnets_v0.1", True),
        ("ssdlite_mobilevitv2_050.cvnets_coco", "ssdlite_mobilevitv2_050_cvnets_main", False),
    ],
)
def test_ml_cvnets_segmenters_and_detectors(hosts, tag, layout, flipped):
    """Apple's own .pt layouts (v0.1 BGR, v0.2+ RGB) load by tag with every tensor where its state dict puts it."""
    state = random_state(load_layout(layout), seed=11)
    hosts.add_url_file(url_of(tag, "cvnets"), pt_bytes(state))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the v2 segmenter's auxiliary head is dropped, with a warning
        ours = mobilevit.create_model(tag, pretrained=True, host="cvnets")
        expected = mobilevit.create_model(tag.split(".")[0], num_classes=ours.num_classes)
        expected.load_state_dict(mobilevit.convert_state_dict(state, "cvnets", bgr=flipped))
    stem = "backbone.body.stem.conv.weight" if tag.startswith("ssd") else "backbone.stem.conv.weight"
    source_stem = state["encoder.conv_1.block.conv.weight"]
    assert torch.equal(ours.state_dict()[stem], source_stem.flip(1) if flipped else source_stem)
    for key, value in expected.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    assert ours.pretrained_cfg["input_size"][-1] == (512 if tag.startswith("deeplab") else 320)
    if tag.startswith("deeplabv3_mobilevitv2"):
        assert ours.align_corners  # ml-cvnets v0.2+ resizes the logits so
    by_name = mobilevit.create_model(tag.split(".")[0], pretrained=tag, host="cvnets")  # the model's own tag
    assert by_name.pretrained_cfg == ours.pretrained_cfg and by_name.model_args() == ours.model_args()
    assert all(torch.equal(by_name.state_dict()[k], v) for k, v in ours.state_dict().items())


def test_cli_predicts_and_exports_published_weights(hosts, timm_xxs, tmp_path, capsys):
    from PIL import Image
    from skimage import data

    serve_timm(hosts, timm_xxs, "timm/mobilevit_xxs.cvnets_in1k", tmp_path)
    photo = tmp_path / "coffee.png"
    Image.fromarray(data.coffee()).save(photo)
    assert cli_main(["predict", str(photo), "--model", "mobilevit_xxs", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    model = mobilevit.create_model("mobilevit_xxs", pretrained=True).eval()
    from mobilevit.data.images import preprocess, read_image

    with torch.no_grad():
        expected = model(preprocess(read_image(photo), model.pretrained_cfg)[None]).argmax().item()
    assert result["predictions"][0]["index"] == expected
    out = tmp_path / "xxs.pt"
    assert cli_main(["export", "--model", "mobilevit_xxs.cvnets_in1k", "--format", "torchscript", "-o", str(out)]) == 0
    exported = torch.jit.load(out)
    x = structured_images(2, 256, 256, seed=12)
    assert_matches(exported(x), outputs(model, x))


def test_cli_evaluates_published_weights_on_an_imagenet_layout(hosts, timm_xxs, tmp_path, capsys):
    """``mobilevit eval --model NAME.TAG --data ROOT``: ``ROOT/val`` holds 1000 synset folders, class
    index = sorted synset order. The reported top-1 equals the model's own on those files."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    from mobilevit.data.transforms import eval_transform

    serve_timm(hosts, timm_xxs, "timm/mobilevit_xxs.cvnets_in1k", tmp_path)
    gen = torch.Generator().manual_seed(0)
    for i in range(1000):
        folder = tmp_path / "imagenet" / "val" / f"n{i * 7919 % 10**8:08d}"  # synset-like ids, not in index order
        folder.mkdir(parents=True)
        pixels = torch.randint(0, 255, (40, 40, 3), generator=gen, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / "0.png")
    args = ["eval", "--model", "mobilevit_xxs.cvnets_in1k", "--data", str(tmp_path / "imagenet"), "--img-size", "64"]
    assert cli_main([*args, "--output", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    model = mobilevit.create_model("mobilevit_xxs", pretrained=True).eval()
    cfg = model.pretrained_cfg
    dataset = ImageFolder(tmp_path / "imagenet" / "val", eval_transform(64, cfg["crop_pct"], cfg["interpolation"]))
    images, labels = zip(*dataset, strict=True)
    with torch.no_grad():
        top1 = (model(torch.stack(images)).argmax(1) == torch.tensor(labels)).float().mean().item()
    assert report["images"] == 1000 and report["top1"] == pytest.approx(top1, abs=1e-6)
    assert top1 > 0  # a random model still gets some right: the comparison is not vacuous


def test_cli_segments_with_published_weights_and_voc_names(hosts, tmp_path, capsys):
    from PIL import Image
    from skimage import data

    config = hf_config("mobilevit_xxs")
    config.num_labels, config.output_stride = 21, 16
    serve_hf(
        hosts,
        randomize_(transformers.MobileViTForSemanticSegmentation(config), seed=5),
        "apple/deeplabv3-mobilevit-xx-small",
        tmp_path,
    )
    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    args = [
        "predict",
        str(photo),
        "--model",
        "deeplabv3_mobilevit_xxs",
        "--output-dir",
        str(tmp_path / "out"),
        "--json",
    ]
    assert cli_main(args) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert Path(result["mask_png"]).is_file() and Path(result["overlay_png"]).is_file()
    assert result["classes"] and {c["label"] for c in result["classes"]} <= set(VOC_CLASSES)


def test_repo_with_only_a_pickle_file_is_found_online_and_offline(hosts, monkeypatch):
    """Apple's older Hub repos hold pytorch_model.bin only: it is taken when model.safetensors is absent,
    and found in the cache offline."""
    from huggingface_hub import constants

    ref = randomize_(transformers.MobileViTForImageClassification(hf_config("mobilevit_xxs")), seed=6).eval()
    hosts.add_hub_file("apple/mobilevit-xx-small", "config.json", ref.config.to_json_string().encode())
    hosts.add_hub_file("apple/mobilevit-xx-small", "pytorch_model.bin", pt_bytes(ref.state_dict()))
    online = mobilevit.create_model("mobilevit_xxs", pretrained=True, host="hf")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hosts.stop()
    offline = mobilevit.create_model("mobilevit_xxs", pretrained=True, host="hf")
    x = structured_images(2, 256, 256, seed=13)
    with torch.no_grad():
        assert_matches(outputs(offline, x), ref(pixel_values=x.flip(1)).logits)
    assert torch.equal(outputs(online, x), outputs(offline, x))
    assert online.pretrained_cfg["source"] == "hf-hub:apple/mobilevit-xx-small"
    assert hosts.gets("pytorch_model.bin")
