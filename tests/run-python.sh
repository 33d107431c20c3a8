#!/usr/bin/env bash
# Runs the paho-mqtt interop suite (tests/python) against tern-edge (target/debug/tern-edge,
# or $TERN_EDGE_BIN; build it first) or against $TERN_TEST_BROKER=host:port.
# Creates .venv at the repository root if missing and installs tests/python/requirements.txt.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider tests/python "$@"
code=$?
exit "$code"
