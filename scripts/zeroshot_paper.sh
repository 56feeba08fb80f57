#!/usr/bin/env bash
# Zero-shot evaluation with the CLOOB paper's protocol (its zero-shot table): eight datasets, CLIP's class names
# and prompt templates, class order = the dataset's label order, plain top-1 accuracy. Writes one
# CLIP_benchmark result JSON per dataset and a Markdown table next to the paper's numbers (table.md).
#
#   scripts/zeroshot_paper.sh [MODEL] [PRETRAINED]
#     MODEL       RN50-cloob (default), RN50x4-cloob, local-dir:/abs/folder, ...
#     PRETRAINED  yfcc15m (default), or a checkpoint file OpenCLIP loads (converted or our training checkpoint)
#
# Environment:
#   DATASETS     a subset, e.g. "imagenet1k" (default: all eight, see below)
#   DATA_ROOT    one folder per dataset, $DATA_ROOT/<name> (default: data), <name> without "wds/"
#   OUT          results folder (default: zeroshot_results)
#   BATCH_SIZE   (default 256), NUM_WORKERS (default 8), PYTHON (default: python)
#   EXTRA_ARGS   further CLIP_benchmark flags, e.g. "--no_amp" on CPU or "--model_cache_dir /cache"
#   DRY_RUN=1    print the commands instead of running them
#
# Datasets:
# - imagenet1k (torchvision's ImageNet: the ILSVRC2012 devkit and val tar files), imagenetv2
#   (matched-frequency), cars, flowers, gtsrb, country211 (torchvision layouts):
#   CLIP_benchmark's own loaders, class names and CLIP's templates (80 ImageNet and ImageNet-V2,
#   8 Cars, 1 Flowers, 3 GTSRB, 5 Country211), classes in the datasets' label order.
# - birdsnap, ucf101 (CLIP_benchmark has no loader for them): CLIP_benchmark webdataset folders,
#   $DATA_ROOT/<name>/test/{0..N-1}.tar ({key}.jpg or .png + {key}.cls), test/nshards.txt and
#   classnames.txt (line i names class i: 500 Birdsnap species, 101 UCF101 actions); UCF101 images
#   are the middle frame of each test video. Templates: scripts/zeroshot_paper_templates.json
#   (CLIP's: 1 for Birdsnap, 48 for UCF101). Write classnames.txt in the order of the labels in the
#   .cls files (e.g. both from the sorted folder names of an ImageFolder): pairing CLIP's class list
#   with alphabetically sorted folders is the known source of wrong zero-shot numbers.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL="${1:-RN50-cloob}"
PRETRAINED="${2:-yfcc15m}"
DATA_ROOT="${DATA_ROOT:-data}"
OUT="${OUT:-zeroshot_results}"
BATCH_SIZE="${BATCH_SIZE:-256}"
NUM_WORKERS="${NUM_WORKERS:-8}"
PYTHON="${PYTHON:-python}"
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"

read -r -a DATASETS <<< "${DATASETS:-imagenet1k imagenetv2 cars flowers gtsrb country211 wds/birdsnap wds/ucf101}"
declare -A WDS_CLASSES=([birdsnap]=500 [ucf101]=101)

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

check_classnames() {  # a webdataset folder must name every class, in label order
  local file="$DATA_ROOT/$1/classnames.txt"
  [[ "${DRY_RUN:-0}" == 1 ]] && return 0
  [[ -f "$file" ]] || { echo "missing $file (one class name per line, line i = label i)" >&2; exit 1; }
  local count expected="${WDS_CLASSES[$1]}"
  count=$(grep -c . "$file")
  [[ "$count" == "$expected" ]] || { echo "$file names $count classes, expected $expected" >&2; exit 1; }
}

[[ "${DRY_RUN:-0}" == 1 ]] || mkdir -p "$OUT"
results=()
for dataset in "${DATASETS[@]}"; do
  name="${dataset#wds/}"
  templates=()
  if [[ "$dataset" == wds/* ]]; then
    check_classnames "$name"
    templates=(--custom_template_file "$HERE/zeroshot_paper_templates.json")
  fi
  run "$PYTHON" -m open_clip_cloob.benchmark eval --dataset "$dataset" --dataset_root "$DATA_ROOT/$name" \
    --task zeroshot_classification --model "$MODEL" --pretrained "$PRETRAINED" \
    --batch_size "$BATCH_SIZE" --num_workers "$NUM_WORKERS" --output "$OUT/$name.json" \
    "${templates[@]}" "${EXTRA[@]}"
  results+=("$OUT/$name.json")
done
run "$PYTHON" -m cloob_tools.zeroshot_paper_table "${results[@]}" --output "$OUT/table.md"
