#!/usr/bin/env bash
# Set up, then train SGD, SAM and F-SAM on real Fashion-MNIST and compare them (about 10 min on 2 idle cores; measured 9 min + set-up).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh plot
exec .venv/bin/fsam demo "$@"
