#!/usr/bin/env bash
# The test command: installs what is missing (fresh machine), then runs the default suite
# (slow tests excluded; `scripts/test.sh -m slow` runs them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest -q -m "not slow" "$@"
