#!/usr/bin/env bash
# Train on one node with torchrun, one process per GPU. Every training.main / OpenCLIP flag is
# passed through, e.g.
#   NGPUS=4 scripts/train_torchrun.sh --model RN50-cloob --train-data /data/cc3m/train.csv \
#       --batch-size 128 --epochs 32 --name my-run
# Environment: NGPUS (default: all visible GPUs), PYTHON (default: python),
# DRY_RUN=1 (only parse and print the resolved arguments).
set -euo pipefail
PYTHON=${PYTHON:-python}
ARGS=(
  --report-to tensorboard
  --save-frequency 1
  "$@"
)
if [[ -n "${DRY_RUN:-}" ]]; then
  exec "$PYTHON" -m training.params "${ARGS[@]}"
fi
NGPUS=${NGPUS:-$(nvidia-smi -L | wc -l)}
# '--' ends torchrun's own options: its parser would take --logs for its --logs-specs.
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NGPUS" -- -m training.main "${ARGS[@]}"
