#!/usr/bin/env bash
# Everything this project checks on a CUDA machine, in one go (results under $OUT):
#   1. step cost of SGD / SAM / F-SAM in real training steps (CUDA events: step_cost_cuda.txt/.json)
#   2. the clean / 40 %-noise Fashion-MNIST comparison, 3 seeds, all runs in parallel (gpu_*.md/.png)
#   3. the test suite on CUDA (tests/gpu: golden traces, fp16 GradScaler, foreach; plus tests/optim)
# Needs the Fashion-MNIST .gz files under $FSAM_DATA_DIR/fashion-mnist. Usage: OUT=dir run_all.sh [EPOCHS] [DEADLINE_S]
set -u
epochs=${1:-10}; deadline=${2:-330}
start=$(date +%s)
export PYTHONPATH=$PWD/src OMP_NUM_THREADS=1
nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__)"
python3 -m benchmarks.gpu.step_cost_cuda --json "$OUT/step_cost_cuda.json" > "$OUT/step_cost_cuda.txt" 2>&1
tail -5 "$OUT/step_cost_cuda.txt"
work=/tmp/gpu_runs
benchmarks/gpu/label_noise_cuda.sh "$work" "$epochs" &
runs=$!
ignore=""; python3 -c "import hypothesis" 2>/dev/null || ignore="--ignore=tests/optim/test_reference.py"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu tests/optim tests/integrations $ignore > "$OUT/pytest_cuda.txt" 2>&1
tail -4 "$OUT/pytest_cuda.txt"
while kill -0 $runs 2>/dev/null && [ $(( $(date +%s) - start )) -lt "$deadline" ]; do sleep 5; done
pkill -f "friendly_sam.cli train" || true
for n in 0.0 0.4; do
  python3 -m friendly_sam.cli compare "$work"/noise$n/* --plot "$OUT/gpu_noise$n.png" > "$OUT/gpu_noise$n.md" 2>&1
  cat "$OUT/gpu_noise$n.md"
done
tail -2 "$work"/log-noise0.4-fsam-s0.txt
echo "total $(( $(date +%s) - start )) s"
