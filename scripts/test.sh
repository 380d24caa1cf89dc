#!/usr/bin/env bash
# Installs everything (with the test extras) into .venv, then lints and runs the test suite.
source "$(dirname "$0")/env.sh" test
ruff check .
python -m pytest "$@"
