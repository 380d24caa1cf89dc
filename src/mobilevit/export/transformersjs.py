"""A folder that transformers.js (``@huggingface/transformers``) loads with
``pipeline('image-classification', DIR)`` from local files, in Node.js or a browser.

transformers.js runs an ONNX graph through ONNX Runtime and does the rest from two JSON files, as for a
Hugging Face Hub repo converted for it:

- ``config.json``: ``model_type`` picks the model class (``mobilevit`` -> ``MobileViTForImageClassification``,
  ``mobilevitv2`` -> ``MobileViTV2ForImageClassification``; both only run the graph), ``id2label`` names
  the classes, and ``transformers.js_config.dtype`` is the file loaded when the caller names none (fp32
  here: without it, browsers on WebAssembly load the q8 file by default);
- ``preprocessor_config.json``: its generic ``ImageProcessor`` (``MobileViTImageProcessor`` adds nothing)
  reads ``do_resize``/``size.shortest_edge``/``resample``, ``do_center_crop``/``crop_size``,
  ``do_rescale``/``rescale_factor``, ``do_normalize``/``image_mean``/``image_std``, ``do_convert_rgb`` and
  ``do_flip_channel_order``, which here describe :func:`mobilevit.data.transforms.pretrained_transform`
  (transformers.js resizes without antialiasing and floors the crop offset: docs/deployment.md says by how much);
- ``onnx/model{,_fp16,_quantized}.onnx``: the files its ``dtype`` option ``fp32``, ``fp16`` and ``q8``
  load. Each is :func:`mobilevit.export.export`'s checked ONNX file (dynamic batch and size, since the
  pipeline stacks its images into one batch), with the input renamed ``pixel_values``, the name the
  pipeline feeds; the output is already ``logits``, the name it reads.

The q8 file is the project's static int8 export (QDQ, 7-bit weights, calibrated), not the dynamic
quantization of transformers.js's own conversion script: static quantization is what the project checks
and keeps portable across CPUs, and it needs calibration images, so the file is written only when they
are given. Only classifiers export: transformers.js has no MobileViT segmentation or detection class.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilevit.data.synthetic import structured_images
from mobilevit.export import ExportCheckError, ExportReport, export
from mobilevit.export.onnx import INPUT_NAME, OUTPUT_NAME, OnnxRunner, require_onnx
from mobilevit.models.backbones import BACKBONE_FAMILIES
from mobilevit.models.mobilevitv3 import MobileViTV3, MobileViTV3V2
from mobilevit.tasks import task_for

TRANSFORMERS_JS = "transformers.js"
PIXEL_VALUES = "pixel_values"  # the input name transformers.js's image pipelines feed
# transformers.js's dtype -> the file it loads for it (DEFAULT_DTYPE_SUFFIX_MAPPING in its utils/dtypes.js)
DTYPE_FILES = {"fp32": "onnx/model.onnx", "fp16": "onnx/model_fp16.onnx", "q8": "onnx/model_quantized.onnx"}
DEFAULT_DTYPE = "fp32"
# Hugging Face's model types and the transformers.js classes they pick
ARCHITECTURES = {"mobilevit": "MobileViTForImageClassification", "mobilevitv2": "MobileViTV2ForImageClassification"}
IMAGE_PROCESSOR = "MobileViTImageProcessor"
# torchvision's interpolation name -> the PIL code of ``resample`` that names the same kind of filter in transformers.js
PIL_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}


@dataclass
class TransformersJsReport:
    """What was written: the folder, the ``model_type`` its config names, each ONNX file's export report
    by transformers.js ``dtype`` (``path`` is the file in the folder), and notes for the user."""

    folder: Path
    model_type: str
    files: dict[str, ExportReport]
    notes: list[str] = field(default_factory=list)


def check_transformersjs(model: nn.Module) -> None:
    """ValueError for a model transformers.js cannot run: it has MobileViT image classifiers only."""
    task = task_for(model).name
    if task != "classification":
        raise ValueError(
            f"transformers.js export is for classifiers: transformers.js has no MobileViT {task} model "
            f"(its MobileViT classes are image classifiers only); export the {task} model as onnx instead"
        )


def model_type(model: nn.Module) -> str:
    """Hugging Face's ``model_type``: ``mobilevit`` (v1) or ``mobilevitv2``. MobileViTv3 has none; it
    gets the type of the family whose blocks it builds on, since transformers.js's class for it only
    runs the ONNX graph (the config's ``mobilevit_model`` names the real model)."""
    return "mobilevitv2" if BACKBONE_FAMILIES[model.model_name].v2_blocks else "mobilevit"


def is_v3(model: nn.Module) -> bool:
    """Whether ``model`` is a MobileViTv3, which Hugging Face has no model_type for."""
    return isinstance(model, (MobileViTV3, MobileViTV3V2))


def label_names(model: nn.Module) -> list[str]:
    """The class names transformers.js prints: the model's ``label_names`` when they fit it, else those
    of the dataset its class count implies (ImageNet, as ``mobilevit predict`` shows), else Hugging
    Face's ``LABEL_i``."""
    names = list(model.pretrained_cfg.get("label_names") or ())
    if len(names) == model.num_classes:
        return names
    known = task_for(model).known_classes
    if model.num_classes in known:
        return known[model.num_classes]()
    return [f"LABEL_{i}" for i in range(model.num_classes)]


def model_config(model: nn.Module, img_size: tuple[int, int]) -> dict[str, Any]:
    """``config.json``. transformers.js reads ``model_type``, ``id2label`` and ``transformers.js_config``;
    ``architectures``, ``num_channels``, ``image_size`` and ``label2id`` are Hugging Face's fields, for
    the Hub and for people, and ``mobilevit_model`` names the exported model."""
    names = label_names(model)
    kind = model_type(model)
    height, width = img_size
    return {
        "model_type": kind,
        "architectures": [ARCHITECTURES[kind]],
        "mobilevit_model": model.model_name,
        "num_channels": 3,
        "image_size": height if height == width else [height, width],
        "id2label": {str(i): name for i, name in enumerate(names)},
        "label2id": {name: i for i, name in enumerate(names)},
        "transformers.js_config": {"dtype": DEFAULT_DTYPE},
    }


def preprocessor_config(cfg: Mapping[str, Any], img_size: tuple[int, int]) -> dict[str, Any]:
    """``preprocessor_config.json``: :func:`~mobilevit.data.transforms.pretrained_transform` of ``cfg`` at
    ``img_size`` in transformers.js's keys. The shortest edge goes to ``max(img_size) / crop_pct`` with
    the cfg's filter, then the centre crop, [0, 1], mean/std. transformers.js normalizes before it flips
    the channels, so a BGR model's mean and std (given in its own channel order) are reversed. Hugging
    Face's MobileViT processor flips to BGR by default; ``do_flip_channel_order`` is written out for that."""
    height, width = img_size
    interpolation = cfg.get("interpolation", "bicubic")
    if interpolation not in PIL_RESAMPLE:
        raise ValueError(
            f"transformers.js cannot resize with {interpolation!r} interpolation; it has {', '.join(PIL_RESAMPLE)}"
        )
    bgr = cfg.get("channel_order", "RGB") == "BGR"
    mean, std = list(cfg.get("mean", (0.0,) * 3)), list(cfg.get("std", (1.0,) * 3))
    return {
        "image_processor_type": IMAGE_PROCESSOR,
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": int(max(height, width) / cfg.get("crop_pct", 0.9))},
        "resample": PIL_RESAMPLE[interpolation],
        "do_center_crop": True,
        "crop_size": {"height": height, "width": width},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": mean[::-1] if bgr else mean,
        "image_std": std[::-1] if bgr else std,
        "do_flip_channel_order": bgr,
    }


def rename_input(source: str | os.PathLike, path: str | os.PathLike, name: str = PIXEL_VALUES) -> Path:
    """Write the ONNX file ``source`` to ``path`` with its input called ``name``: the graph input and every
    node that reads it, nothing else. ONNX's checker then validates the graph again."""
    import onnx

    proto = onnx.load(source)
    weights = {t.name for t in proto.graph.initializer}  # listed as inputs by some older writers
    (graph_input,) = [i for i in proto.graph.input if i.name not in weights]
    old = graph_input.name
    graph_input.name = name
    for node in proto.graph.node:
        for i, tensor in enumerate(node.input):
            if tensor == old:
                node.input[i] = name
    outputs = [o.name for o in proto.graph.output]
    if outputs != [OUTPUT_NAME]:
        raise ValueError(f"{source}: outputs {outputs}, but transformers.js reads one output named {OUTPUT_NAME!r}")
    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, path)
    return path


def same_outputs(a: str | os.PathLike, b: str | os.PathLike, x: torch.Tensor) -> bool:
    """Whether two ONNX files compute bit-identical outputs on ``x`` (a renamed file and its checked source)."""
    return torch.equal(OnnxRunner(a)(x), OnnxRunner(b)(x))


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Indented UTF-8 JSON, as Hub repos hold it (class names keep their own characters)."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def resolve_dtypes(dtypes: Sequence[str] | None, calibration: torch.Tensor | None) -> tuple[str, ...]:
    """The dtypes whose files are written: by default fp32, fp16 and, given calibration images, q8.
    fp32 is always among them, since the config names it the default."""
    if dtypes is None:
        return ("fp32", "fp16", "q8") if calibration is not None else ("fp32", "fp16")
    unknown = [d for d in dtypes if d not in DTYPE_FILES]
    if unknown:
        raise ValueError(f"unknown transformers.js dtype {unknown[0]!r}; choose from {', '.join(DTYPE_FILES)}")
    if DEFAULT_DTYPE not in dtypes:
        raise ValueError(f"the folder needs its {DEFAULT_DTYPE} file: transformers.js loads it when no dtype is named")
    if "q8" in dtypes and calibration is None:
        raise ValueError("q8 (int8) needs calibration images: static quantization measures activation ranges")
    return tuple(dict.fromkeys(dtypes))


def export_transformersjs(
    model: nn.Module,
    folder: str | os.PathLike,
    *,
    img_size: tuple[int, int] | None = None,
    calibration: torch.Tensor | None = None,
    dtypes: Sequence[str] | None = None,
    opset: int = 17,
) -> TransformersJsReport:
    """Write a transformers.js model folder for the classifier ``model`` at ``img_size`` (default: its
    ``pretrained_cfg`` input size): ``config.json``, ``preprocessor_config.json`` and the ONNX file of each
    of ``dtypes`` (default: fp32, fp16 and, given ``calibration`` images [N, 3, *img_size] preprocessed like
    real inputs, q8). Each ONNX file passes :func:`~mobilevit.export.export`'s check, is renamed and must
    then give bit-identical outputs; only when all have passed does anything go into the folder, where the
    files of dtypes not written now are removed, so that the folder never mixes two models."""
    check_transformersjs(model)
    require_onnx()
    img_size = tuple(img_size or model.pretrained_cfg["input_size"][1:])
    dtypes = resolve_dtypes(dtypes, calibration)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file; transformers.js export writes a folder")
    config = model_config(model, img_size)
    preprocessor = preprocessor_config(model.pretrained_cfg, img_size)
    options: dict[str, dict[str, Any]] = {
        "fp32": {},
        "fp16": {"precision": "fp16"},
        "q8": {"int8": True, "calibration": calibration},
    }
    example = structured_images(1, *img_size, seed=3)
    checked: dict[str, ExportReport] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in dtypes:
            report = export(
                model,
                "onnx",
                Path(tmp) / f"{dtype}.onnx",
                img_size=img_size,
                dynamic=True,
                opset=opset,
                **options[dtype],
            )
            renamed = rename_input(report.path, Path(tmp) / DTYPE_FILES[dtype])
            if not same_outputs(report.path, renamed, example):
                raise ExportCheckError(
                    f"{renamed} differs from the checked file it was renamed from; please report this"
                )
            checked[dtype] = report
        (folder / "onnx").mkdir(parents=True, exist_ok=True)
        for dtype in dtypes:
            shutil.move(Path(tmp) / DTYPE_FILES[dtype], folder / DTYPE_FILES[dtype])
    files = {
        dtype: dataclasses.replace(
            report,
            path=folder / DTYPE_FILES[dtype],
            notes=[*report.notes, f"input renamed {INPUT_NAME!r} -> {PIXEL_VALUES!r}"],
            size_mb=(folder / DTYPE_FILES[dtype]).stat().st_size / 1e6,
        )
        for dtype, report in checked.items()
    }
    write_json(folder / "config.json", config)
    write_json(folder / "preprocessor_config.json", preprocessor)
    notes = [f"model_type {config['model_type']} ({config['architectures'][0]} in transformers.js)"]
    if is_v3(model):
        notes.append(
            f"MobileViTv3 has no Hugging Face model_type: {model.model_name} is written as {config['model_type']}, "
            "whose transformers.js class runs any image classifier's ONNX graph unchanged"
        )
    if "q8" not in dtypes and calibration is None:
        notes.append("no q8 file (onnx/model_quantized.onnx): int8 needs calibration images (--int8 --calibration SRC)")
    for dtype in DTYPE_FILES:
        stale = folder / DTYPE_FILES[dtype]
        if dtype not in dtypes and stale.exists():
            stale.unlink()
            notes.append(f"removed {DTYPE_FILES[dtype]}, an earlier export's {dtype} file")
    notes.append(
        f"transformers.js loads {DTYPE_FILES[DEFAULT_DTYPE]} by default; its dtype option picks another "
        "(fp16: model_fp16.onnx, q8: model_quantized.onnx)"
    )
    return TransformersJsReport(folder, config["model_type"], files, notes)
