"""The ``mobilevit`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from mobilevit.errors import TrainingError
from mobilevit.models import list_models
from mobilevit.models.summary import describe


def _positive_size(value: str) -> int:
    size = int(value)
    if size <= 0:
        raise argparse.ArgumentTypeError(f"image size must be positive, got {size}")
    return size


def _cmd_list(args: argparse.Namespace) -> int:
    print("\n".join(list_models(args.pattern)))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    info = describe(args.name, tuple(args.img_size))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    h, w = info["img_size"]
    print(f"{info['model']} at {h}x{w}")
    print(f"  parameters: {info['params']:,}")
    print(f"  MACs:       {info['macs'] / 1e9:.3f} G")
    print(f"  {'stage':<10}{'stride':>7}  feature shape")
    for stage in info["stages"]:
        print(f"  {stage['stage']:<10}{stage['stride']:>7}  {tuple(stage['shape'])}")
    print(f"  {'logits':<10}{'':>7}  {tuple(info['logits_shape'])}")
    return 0


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``--batch-size``, ``--no-ema``...); unset flags keep the recipe."""
    from dataclasses import MISSING, fields

    from mobilevit.engine.config import TrainConfig

    parser.add_argument("--config", help="YAML recipe (see configs/); flags override it")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(default, tuple):
            parser.add_argument(flag, dest=f.name, nargs=len(default), type=float, default=None)
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" |")[0].strip("'"), str)
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=f"default: {default}")


def _cmd_train(args: argparse.Namespace) -> int:
    import logging

    from mobilevit.engine.config import TrainConfig, load_config
    from mobilevit.engine.train import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    options = {k: getattr(args, k) for k in TrainConfig.__dataclass_fields__}
    metrics = train(load_config(args.config, **options))
    if metrics:
        print(f"final val top-1 {metrics[-1]['val_top1']:.4f}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from mobilevit.data.datasets import FASHION_MNIST, class_names, fashion_mnist, image_folder
    from mobilevit.data.transforms import TransformedDataset, eval_transform
    from mobilevit.engine.evaluate import evaluate, load_for_eval
    from mobilevit.engine.plots import plot_confusion

    model, classes = load_for_eval(args.checkpoint, args.model, args.weights)
    dataset = fashion_mnist(train=False) if args.data == FASHION_MNIST else image_folder(args.data, args.split)
    classes = classes or class_names(dataset)
    num_classes = model.num_classes
    if classes and len(classes) != num_classes:
        raise ValueError(f"the model predicts {num_classes} classes but the data has {len(classes)}")
    img_size = args.img_size or model.pretrained_cfg["input_size"][-1]
    transform = eval_transform(img_size, model.pretrained_cfg["crop_pct"], model.pretrained_cfg["interpolation"])
    loader = torch.utils.data.DataLoader(
        TransformedDataset(dataset, transform), batch_size=args.batch_size, num_workers=args.workers
    )
    result = evaluate(model, loader, num_classes)
    names = classes or [str(i) for i in range(num_classes)]
    output = Path(args.output) if args.output else Path(args.checkpoint).resolve().parent
    figure = plot_confusion(result["confusion"], names, output / "confusion_matrix.png")
    summary = {
        "checkpoint": str(args.checkpoint),
        "images": result["count"],
        "top1": result["top1"],
        "top5": result["top5"],
        "loss": result["loss"],
        "per_class": dict(zip(names, result["per_class"], strict=True)),
        "confusion_matrix_png": str(figure),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"{result['count']} images: top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  "
        f"loss {result['loss']:.4f}"
    )
    for name, acc in summary["per_class"].items():
        print(f"  {name:<24} {100 * acc:6.2f}%")
    print(f"confusion matrix: {figure}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mobilevit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the registered models")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'mobilevit_x*'")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("info", help="parameters, MACs and feature shapes of a model")
    p.add_argument("name", help="model name (see `mobilevit list`)")
    p.add_argument("--img-size", nargs=2, type=_positive_size, default=[256, 256], metavar=("H", "W"))
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("train", help="train a classifier (the paper's recipe by default)")
    _add_train_options(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="top-1/top-5, loss, per-class accuracy and a confusion matrix")
    p.add_argument("--checkpoint", required=True, help="training checkpoint, model directory or weights file")
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder root")
    p.add_argument("--split", default="val", help="ImageFolder split to evaluate (default: val)")
    p.add_argument("--model", help="model name, needed for a plain weights file")
    p.add_argument("--weights", choices=["ema", "model"], default="ema", help="which weights of a training checkpoint")
    p.add_argument("--img-size", type=_positive_size, help="default: the model's input size")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--output", help="folder for confusion_matrix.png (default: beside the checkpoint)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TrainingError) as err:
        print(f"mobilevit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
