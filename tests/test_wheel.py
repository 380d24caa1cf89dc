"""The package as published: ``python -m build`` makes an sdist and a wheel that ``twine check`` passes, and
the wheel, installed into a fresh virtual environment, runs there (``mobilevit --help``, ``create_model``),
its version the one in ``mobilevit/__init__.py``.

The fresh environment sees this one's packages through a ``.pth`` line, so torch (gigabytes) is not installed
twice and nothing is downloaded. A plain path line does not run that directory's own ``.pth`` files, so the
editable install of the source tree stays off there: ``import mobilevit`` finds the wheel's copy.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import mobilevit

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

ROOT = Path(__file__).parents[1]
PACKAGE = Path(mobilevit.__file__).parent
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the fresh venv's sys.path is its own


def run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=600)


def test_the_version_is_defined_once_and_is_the_installed_metadata():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert mobilevit.__version__ == importlib.metadata.version("mobilevit")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An sdist, and the wheel built from it, as ``python -m build`` makes them (offline: this environment's
    setuptools builds, without an isolated environment to download it into)."""
    out = tmp_path_factory.mktemp("dist")
    built = run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT, cwd=out)
    assert built.returncode == 0, built.stdout + built.stderr
    return out


def test_sdist_and_wheel_pass_twine_and_hold_the_package_readme_and_licence(dist):
    (sdist,), (wheel,) = list(dist.glob("*.tar.gz")), list(dist.glob("*.whl"))
    checked = run(sys.executable, "-m", "twine", "check", "--strict", sdist, wheel, cwd=dist)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    info = f"mobilevit-{mobilevit.__version__}.dist-info"
    page = {p for p in (PACKAGE / "export" / "web").iterdir() if p.suffix in (".html", ".js", ".css")}
    assert page, "the web page's files are package data"
    sources = {f"mobilevit/{p.relative_to(PACKAGE).as_posix()}" for p in {*PACKAGE.rglob("*.py"), *page}}
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = email.parser.Parser().parsestr(archive.read(f"{info}/METADATA").decode())
    assert {n for n in names if not n.startswith(info)} == sources  # the package and its page, no tests or fixtures
    assert f"{info}/licenses/LICENSE" in names
    assert metadata["Version"] == mobilevit.__version__
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert metadata.get_payload().strip() == (ROOT / "README.md").read_text().strip()
    with tarfile.open(sdist) as archive:
        top = {Path(n).parts[1] for n in archive.getnames() if len(Path(n).parts) > 1}
    assert {"src", "pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"} <= top and "tests" not in top


def test_the_wheel_installs_into_a_fresh_venv_and_runs(dist, tmp_path):
    (wheel,) = dist.glob("*.whl")
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path).stdout.strip()
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (Path(site) / "this_environment.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    installed = run(python, "-m", "pip", "install", "--no-index", "--disable-pip-version-check", wheel, cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert f"Successfully installed mobilevit-{mobilevit.__version__}" in installed.stdout

    help_text = run(env / "bin" / "mobilevit", "--help", cwd=tmp_path)
    assert help_text.returncode == 0 and help_text.stdout.startswith("usage: mobilevit")
    code = """
import importlib.metadata, json, sys
import torch
import mobilevit
model = mobilevit.create_model("mobilevit_xxs").eval()
with torch.no_grad():
    shape = list(model(torch.zeros(1, 3, 64, 64)).shape)
print(json.dumps({
    "file": mobilevit.__file__,
    "version": mobilevit.__version__,
    "metadata": importlib.metadata.version("mobilevit"),
    "metadata_at": str(importlib.metadata.distribution("mobilevit").locate_file("")),
    "sys_path": sys.path,
    "shape": shape,
}))
"""
    result = run(python, "-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert Path(found["file"]).is_relative_to(site) and Path(found["metadata_at"]).is_relative_to(site)
    assert found["version"] == found["metadata"] == mobilevit.__version__
    assert str(ROOT / "src") not in found["sys_path"]  # the editable install's .pth did not run
    assert found["shape"] == [1, 1000]
