#!/usr/bin/env bash
# SGD vs SAM vs F-SAM on the full Fashion-MNIST (58k train + 2k clean validation), ResNet-20, 15 epochs,
# clean labels and 40 % symmetric noise, 3 seeds, all runs in parallel on one CUDA GPU.
# Usage: benchmarks/gpu/label_noise_cuda.sh WORK_DIR [EPOCHS]
set -u
work=${1:?work dir}; epochs=${2:-15}
mkdir -p "$work"
common="--dataset fashion-mnist --model resnet20 --epochs $epochs --val-size 2000 --lr 0.05 --weight-decay 5e-4 \
  --rho 0.1 --lmbda 0.6 --device cuda --quiet --eval-batch-size 1000"
for noise in 0.0 0.4; do for opt in sgd sam fsam; do for seed in 0 1 2; do
  python3 -m friendly_sam.cli train $common --method $opt --seed $seed --label-noise $noise \
    --out "$work/noise$noise/$opt-s$seed" > "$work/log-noise$noise-$opt-s$seed.txt" 2>&1 &
done; done; done
wait
