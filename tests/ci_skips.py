"""Under ``CI=true`` a skipped test fails, unless its reason is on ``ALLOWED_SKIPS``: in CI every optional
dependency is installed (scripts/test.sh), so a skip there means something failed to install or a test
quietly stopped running. Loaded by tests/conftest.py; tested in tests/test_ci_skips.py."""

from __future__ import annotations

import os

import pytest

# reason text (a substring of the skip's reason) -> why that skip is expected on some machines
ALLOWED_SKIPS = {
    "a CUDA GPU is visible": "the CPU half of the GPU check steps aside on a machine with a GPU",
    "no /proc/stat": "the thread governor reads /proc/stat, which only Linux has",
}


def enforced() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and enforced()) or hasattr(report, "wasxfail"):
        return
    reason = skip_reason(report)
    if any(allowed in reason for allowed in ALLOWED_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"unexpected skip under CI=true: {reason}\n"
        "CI installs every dependency, so this test must run there: fix the install, or add the reason to "
        "ALLOWED_SKIPS in tests/ci_skips.py with why it is expected."
    )
