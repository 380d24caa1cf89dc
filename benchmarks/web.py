"""The web page (``mobilevit export --format web``) in headless Chromium on this machine, beside the same
ONNX file in ONNX Runtime's CPU provider in Python.

    python benchmarks/web.py [--models ...] [--rounds 7] [--iters 10] [--threads N] [--screenshots docs/img]

Each model (random weights) is exported as a web folder once and served from 127.0.0.1 by
:func:`mobilevit.export.web.make_server`, whose COOP/COEP headers make the page cross-origin isolated, so
onnxruntime-web runs WASM SIMD on several threads. One headless Chromium (Debian's, driven by Playwright)
stays open for the whole run. Per model it opens a page on the WASM backend with ``?threads=N``, N being
ONNX Runtime's intra-op threads (``--threads``, by default torch's count: one per core), and one with the
page's default (onnxruntime-web's choice, half the cores) where that differs. Every page is fed a warm-up
photo; then, round after round, each page is fed the same PNG again through its file input (no reload: the
session stays loaded) and reports its ``?runs=K`` median (K = ``--iters``), which times ``session.run``
alone, input tensor to output tensors, after one untimed run. Then ONNX Runtime in Python runs the page's
model.onnx at each of those thread counts, on the input Python's ``predict`` makes of the same PNG: one
untimed call and K timed ones. Figures are medians over rounds of these per-round medians.

``--screenshots DIR`` then writes ``web-{classification,segmentation,detection}.png`` into DIR: each
task's page (a small random model) on one of scikit-image's photos, its latency line showing that run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

# Before torch loads: its OpenMP workers, woken by the exports and preprocessing, otherwise spin on a core
# in this process while ONNX Runtime (2 threads: 11 ms became 20-30 ms for mobilevit_xs) and Chromium run.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright
from skimage import data as photos
from torch import nn

import common
from mobilevit import create_model
from mobilevit.data.images import preprocess, read_image, resized_input, to_rgb
from mobilevit.data.synthetic import structured_images
from mobilevit.export.bench import SETTLE_S
from mobilevit.export.onnx import OnnxRunner
from mobilevit.export.web import MODEL_FILE, export_web, make_server, serving
from mobilevit.testing import randomize_

MODELS = [
    "mobilevit_xxs", "mobilevit_xs", "mobilevit_s", "mobilevitv2_050", "mobilevitv2_100",
    "deeplabv3_mobilevit_xxs", "ssdlite_mobilevit_xxs",
]  # fmt: skip
CHROMIUM = shutil.which("chromium")  # Debian's; Playwright cannot download its own browsers here
PHOTO_SIZE = (300, 400)  # the timed photo: neither the models' size nor their aspect ratio
TIMEOUT_MS = 600_000  # a page's K runs of the largest model on 2 shared cores
PAGE_DEFAULT = "page default"
UNITS = {"threads": "count", "browser ms": "ms", "ORT ms": "ms", "browser/ORT": "ratio"}
# The screenshots' pages: few classes, so that the page's lists are short and its scores readable.
SCREENSHOTS = {
    "classification": ("mobilevit_xxs", 10, "chelsea"),
    "segmentation": ("deeplabv3_mobilevit_xxs", 5, "astronaut"),
    "detection": ("ssdlite_mobilevit_xxs", 4, "coffee"),
}
DETECTOR_LOGIT_SCALE = 2.0  # see screenshot_model
VIEWPORT = {"width": 1000, "height": 800}
MARGIN_PX = 24  # the body's padding (1.5rem), kept right of the content and below it


def served(directory: Path):
    """``directory`` served on 127.0.0.1 by ``make_server`` in a thread, as a context that yields its base URL."""
    return serving(make_server(directory, port=0, quiet=True))


def open_page(browser: Browser, url: str) -> Page:
    """A page at ``url`` in its own context, once its session is loaded; a RuntimeError with its message
    if it cannot predict."""
    page = browser.new_context(viewport=VIEWPORT, device_scale_factor=1).new_page()
    page.goto(url)
    page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=TIMEOUT_MS)
    if page.get_attribute("body", "data-state") == "error":
        raise RuntimeError(f"{url}: {page.text_content('#error')}")
    return page


def page_run(page: Page, photo: Path) -> dict[str, Any]:
    """Feed ``photo`` to the page's file input and return its ``#result`` JSON. The input is emptied first
    (choosing the file it holds again would change nothing, so the page would not run), and the state set
    to busy, so that the wait cannot see the previous run's ``done``."""
    page.set_input_files("#image", [])
    page.evaluate("document.body.dataset.state = 'busy'")
    page.set_input_files("#image", str(photo))
    page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=TIMEOUT_MS)
    if page.get_attribute("body", "data-state") == "error":
        raise RuntimeError(f"{page.url}: {page.text_content('#error')}")
    return json.loads(page.text_content("#result"))


def ort_median_ms(runner: OnnxRunner, x: torch.Tensor, iters: int) -> float:
    """The median of ``iters`` timed calls, after one untimed call, as the page times its runs."""
    runner(x)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        runner(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def time_rounds(
    pages: dict[str, Page], runners: dict[int, OnnxRunner], photo: Path, x: torch.Tensor, rounds: int, iters: int
) -> dict[tuple[str, Any], list[float]]:
    """Per round, each page's median of its ``?runs=K`` runs on ``photo``, then each runner's median of
    ``iters`` calls on ``x`` (ms), keyed ``("browser", label)`` and ``("ort", threads)``; one list per key."""
    times: dict[tuple[str, Any], list[float]] = {("browser", label): [] for label in pages}
    times |= {("ort", threads): [] for threads in runners}
    for _ in range(rounds):
        for label, page in pages.items():
            time.sleep(SETTLE_S)
            times["browser", label].append(page_run(page, photo)["latency"]["median_ms"])
        for threads, runner in runners.items():
            time.sleep(SETTLE_S)
            times["ort", threads].append(ort_median_ms(runner, x, iters))
    return times


def model_input(model: nn.Module, task: str, photo: Path, size: tuple[int, int]) -> torch.Tensor:
    """The [1, 3, H, W] input ``predict`` (and the page) makes of ``photo``: a classifier's evaluation
    transform, or the whole image resized for segmentation and detection."""
    image = read_image(photo)
    if task == "classification":
        return preprocess(image, model.pretrained_cfg)[None]
    return resized_input(to_rgb(image), size)[None]


def write_photo(path: Path) -> Path:
    pixels = structured_images(1, *PHOTO_SIZE, seed=3)[0].permute(1, 2, 0)
    Image.fromarray((pixels * 255).round().byte().numpy()).save(path)
    return path


def measure(
    browser: Browser, name: str, threads: int, rounds: int, iters: int, photo: Path, tmp: Path
) -> list[dict[str, Any]]:
    """One row per browser thread count of ``name``: the page's median beside ONNX Runtime's at the same count."""
    model = randomize_(create_model(name)).eval()
    directory = tmp / name
    export_web(model, directory)
    config = json.loads((directory / "config.json").read_text())
    size = (config["input"]["height"], config["input"]["width"])
    with served(directory) as url:
        query = f"?ep=wasm&runs={iters}"
        pages = {f"?threads={threads}": open_page(browser, f"{url}{query}&threads={threads}")}
        pages[PAGE_DEFAULT] = open_page(browser, url + query)
        facts = {label: page_run(page, photo) for label, page in pages.items()}  # the warm-up
        if facts[PAGE_DEFAULT]["threads"] == threads:
            pages.pop(PAGE_DEFAULT).context.close()
        counts = sorted({facts[label]["threads"] for label in pages}, reverse=True)
        runners = {count: OnnxRunner(directory / MODEL_FILE, threads=count) for count in counts}
        x = model_input(model, config["task"], photo, size)
        times = time_rounds(pages, runners, photo, x, rounds, iters)
        for page in pages.values():
            page.context.close()
    rows = []
    for label in pages:
        fact = facts[label]
        browser_ms = statistics.median(times["browser", label])
        ort_ms = statistics.median(times["ort", fact["threads"]])
        rows.append(
            {
                "model": name,
                "task": config["task"],
                "input": f"{size[0]}x{size[1]}",
                "threads": fact["threads"],
                "threads from": label,
                "browser ms": round(browser_ms, 3),
                "ORT ms": round(ort_ms, 3),
                "browser/ORT": browser_ms / ort_ms,
                "backend": fact["backend"],
                "crossOriginIsolated": "yes" if fact["cross_origin_isolated"] else "no",
                "Chromium": browser.version,
                "onnxruntime-web": fact["onnxruntime_web"],
            }
        )
        print(rows[-1], flush=True)
    return rows


def content_clip(page: Page) -> dict[str, float]:
    """The page's content, from its left edge to the side panel's right and the body's bottom, with the
    body's padding kept: a full-page shot without the empty space right of and below it."""
    box = page.evaluate(
        """() => {
          const side = document.getElementById("side").getBoundingClientRect();
          const body = document.body.getBoundingClientRect();
          return { x: body.left, right: side.right, bottom: body.bottom };  // the page is not scrolled
        }"""
    )
    return {"x": box["x"], "y": 0, "width": box["right"] + MARGIN_PX - box["x"], "height": box["bottom"]}


def compact_png(path: Path) -> None:
    """Rewrite the PNG at ``path`` with a 256-colour palette: a third of its size, alike at the docs' scale."""
    with Image.open(path) as shot:
        palette = shot.convert("RGB").quantize(colors=256)
    palette.save(path, optimize=True)


def screenshot_model(task: str, name: str, classes: int) -> nn.Module:
    """A random model that gives a readable picture. Every tensor random, a detector's scores saturate
    (1.00 for all 200 boxes kept); with its default init they sit near 1/classes everywhere, all above or
    all below the page's 0.3 threshold. So the detector keeps its default init (seed 0) with its class
    logits doubled, which puts a dozen boxes above the threshold."""
    if task != "detection":
        return randomize_(create_model(name, num_classes=classes)).eval()
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes).eval()
    with torch.no_grad():
        for predictor in model.head.predictors:
            conv = predictor.loc_cls if isinstance(predictor.loc_cls, nn.Conv2d) else predictor.loc_cls.pw_conv
            conv.weight.view(-1, 4 + classes, *conv.weight.shape[1:])[:, 4:] *= DETECTOR_LOGIT_SCALE
    return model


def screenshots(browser: Browser, directory: Path, threads: int, iters: int, tmp: Path) -> list[Path]:
    """Each task's page on a photo, shot whole with its result and latency line (``?runs=K``, the same
    threads as the table); the photos are scikit-image's, saved as PNG."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for task, (name, classes, photo_name) in SCREENSHOTS.items():
        photo = tmp / f"{photo_name}.png"
        Image.fromarray(getattr(photos, photo_name)()).save(photo)
        page_dir = tmp / f"screenshot-{task}"
        export_web(screenshot_model(task, name, classes), page_dir)
        with served(page_dir) as url:
            page = open_page(browser, f"{url}?ep=wasm&runs={iters}&threads={threads}")
            result = page_run(page, photo)
            path = directory / f"web-{task}.png"
            page.screenshot(path=str(path), full_page=True, clip=content_clip(page))
            page.context.close()
        compact_png(path)
        print(f"wrote {path}: {result['latency']}", flush=True)
        written.append(path)
    return written


def main() -> None:
    run = common.start_run()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--screenshots", type=Path, metavar="DIR", help="also write the docs' screenshots here")
    common.add_timing_args(parser)
    args = common.parse_timing_args(parser)
    if CHROMIUM is None:
        parser.error("Debian's chromium is not installed: `apt-get install chromium` (scripts/env.sh test does)")
    machine = common.measured_on()
    threads = args.threads or torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True)
        photo = write_photo(Path(tmp) / "structured.png")
        for name in args.models:
            rows += measure(browser, name, threads, args.rounds, args.iters, photo, Path(tmp))
        if args.screenshots:
            screenshots(browser, args.screenshots, threads, args.iters, Path(tmp))
        browser.close()
    caption = (
        f"Batch 1, each model at its own input size, random weights, WASM backend. {args.rounds} rounds: per "
        f"round, each page fed the same {PHOTO_SIZE[1]}x{PHOTO_SIZE[0]} PNG again without reloading (its "
        f"median of {args.iters} runs after an untimed one, `?runs={args.iters}`), then {args.iters} calls of "
        "ONNX Runtime in Python on the same model.onnx and the same input (median, after an untimed call); "
        "medians over rounds. Both time the model run alone (`session.run`), not the preprocessing or the "
        "post-processing. browser/ORT is the browser's latency over ONNX Runtime's at the same thread count"
    )
    common.finish(run, args.json, [common.table("web", rows, UNITS, caption)], machine)


if __name__ == "__main__":
    main()
