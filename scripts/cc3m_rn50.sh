#!/usr/bin/env bash
# CLOOB's Conceptual Captions recipe (Fürst et al., NeurIPS 2022): RN50, 4 GPUs x 128 = global
# batch 512, AdamW lr 1e-3, weight decay 0.1, 20,000 warmup steps, cosine schedule with 10 hard
# restarts, 70 epochs, mixed precision, inv_tau 30 (frozen), Hopfield beta 8.
#   bash scripts/cc3m_rn50.sh                     # on a node with 4 GPUs
#   sbatch scripts/cc3m_rn50.sh                   # the same as a SLURM job (one node)
# Data (environment): TRAIN_DATA, VAL_DATA: OpenCLIP CSVs from scripts/cc3m_tsv_to_csv.py, or
# webdataset shards from img2dataset (then also pass --dataset-type webdataset
# --train-num-samples N); IMAGENET_VAL: optional ImageNet val folder for zero-shot during training.
# Extra flags are appended (later ones win). PYTHON (default: python); DRY_RUN=1 only parses.
#SBATCH --job-name=cloob-cc3m-rn50
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=7-00:00:00
#SBATCH --output=%x-%j.out
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
if [[ -n "${DRY_RUN:-}" ]]; then
  exec "$PYTHON" -m training.params "${ARGS[@]}"
fi
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 4 -- -m training.main "${ARGS[@]}"
