"""Recipes: defaults are the paper's, YAML files load, flags override, mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from mobilevit.cli import build_parser
from mobilevit.engine.config import (
    AUTO_BATCH_RANGE,
    MIN_STEPS_PER_EPOCH,
    TrainConfig,
    auto_batch_size,
    auto_multi_scale,
    choose_for_data,
    load_config,
    save_config,
    scaled_lr,
)

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_defaults_are_the_papers_recipe():
    cfg = TrainConfig()
    assert (cfg.min_lr, cfg.warmup_lr, cfg.warmup_steps) == (0.0002, 0.0002, 3000)
    assert (cfg.weight_decay, cfg.label_smoothing, cfg.ema_momentum) == (0.01, 0.1, 0.0005)
    assert cfg.img_size == 256
    assert (cfg.batch_size, cfg.lr, cfg.multi_scale) == (None, None, None)  # chosen from the data
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
    assert load_config(model="mobilevit_xxs").lr is None  # from scratch: chosen from the batch


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


def test_the_batch_size_gives_a_short_run_enough_steps():
    assert auto_batch_size(1_281_167, world_size=8) == 128  # ImageNet: the paper's per-GPU batch
    assert auto_batch_size(60_000) == 128
    assert auto_batch_size(3000) == 64  # 46 steps per epoch
    assert auto_batch_size(1400) == 32  # 43
    assert auto_batch_size(1400, world_size=2) == 16
    assert auto_batch_size(100) == 16  # the smallest, even with fewer steps
    for n in (200, 1400, 5000, 20000):
        batch = auto_batch_size(n)
        assert n // batch >= MIN_STEPS_PER_EPOCH or batch == AUTO_BATCH_RANGE[0]
        assert batch == AUTO_BATCH_RANGE[1] or n // (2 * batch) < MIN_STEPS_PER_EPOCH  # the largest that does


def test_the_learning_rate_follows_the_square_root_of_the_global_batch():
    assert scaled_lr(32) == pytest.approx(0.002)
    assert scaled_lr(16) == pytest.approx(0.002 / 2**0.5)
    assert scaled_lr(128) == pytest.approx(0.004)
    assert scaled_lr(1024) == 0.004  # capped


def test_multi_scale_is_on_only_for_long_runs_at_large_sizes():
    assert auto_multi_scale(256, 300)  # the paper's
    assert not auto_multi_scale(32, 300)
    assert not auto_multi_scale(256, 16)


def test_choices_fill_only_what_was_not_given_and_say_why():
    cfg = load_config(model="mobilevit_xxs", img_size=32, epochs=8)
    reasons = choose_for_data(cfg, 1400, world_size=1)
    assert (cfg.batch_size, cfg.lr, cfg.multi_scale) == (32, 0.002, False)
    assert [r.split()[0] for r in reasons] == ["batch_size", "lr", "multi_scale", "workers"]
    assert "1400 training images" in reasons[0] and "43" in reasons[0]
    assert cfg.workers == 2 and "files" in reasons[3]
    cfg = load_config(model="mobilevit_xxs", img_size=32, epochs=8, batch_size=64, accum_steps=2)
    reasons = choose_for_data(cfg, 1400, world_size=2, in_memory=True)
    assert cfg.batch_size == 64 and cfg.lr == pytest.approx(0.004)  # global batch 256
    assert [r.split()[0] for r in reasons] == ["lr", "multi_scale", "workers"]
    assert cfg.workers == 0
    cfg = load_config(Path(CONFIGS[0]).parent / "imagenet_mobilevit_s.yaml")
    assert choose_for_data(cfg, 1_281_167, world_size=8) == []  # the paper's recipe sets everything
    assert (cfg.batch_size, cfg.lr, cfg.multi_scale) == (128, 0.002, True)


def test_saved_config_names_the_choices_and_reads_back(tmp_path):
    cfg = load_config(model="mobilevit_xxs", img_size=32, epochs=8)
    reasons = choose_for_data(cfg, 1400)
    save_config(cfg, tmp_path / "config.yaml", notes=reasons)
    text = (tmp_path / "config.yaml").read_text()
    assert text.startswith("# batch_size 32: ")
    assert load_config(tmp_path / "config.yaml") == cfg
