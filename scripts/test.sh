#!/usr/bin/env bash
# Installs everything (with the test extras) into .venv, then lints, checks the import layers and runs
# the test suite.
source "$(dirname "$0")/env.sh" test
ruff check .
lint-imports  # the layers import only downward (pyproject.toml, [tool.importlinter])
# The docs site (mkdocs.yml): strict, so a broken link or docstring fails; built into a temporary folder.
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --site-dir "$(mktemp -d)"
# One worker per core, each on one thread: much of the suite is single-threaded export and conversion,
# which then overlaps; files stay whole on one worker so module fixtures are built once.
OMP_NUM_THREADS=1 python -m pytest -n auto --dist loadfile "$@"
