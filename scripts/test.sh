#!/usr/bin/env bash
# Set up, lint, build the documentation site (warnings are errors), then run the whole test suite,
# in parallel on the machine's cores (pytest-xdist). Arguments go to pytest: ./scripts/test.sh -m "not slow"
# is the fast tier, ./scripts/test.sh -n 0 runs serially.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh test,docs
.venv/bin/ruff check src tests benchmarks
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet
exec .venv/bin/python -m pytest -q -rs -n "${PYTEST_WORKERS:-auto}" --dist loadgroup "$@"  # -rs: every skip is listed with its reason
