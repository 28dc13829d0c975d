#!/usr/bin/env bash
# The Python package's tests: builds and installs ./python into a fresh virtual environment
# (python/.venv-test, reused when it exists), then runs pytest on python/tests.
set -euo pipefail
cd "$(dirname "$0")"
venv=.venv-test
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q ".[test]"
# From the tests folder, so that `import wgrad` is the installed package, not ./wgrad.
cd tests
exec "../$venv/bin/python" -m pytest -q "$@"
