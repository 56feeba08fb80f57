#!/usr/bin/env bash
# CLOOB's Conceptual Captions recipe (Fürst et al., NeurIPS 2022): RN50, 4 GPUs x 128 = global
# batch 512, AdamW lr 1e-3, weight decay 0.1, 20,000 warmup steps, 10 cosine cycles with hard
# restarts, 70 epochs, mixed precision, inv_tau 30 (frozen), Hopfield beta 8.
#   bash scripts/cc3m_rn50.sh                     # on a node with 4 GPUs (torchrun)
#   sbatch scripts/cc3m_rn50.sh                   # as a SLURM job: one node, 4 tasks, requeued on preemption
# Under SLURM (SLURM_JOB_ID set) this runs scripts/train_slurm.sbatch with the recipe's flags: one
# task per GPU via srun, step checkpoints every 1000 steps, and on SIGUSR1 (3 minutes before the
# time limit or preemption) a checkpoint, exit 75 and `scontrol requeue`. Submit from the repository
# root (or scripts/): sbatch runs a copy of this file, the repository is found via SLURM_SUBMIT_DIR.
# Data (environment): TRAIN_DATA, VAL_DATA: OpenCLIP CSVs from python -m cloob_tools.data.cc3m_tsv_to_csv, or
# webdataset shards from img2dataset (then also pass --dataset-type webdataset
# --train-num-samples N); IMAGENET_VAL: optional ImageNet val folder for zero-shot during training.
# Extra flags are appended (later ones win). PYTHON (default: python); DRY_RUN=1 only parses.
#SBATCH --job-name=cloob-cc3m-rn50
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=7-00:00:00
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=USR1@180
#SBATCH --requeue
set -euo pipefail
PYTHON=${PYTHON:-python}
ARGS=(
  --model RN50-cloob
  --loss cloob
  --train-data "${TRAIN_DATA:-/data/cc3m/train.csv}"
  --val-data "${VAL_DATA:-/data/cc3m/val.csv}"
  --batch-size 128
  --lr 1e-3
  --wd 0.1
  --warmup 20000
  --lr-scheduler cosine-restarts
  --restart-cycles 10
  --epochs 70
  --precision amp
  --init-inv-tau 30
  --hopfield-beta 8
  --workers 8
  --save-frequency 1
  --report-to tensorboard
  --name cc3m-rn50-cloob
  --resume latest
)
if [[ -n "${IMAGENET_VAL:-}" ]]; then
  ARGS+=(--imagenet-val "$IMAGENET_VAL" --zeroshot-frequency 5)
fi
ARGS+=("$@")
if [[ -n "${SLURM_JOB_ID:-}" ]]; then
  # srun, requeue on status 75, the checkpoint defaults and DRY_RUN live in train_slurm.sbatch. sbatch
  # runs a copy of this file: look next to it, then under the submit directory.
  for dir in "$(dirname "${BASH_SOURCE[0]}")" "${SLURM_SUBMIT_DIR:-.}/scripts" "${SLURM_SUBMIT_DIR:-.}"; do
    [[ -f "$dir/train_slurm.sbatch" ]] && exec bash "$dir/train_slurm.sbatch" "${ARGS[@]}"
  done
  echo "cc3m_rn50.sh: scripts/train_slurm.sbatch not found next to this script nor under" \
    "SLURM_SUBMIT_DIR='${SLURM_SUBMIT_DIR:-}'; submit from the repository root (sbatch runs a copy of the script)" >&2
  exit 1
fi
if [[ -n "${DRY_RUN:-}" ]]; then
  exec "$PYTHON" -m training.params "${ARGS[@]}"
fi
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 4 -- -m training.main "${ARGS[@]}"
