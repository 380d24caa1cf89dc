"""The benchmark scripts' result files and the page rendered from them (benchmarks/render.py).

Tiny real runs of families.py, backends.py and parity.py: each result file's envelope is checked against
this machine, this environment and the command that ran, and every figure must appear on the rendered
page written as its unit says. benchmarks/ is not a package, so render.py is loaded from its path, as
the docs build does.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

import mobilevit
from mobilevit.export import machine
from mobilevit.models.summary import count_macs, count_params
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
TINY = ["--models", "mobilevit_xxs", "--rounds", "1", "--iters", "1", "--img-size", "64", "64"]
RUNS = {
    "families": [*TINY, "--backends", "eager"],
    "backends": [*TINY, "--backends", "eager"],
    "parity": ["--models", "mobilevit_xxs", "--sizes", "64x96"],
}
# How the page writes each unit, as the issue specifies it (written out here, not taken from render.py).
SPEC = {
    "ms": lambda v: f"{v:.2f}",
    "ratio": lambda v: f"{v:.2f}x",
    "error": lambda v: f"{v:.1e}",
    "millions": lambda v: f"{v / 1e6:.2f}",
    "billions": lambda v: f"{v / 1e9:.2f}",
    "rate": lambda v: f"{v:.1f}",
    "text": str,
}


render = load_script(BENCHMARKS / "render.py", "benchmarks_render")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The tiny runs, side by side, from outside the repository: each one's result file, the arguments it
    was given, the environment and when it started and ended."""
    results = tmp_path_factory.mktemp("results")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = datetime.now(timezone.utc).replace(microsecond=0)
    begin = time.perf_counter()
    processes = {}
    for script, args in RUNS.items():
        argv = [*args, "--json", str(results / f"{script}.json")]
        command = [sys.executable, str(BENCHMARKS / f"{script}.py"), *argv]
        processes[script] = (argv, subprocess.Popen(command, cwd=results, env=env, stdout=subprocess.PIPE, text=True))
    found = {}
    for script, (argv, process) in processes.items():
        stdout, _ = process.communicate(timeout=300)
        assert process.returncode == 0, stdout
        found[script] = {"doc": json.loads((results / f"{script}.json").read_text()), "argv": argv}
    elapsed, ended = time.perf_counter() - begin, datetime.now(timezone.utc)
    return {"results": results, "env": env, "started": started, "ended": ended, "elapsed": elapsed, **found}


@pytest.mark.parametrize("script", RUNS)
def test_result_file_records_where_when_and_how_it_was_measured(runs, script):
    doc, env = runs[script]["doc"], runs["env"]
    assert doc["schema"] == render.SCHEMA and doc["script"] == script
    # the command as run from the repository root, whatever the working directory was
    assert doc["command"] == "python " + shlex.join([f"benchmarks/{script}.py", *runs[script]["argv"]])
    assert doc["environment"]["OMP_NUM_THREADS"] == "1"
    assert all(env[key] == value for key, value in doc["environment"].items())
    date = datetime.strptime(doc["date"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert runs["started"] <= date <= runs["ended"]
    assert 0 < doc["wall_s"] <= runs["elapsed"] + 0.1

    info = doc["machine"]
    assert info["cpu"] == machine.cpu_name() != "unknown"
    assert info["arch"] == platform.machine()
    assert info["isa"] == torch.backends.cpu.get_cpu_capability()
    assert info["vnni"] == (machine.has_vnni() if machine.is_x86() else None)
    assert info["threads"] == 1  # OMP_NUM_THREADS
    assert info["fp32_matmul_peak_gflops"] > 0

    versions = doc["versions"]
    assert {"python", "mobilevit", "torch", "timm", "transformers", "onnxruntime"} <= versions.keys()
    assert versions.pop("python") == platform.python_version()
    assert versions == {name: importlib.metadata.version(name) for name in versions}

    if shutil.which("git") and (ROOT / ".git").exists():
        commit = doc["commit"].removesuffix("+dirty")
        # an ancestor of HEAD: other commits may land while the suite runs
        assert subprocess.run(["git", "-C", str(ROOT), "merge-base", "--is-ancestor", commit, "HEAD"]).returncode == 0


def test_figures_are_what_was_measured(runs):
    families, backends = runs["families"]["doc"], runs["backends"]["doc"]
    model = mobilevit.create_model("mobilevit_xxs").eval()
    facts = {"params": count_params(model), "MACs": count_macs(model, torch.zeros(1, 3, 64, 64))}
    (row,) = families["tables"][0]["rows"]
    assert {key: row[key] for key in facts} == facts and row["top-1 (published)"] is not None
    assert row["eager ms"] > 0
    models, latency = (table["rows"] for table in backends["tables"])
    assert models == [{key: row[key] for key in models[0]}]  # the same facts as families.py's
    (eager,) = latency
    assert eager["backend"] == "eager" and eager["median ms"] > 0
    assert eager["vs timm"] == pytest.approx(eager["median ms"] / eager["timm ms"], abs=0.02)
    errors = runs["parity"]["doc"]["tables"][0]["rows"]
    assert [(r["model"], r["reference"]) for r in errors] == [("mobilevit_xxs", "timm"), ("mobilevit_xxs", "hf")]
    assert all(0 <= r["64x96"] < 1e-4 for r in errors)


def _rendered_row(table: dict, row: dict) -> str:
    cells = [SPEC[table["units"].get(c, "text")](row[c]) if row[c] is not None else "-" for c in table["columns"]]
    return "| " + " | ".join(cells) + " |"


def test_page_shows_every_figure_under_its_machine_and_command(runs):
    page = render.render_page(runs["results"])
    for script in RUNS:
        doc = runs[script]["doc"]
        section = page.split(f"## {render.SECTIONS[script].title}\n", 1)[1].split("\n## ", 1)[0]
        info = doc["machine"]
        line = next(line for line in section.splitlines() if line.startswith("- Machine:"))
        assert info["cpu"] in line and info["isa"] in line
        assert f"{info['threads']} thread" in line and f"{info['fp32_matmul_peak_gflops']:.0f} GFLOP/s" in line
        assert doc["date"] in section and f"`OMP_NUM_THREADS=1 {doc['command']}`" in section
        assert f"{doc['wall_s']:.1f} s" in section  # a tiny run takes less than a minute
        assert doc["commit"] is None or f"commit {doc['commit']}" in section
        assert all(f"{name} {version}" in section for name, version in doc["versions"].items())
        for table in doc["tables"]:
            assert f"{table['caption']}:" in section
            for row in table["rows"]:
                assert _rendered_row(table, row) in section
    # the specified shapes, beyond agreeing with SPEC
    assert re.search(r"\| mobilevit_xxs \| hf \| \d\.\de-\d\d \|", page)
    assert re.search(r"\| \d+\.\d\d \| \d+\.\d\dx \| \d+\.\d\d \| \d+\.\d\dx \|", page)  # timm ms, vs timm, hf...


def test_headline_table_from_the_backends_run(runs):
    doc = runs["backends"]["doc"]
    headline = render.headline_table(runs["results"])
    models, latency = doc["tables"]
    (facts,), (eager,) = models["rows"], latency["rows"]
    caption, blank, header, _, row, *rest = headline.splitlines()
    assert render.machine_line(doc["machine"]) in caption and doc["command"] in caption and blank == "" == "".join(rest)
    assert header == "| model | params (M) | MACs (G) | top-1 (published) | eager ms |"
    cells = [facts["model"], SPEC["millions"](facts["params"]), SPEC["billions"](facts["MACs"])]
    cells += [str(facts["top-1 (published)"]), f"{eager['median ms']:.2f} ({eager['vs timm']:.2f}x)"]
    assert row == "| " + " | ".join(cells) + " |"


def test_cli_writes_the_page(runs, tmp_path):
    out = tmp_path / "docs" / "benchmarks.md"
    render_cli = [sys.executable, str(BENCHMARKS / "render.py"), "--results", str(runs["results"]), "-o", str(out)]
    subprocess.run(render_cli, check=True, capture_output=True)
    assert out.read_text() == render.render_page(runs["results"])


def test_render_imports_without_torch():
    code = f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); import render; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_every_script_that_writes_a_result_file_has_a_section():
    """A benchmark's figures reach the page under a title and the prose that says how to read them."""
    writers = sorted(path.stem for path in BENCHMARKS.glob("*.py") if "common.finish(" in path.read_text())
    assert {"families", "phone", "web"} <= set(writers)
    assert [name for name in writers if name not in render.SECTIONS] == []


def _broken(doc: dict, tmp_path: Path, change) -> Path:
    doc = json.loads(json.dumps(doc))
    change(doc)
    (tmp_path / "families.json").write_text(json.dumps(doc))
    return tmp_path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda doc: doc.pop("machine"), "lacks 'machine'"),
        (lambda doc: doc["machine"].pop("fp32_matmul_peak_gflops"), "machine of .* lacks 'fp32_matmul_peak_gflops'"),
        (lambda doc: doc.update(tables=[]), "has no tables"),
        (lambda doc: doc.update(schema=0), "has schema 0"),
        (lambda doc: doc["tables"][0]["rows"][0].update({"eager ms": "fast"}), "'eager ms': 'fast' is not a number"),
        (lambda doc: doc["tables"][0]["units"].update({"eager ms": "furlongs"}), "unknown unit 'furlongs'"),
        (lambda doc: doc["tables"][0]["rows"][0].pop("model"), "a row of table 'families' .* lacks 'model'"),
    ],
)
def test_malformed_result_file_is_refused_with_how_to_fix_it(runs, tmp_path, change, message):
    results = _broken(runs["families"]["doc"], tmp_path, change)
    with pytest.raises(render.ResultsError, match=message) as err:
        render.render_page(results)
    assert "families.json" in str(err.value) and "python benchmarks/families.py" in str(err.value)


@pytest.mark.parametrize(("text", "message"), [("", "is empty"), ("{", "not valid JSON"), ("[]", "not an object")])
def test_empty_or_invalid_result_file_is_refused(tmp_path, text, message):
    (tmp_path / "parity.json").write_text(text)
    with pytest.raises(render.ResultsError, match=message):
        render.render_page(tmp_path)
    cli = subprocess.run(
        [sys.executable, str(BENCHMARKS / "render.py"), "--results", str(tmp_path)], capture_output=True, text=True
    )
    assert cli.returncode == 1 and "error: result file" in cli.stderr and "python benchmarks/parity.py" in cli.stderr


def test_no_results_yet(tmp_path):
    assert "No results yet" in render.render_page(tmp_path)
    with pytest.raises(render.ResultsError, match="backends.json does not exist; write it with"):
        render.headline_table(tmp_path)


def test_headline_goes_between_the_readme_markers_and_replaces_what_was_there(runs):
    headline = render.headline_table(runs["results"])
    readme = f"intro\n{render.HEADLINE_START}\nan old table\n{render.HEADLINE_END}\nrest\n"
    updated = render.with_headline(readme, headline)
    assert updated == f"intro\n{render.HEADLINE_START}\n{headline}{render.HEADLINE_END}\nrest\n"
    assert render.with_headline(updated, headline) == updated
    with pytest.raises(render.ResultsError, match="no <!-- headline:start -->"):
        render.with_headline("no markers\n", headline)


def test_readme_headline_is_the_committed_results_table():
    """The README's one table of figures is the one rendered from the committed backends.json, never typed."""
    readme = render.README.read_text()
    assert render.with_headline(readme, render.headline_table(render.RESULTS)) == readme, (
        "README.md's headline table differs from benchmarks/results/backends.json: "
        "run `python benchmarks/render.py --readme`"
    )
