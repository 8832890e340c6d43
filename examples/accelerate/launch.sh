#!/usr/bin/env bash
# The GPU set behind benchmarks/RESULTS.md's "multi-GPU" section: a ~0.5B random-weight Llama, the same global batch
# (4 packed rows of --max-length tokens per optimizer step) on 1 GPU, 2-GPU DDP and 2-GPU FSDP2; losses and
# sustained real tokens/s printed as one JSON line per run.
#   FORMATKIT_TOKENIZERS=/path/to/shared/tokenizers bash examples/accelerate/launch.sh [steps]
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-40}
LAUNCH="${PYTHON:-python3} -m accelerate.commands.launch"
COMMON=(--model 0.5b --bf16 --rows 1500 --words 120 --max-length 2048 --steps "$STEPS" --warmup-steps 5 --lr 3e-4)
echo "== 1 GPU"
CUDA_VISIBLE_DEVICES=0 $LAUNCH --num_processes 1 --mixed_precision bf16 examples/accelerate/sft.py \
  "${COMMON[@]}" --batch 4
echo "== 2 GPUs, DDP"
$LAUNCH --config_file examples/accelerate/ddp.yaml examples/accelerate/sft.py "${COMMON[@]}" --batch 2
echo "== 2 GPUs, FSDP2"
$LAUNCH --config_file examples/accelerate/fsdp2.yaml examples/accelerate/sft.py "${COMMON[@]}" --batch 2
