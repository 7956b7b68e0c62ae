#!/usr/bin/env bash
# The full test suite: set up .venv with core + every plugin, run pytest (warnings are
# errors, coverage of crucible_core >= 90 %), then ruff and pyright (strict on crucible_core).
set -euo pipefail
cd "$(dirname "$0")/.."
# The dashboard's browser tests (plugins/crucible-server/tests/test_dashboard_browser.py) drive
# Debian's chromium through Playwright (no downloaded browser, no driver needed). It installs
# while the venv is set up (the two take minutes each on a fresh machine).
browser=
if [ ! -x /usr/bin/chromium ]; then
  SUDO=(); [ "$(id -u)" = 0 ] || SUDO=(sudo)
  { "${SUDO[@]}" apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq chromium; } &
  browser=$!
fi
scripts/setup.sh --all
if [ -n "$browser" ]; then
  wait "$browser" || { echo "installing chromium failed" >&2; exit 1; }
fi
export CRUCIBLE_STRICT_PLUGINS=1
# With crucible-mlflow and crucible-openlineage installed (as here) their sinks are on by
# default, so every training run and evaluation in the suite would start an MLflow writer
# process (mlflow and SQLAlchemy imports and a new SQLite store's migrations: ~4 s of CPU,
# and a short run then waits at exit for its last writes) and write an OpenLineage file,
# which only those two plugins' own tests read. Their tests clear these variables (autouse
# fixtures in their conftest.py), so they still run with the sinks on, end to end.
export CRUCIBLE_MLFLOW_TRACKING_URI="${CRUCIBLE_MLFLOW_TRACKING_URI:-none}"
export CRUCIBLE_OPENLINEAGE_TRANSPORT="${CRUCIBLE_OPENLINEAGE_TRANSPORT:-none}"
tests=(tests)
for p in plugins/*/tests examples/*/tests; do [ -d "$p" ] && tests+=("$p"); done
# Two workers, a test file each at a time (module fixtures such as a started server stay
# in one process): most tests wait on subprocesses and servers, so two cores halve the time.
.venv/bin/python -m pytest "${tests[@]}" -n 2 --dist loadfile --cov=crucible_core \
  --cov-report=term:skip-covered --cov-fail-under=90 "$@"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/pyright
