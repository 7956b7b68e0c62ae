#!/usr/bin/env bash
# The main job: set up core + the local backend, then fine-tune a tiny model on the
# shipped chat sample (LoRA, CPU, under a minute). Extra arguments go to `crucible train`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/crucible train examples/sft-local.toml "$@"
