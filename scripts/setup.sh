#!/usr/bin/env bash
# Create (or reuse) .venv and install Crucible into it.
#   scripts/setup.sh            core + crucible-local (+ what it depends on): enough for the main job
#   scripts/setup.sh --all      core + every plugin under plugins/, with test and bench extras (the test suite)
# Needs only Python 3.11 and the package registries. torch is pinned to the CPU build 2.13.0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Crucible needs Python >= 3.11")'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch first and pinned: a looser requirement would pull a multi-GB CUDA build.
"${PIP[@]}" install "torch==2.13.0"
if [ "${1:-}" = "--all" ]; then
  args=(-e ".[test,bench]")
  for p in plugins/*/; do
    [ -f "$p/pyproject.toml" ] && args+=(-e "${p%/}[test]")
  done
  "${PIP[@]}" install "${args[@]}"
  # tinker-cookbook for the interop tests (plugins/crucible-tinker/tests/test_cookbook_interop.py).
  # Not a pip extra because no release resolves with our pins: 0.6.1 needs tml-renderers>=0.4.1
  # (the registry has <=0.2.1); 0.5.8 resolves only by downgrading transformers env-wide to 5.5.4.
  # The supervised and RL loops use neither, so 0.6.1 goes in without its resolver, followed
  # by the dependencies those loops import. docs/tinker.md ("tinker-cookbook") has the details.
  "${PIP[@]}" install --no-deps "tinker-cookbook==0.6.1"
  "${PIP[@]}" install "chz>=0.4" "blobfile>=3" "cloudpickle>=3" "termcolor>=2" "rich>=13" \
    "aiohttp>=3.9" "pyrage>=1.4" "tiktoken>=0.12" "pillow>=10"
else
  args=(-e .)
  [ -d plugins/crucible-datasets ] && args+=(-e plugins/crucible-datasets)
  [ -d plugins/crucible-local ] && args+=(-e plugins/crucible-local)
  "${PIP[@]}" install "${args[@]}"
fi
