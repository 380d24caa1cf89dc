"""A static page that runs a model in the browser with onnxruntime-web: ``mobilevit export --format web -o DIR``
writes it and ``mobilevit serve DIR`` serves it.

DIR holds ``model.onnx`` (the ONNX export, checked against PyTorch like every export), ``config.json`` (what
the page needs to preprocess and post-process as ``mobilevit predict`` does, written from the task's own
constants by :meth:`~mobilevit.tasks.base.Task.web_config`, so Python stays their one source), the page
(``index.html``, ``app.js``, ``pipeline.js``, ``style.css``, this package's ``web/`` folder) and ``ort/``,
the onnxruntime-web files the page loads. Those are copied from the npm package at a pinned version whose
integrity is checked, so that the folder works offline and from any static host, with no CDN.

onnxruntime-web's WASM backend runs several threads only where the page is cross-origin isolated, which
takes two response headers (COOP and COEP); :func:`make_server` sends them. Elsewhere it runs on one thread.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from mobilevit.data import cache_dir
from mobilevit.export import ExportReport, export
from mobilevit.export.onnx import INPUT_NAME, OUTPUT_NAME
from mobilevit.hub import DownloadError
from mobilevit.tasks import task_for

WEB_FORMAT = "web"
ORT_WEB_VERSION = "1.31.1"
ORT_WEB_INTEGRITY = "sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VXVVC435t4t7VsPdSQeS7NmuZPXrQ73k82URw=="
NPM_REGISTRY = "https://registry.npmjs.org"
REGISTRY_ENV = "npm_config_registry"  # npm's own setting: a registry mirror set up for npm serves this too
RUNTIME_ENV = "MOBILEVIT_ORT_WEB"  # an unpacked onnxruntime-web dist/ folder, copied instead of downloading
DOWNLOAD_TIMEOUT_S = 120
# The two builds the page chooses from (app.js): where the browser has a WebGPU adapter, the WebGPU build (its
# WASM CPU provider runs what WebGPU cannot); elsewhere the WASM build alone, which is half the size and, without
# the WebGPU build's asyncify instrumentation, faster on the CPU. Each bundle imports its .mjs loader, which
# fetches the .wasm beside it.
WASM_BUNDLE = "ort.wasm.min.mjs"
WEBGPU_BUNDLE = "ort.webgpu.min.mjs"
RUNTIME_FILES = (
    WASM_BUNDLE,
    "ort-wasm-simd-threaded.mjs",
    "ort-wasm-simd-threaded.wasm",
    WEBGPU_BUNDLE,
    "ort-wasm-simd-threaded.asyncify.mjs",
    "ort-wasm-simd-threaded.asyncify.wasm",
)
RUNTIME_FOLDER = "ort"
PAGE_FILES = ("index.html", "app.js", "pipeline.js", "style.css")
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.json"
# Larger photos are refused with a message: 50 megapixels admit today's phone photos (12 to 50 MP) while
# their RGBA pixels (4 bytes each, 200 MB at the limit) still fit a phone browser's memory.
MAX_MEGAPIXELS = 50
RESIZE_INTERPOLATIONS = ("bilinear", "bicubic")  # what pipeline.js computes as torchvision does
MIME_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}


def check_web_options(dynamic: bool, int8: bool, precision: str | None) -> None:
    """ValueErrors for export options the page does not take: it runs the fp32 ONNX file at one size."""
    if dynamic or int8 or precision not in (None, "fp32"):
        raise ValueError("the web page runs the fp32 ONNX file at a fixed size: drop --dynamic, --int8 and --precision")


def tarball_url() -> str:
    registry = os.environ.get(REGISTRY_ENV) or NPM_REGISTRY
    return f"{registry.rstrip('/')}/onnxruntime-web/-/onnxruntime-web-{ORT_WEB_VERSION}.tgz"


def integrity(data: bytes) -> str:
    """npm's Subresource Integrity string of ``data`` (sha512, base64), as its registry publishes it."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def _offline_hint() -> str:
    return (
        f"On a machine that reaches the npm registry run `npm pack onnxruntime-web@{ORT_WEB_VERSION}` and unpack "
        "the .tgz; then pass its package/dist folder with --runtime DIST (or set "
        f"{RUNTIME_ENV}=DIST), or set {REGISTRY_ENV} to a registry mirror."
    )


def download_runtime(target: Path) -> Path:
    """Download the pinned onnxruntime-web tarball, check its integrity and unpack :data:`RUNTIME_FILES`
    from its dist/ into ``target``, which appears whole or not at all."""
    url = tarball_url()
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            data = response.read()
    except OSError as err:  # urllib's URLError and HTTPError, and timeouts, are OSErrors
        raise DownloadError(
            f"cannot download onnxruntime-web {ORT_WEB_VERSION} from {url} ({err}). " + _offline_hint()
        ) from err
    if integrity(data) != ORT_WEB_INTEGRITY:
        raise DownloadError(
            f"{url} is not onnxruntime-web {ORT_WEB_VERSION} as published (its sha512 differs from the pinned "
            "integrity); nothing was cached. Try again, or check the registry mirror."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            for name in RUNTIME_FILES:
                (tmp / name).write_bytes(archive.extractfile(f"package/dist/{name}").read())
        shutil.rmtree(target, ignore_errors=True)  # an earlier copy that lost files
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def check_runtime(dist: Path) -> Path:
    """``dist`` if it holds every file of :data:`RUNTIME_FILES`, else a FileNotFoundError naming the missing."""
    missing = [name for name in RUNTIME_FILES if not (dist / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{dist} is not an onnxruntime-web dist/ folder: it lacks {', '.join(missing)}. " + _offline_hint()
        )
    return dist


def runtime_dir(runtime: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The onnxruntime-web dist/ folder the page's runtime files are copied from: ``runtime``, else
    ``$MOBILEVIT_ORT_WEB``, else the pinned package, downloaded once into ``$XDG_CACHE_HOME/mobilevit``
    (without ``download``, a FileNotFoundError where it is not there yet: the tests download nothing)."""
    given = runtime or os.environ.get(RUNTIME_ENV)
    if given:
        return check_runtime(Path(given))
    cached = cache_dir() / "onnxruntime-web" / ORT_WEB_VERSION
    if all((cached / name).is_file() for name in RUNTIME_FILES):
        return cached
    if not download:
        raise FileNotFoundError(f"onnxruntime-web {ORT_WEB_VERSION} is not in {cached}. " + _offline_hint())
    return download_runtime(cached)


def runtime_version(dist: Path) -> str:
    """The onnxruntime-web version of ``dist``: its package.json's, where it lies in an unpacked package;
    else the pinned one (the cache and a bare dist/ hold no package.json)."""
    manifest = dist.parent / "package.json"
    if manifest.is_file():
        return json.loads(manifest.read_text()).get("version", ORT_WEB_VERSION)
    return ORT_WEB_VERSION


def page_config(model: nn.Module, img_size: tuple[int, int], version: str = ORT_WEB_VERSION) -> dict[str, Any]:
    """The page's config.json for ``model`` exported at ``img_size``: the model file, its input and
    outputs, the class names ``mobilevit predict`` prints, the task's preprocessing and constants, the
    image size limit and the runtime bundles."""
    task = task_for(model)
    config = {
        "model": model.model_name,
        "task": task.name,
        "model_file": MODEL_FILE,
        "input": {"name": INPUT_NAME, "height": img_size[0], "width": img_size[1]},
        "outputs": list(getattr(task.deployable(model), "output_names", (OUTPUT_NAME,))),
        "labels": task.class_names(model),
        "max_megapixels": MAX_MEGAPIXELS,
        "runtime": {
            "package": "onnxruntime-web",
            "version": version,
            "wasm": f"{RUNTIME_FOLDER}/{WASM_BUNDLE}",
            "webgpu": f"{RUNTIME_FOLDER}/{WEBGPU_BUNDLE}",
        },
        **task.web_config(model, img_size),
    }
    interpolation = config["preprocess"]["interpolation"]
    if interpolation not in RESIZE_INTERPOLATIONS:
        raise ValueError(
            f"{model.model_name} resizes images with {interpolation} interpolation; the web page computes "
            f"{' and '.join(RESIZE_INTERPOLATIONS)} only"
        )
    return config


def folder_size_mb(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) / 1e6


def export_web(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    img_size: tuple[int, int] | None = None,
    opset: int = 17,
    runtime: str | os.PathLike | None = None,
) -> ExportReport:
    """Write the page folder ``directory`` for ``model`` at ``img_size`` (default: the model's input size).

    The runtime files are found first (:func:`runtime_dir`; ``runtime`` is an unpacked onnxruntime-web
    dist/ folder) and the config made, so that a missing runtime or a model the page cannot preprocess fails
    before the export's minutes. The ONNX file is checked against PyTorch by :func:`~mobilevit.export.export`;
    the report is its report, for the folder (``size_mb``: the whole folder).
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} is a file; a web export writes a folder (-o DIR)")
    dist = runtime_dir(runtime)
    img_size = tuple(img_size or model.pretrained_cfg["input_size"][1:])
    config = page_config(model, img_size, runtime_version(dist))
    report = export(model, "onnx", directory / MODEL_FILE, img_size=img_size, opset=opset)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
    page = resources.files("mobilevit.export").joinpath("web")
    for name in PAGE_FILES:
        (directory / name).write_bytes(page.joinpath(name).read_bytes())
    (directory / RUNTIME_FOLDER).mkdir(exist_ok=True)
    for name in RUNTIME_FILES:
        shutil.copyfile(dist / name, directory / RUNTIME_FOLDER / name)
    runtime_mb = folder_size_mb(directory / RUNTIME_FOLDER)
    report.notes += [
        f"page: {MODEL_FILE} ({report.size_mb:.2f} MB), {CONFIG_FILE}, {', '.join(PAGE_FILES)}",
        f"onnxruntime-web {config['runtime']['version']} in {RUNTIME_FOLDER}/ ({runtime_mb:.1f} MB): WebGPU where "
        "the browser has it, else WASM",
        f"open it with `mobilevit serve {directory}` (WASM threads need its COOP/COEP headers) or any static server",
    ]
    report.path, report.format, report.size_mb = directory, WEB_FORMAT, folder_size_mb(directory)
    return report


class IsolatedHandler(SimpleHTTPRequestHandler):
    """Serves a folder with the headers that make its pages cross-origin isolated (so onnxruntime-web may
    run WASM threads on SharedArrayBuffer) and JavaScript modules and WebAssembly under their MIME types,
    which browsers require of them whatever the system's MIME table says. Nothing is cached, so a page
    exported again is loaded again."""

    extensions_map: ClassVar[dict[str, str]] = {**SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()


class QuietHandler(IsolatedHandler):
    """An :class:`IsolatedHandler` that logs nothing (tests)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def make_server(
    directory: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False
) -> ThreadingHTTPServer:
    """A server of ``directory`` (a web export) at ``host:port`` (port 0: any free port; read
    ``server.server_address``), bound to this machine only by default. Call ``serve_forever`` on it."""
    directory = Path(directory)
    if not (directory / "index.html").is_file():
        raise FileNotFoundError(
            f"{directory} holds no index.html: write a page first with `mobilevit export --format web -o {directory}`"
        )
    handler = partial(QuietHandler if quiet else IsolatedHandler, directory=str(directory))
    return ThreadingHTTPServer((host, port), handler)


@contextlib.contextmanager
def serving(server: ThreadingHTTPServer) -> Iterator[str]:
    """``server`` running in a thread while the block runs (tests, benchmarks); yields its base URL."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}/"
    finally:
        server.shutdown()
        server.server_close()
