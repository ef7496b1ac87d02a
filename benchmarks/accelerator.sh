#!/usr/bin/env bash
# The accelerator figures in one run (a CUDA GPU with jax[cuda] and a CUDA build of torch):
# the bert-base MLM + NC3 step at length 128, batch 64, bf16 and fp32 on both sides (PyTorch with
# autocast + SDPA, with and without torch.compile), MFU, compile time and memory per layer option,
# and the dropout PRNG cost. Prints markdown tables for benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
for dtype in bfloat16 float32; do
  for attn in 0.1 0.0; do
    python benchmarks/train_step.py --device cuda --dtype "$dtype" --batch 64 --length 128 \
        --attention-dropout "$attn" --steps 20 --round 5 --sides torch_reference,torch_matched,torch_compiled,ncjax
  done
done
python benchmarks/compile.py --dtype bfloat16 --batch 64 --length 128 --steps 10
python benchmarks/dropout.py --layers 12 --hidden 768 --heads 12 --batch 64 --length 128 --steps 20
python benchmarks/forward.py --device cuda --batch 32 --repeats 10
