"""The CI skip rule (tests/ci_skips.py): a skip fails under CI=true unless its reason is allowed."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

TESTS = """
import pytest

def test_needs_something_missing():
    pytest.importorskip("a_module_that_is_not_installed")

@pytest.mark.skipif(True, reason="a CUDA GPU is visible")
def test_cpu_half():
    pass

@pytest.mark.xfail(reason="known")
def test_known_failure():
    assert False

def test_runs():
    pass
"""


@pytest.mark.parametrize("ci", ["true", "", None])
def test_only_allowed_skips_pass_under_ci(pytester, monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.makepyfile(TESTS)
    result = pytester.runpytest("-p", "ci_skips", "-p", "no:cacheprovider")
    if ci == "true":
        result.assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1)
        result.stdout.fnmatch_lines(["*unexpected skip under CI=true*a_module_that_is_not_installed*"])
    else:
        result.assert_outcomes(passed=1, skipped=2, xfailed=1)
