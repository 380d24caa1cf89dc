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
    assert (cfg.min_size, cfg.max_size, cfg.img_size, cfg.batch_size) == (160, 320, 256, 128)


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
    with pytest.raises(FileNotFoundError, match="recipe not found"):
        load_config(tmp_path / "missing.yaml")
