# Sourced by the quickstart scripts: creates .venv (once) and installs the project into it.
# Usage: source scripts/env.sh EXTRAS, e.g. `source scripts/env.sh test`, `source scripts/env.sh train`
# or `source scripts/env.sh ""` (the core: models, weights, predict, no training stack).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then
        # Debian ships venv separately; install it when we may.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
            rm -rf .venv && "$PYTHON" -m venv .venv
        else
            echo "error: '$PYTHON -m venv' failed; install python3-venv (sudo apt-get install python3-venv)" >&2
            exit 1
        fi
    fi
fi
# Debian packages: Fashion-MNIST (the built-in dataset) and, for the tests, QEMU user mode (the int8 tests run
# ONNX Runtime on an emulated x86 CPU without VNNI), Chromium (Playwright drives it through the web page tests; it
# cannot download its own browsers here) and Node.js with npm (the transformers.js test runs an exported folder in
# transformers.js). Installed when missing and we may.
packages=()
[ -d /usr/share/datasets/fashion-mnist ] || packages+=(dataset-fashion-mnist)
if [ "${1:-}" = test ] && ! command -v qemu-x86_64 >/dev/null; then packages+=(qemu-user); fi
if [ "${1:-}" = test ] && ! command -v chromium >/dev/null; then packages+=(chromium); fi
if [ "${1:-}" = test ] && ! command -v node >/dev/null; then packages+=(nodejs); fi
if [ "${1:-}" = test ] && ! command -v npm >/dev/null; then packages+=(npm); fi
if [ ${#packages[@]} -gt 0 ] && ! { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null; }; then
    echo "note: could not install ${packages[*]}: training looks in \$MOBILEVIT_DATA or downloads;" \
        "the emulated-CPU, browser and transformers.js tests skip" >&2
fi
# shellcheck disable=SC1091
source .venv/bin/activate
python -m pip install --quiet --disable-pip-version-check --upgrade pip
extras="${1:-}"
python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
# The web page's runtime (onnxruntime-web, pinned and checked, from the npm registry) into the cache, where the
# browser tests take it from: the tests themselves download nothing.
if [ "$extras" = test ] && ! python -c "from mobilevit.export.web import runtime_dir; runtime_dir()"; then
    echo "note: could not download onnxruntime-web: the browser tests skip" >&2
fi
# transformers.js for its test, pinned in tests/js/package-lock.json. --ignore-scripts: onnxruntime-node's install
# script fetches GPU providers from outside the npm registry; its CPU binary, all the test needs, ships in the package.
if [ "$extras" = test ] && command -v npm >/dev/null; then
    npm ci --ignore-scripts --no-audit --no-fund --loglevel=error --prefix tests/js >/dev/null ||
        echo "note: npm ci in tests/js failed: the transformers.js test skips" >&2
fi
