#!/usr/bin/env bash
# Installs everything into .venv, then runs the main job on its built-in default.
source "$(dirname "$0")/env.sh"
mobilevit info mobilevit_xxs
