#!/usr/bin/env bash
# Train with torchrun, one process per GPU, on one node or several. Every training.main / OpenCLIP
# flag is passed through, e.g.
#   NGPUS=4 scripts/train_torchrun.sh --model RN50-cloob --train-data /data/cc3m/train.csv \
#       --batch-size 128 --epochs 32 --name my-run
# Several nodes: start this script once on every node with the same NNODES and RDZV_ENDPOINT (a
# host:port of the first node); the launchers meet there (c10d rendezvous) and number the ranks:
#   NNODES=2 RDZV_ENDPOINT=node1:29400 NGPUS=4 scripts/train_torchrun.sh --model RN50-cloob ...
# Inside a SLURM allocation `srun --ntasks-per-node=1 scripts/train_torchrun.sh ...` needs neither:
# NNODES is SLURM_JOB_NUM_NODES, RDZV_ENDPOINT the allocation's first node, port 29400.
# Environment: NGPUS (default: all visible GPUs), NNODES (default: 1, or SLURM_JOB_NUM_NODES),
# RDZV_ENDPOINT, RDZV_ID (default: SLURM_JOB_ID, or cloob), PYTHON (default: python),
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
NNODES=${NNODES:-${SLURM_JOB_NUM_NODES:-1}}
if [[ $NNODES -eq 1 ]]; then
  LAUNCH=(--standalone)
else
  if [[ -z "${RDZV_ENDPOINT:-}" ]]; then
    : "${SLURM_JOB_NODELIST:?NNODES=$NNODES: set RDZV_ENDPOINT=host:port of the first node (the same on every node)}"
    RDZV_ENDPOINT="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):29400"
  fi
  LAUNCH=(--nnodes "$NNODES" --rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT"
          --rdzv-id "${RDZV_ID:-${SLURM_JOB_ID:-cloob}}")
fi
# '--' ends torchrun's own options: its parser would take --logs for its --logs-specs.
exec "$PYTHON" -m torch.distributed.run "${LAUNCH[@]}" --nproc_per_node "$NGPUS" -- -m training.main "${ARGS[@]}"
