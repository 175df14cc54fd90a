#!/usr/bin/env bash
# The test command of the README: every notebook's cells (nbdev-test), then the pytest suite.
set -uo pipefail
cd "$(dirname "$0")/.."
nbdev-test --n-workers 2 --timing
nb=$?
python -m pytest -q tests
py=$?
echo "notebooks: exit $nb; pytest: exit $py"
[ "$nb" -eq 0 ] && [ "$py" -eq 0 ]
