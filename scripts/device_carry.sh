#!/usr/bin/env bash
# Build the folder that scripts/device_check.sh takes with --carry to a GPU machine without network:
#
#   bash scripts/device_carry.sh [DEST]      # default .carry (git-ignored); about 10 MB
#
#   DEST/wheels/         the Python packages that machine lacks, as wheels for CPython 3.12 on
#                        x86-64 Linux, in the versions installed here and no dependencies of theirs
#   DEST/fashion-mnist/  Fashion-MNIST's test split (real images for the CUDA training tests)
#
# The GPU machine (see the README's Performance section) has Python 3.12 with torch 2.11,
# torchvision, numpy, pandas, pyyaml, regex, tqdm, fsspec, safetensors, huggingface_hub, pillow,
# transformers, tensorboard and pytest: the packages in DEVICE_PROVIDES below. The wheels are
# OpenCLIP and what it needs beyond those, in the versions installed in the project's .venv (PYTHON),
# the ones its tests ran with (tests/test_device_check.py checks that each is installed and that every
# dependency is carried or provided). torch is never carried: the machine's own build is used.
set -euo pipefail

WHEELS=(open_clip_torch timm webdataset braceexpand ftfy wcwidth)
# Distributions the device image has (its package list), which the wheels' dependencies may use.
DEVICE_PROVIDES=(
  torch torchvision numpy pandas pyyaml regex tqdm fsspec safetensors huggingface-hub pillow
  transformers sentencepiece tensorboard pytest filelock packaging typing-extensions
)
# The carried folder travels with the working tree: together at most 64 MiB.
MAX_MIB=32

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${1:-$REPO/.carry}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
FASHION_MNIST_DIR=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}

# name==version of each, as installed here (a pinned list went stale with every release upstream).
PINS=($("$PYTHON" -c 'import importlib.metadata as m, sys; print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' \
  "${WHEELS[@]}"))
rm -rf "$DEST/wheels" "$DEST/fashion-mnist"
mkdir -p "$DEST/wheels" "$DEST/fashion-mnist"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST/wheels" "${PINS[@]}"
for file in t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  if [ ! -f "$FASHION_MNIST_DIR/$file" ]; then
    echo "device_carry.sh: $FASHION_MNIST_DIR/$file is missing: run 'make data' or set FASHION_MNIST_DIR" >&2
    exit 1
  fi
  cp "$FASHION_MNIST_DIR/$file" "$DEST/fashion-mnist/"
done
count=$(ls "$DEST"/wheels/*.whl | wc -l)
if [ "$count" -ne ${#WHEELS[@]} ]; then
  echo "device_carry.sh: expected ${#WHEELS[@]} wheels in $DEST/wheels, found $count" >&2
  exit 1
fi
mib=$(du -sm "$DEST" | cut -f1)
if [ "$mib" -gt $MAX_MIB ]; then
  echo "device_carry.sh: $DEST holds $mib MiB, more than $MAX_MIB: the working tree and it must stay under 64 MiB" >&2
  exit 1
fi
echo "$DEST: ${#WHEELS[@]} wheels (${PINS[*]}) and Fashion-MNIST's test split, $mib MiB:"
ls -1 "$DEST/wheels" "$DEST/fashion-mnist"
