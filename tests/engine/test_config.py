"""Recipes: defaults are the paper's, YAML files load, flags override, mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from mobilevit.cli import build_parser
from mobilevit.engine.config import TrainConfig, load_config, save_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_defaults_are_the_papers_recipe():
    cfg = TrainConfig()
    assert (cfg.lr, cfg.min_lr, cfg.warmup_lr, cfg.warmup_steps) == (0.002, 0.0002, 0.0002, 3000)
    assert (cfg.weight_decay, cfg.label_smoothing, cfg.ema_momentum) == (0.01, 0.1, 0.0005)
    assert (cfg.img_size, cfg.batch_size) == (256, 128)
    # At the paper's 256x256 the derived multi-scale range is the paper's.
    resolved = load_config(model="mobilevit_xxs")
    assert (resolved.min_size, resolved.max_size, resolved.size_divisor) == (160, 320, 32)


def test_defaults_that_scale_with_the_run():
    cfg = TrainConfig()
    assert cfg.ema_warmup and cfg.warmup_max_fraction == 0.1
    assert (cfg.min_size, cfg.max_size, cfg.size_divisor) == (None, None, None)  # derived from img_size


@pytest.mark.parametrize(
    ("img_size", "expected"),
    [(256, (160, 320, 32)), (224, (140, 280, 16)), (128, (80, 160, 16)), (64, (40, 80, 8)), (32, (32, 40, 8))],
)
def test_multi_scale_range_follows_img_size(img_size, expected):
    cfg = load_config(model="mobilevit_xxs", img_size=img_size)
    assert (cfg.min_size, cfg.max_size, cfg.size_divisor) == expected  # never below the model's 32


def test_explicit_multi_scale_range_wins_and_resolving_is_idempotent(tmp_path):
    cfg = load_config(model="mobilevit_xxs", img_size=32, min_size=48, max_size=64, size_divisor=16)
    assert (cfg.min_size, cfg.max_size, cfg.size_divisor) == (48, 64, 16)
    cfg = load_config(model="mobilevit_xxs", img_size=32, max_size=48)
    assert (cfg.min_size, cfg.max_size) == (32, 48)
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml", img_size=64) == cfg.__class__(**{**cfg.__dict__, "img_size": 64})


def test_min_input_size_is_the_models():
    from mobilevit.engine import config
    from mobilevit.models import mobilevit

    assert config.MIN_INPUT_SIZE == mobilevit.MIN_INPUT_SIZE


def test_pretrained_takes_fine_tuning_defaults_unless_given():
    from mobilevit.engine.config import FINE_TUNE_DEFAULTS

    cfg = load_config(model="mobilevit_xxs", pretrained="weights.safetensors")
    assert {k: getattr(cfg, k) for k in FINE_TUNE_DEFAULTS} == FINE_TUNE_DEFAULTS
    assert (cfg.lr, cfg.warmup_steps) == (0.0009, 500)
    cfg = load_config(model="mobilevit_xxs", pretrained="weights.safetensors", lr=0.003)
    assert (cfg.lr, cfg.min_lr) == (0.003, FINE_TUNE_DEFAULTS["min_lr"])
    assert load_config(model="mobilevit_xxs").lr == 0.002  # from scratch: the paper's


def test_paper_recipes_keep_their_settings_under_the_new_defaults():
    """The ImageNet, VOC and COCO recipes: no EMA warm-up, no warm-up cap, their own learning rates
    (the VOC and COCO ones are used with --pretrained, whose fine-tuning defaults must not apply)."""
    papers = [p for p in CONFIGS if p.name.startswith(("imagenet_", "voc_", "coco_"))]
    assert len(papers) == 9
    for path in papers:
        cfg = load_config(path, pretrained=None if path.name.startswith("imagenet_") else "backbone.pt")
        assert (cfg.ema_warmup, cfg.warmup_max_fraction, cfg.ema_momentum) == (False, None, 0.0005), path.name
        if path.name.startswith("imagenet_"):
            assert (cfg.lr, cfg.min_lr, cfg.warmup_lr, cfg.warmup_steps) == (0.002, 0.0002, 0.0002, 3000)
            assert (cfg.min_size, cfg.max_size, cfg.size_divisor, cfg.num_scales) == (160, 320, 32, 5)
        else:
            assert (cfg.lr, cfg.min_lr, cfg.warmup_lr, cfg.warmup_steps) == (0.0009, 1e-6, 0.00009, 500)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_recipe_loads(path):
    from mobilevit.models.registry import model_task

    cfg = load_config(path)
    assert model_task(cfg.model) == cfg.task


def test_imagenet_recipes_match_the_paper():
    for size in ("xxs", "xs", "s"):
        cfg = load_config(Path(CONFIGS[0]).parent / f"imagenet_mobilevit_{size}.yaml")
        assert cfg.model == f"mobilevit_{size}"
        assert (cfg.epochs, cfg.batch_size, cfg.crop_scale) == (300, 128, (0.08, 1.0))


def test_flags_override_the_recipe(tmp_path):
    recipe = Path(CONFIGS[0]).parent / "fashion_mnist.yaml"
    args = build_parser().parse_args(["train", "--config", str(recipe), "--epochs", "2", "--no-ema", "--lr", "0.01"])
    options = {k: getattr(args, k) for k in TrainConfig.__dataclass_fields__}
    cfg = load_config(args.config, **options)
    assert (cfg.epochs, cfg.ema, cfg.lr, cfg.img_size) == (2, False, 0.01, 32)
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_unknown_option_and_bad_values(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown training option.*learning_rate"):
        load_config(bad)
    with pytest.raises(ValueError, match="amp must be none, bf16 or fp16"):
        load_config(amp="fp8")
    with pytest.raises(ValueError, match="warmup_max_fraction must be in"):
        load_config(warmup_max_fraction=1.5)
    with pytest.raises(ValueError, match="random_erasing is a probability"):
        load_config(random_erasing=2.0)
    with pytest.raises(FileNotFoundError, match="recipe not found"):
        load_config(tmp_path / "missing.yaml")
