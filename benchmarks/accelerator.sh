#!/usr/bin/env bash
# The accelerator figures (a CUDA GPU with jax[cuda] and a CUDA build of torch): the bert-base
# MLM + NC3 step at length 128, batch 64, bf16 and fp32 on both sides (PyTorch with autocast +
# SDPA, with and without torch.compile), MFU, compile time and memory per layer option, the
# largest batch per device at length 128 and 512, the dropout PRNG cost and the forward pass.
# Prints markdown tables for benchmarks/RESULTS.md.
#
#   bash benchmarks/accelerator.sh              # every part, one after the other
#   bash benchmarks/accelerator.sh step         # one part: step, compile, capacity, dropout, forward
#
# Each part takes a few minutes on an H100/H200, so a session with a per-command time limit can run
# them as separate commands.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
parts=("${@:-step compile capacity dropout forward}")
parts=(${parts[*]})
for part in "${parts[@]}"; do
  case "$part" in
    step|compile|capacity|dropout|forward) ;;
    *) echo "unknown part '$part'; choose from step, compile, capacity, dropout, forward" >&2; exit 2 ;;
  esac
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
for part in "${parts[@]}"; do
  echo "## $part"
  case "$part" in
    step)
      for dtype in bfloat16 float32; do
        for attn in 0.1 0.0; do
          python benchmarks/train_step.py --device cuda --dtype "$dtype" --batch 64 --length 128 \
              --attention-dropout "$attn" --steps 20 --round 5 --sides torch_reference,torch_matched,torch_compiled,ncjax
        done
      done ;;
    compile) python benchmarks/compile.py --dtype bfloat16 --batch 64 --length 128 --steps 10 ;;
    capacity) python benchmarks/capacity.py --dtype bfloat16 --lengths 128,512 --run ;;
    dropout) python benchmarks/dropout.py --layers 12 --hidden 768 --heads 12 --batch 64 --length 128 --steps 20 ;;
    forward) python benchmarks/forward.py --device cuda --batch 32 --repeats 10 ;;
  esac
done
