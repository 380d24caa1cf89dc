"""The page of ``mobilevit export --format web`` in a real browser: Debian's headless Chromium, driven by
Playwright (which cannot download its own browsers here, so it launches /usr/bin/chromium).

Each task's page, fed a structured PNG through its file input, shows in ``#result`` what ``mobilevit predict``
computes in Python: the same top-5 classes, the same mask, the same boxes after NMS. The page's preprocessing is
torchvision's to the last bit. Bad input gets a message, never a blank page. Served by :func:`make_server` the
page is cross-origin isolated (WASM threads); served by plain ``http.server`` it still works, on one thread.
Every request stays on 127.0.0.1. Without a browser: the runtime download (against a registry on 127.0.0.1),
the server's headers and the CLI.

The onnxruntime-web files come from the user's cache, where ``scripts/env.sh test`` downloads them as
``mobilevit export --format web`` does; the tests download nothing (the download itself is tested against a
registry on 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import shutil
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mobilevit import create_model
from mobilevit.cli import main
from mobilevit.data.images import preprocess, read_image, resized_input, to_rgb
from mobilevit.export import FP32_TOLERANCE
from mobilevit.export import web as web_export
from mobilevit.export.web import RUNTIME_FILES, export_web, make_server, runtime_dir, serving
from mobilevit.hub import DownloadError
from mobilevit.predict import predict
from mobilevit.tasks import get_task
from mobilevit.testing import randomize_, structured_images

CHROMIUM = shutil.which("chromium")
IMAGE_SIZE = (300, 400)  # not the model's size nor its aspect ratio: the page resizes and crops
TIMEOUT_MS = 120_000  # a page predicting on 2 shared cores, beside other tests


# -- the browser and the pages ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playwright():
    """Playwright, to launch Debian's Chromium; skipped with the reason when either is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed: `apt-get install chromium` (scripts/env.sh test does)")
    with sync_api.sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright):
    """Headless Chromium, which refuses the camera (there is none, and no one to allow it)."""
    launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
    yield launched
    launched.close()


@pytest.fixture(scope="module")
def ort_dist() -> Path:
    """The runtime as scripts/env.sh downloaded it (tests download nothing)."""
    try:
        return runtime_dir(download=False)
    except FileNotFoundError as err:
        pytest.skip(f"the web page's runtime is missing (scripts/env.sh test downloads it): {err}")


def served(directory: Path, handler: type | None = None):
    """``directory`` served on 127.0.0.1 in a thread (by :func:`make_server`, or by ``handler``), as a context that
    yields the base URL."""
    if handler is None:
        return serving(make_server(directory, port=0, quiet=True))
    return serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=directory)))


class QuietPlainHandler(http.server.SimpleHTTPRequestHandler):
    """``python -m http.server``'s handler: no COOP/COEP headers."""

    def log_message(self, format, *args):
        pass


@contextlib.contextmanager
def opened(browser, url: str, permissions: tuple[str, ...] = ()) -> Iterator[tuple]:
    """A fresh page at ``url``, once it is ready or has failed; (page, every URL it requested). Requests that
    would leave 127.0.0.1 are aborted, and recorded like the others."""
    context = browser.new_context(permissions=list(permissions))
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.route(lambda u: not u.startswith("http://127.0.0.1:"), lambda route: route.abort())
    page.goto(url)
    page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=TIMEOUT_MS)
    try:
        yield page, requests
    finally:
        context.close()


def feed(page, image: Path) -> dict | None:
    """Choose ``image`` in the page's file input; its ``#result`` JSON (None when the page showed an error)."""
    page.set_input_files("#image", str(image))
    page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=TIMEOUT_MS)
    if page.get_attribute("body", "data-state") == "error":
        return None
    return json.loads(page.text_content("#result"))


def error_of(page) -> str:
    assert page.is_visible("#error"), page.text_content("#status")
    return page.text_content("#error")


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A structured 300x400 RGB PNG."""
    path = tmp_path_factory.mktemp("photo") / "structured.png"
    pixels = structured_images(1, *IMAGE_SIZE, seed=3)[0].permute(1, 2, 0)
    Image.fromarray((pixels * 255).round().byte().numpy()).save(path)
    return path


@pytest.fixture(scope="module")
def classifier() -> nn.Module:
    """10 random classes: top-1 has a clear margin on the photo (0.31 against 0.19)."""
    return randomize_(create_model("mobilevit_xxs", num_classes=10)).eval()


@pytest.fixture(scope="module")
def classifier_page(classifier, ort_dist, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("web") / "classifier"
    report = export_web(classifier, directory, runtime=ort_dist)
    assert report.max_abs_diff <= FP32_TOLERANCE
    return directory


# -- predictions ----------------------------------------------------------------------------------------------------


def test_classifier_page_predicts_what_python_predicts_isolated_and_offline(
    browser, classifier, classifier_page, photo
):
    with served(classifier_page) as url, opened(browser, url) as (page, requests):
        status = page.text_content("#status")
        result = feed(page, photo)
        isolated = page.evaluate("crossOriginIsolated")
    (expected,), _ = predict([photo], classifier)
    assert result is not None, status
    assert result["task"] == "classification" and result["image"] == {
        "name": "structured.png",
        "width": 400,
        "height": 300,
    }
    assert [p["index"] for p in result["predictions"]] == [p["index"] for p in expected["predictions"]]
    assert [p["label"] for p in result["predictions"]] == [p["label"] for p in expected["predictions"]]
    assert [p["prob"] for p in result["predictions"]] == pytest.approx(
        [p["prob"] for p in expected["predictions"]], abs=1e-5
    )
    assert result["latency"]["run_ms"] > 0 and "median_ms" not in result["latency"]
    assert isolated and result["cross_origin_isolated"] and "not cross-origin isolated" not in status
    assert result["backend"] == "wasm" and result["onnxruntime_web"] == web_export.ORT_WEB_VERSION
    assert all(u.startswith(url) or u.startswith("blob:" + url) for u in requests), requests
    assert {url + "model.onnx", url + "ort/ort-wasm-simd-threaded.wasm"} <= set(requests)


@pytest.mark.slow
def test_runs_in_the_url_add_a_median_and_the_page_shows_it(browser, classifier_page, photo):
    with served(classifier_page) as url, opened(browser, url + "?runs=3&threads=2") as (page, _):
        result = feed(page, photo)
        shown = page.text_content("#latency")
    latency = result["latency"]
    assert latency["runs"] == 3 and latency["min_ms"] <= latency["median_ms"] <= latency["max_ms"]
    assert result["threads"] == 2
    assert f"median of 3 more runs: {latency['median_ms']:.1f} ms" in shown and "2 threads" in shown


@pytest.mark.slow
def test_the_webgpu_backend_predicts_what_python_predicts(playwright, classifier, classifier_page, photo):
    """WebGPU on Chromium's software Vulkan (SwiftShader): the page picks WebGPU when an adapter exists."""
    args = ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-vulkan=swiftshader",
            "--use-webgpu-adapter=swiftshader", "--use-angle=swiftshader"]  # fmt: skip
    gpu_browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
    try:
        with served(classifier_page) as url, opened(gpu_browser, url) as (page, _):
            status = page.text_content("#status")
            result = feed(page, photo)
    finally:
        gpu_browser.close()
    (expected,), _ = predict([photo], classifier)
    assert status.startswith("Ready: WebGPU") and result["backend"] == "webgpu" and result["threads"] is None
    assert [p["index"] for p in result["predictions"]] == [p["index"] for p in expected["predictions"]]
    probs = [p["prob"] for p in result["predictions"]]
    assert probs == pytest.approx([p["prob"] for p in expected["predictions"]], abs=1e-4)


@pytest.mark.slow
def test_segmentation_page_gives_python_s_mask(browser, ort_dist, photo, tmp_path):
    model = randomize_(create_model("deeplabv3_mobilevit_xxs", num_classes=5)).eval()
    size = (128, 128)
    export_web(model, tmp_path / "page", img_size=size, runtime=ort_dist)
    with served(tmp_path / "page") as url, opened(browser, url) as (page, _):
        result = feed(page, photo)
    with torch.no_grad():
        expected = model(resized_input(to_rgb(read_image(photo)), size)[None]).argmax(1)[0].flatten()
    mask = result["mask"]
    assert (mask["height"], mask["width"]) == size
    ids = torch.tensor([c for c, n in mask["runs"] for _ in range(n)])
    assert (ids == expected).float().mean() >= 0.99
    assert len(torch.unique(expected)) >= 3  # the mask is not one class everywhere
    counts = torch.bincount(ids, minlength=5) / ids.numel()
    assert {c["index"]: c["fraction"] for c in result["classes"]} == {i: f for i, f in enumerate(counts.tolist()) if f}


@pytest.mark.slow
def test_detection_page_gives_python_s_boxes_after_nms(browser, ort_dist, photo, tmp_path, detector):
    model = detector
    export_web(model, tmp_path / "page", runtime=ort_dist)
    with served(tmp_path / "page") as url, opened(browser, url) as (page, _):
        result = feed(page, photo)
    (expected,), _ = predict([photo], model, output_dir=tmp_path / "python")
    found, wanted = result["detections"], expected["detections"]
    assert len(wanted) > 10 and len(found) == len(wanted)
    assert [d["index"] for d in found] == [d["index"] for d in wanted]
    assert [d["label"] for d in found] == [d["label"] for d in wanted]
    assert np.abs(np.array([d["box"] for d in found]) - np.array([d["box"] for d in wanted])).max() <= 1
    assert [d["score"] for d in found] == pytest.approx([d["score"] for d in wanted], abs=1e-4)


# -- preprocessing: torchvision's, bit for bit ----------------------------------------------------------------------


def page_preprocess(page, pixels: np.ndarray, config: dict) -> torch.Tensor:
    """pipeline.js's model input for the RGB uint8 ``pixels`` [H, W, 3]."""
    height, width, _ = pixels.shape
    values = page.evaluate(
        """async ({rgb, width, height, config}) => {
            const pipeline = await import("./pipeline.js");
            return Array.from(pipeline.preprocess(Uint8Array.from(rgb), width, height, config));
        }""",
        {"rgb": pixels.flatten().tolist(), "width": width, "height": height, "config": config},
    )
    return torch.tensor(values).view(3, config["input"]["height"], config["input"]["width"])


PREPROCESSING = [  # (image height, width), pretrained_cfg
    ((90, 131), {"input_size": (3, 64, 64), "crop_pct": 0.9, "interpolation": "bicubic"}),
    ((40, 37), {"input_size": (3, 64, 48), "crop_pct": 1.0, "interpolation": "bilinear"}),  # enlarged
    ((77, 77), {"input_size": (3, 32, 32), "crop_pct": 0.875, "interpolation": "bicubic", "channel_order": "BGR",
                "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}),
]  # fmt: skip


def test_page_preprocessing_is_torchvision_s(browser, classifier_page):
    """The classifier transform (resize, centre crop, channel order, normalisation) and the whole-image resize of
    segmentation and detection, on random pixels: equal to the last bit of float32."""
    rng = np.random.default_rng(0)
    with served(classifier_page) as url, opened(browser, url) as (page, _):
        for image_size, cfg in PREPROCESSING:
            pixels = rng.integers(0, 256, (*image_size, 3), dtype=np.uint8)
            size = cfg["input_size"][1:]
            model = nn.Module()  # what web_config reads of a model
            model.pretrained_cfg, model.num_classes = cfg, 10
            for task, expected in [("classification", preprocess), ("segmentation", resized_input)]:
                config = {"input": {"height": size[0], "width": size[1]}, **get_task(task).web_config(model, size)}
                computed = page_preprocess(page, pixels, config)
                wanted = expected(Image.fromarray(pixels), cfg if task == "classification" else size)
                assert torch.equal(computed, wanted), (task, image_size, cfg, (computed - wanted).abs().max())


# -- what goes wrong ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_file_that_is_not_an_image_gets_a_message_and_the_next_photo_a_result(
    browser, classifier_page, photo, tmp_path
):
    (tmp_path / "notes.png").write_text("not a picture")
    with served(classifier_page) as url, opened(browser, url) as (page, _):
        assert feed(page, tmp_path / "notes.png") is None
        message = error_of(page)
        assert feed(page, photo) is not None and not page.is_visible("#error")
    assert "notes.png is not an image this browser can read" in message


@pytest.mark.slow
def test_a_huge_image_is_refused_with_the_limit(browser, classifier_page, tmp_path):
    Image.new("L", (8000, 7000), 90).save(tmp_path / "huge.png")  # 56 megapixels, a few kB of PNG
    with served(classifier_page) as url, opened(browser, url) as (page, _):
        assert feed(page, tmp_path / "huge.png") is None
        message = error_of(page)
    assert "huge.png is 8000x7000 pixels (56.0 megapixels)" in message
    assert f"up to {web_export.MAX_MEGAPIXELS} megapixels" in message


def page_without_model(page: Path, folder: Path, model: bytes | None) -> Path:
    """A copy of ``page`` (its files linked) whose model.onnx is ``model``, or missing for None."""
    folder.mkdir()
    for item in page.iterdir():
        if item.name != "model.onnx":
            (folder / item.name).symlink_to(item)
    if model is not None:
        (folder / "model.onnx").write_bytes(model)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "expected"),
    [("missing", "model.onnx answered HTTP 404"), ("truncated", "The model could not be loaded")],
)
def test_a_model_that_cannot_be_loaded_is_said_so(browser, classifier_page, photo, tmp_path, damage, expected):
    model = None if damage == "missing" else (classifier_page / "model.onnx").read_bytes()[:5000]
    folder = page_without_model(classifier_page, tmp_path / "page", model)
    with served(folder) as url, opened(browser, url) as (page, _):
        at_load = error_of(page)
        assert feed(page, photo) is None
        on_input = error_of(page)
    assert expected in at_load and at_load == on_input
    assert "mobilevit export --format web" in at_load


@pytest.mark.slow
def test_a_plain_static_server_runs_the_page_on_one_thread(browser, classifier_page, photo):
    with served(classifier_page, QuietPlainHandler) as url, opened(browser, url) as (page, _):
        status = page.text_content("#status")
        result = feed(page, photo)
    assert "not cross-origin isolated" in status and "WASM runs on one thread" in status
    assert result is not None and not result["cross_origin_isolated"] and result["threads"] == 1


@pytest.mark.slow
def test_the_camera_refused_gets_a_message(browser, classifier_page):
    with served(classifier_page) as url, opened(browser, url) as (page, _):
        page.click("#camera-start")
        page.wait_for_selector("body[data-state=error]", timeout=TIMEOUT_MS)
        message = error_of(page)
    assert message.startswith("Camera: ") and "You can still choose a photo" in message


@pytest.mark.slow
def test_a_camera_picture_is_predicted(playwright, classifier_page):
    """Chromium's fake camera (a moving test pattern), allowed without asking."""
    args = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
    camera_browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
    try:
        with served(classifier_page) as url, opened(camera_browser, url, permissions=("camera",)) as (page, _):
            page.click("#camera-start")
            page.click("#camera-capture", timeout=TIMEOUT_MS)  # waits for the button to show
            page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=TIMEOUT_MS)
            result = json.loads(page.text_content("#result"))
    finally:
        camera_browser.close()
    assert result["image"]["name"] == "camera" and result["image"]["width"] > 0
    assert len(result["predictions"]) == 5


# -- without a browser: the runtime download, the server, the command line ------------------------------------------


def fake_tarball() -> bytes:
    """An npm tarball laid out as onnxruntime-web's, each runtime file holding its own name."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in (*RUNTIME_FILES, "ort.min.js"):
            data = name.encode()
            info = tarfile.TarInfo(f"package/dist/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def registry(tmp_path, monkeypatch) -> Iterator[tuple[str, bytes]]:
    """An npm registry on 127.0.0.1 holding the fake tarball at the pinned version's address, set as
    ``npm_config_registry``; the cache moved to ``tmp_path``. Yields the registry URL and the tarball."""
    tarball = fake_tarball()
    root = tmp_path / "registry"
    package = root / "onnxruntime-web" / "-"
    package.mkdir(parents=True)
    (package / f"onnxruntime-web-{web_export.ORT_WEB_VERSION}.tgz").write_bytes(tarball)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(web_export.RUNTIME_ENV, raising=False)
    with served(root, QuietPlainHandler) as url:
        monkeypatch.setenv(web_export.REGISTRY_ENV, url)
        yield url, tarball


def test_the_runtime_is_downloaded_checked_and_then_taken_from_the_cache(registry, monkeypatch, tmp_path):
    _, tarball = registry
    monkeypatch.setattr(web_export, "ORT_WEB_INTEGRITY", web_export.integrity(tarball))
    dist = runtime_dir()
    assert dist == tmp_path / "cache" / "mobilevit" / "onnxruntime-web" / web_export.ORT_WEB_VERSION
    assert sorted(p.name for p in dist.iterdir()) == sorted(RUNTIME_FILES)  # only what the page loads
    assert all((dist / name).read_text() == name for name in RUNTIME_FILES)
    monkeypatch.setenv(web_export.REGISTRY_ENV, "http://127.0.0.1:9/")  # nothing listens there
    assert runtime_dir() == dist  # cached: no download


def test_a_tarball_that_is_not_the_pinned_one_is_refused_and_not_cached(registry, tmp_path):
    with pytest.raises(DownloadError, match="not onnxruntime-web .* as published"):
        runtime_dir()
    assert not (tmp_path / "cache" / "mobilevit" / "onnxruntime-web" / web_export.ORT_WEB_VERSION).exists()


def test_an_unreachable_registry_says_how_to_work_offline(registry, monkeypatch):
    monkeypatch.setenv(web_export.REGISTRY_ENV, "http://127.0.0.1:9/")
    with pytest.raises(DownloadError) as err:
        runtime_dir()
    message = str(err.value)
    assert f"cannot download onnxruntime-web {web_export.ORT_WEB_VERSION} from http://127.0.0.1:9/" in message
    assert f"npm pack onnxruntime-web@{web_export.ORT_WEB_VERSION}" in message
    assert "--runtime DIST" in message and web_export.RUNTIME_ENV in message


def fake_dist(folder: Path) -> Path:
    folder.mkdir()
    for name in RUNTIME_FILES:
        (folder / name).write_text(name)
    return folder


def test_without_download_a_missing_runtime_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(web_export.RUNTIME_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=f"onnxruntime-web {web_export.ORT_WEB_VERSION} is not in"):
        runtime_dir(download=False)


def test_a_given_runtime_folder_is_used_and_checked(tmp_path, monkeypatch):
    dist = fake_dist(tmp_path / "dist")
    assert runtime_dir(dist) == dist
    monkeypatch.setenv(web_export.RUNTIME_ENV, str(dist))
    assert runtime_dir() == dist
    (dist / "ort-wasm-simd-threaded.wasm").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks ort-wasm-simd-threaded\.wasm"):
        runtime_dir()


def test_the_server_sends_isolation_headers_and_module_mime_types(tmp_path):
    for name in ("index.html", "app.js", "x.mjs", "x.wasm"):
        (tmp_path / name).write_text("")
    with served(tmp_path) as url:
        for name, mime in [("index.html", "text/html"), ("app.js", "text/javascript"),
                           ("x.mjs", "text/javascript"), ("x.wasm", "application/wasm")]:  # fmt: skip
            with urllib.request.urlopen(url + name) as response:
                assert response.headers["Content-Type"] == mime, name
                assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
                assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    with pytest.raises(FileNotFoundError, match="holds no index.html"):
        make_server(tmp_path / "nothing")


def test_cli_writes_the_page_folder_and_refuses_what_the_page_cannot_run(capsys, tmp_path):
    dist = fake_dist(tmp_path / "dist")
    out = tmp_path / "page"
    argv = ["export", "--model", "mobilevit_xxs", "--img-size", "64", "96", "--format", "web", "-o", str(out)]
    assert main([*argv, "--runtime", str(dist)]) == 0
    printed = capsys.readouterr().out
    assert f"to {out} (web)" in printed and "max abs diff vs PyTorch" in printed and f"mobilevit serve {out}" in printed
    files = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert files == {"model.onnx", "config.json", *web_export.PAGE_FILES, "ort", *(f"ort/{n}" for n in RUNTIME_FILES)}
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "classification" and config["input"] == {"name": "input", "height": 64, "width": 96}
    assert config["preprocess"]["shorter_side"] == int(96 / 0.9) and len(config["labels"]) == 1000
    assert main([*argv, "--runtime", str(dist), "--int8", "--calibration", "x"]) == 2
    assert "the web page runs the fp32 ONNX file at a fixed size" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "nothing")]) == 2
    assert "holds no index.html" in capsys.readouterr().err
