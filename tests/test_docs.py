"""Every Python example in README.md and docs/ runs, so that no example can rot.

Each page's ```python blocks run in order, in one namespace, in a fresh Python process whose working
directory is a new folder holding what the examples name: ``photo.jpg`` (scikit-image's astronaut), an
ImageFolder ``my_images/``, the repository's ``configs/``, and checkpoint files in each port's own layout
(``mobilevit_xxs.safetensors`` from timm, ``deeplabv3_mobilevit_xxs.pt`` from ml-cvnets, Hugging Face
directories), all made from random weights. Published weights are downloaded for real from the suite's
local hub (tests/hub_server.py), reached through ``HF_ENDPOINT`` and ``MOBILEVIT_URL_MIRROR``; it serves
every tag and repo the examples load (``TIMM_TAGS``, ``HF_REPOS``, ``CVNETS_TAGS`` below). A failure names
the page, the block, its line and the traceback.

Markers, an HTML comment on the line right before a fence:

- ``<!-- slow -->``: the block runs only in the page's slow test (``pytest -m slow``), with the others;
- ``<!-- skip: REASON -->``: the block does not run; every such block must be in ``ALLOWED_SKIPS``.

The site build itself (``mkdocs build --strict``, with docs/hooks.py) runs in scripts/test.sh.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import timm
import torch
import transformers
from PIL import Image
from skimage import data as skimage_data

from cvnets_fixtures import load_layout, random_state
from hub_server import HubServer
from mobilevit.hub import URL_MIRROR_ENV, HubFile
from mobilevit.models.pretrained import PUBLISHED_WEIGHTS
from mobilevit.testing import hf_config, write_image_folder
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MIN_BLOCKS = 25  # the pages hold more; fewer means the extractor stopped finding them
# (page, block number) -> why it cannot run here. Empty: every example runs on this machine.
ALLOWED_SKIPS: dict[tuple[str, int], str] = {}

_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>slow|skip)\s*(?::\s*(?P<reason>.*?))?\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    number: int  # 1-based among the page's python blocks
    line: int  # 1-based line of the opening fence
    code: str
    marker: str | None = None  # "slow" or "skip"
    reason: str = ""


def python_blocks(text: str, page: str) -> list[Block]:
    """The page's fenced ``python`` blocks, with the marker on the line before each (if any)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _OPEN.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        closing = re.compile(rf"^{re.escape(indent)}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])), len(lines))
        if opening["lang"] == "python":
            before = lines[i - 1] if i > 0 else ""
            marker = _MARKER.match(before)
            code = textwrap.dedent("\n".join(lines[i + 1 : end])) + "\n"
            blocks.append(
                Block(
                    page,
                    len(blocks) + 1,
                    i + 1,
                    code,
                    marker["kind"] if marker else None,
                    (marker["reason"] or "") if marker else "",
                )
            )
        i = end + 1
    return blocks


def page_blocks(path: Path) -> list[Block]:
    return python_blocks(path.read_text(), path.relative_to(ROOT).as_posix())


ALL_BLOCKS = [block for page in PAGES for block in page_blocks(page)]


def _pages_with(select) -> list[str]:
    return sorted({b.page for b in ALL_BLOCKS if select(b)})


# -- the extractor ------------------------------------------------------------------------------------------------


def test_extractor_finds_blocks_markers_and_indented_fences():
    text = textwrap.dedent(
        """\
        # Page
        ```python
        a = 1
        ```
        ```text
        not python
        ```
        <!-- slow -->
        ```python
        b = a
        ```
        - a list item:

            ```python
            c = b
            ```

        <!-- skip: needs macOS -->
        ````python
        d = 1
        ```
        still d
        ````
        ```bash
        echo no
        ```
        """
    )
    blocks = python_blocks(text, "page.md")
    assert [(b.number, b.line, b.marker, b.reason) for b in blocks] == [
        (1, 2, None, ""),
        (2, 9, "slow", ""),
        (3, 14, None, ""),
        (4, 19, "skip", "needs macOS"),
    ]
    assert blocks[2].code == "c = b\n"
    assert blocks[3].code == "d = 1\n```\nstill d\n"


def test_readme_and_docs_hold_python_examples():
    assert len(ALL_BLOCKS) >= MIN_BLOCKS, f"only {len(ALL_BLOCKS)} python blocks found in {len(PAGES)} pages"
    assert any(b.page == "README.md" for b in ALL_BLOCKS), "README.md has no python example"


def test_skipped_blocks_are_exactly_the_allowed_ones():
    skipped = {(b.page, b.number): b.reason for b in ALL_BLOCKS if b.marker == "skip"}
    listing = "\n".join(f"  {page} block {n}: {reason or '(no reason given)'}" for (page, n), reason in skipped.items())
    assert skipped == ALLOWED_SKIPS, f"skipped examples:\n{listing or '  none'}\nallowed: {ALLOWED_SKIPS}"
    assert all(skipped.values()), "a skip marker must say why: <!-- skip: REASON -->"


# -- the generated pages ------------------------------------------------------------------------------------------


def _hooks():
    return load_script(ROOT / "docs" / "hooks.py", "docs_hooks")


def test_weights_table_is_generated_from_the_registry_with_every_tag_and_address():
    hooks = _hooks()
    page = (ROOT / "docs" / "published-weights.md").read_text()
    assert hooks.WEIGHTS_MARKER in page
    table = hooks.on_page_markdown(page, page=None)
    assert hooks.WEIGHTS_MARKER not in table
    rows = [line for line in table.splitlines() if line.startswith("| `") and not line.startswith("| `model.tag`")]
    assert len(rows) == len(PUBLISHED_WEIGHTS)
    for name, weights in PUBLISHED_WEIGHTS.items():
        row = next(r for r in rows if r.startswith(f"| `{name}` |"))
        assert weights.metric in row and f"| {weights.input_size} |" in row, name
        for copy in weights.copies:
            address = copy.remote.repo_id if isinstance(copy.remote, HubFile) else copy.remote.url
            assert f"{copy.host}: `{address}`" in row, (name, address)
            assert ("`" + address + "` (BGR-trained" in row) == copy.bgr, (name, address)


def test_benchmarks_page_is_rendered_from_the_results(tmp_path, monkeypatch):
    hooks = _hooks()
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert hooks.BENCHMARKS_MARKER in page
    monkeypatch.setattr(hooks, "RESULTS", tmp_path)  # no result files: the page still builds
    rendered = hooks.on_page_markdown(page, page=None)
    assert hooks.BENCHMARKS_MARKER not in rendered and rendered.startswith("# Benchmarks")


# -- the local hub and the working folder -------------------------------------------------------------------------


def _cvnets_url(tag: str) -> str:
    return next(c.remote.url for c in PUBLISHED_WEIGHTS[tag].copies if c.host == "cvnets")


def _pt_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _serve_folder(server: HubServer, repo_id: str, folder: Path) -> None:
    for file in folder.iterdir():
        server.add_hub_file(repo_id, file.name, file.read_bytes())


# What the examples download, all served by the local hub: timm's Hub copies of these published tags (their
# first copy), Hugging Face repos (made from the folders of the same name in the working folder), and ml-cvnets
# URLs of these tags (random state dicts in the key layout of tests/fixtures/cvnets). An example that loads
# anything else fails with the DownloadError that lists what it tried: add it here.
TIMM_TAGS = ("mobilevit_xxs.cvnets_in1k",)
HF_REPOS = {
    "apple/mobilevit-xx-small": "hf-mobilevit-xx-small",
    "apple/deeplabv3-mobilevit-xx-small": "hf-deeplabv3-mobilevit-xx-small",
}
CVNETS_TAGS = {"ssdlite_mobilevit_xxs.cvnets_coco": "ssdlite_mobilevit_xxs_cvnets_v0.1"}
# Linked into the working folder of every page; the examples only read them.
WORKDIR_FILES = (
    "photo.jpg",
    "my_images",
    "mobilevit_xxs.safetensors",
    "deeplabv3_mobilevit_xxs.pt",
    "hf-mobilevit-xx-small",
    "hf-deeplabv3-mobilevit-xx-small",
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the examples name, each made from random weights in its source's own layout."""
    root = tmp_path_factory.mktemp("docs_files")
    Image.fromarray(skimage_data.astronaut()).save(root / "photo.jpg")
    write_image_folder(root / "my_images", per_class=16, val_per_class=4)
    torch.manual_seed(0)
    for tag in TIMM_TAGS:  # timm's own Hub layout, written by timm
        timm.models._hub.save_for_hf(
            timm.create_model(tag.split(".")[0]), root / f"timm-{tag}", safe_serialization=True
        )
    (root / "mobilevit_xxs.safetensors").write_bytes(
        (root / "timm-mobilevit_xxs.cvnets_in1k/model.safetensors").read_bytes()
    )
    transformers.MobileViTForImageClassification(hf_config("mobilevit_xxs")).save_pretrained(
        root / "hf-mobilevit-xx-small"
    )
    config = hf_config("mobilevit_xxs")
    config.num_labels, config.output_stride = 21, 16
    transformers.MobileViTForSemanticSegmentation(config).save_pretrained(root / "hf-deeplabv3-mobilevit-xx-small")
    state = random_state(load_layout("deeplabv3_mobilevit_xxs_cvnets_v0.1"), seed=1)
    (root / "deeplabv3_mobilevit_xxs.pt").write_bytes(_pt_bytes(state))
    return root


@pytest.fixture(scope="module")
def hub(files: Path, tmp_path_factory: pytest.TempPathFactory):
    """The local hub with every repo and URL the examples download from."""
    with HubServer(tmp_path_factory.mktemp("docs_hub")) as server:
        for tag in TIMM_TAGS:
            _serve_folder(server, f"timm/{tag}", files / f"timm-{tag}")
        for repo_id, folder in HF_REPOS.items():
            _serve_folder(server, repo_id, files / folder)
        for seed, (tag, layout) in enumerate(CVNETS_TAGS.items()):
            server.add_url_file(_cvnets_url(tag), _pt_bytes(random_state(load_layout(layout), seed=seed)))
        yield server


@pytest.fixture(scope="module")
def example_env(hub: HubServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of the example processes: the local hub for Hub repos and URLs, fresh caches."""
    home = tmp_path_factory.mktemp("docs_home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        {
            "HF_ENDPOINT": hub.endpoint,
            "HF_HOME": str(home / "hf"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            URL_MIRROR_ENV: hub.mirror,
            "TORCH_HOME": str(home / "torch"),
            "XDG_CACHE_HOME": str(home / "cache"),
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "OMP_NUM_THREADS": "1",
            "MPLBACKEND": "Agg",
        }
    )
    env.pop("TRANSFORMERS_OFFLINE", None)
    return env


_RUNNER = """\
import json, sys, traceback
blocks = json.loads(open(sys.argv[1]).read())
namespace = {"__name__": "__main__"}
for block in blocks:
    try:
        exec(compile(open(block["file"]).read(), block["file"], "exec"), namespace)
    except BaseException:
        print(f"\\n{block['page']}, block {block['number']} (line {block['line']}) failed:", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
"""


def run_page(blocks: list[Block], files: Path, env: dict[str, str], workdir: Path) -> None:
    """Run ``blocks`` in order in one fresh process inside ``workdir``; fail with the block's traceback."""
    for name in WORKDIR_FILES:
        (workdir / name).symlink_to(files / name)
    (workdir / "configs").symlink_to(ROOT / "configs")
    scripts = workdir.parent / f"{workdir.name}-blocks"
    scripts.mkdir()
    listing = []
    for block in blocks:
        stem = re.sub(r"\W", "_", block.page)
        file = scripts / f"{stem}_block{block.number}_line{block.line}.py"
        file.write_text(block.code)
        listing.append({"file": str(file), "page": block.page, "number": block.number, "line": block.line})
    (scripts / "blocks.json").write_text(json.dumps(listing))
    (scripts / "runner.py").write_text(_RUNNER)
    done = subprocess.run(
        [sys.executable, str(scripts / "runner.py"), str(scripts / "blocks.json")],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        pytest.fail(f"{done.stderr[-6000:]}\n(stdout: {done.stdout[-2000:]})", pytrace=False)


# -- the examples -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", _pages_with(lambda b: b.marker is None))
def test_page_examples_run(page, files, example_env, tmp_path):
    """The page's examples, without its slow ones."""
    run_page([b for b in ALL_BLOCKS if b.page == page and b.marker is None], files, example_env, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("page", _pages_with(lambda b: b.marker == "slow"))
def test_page_examples_run_with_the_slow_ones(page, files, example_env, tmp_path):
    """The page's examples, its slow ones included, in order."""
    run_page([b for b in ALL_BLOCKS if b.page == page and b.marker != "skip"], files, example_env, tmp_path)
