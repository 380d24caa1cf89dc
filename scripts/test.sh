#!/usr/bin/env bash
# Installs everything (with the test extras) into .venv, then lints, checks the import layers and runs
# the test suite.
source "$(dirname "$0")/env.sh" test
ruff check .
lint-imports  # the layers import only downward (pyproject.toml, [tool.importlinter])
python -m pytest "$@"
