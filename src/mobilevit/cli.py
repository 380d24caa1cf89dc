"""The ``mobilevit`` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import MISSING, fields
from pathlib import Path

import torch
from torch import nn

from mobilevit.data.calibration import calibration_images
from mobilevit.engine.config import TrainConfig, load_config
from mobilevit.engine.train import choose_weights, train
from mobilevit.errors import TrainingError
from mobilevit.export import FORMATS, INT8_FORMATS, PRECISIONS, ExportReport, check_task, export
from mobilevit.export.bench import BENCH_BACKENDS, bench
from mobilevit.export.machine import describe as describe_machine
from mobilevit.export.machine import machine_info
from mobilevit.export.transformersjs import TRANSFORMERS_JS, check_transformersjs, export_transformersjs
from mobilevit.export.web import RUNTIME_ENV, WEB_FORMAT, check_web_options, export_web, make_server
from mobilevit.hub import DownloadError
from mobilevit.models import create_model, from_pretrained, list_models, list_pretrained
from mobilevit.models.factory import TRAINED_WEIGHTS, describes_model, is_published
from mobilevit.models.pretrained import PUBLISHED_WEIGHTS
from mobilevit.models.registry import split_name
from mobilevit.models.summary import describe
from mobilevit.predict import PREDICT_BACKENDS, predict
from mobilevit.tasks import TASKS, get_task, task_for
from mobilevit.tasks.detection import DEFAULT_SCORE_THRESH

DESCRIPTION = (
    "MobileViT, v2 and v3 as published: list the models and their published weights, train, evaluate and "
    "predict (classification, segmentation, detection), export to ONNX, TorchScript, ExecuTorch, CoreML, "
    "LiteRT (int8 too), a transformers.js folder or a web page, serve the page, and time them."
)


def _positive_size(value: str) -> int:
    size = int(value)
    if size <= 0:
        raise argparse.ArgumentTypeError(f"image size must be positive, got {size}")
    return size


def _cmd_list(args: argparse.Namespace) -> int:
    if not args.pretrained:
        print("\n".join(list_models(args.pattern, task=args.task)))
        return 0
    rows = [PUBLISHED_WEIGHTS[n] for n in list_pretrained(args.pattern, task=args.task)]
    width = max((len(w.name) for w in rows), default=0)
    for w in rows:
        print(f"{w.name:<{width}}  {w.input_size:>3}px  {w.metric}  [{', '.join(w.hosts)}]  license: {w.license}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    info = describe(args.name, args.img_size and tuple(args.img_size))
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
    print(f"  {info['output_name']:<10}{'':>7}  {tuple(info['output_shape'])}")
    return 0


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``--batch-size``, ``--no-ema``...); unset flags keep the recipe."""
    parser.add_argument("--config", help="YAML recipe (see configs/); flags override it")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        kind_name = str(f.type).split(" |")[0].strip("'")
        if isinstance(default, bool) or kind_name == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(default, tuple):
            kind = str if isinstance(default[0], str) else float
            parser.add_argument(flag, dest=f.name, nargs=len(default), type=kind, default=None)
        else:
            kind = {"int": int, "float": float}.get(kind_name, str)
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=f"default: {default}")


def _cmd_train(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    options = {k: getattr(args, k) for k in TrainConfig.__dataclass_fields__}
    config = load_config(args.config, **options)
    metrics = train(config)
    if metrics:
        headline = get_task(config.task).metrics[0]
        kept = choose_weights(metrics, headline)  # what the trainer saved in model/
        weights = "EMA" if kept.weights == "ema" else "trained"
        print(f"final val {headline} {kept.score:.4f} ({weights} weights, saved in {config.output}/model)")
    return 0


def _load_model(
    source: str | None,
    name: str | None,
    weights: str = "ema",
    *,
    flags: str = "--checkpoint PATH",
    untagged_random: bool = False,
) -> nn.Module:
    """The model that ``eval``, ``predict`` and ``export`` are given, through the two public loaders:

    - no ``source``: ``create_model(NAME[.TAG], pretrained=True)``, the published weights of
      ``--model`` (``export``, with ``untagged_random``: a NAME without a tag is randomly initialised);
    - published weights by name: ``create_model(SOURCE, pretrained=True)``;
    - a plain weights file with ``--model NAME``: ``create_model(NAME, pretrained=SOURCE)``;
    - anything else (model directory, Hub repo, training checkpoint; ``weights``: its EMA or trained
      weights): ``from_pretrained(SOURCE)``, whose model ``--model`` must then name.
    """
    if source is None:
        if name is None:
            raise ValueError(f"pass --model NAME, {flags} or both")
        if untagged_random and split_name(name)[1] is None:
            print(
                f"no --checkpoint: exporting randomly initialised weights ({name}.TAG exports published ones)",
                file=sys.stderr,
            )
            return create_model(name)
        return create_model(name, pretrained=True)
    if name is not None and not is_published(source) and not describes_model(source):
        return create_model(name, pretrained=source)  # a plain weights file: --model names its model
    model = create_model(source, pretrained=True) if is_published(source) else from_pretrained(source, weights=weights)
    if name is not None and split_name(name)[0] != model.model_name:
        raise ValueError(f"--model {name} but {source} holds a {model.model_name}")
    return model


def _cmd_eval(args: argparse.Namespace) -> int:
    model = _load_model(args.checkpoint, args.model, args.weights)
    source = args.checkpoint or args.model
    task = task_for(model)
    if args.task and args.task != task.name:
        raise ValueError(f"--task {args.task}, but {source} holds a {task.name} model ({model.model_name})")
    task.check_eval()
    dataset = task.dataset(args.data or task.default_data, args.split)
    classes = list(model.pretrained_cfg.get("label_names") or getattr(dataset, "classes", []))
    if classes and len(classes) != model.num_classes:
        raise ValueError(f"the model predicts {model.num_classes} classes but the data has {len(classes)}")
    names = classes or [str(i) for i in range(model.num_classes)]
    evaluation = task.eval_dataset(dataset, model, args.img_size or model.pretrained_cfg["input_size"][-1])
    loader = torch.utils.data.DataLoader(
        evaluation, batch_size=args.batch_size, num_workers=args.workers, collate_fn=task.collate
    )
    result = task.evaluate(model, loader, model.num_classes, torch.device("cpu"))
    beside = Path(args.checkpoint).resolve().parent if args.checkpoint and Path(args.checkpoint).exists() else Path()
    report, lines = task.report(result, names, Path(args.output) if args.output else beside)
    if args.json:
        print(json.dumps({"checkpoint": str(source), "task": task.name, "images": len(evaluation), **report}, indent=2))
    else:
        print("\n".join(lines))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    """Export a model, then run the file with its runtime and print how far it is from PyTorch."""
    model = _load_model(args.checkpoint, args.model, untagged_random=True)
    cfg = model.pretrained_cfg
    img_size = tuple(args.img_size or cfg["input_size"][1:])
    if args.format == TRANSFORMERS_JS:
        return _export_transformersjs(args, model, img_size)
    if args.format == WEB_FORMAT:
        return _export_web(args, model, img_size)
    # refuse what cannot be exported before loading calibration images
    check_task(model, args.format, img_size, args.dynamic, args.int8, args.precision)
    calibration = _calibration(args, cfg, img_size) if args.int8 and args.format in INT8_FORMATS else None
    report = export(
        model,
        args.format,
        args.output,
        img_size=img_size,
        dynamic=args.dynamic,
        int8=args.int8,
        calibration=calibration,
        opset=args.opset,
        precision=args.precision,
    )
    print(f"exported {model.model_name} at {img_size[0]}x{img_size[1]} to {report.path} ({report.format})")
    _print_report(report, args.int8, calibration)
    return 0


def _calibration(args: argparse.Namespace, cfg: dict, img_size: tuple[int, int]) -> torch.Tensor:
    """``--calibration``'s images, preprocessed as the model's evaluation preprocesses (``--int8`` needs them)."""
    if args.calibration is None:
        raise ValueError("--int8 needs --calibration: an ImageFolder root, a folder of images or 'fashion-mnist'")
    options = {"crop_pct": cfg["crop_pct"], "interpolation": cfg["interpolation"]}
    return calibration_images(args.calibration, args.calibration_images, img_size, **options)


def _print_report(report: ExportReport, int8: bool, calibration: torch.Tensor | None, indent: str = "  ") -> None:
    """An export's notes, its difference from PyTorch (or int8's top-1 agreement) and its size."""
    for note in report.notes:
        print(f"{indent}{note}")
    if int8 and report.top1_agreement is not None:
        print(f"{indent}max abs diff vs PyTorch fp32: {report.max_abs_diff:.3g} (int8: informational)")
        agreement = 100 * report.top1_agreement
        print(f"{indent}top-1 agreement with fp32 on {len(calibration)} calibration images: {agreement:.1f}%")
    elif report.max_abs_diff is not None:
        bound = "informational" if report.tolerance is None else f"tolerance {report.tolerance:.3g}"
        print(f"{indent}max abs diff vs PyTorch: {report.max_abs_diff:.3g} ({bound})")
        if report.top1_agreement is not None:  # fp16
            agreement = 100 * report.top1_agreement
            print(f"{indent}top-1 agreement with PyTorch on the structured check images: {agreement:.1f}%")
    if report.size_mb is not None:
        print(f"{indent}file size: {report.size_mb:.2f} MB")


def _export_transformersjs(args: argparse.Namespace, model: nn.Module, img_size: tuple[int, int]) -> int:
    """A transformers.js folder: its fp32 and fp16 files always (so ``--precision`` has no meaning there)
    and, with ``--int8``, the q8 one; every file is dynamic."""
    check_transformersjs(model)
    if args.precision is not None:
        raise ValueError(
            "--precision does not apply to transformers.js: the folder holds the fp32 and fp16 files "
            "(and q8 with --int8 --calibration SRC), and transformers.js's dtype option picks one"
        )
    calibration = _calibration(args, model.pretrained_cfg, img_size) if args.int8 else None
    report = export_transformersjs(model, args.output, img_size=img_size, calibration=calibration, opset=args.opset)
    print(f"exported {model.model_name} at {img_size[0]}x{img_size[1]} to {report.folder} ({TRANSFORMERS_JS})")
    for note in report.notes:
        print(f"  {note}")
    for dtype, file in report.files.items():
        print(f"  {file.path.relative_to(report.folder)} (dtype {dtype}):")
        _print_report(file, dtype == "q8", calibration, indent="    ")
    return 0


def _export_web(args: argparse.Namespace, model: nn.Module, img_size: tuple[int, int]) -> int:
    """A folder with a page that runs the model's ONNX file in the browser (onnxruntime-web)."""
    check_web_options(args.dynamic, args.int8, args.precision)
    check_task(model, "onnx", img_size, args.dynamic, args.int8, args.precision)
    report = export_web(model, args.output, img_size=img_size, opset=args.opset, runtime=args.runtime)
    print(f"exported {model.model_name} at {img_size[0]}x{img_size[1]} to {report.path} ({report.format})")
    _print_report(report, False, None)
    return 0


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export to ONNX, TorchScript, ExecuTorch, CoreML, LiteRT, a transformers.js folder or a web page and "
        "check it against PyTorch",
    )
    p.add_argument(
        "--model", help="model name (default: the checkpoint's); NAME.TAG without --checkpoint: published weights"
    )
    p.add_argument("--checkpoint", help="training checkpoint, model directory or weights file (default: random init)")
    p.add_argument(
        "--format",
        required=True,
        choices=(*FORMATS, TRANSFORMERS_JS, WEB_FORMAT),
        help="every task has every format but transformers.js (a folder for its image-classification pipeline: "
        "classifiers); int8 is for classifiers, fp16 for classifiers and segmentation; web: a page running the ONNX "
        "file in the browser (onnxruntime-web)",
    )
    p.add_argument("--img-size", nargs=2, type=_positive_size, metavar=("H", "W"), help="default: the model's size")
    p.add_argument("--dynamic", action="store_true", help="free batch size and input size (onnx, torchscript)")
    p.add_argument(
        "--int8",
        action="store_true",
        help="static int8 quantization (onnx, executorch, litert; transformers.js: q8 file)",
    )
    p.add_argument("--calibration", help="int8 calibration: an ImageFolder root, a folder of images or 'fashion-mnist'")
    p.add_argument("--calibration-images", type=int, default=64, help="number of calibration images (default: 64)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="fp16: fp16 weights, half the file (onnx, litert, coreml); default: fp16 for coreml, fp32 for the others",
    )
    p.add_argument(
        "--runtime",
        metavar="DIST",
        help=f"web: an unpacked onnxruntime-web dist/ folder (default: ${RUNTIME_ENV}, else the pinned npm package, "
        "downloaded once)",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="file to write (.onnx, .pt, .pte, .mlpackage, .tflite); a folder for transformers.js and web",
    )
    p.set_defaults(func=_cmd_export)


def _cmd_serve(args: argparse.Namespace) -> int:
    """Serve a web export until Ctrl+C, cross-origin isolated (WASM threads)."""
    try:
        server = make_server(args.directory, args.host, args.port)
    except FileNotFoundError:
        raise
    except OSError as err:  # the port is taken, or the address is not this machine's
        raise ValueError(f"cannot serve on {args.host}:{args.port} ({err.strerror}); choose another --port") from err
    host, port = server.server_address[:2]
    print(f"serving {args.directory} at http://{host}:{port}/ (cross-origin isolated); Ctrl+C stops", flush=True)
    with server, contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a web export (export --format web) with the headers WASM threads need")
    p.add_argument("directory", metavar="DIR", help="the folder `mobilevit export --format web -o DIR` wrote")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.set_defaults(func=_cmd_serve)


def _cmd_predict(args: argparse.Namespace) -> int:
    """Top-k classes, or mask and overlay PNGs, or boxes drawn on a PNG, of each image (as the model's
    task is); unreadable images are reported and make the exit status 2."""
    source = args.checkpoint or args.pretrained
    model = _load_model(source, args.model, flags="--checkpoint PATH, --pretrained NAME|REPO|PATH")
    source = source or args.model
    task = task_for(model)
    if args.task and args.task != task.name:
        raise ValueError(f"--task {args.task}, but {source} holds a {task.name} model ({model.model_name})")
    options = {"k": args.topk, "score_thresh": args.score_thresh}  # each task reads its own
    results, errors = predict(args.images, model, output_dir=args.output_dir, backend=args.backend, **options)
    for error in errors:
        print(f"mobilevit predict: error: {error['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps({"task": task.name, "results": results, "errors": errors}, indent=2))
    elif results:
        print("\n\n".join(task.format(result) for result in results))
    return 2 if errors else 0


def _add_predict_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify, segment or detect in image files with a trained or published model")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="training output: a model directory or a step-N.pt (its EMA weights)")
    source.add_argument(
        "--pretrained", help="published weights by name (mobilevit_s.cvnets_in1k), a Hub repo id, or a file/directory"
    )
    p.add_argument("--model", help="model name[.tag]: alone, its published weights; names a plain weights file")
    p.add_argument("--task", choices=TASKS, help="check that the model does this (default: the model's own task)")
    p.add_argument("--topk", type=_positive_size, default=5, help="classification: classes per image (default: 5)")
    p.add_argument(
        "--score-thresh",
        type=float,
        default=DEFAULT_SCORE_THRESH,
        help=f"detection: keep boxes scoring above this (default: {DEFAULT_SCORE_THRESH})",
    )
    p.add_argument("--output-dir", default="predictions", help="segmentation, detection: PNG folder (%(default)s)")
    p.add_argument("--backend", choices=PREDICT_BACKENDS, default="eager", help="eager PyTorch or ONNX Runtime")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_predict)


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    compare = tuple(p for p in args.compare.split(",") if p) if args.compare else ()
    machine = machine_info()
    rows = bench(
        args.model,
        args.backend,
        batch_size=args.batch_size,
        img_size=tuple(args.img_size),
        compare=compare,
        rounds=args.rounds,
        iters=args.iters,
        peak_gflops=machine["fp32_matmul_peak_gflops"],
    )
    if args.json:
        print(json.dumps({"machine": machine, "rows": rows}, indent=2))
        return 0
    precision = "int8" if "int8" in args.backend else "fp32"
    print(f"{args.model}, batch {args.batch_size}, {rows[0]['img_size']}, {precision}")
    print(f"on {describe_machine(machine)}")
    header = f"{'impl':<10}{'backend':<13}{'median ms':>10}{'p90 ms':>9}{'img/s':>8}{'GFLOP/s':>9}{'% peak':>8}"
    print(header + ("  ours/this" if len(rows) > 1 else ""))
    for r in rows:
        line = f"{r['impl']:<10}{r['backend']:<13}{r['median_ms']:>10.2f}{r['p90_ms']:>9.2f}{r['img_per_s']:>8.1f}"
        line += f"{r['gflop_per_s']:>9.1f}{r['peak_pct']:>8.1f}"
        print(line + (f"  {r['ours_over_this']:>8.2f}x" if len(rows) > 1 else ""))
    return 0


def _add_bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency of a model on a backend, optionally against timm and Hugging Face")
    p.add_argument("--model", default="mobilevit_s", help="model name (default: mobilevit_s)")
    p.add_argument("--backend", choices=BENCH_BACKENDS, default="eager")
    p.add_argument("--batch-size", type=_positive_size, default=1)
    p.add_argument("--img-size", nargs=2, type=_positive_size, default=[256, 256], metavar=("H", "W"))
    p.add_argument("--compare", help="peers run in the same process, interleaved: 'timm', 'hf' or 'timm,hf'")
    p.add_argument("--rounds", type=_positive_size, default=7, help="interleaved rounds (default: 7)")
    p.add_argument("--iters", type=_positive_size, default=10, help="timed calls per round (default: 10)")
    p.add_argument("--threads", type=_positive_size, help="torch and ONNX Runtime threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mobilevit", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the registered models, or their published weights")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'mobilevit_x*'")
    p.add_argument("--task", choices=TASKS, help="only this task's models")
    p.add_argument(
        "--pretrained", action="store_true", help="published weights: NAME.TAG, size, metric, hosts, license"
    )
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("info", help="parameters, MACs and feature shapes of a model")
    p.add_argument("name", help="model name (see `mobilevit list`)")
    p.add_argument("--img-size", nargs=2, type=_positive_size, metavar=("H", "W"), help="default: the model's")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("train", help="train a classifier, segmenter or detector (the paper's recipes)")
    _add_train_options(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="accuracy (classification), mIoU (segmentation) or COCO mAP (detection)")
    p.add_argument(
        "--checkpoint",
        help="training checkpoint, model directory, Hub repo or weights file (default: --model's published weights)",
    )
    p.add_argument("--task", choices=TASKS, help="default: the model's")
    p.add_argument(
        "--data",
        help="'fashion-mnist' or an ImageFolder root; a VOC root (segmentation); a COCO or VOC root (detection); "
        "'shapes' (default: the task's built-in data)",
    )
    p.add_argument("--split", default="val", help="split to evaluate (default: val)")
    p.add_argument(
        "--model", help="model name[.tag]: its published weights without --checkpoint; names a plain weights file"
    )
    p.add_argument("--weights", choices=TRAINED_WEIGHTS, default="ema", help="which weights of a training checkpoint")
    p.add_argument("--img-size", type=_positive_size, help="default: the model's input size")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--output", help="folder for confusion_matrix.png (default: beside the checkpoint)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_eval)
    _add_export_parser(sub)
    _add_serve_parser(sub)
    _add_predict_parser(sub)
    _add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # ImportError: a missing optional extra (onnx, executorch, coreml); its message says what to install.
    # DownloadError: weights or a Hub repo that cannot be fetched; its message says what to do offline.
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TrainingError, ImportError, DownloadError) as err:
        print(f"mobilevit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
