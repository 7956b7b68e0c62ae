#!/usr/bin/env bash
# The main job: set up core + the local backend, then fine-tune a tiny model on the
# shipped dates sample (CPU, under a minute) and score it on held-out dates before and after.
# Extra arguments go to `crucible train`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/crucible train examples/dates-local.toml "$@"
