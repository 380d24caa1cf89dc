"""MobileViT v1 (Mehta & Rastegari, ICLR 2022): the classifier and the feature-pyramid backbone.

Every size is one row of ``MODEL_CONFIGS``; nothing else in the package repeats these numbers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from mobilevit.checkpoint_io import CONFIG_FILE, WEIGHT_FILES, save_json, save_safetensors
from mobilevit.models.layers import ClassifierHead, ConvNormAct, InvertedResidual
from mobilevit.models.mobilevit_block import MobileViTBlock

MIN_INPUT_SIZE = 32


@dataclass(frozen=True)
class MobileViTConfig:
    """One MobileViT v1 size: the columns of Table 4 (appendix) of the paper."""

    channels: tuple[int, int, int, int, int]  # output channels of layer1..layer5
    transformer_dims: tuple[int, int, int]  # d of the MobileViT blocks in layer3..layer5
    expansion: float  # MV2 expansion factor
    transformer_dropout: float
    transformer_depths: tuple[int, int, int] = (2, 4, 3)
    mv2_blocks: tuple[int, int] = (1, 3)  # MV2 blocks in layer1, layer2
    stem_channels: int = 16
    ffn_multiplier: int = 2  # ffn dim = 2 d
    num_heads: int = 4
    patch_size: int = 2
    last_channels_multiplier: int = 4  # final 1x1 conv: min(4 C_layer5, 960)
    max_last_channels: int = 960
    attn_dropout: float = 0.0
    ffn_dropout: float = 0.0  # between the FFN's linears; 0 in every published recipe
    drop_rate: float = 0.1  # classifier dropout
    in_chans: int = 3

    @property
    def last_channels(self) -> int:
        return min(self.last_channels_multiplier * self.channels[-1], self.max_last_channels)


MODEL_CONFIGS: dict[str, MobileViTConfig] = {
    "mobilevit_xxs": MobileViTConfig(
        channels=(16, 24, 48, 64, 80),
        transformer_dims=(64, 80, 96),
        expansion=2.0,
        transformer_dropout=0.05,
    ),
    "mobilevit_xs": MobileViTConfig(
        channels=(32, 48, 64, 80, 96),
        transformer_dims=(96, 120, 144),
        expansion=4.0,
        transformer_dropout=0.1,
    ),
    "mobilevit_s": MobileViTConfig(
        channels=(32, 64, 96, 128, 160),
        transformer_dims=(144, 192, 240),
        expansion=4.0,
        transformer_dropout=0.1,
    ),
}

# Evaluation preprocessing of the published weights: RGB in [0, 1], no mean/std, bicubic resize
# of the shorter side to 256 / 0.9, centre crop 256.
DEFAULT_PRETRAINED_CFG: dict[str, Any] = {
    "input_size": (3, 256, 256),
    "mean": (0.0, 0.0, 0.0),
    "std": (1.0, 1.0, 1.0),
    "crop_pct": 0.9,
    "interpolation": "bicubic",
    "channel_order": "RGB",
    "first_conv": "stem.conv",
    "classifier": "head.fc",
}

STAGE_STRIDES = (2, 4, 8, 16, 32)
OUTPUT_STRIDES = (8, 16, 32)


Config = TypeVar("Config")


def override_config(table: dict[str, Config], name: str, overrides: dict[str, Any]) -> Config:
    """``table[name]`` (a config dataclass of any family) with ``overrides`` applied (lists become
    tuples, as a YAML config gives them); unknown fields raise ValueError."""
    valid = {f.name for f in fields(table[name])}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for {name}; valid options: {', '.join(sorted(valid))}"
        )
    return replace(table[name], **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def check_input(x: torch.Tensor, in_chans: int) -> None:
    """Raise a ValueError that says what was expected when ``x`` is not [B, in_chans, H>=32, W>=32]."""
    if x.dim() != 4:
        raise ValueError(
            f"expected a 4-D input [batch, {in_chans}, height, width], got {x.dim()}-D shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_chans:
        raise ValueError(
            f"expected {in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)}); "
            "convert grayscale images to RGB or create the model with in_chans="
            f"{x.shape[1]}"
        )
    if min(x.shape[-2:]) < MIN_INPUT_SIZE:
        raise ValueError(f"expected height and width of at least {MIN_INPUT_SIZE}, got {tuple(x.shape[-2:])}")


def dilation_plan(output_stride: int) -> list[tuple[int, int, int]]:
    """``(stride, MV2 dilation, stage dilation)`` of layer3..layer5 for an ``output_stride``.

    At 16 (or 8) the last one (or two) of those stages keep their resolution, as DeepLab backbones
    do: their MV2 block has stride 1, and the next stage's MV2 depthwise conv is dilated instead. The
    stage dilation is what ml-cvnets gives a v2-style block's local conv (v1's blocks take none).
    """
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
    plan, dilation = [], 1
    for stride in STAGE_STRIDES[2:]:
        previous = dilation
        dilate = stride > output_stride
        dilation = dilation * 2 if dilate else dilation
        plan.append((1 if dilate else 2, previous, dilation))
    return plan


def build_stages(
    cfg: Any,
    output_stride: int = 32,
    dilate_local_conv: bool = True,
    block: type[nn.Module] = MobileViTBlock,
) -> nn.ModuleList:
    """layer1..layer5 as ``stages[0..4]`` for every family: ``cfg.mv2_blocks`` MV2 blocks in layer1
    (stride 1) and layer2 (stride 2), then (MV2 stride 2, ``block``) x 3, dilated as
    :func:`dilation_plan` says. ``block`` (v1's, v2's or a v3 one) reads its own arguments from
    ``cfg`` (``block.config_options``); a v2-style block's local conv takes the stage dilation unless
    ``dilate_local_conv=False`` (Hugging Face's port), a v1-style block never does."""
    c = (cfg.stem_channels, *cfg.channels)
    stages = nn.ModuleList()
    for i, (count, stride) in enumerate(zip(cfg.mv2_blocks, (1, 2), strict=True)):
        blocks = [InvertedResidual(c[i], c[i + 1], stride, cfg.expansion)]
        blocks += [InvertedResidual(c[i + 1], c[i + 1], 1, cfg.expansion) for _ in range(count - 1)]
        stages.append(nn.Sequential(*blocks))
    layers = zip(cfg.transformer_dims, cfg.transformer_depths, dilation_plan(output_stride), strict=True)
    for i, (dim, depth, (stride, mv2_dilation, dilation)) in enumerate(layers, start=2):
        options = block.config_options(cfg, dilation if dilate_local_conv else 1)
        stages.append(
            nn.Sequential(
                InvertedResidual(c[i], c[i + 1], stride, cfg.expansion, dilation=mv2_dilation),
                block(c[i + 1], dim, depth, cfg.ffn_multiplier * dim, **options),
            )
        )
    return stages


@dataclass
class FeatureInfo:
    """Channels and stride of each returned feature map, in timm's ``feature_info`` style."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    def channels(self) -> list[int]:
        return [e["num_chs"] for e in self.entries]

    def reduction(self) -> list[int]:
        return [e["reduction"] for e in self.entries]

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.entries[i]


def _init_weights(module: nn.Module) -> None:
    """Official initialisation: Kaiming-normal convs, truncated-normal(0.02) linears, unit norms."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class PretrainedMixin:
    """What every model of the package says about itself, built here once for the classifiers, the
    backbones, DeepLabv3 and SSDLite: ``pretrained_cfg`` (how its inputs are preprocessed, what it
    predicts), ``model_args()`` (what differs from its registered model: enough to rebuild it) and the
    ``config.json`` that :meth:`save_pretrained` writes and :func:`mobilevit.from_pretrained` reads.

    A model class states its differences as data: ``default_pretrained_cfg`` and
    ``task_pretrained_cfg`` (its preprocessing and head fields), ``head_defaults`` (its head options,
    attributes of the model, that ``model_args()`` records when they differ) and ``features_only``.
    """

    default_pretrained_cfg: ClassVar[Mapping[str, Any]] = DEFAULT_PRETRAINED_CFG
    task_pretrained_cfg: ClassVar[Mapping[str, Any]] = {}
    head_defaults: ClassVar[Mapping[str, Any]] = {}
    features_only: ClassVar[bool] = False

    def _describe(self, name: str, cfg: Any, registered: Any, side: int, num_classes: int | None = None) -> None:
        """Record the model's name, its config and the registered one it differs from, its class
        count and its ``pretrained_cfg`` for ``side`` x ``side`` inputs (once, from ``__init__``)."""
        self.model_name = name
        self.config = cfg
        self.registered_config = registered
        cfg_fields = {**self.default_pretrained_cfg, **self.task_pretrained_cfg}
        self.pretrained_cfg = {**cfg_fields, "input_size": (cfg.in_chans, side, side)}
        if getattr(self, "task", None):
            self.pretrained_cfg["task"] = self.task
        if num_classes is not None:
            self.num_classes = num_classes
            self.pretrained_cfg["num_classes"] = num_classes

    def model_args(self) -> dict[str, Any]:
        """The config fields, then the head options, that differ from the registered model (tuples of
        head options as lists, as JSON gives them back)."""
        base = asdict(self.registered_config)
        args = {k: v for k, v in asdict(self.config).items() if base[k] != v}
        for key, default in self.head_defaults.items():
            value = getattr(self, key)
            if value != default:
                args[key] = list(value) if isinstance(value, tuple) else value
        return args

    def hub_config(self) -> dict[str, Any]:
        """The ``config.json`` of :meth:`save_pretrained`, in timm's hub layout."""
        config = {
            "architecture": self.model_name,
            "num_classes": getattr(self, "num_classes", 0),
            "model_args": self.model_args(),
            "pretrained_cfg": self.pretrained_cfg,
        }
        if self.features_only:
            config |= {"features_only": True, "out_indices": list(self.out_indices)}
        return config

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` and ``config.json`` to ``directory`` (atomically, file by file)."""
        directory = Path(directory)
        save_safetensors(self.state_dict(), directory / WEIGHT_FILES[0])
        save_json(self.hub_config(), directory / CONFIG_FILE)
        return directory


class _MobileViTBase(PretrainedMixin, nn.Module):
    """What the classifier and the backbone share: the stem, the five stages and their bookkeeping.

    A family (v2, v3) subclasses the v1 classes and sets its config table, its stage builder and
    its evaluation preprocessing; everything else is shared.
    """

    configs: ClassVar[dict[str, Any]] = MODEL_CONFIGS
    block: ClassVar[type[nn.Module]] = MobileViTBlock  # of layer3..layer5

    def __init__(
        self, name: str, cfg: Any, output_stride: int = 32, num_classes: int | None = None, **stage_options: Any
    ) -> None:
        super().__init__()
        self.stem = ConvNormAct(cfg.in_chans, cfg.stem_channels, 3, stride=2)
        self.stages = build_stages(cfg, output_stride, block=self.block, **stage_options)
        self._describe(name, cfg, self.configs[name], 256, num_classes)


class MobileViT(_MobileViTBase):
    """MobileViT image classifier with timm's API: ``forward_features``, ``forward_head``,
    ``reset_classifier``, ``pretrained_cfg``."""

    has_final_conv: ClassVar[bool] = True  # v1's 1x1 expansion before the pool; v2 pools layer5 directly

    def __init__(self, name: str, cfg: Any, num_classes: int = 1000) -> None:
        super().__init__(name, cfg, num_classes=num_classes)
        self.num_features = cfg.last_channels if self.has_final_conv else cfg.channels[-1]
        self.final_conv = ConvNormAct(cfg.channels[-1], cfg.last_channels, 1) if self.has_final_conv else nn.Identity()
        self.head = ClassifierHead(self.num_features, num_classes, cfg.drop_rate)
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, num_features, H/32, W/32] (sides rounded up at each stride)."""
        check_input(x, self.config.in_chans)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.final_conv(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last linear layer by a freshly initialised one with ``num_classes`` outputs."""
        self.num_classes = num_classes
        self.pretrained_cfg["num_classes"] = num_classes
        fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        _init_weights(fc)
        self.head.fc = fc


class MobileViTFeatures(_MobileViTBase):
    """The backbone alone (``features_only=True``): returns the feature maps of the stages in
    ``out_indices``, at strides 2, 4, 8, 16 and 32 by default (at most ``output_stride``, reached
    by dilation). Its keys are the classifier's keys without ``final_conv`` and ``head``, so
    classification checkpoints load into it."""

    features_only = True
    head_defaults: ClassVar[Mapping[str, Any]] = {"output_stride": 32}

    def __init__(
        self,
        name: str,
        cfg: Any,
        out_indices: tuple[int, ...] = (0, 1, 2, 3, 4),
        output_stride: int = 32,
        **stage_options: Any,
    ) -> None:
        if not out_indices or any(i not in range(5) for i in out_indices):
            raise ValueError(f"out_indices must be a non-empty subset of 0..4, got {out_indices}")
        super().__init__(name, cfg, output_stride, **stage_options)
        self.out_indices = tuple(sorted(out_indices))
        self.output_stride = output_stride
        self.feature_info = FeatureInfo(
            [
                {"num_chs": cfg.channels[i], "reduction": min(STAGE_STRIDES[i], output_stride), "module": f"stages.{i}"}
                for i in self.out_indices
            ]
        )
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input(x, self.config.in_chans)
        x = self.stem(x)
        features = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                features.append(x)
            if i == self.out_indices[-1]:
                break
        return features
