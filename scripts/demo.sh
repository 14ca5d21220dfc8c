#!/usr/bin/env bash
# The main job on the embedded default world (bootstraps .venv first). Extra args go to `timewalk demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/timewalk demo "$@"
