#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with friendly-sam (editable) and the extras named
# by the first argument (default: test; the demo needs only plot), torch pinned by constraints.txt (a CPU
# build here; the package itself accepts torch>=2.1), plus the real Fashion-MNIST from Debian's
# dataset-fashion-mnist when it is missing and apt exists.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${1:-test}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -c constraints.txt -e ".[$EXTRAS]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import friendly_sam, torch; print(f'friendly-sam {friendly_sam.__version__}, torch {torch.__version__}')"

FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ] && [ -z "${FSAM_DATA_DIR:-}" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)..."
    ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
      || echo "warning: could not install dataset-fashion-mnist; see README (Data) for other ways"
  else
    echo "warning: Fashion-MNIST not found and no apt-get; see README (Data) to point FSAM_DATA_DIR at it"
  fi
fi
