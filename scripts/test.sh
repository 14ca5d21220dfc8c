#!/usr/bin/env bash
# Run the whole test suite (bootstraps .venv and system packages first). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q -rs "$@"
