# Everything a fresh machine needs: `make test` (the suite), `make demo` (the end-to-end job).
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# Real images from Debian packages (offline), about 220 MB to download: Fashion-MNIST (31 MB) and the
# corpus's sources (python -m cloob_tools.data.make_corpus): Noto colour emoji (10 MB) and the Symbola
# font (1.3 MB) with Unicode's names (8 MB), Tux Paint's stamps with their captions (161 MB, mostly
# sounds; also the study's second set), flags (5.3 MB) with iso-codes' country names (2.9 MB).
DATA_FILES := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz \
              /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf \
              /usr/share/unicode/emoji/emoji-test.txt \
              /usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf \
              /usr/share/tuxpaint/stamps/animals/birds/little-penguin.png \
              /usr/share/iso-flags-png-320x240/no.png \
              /usr/share/iso-codes/json/iso_3166-1.json
DATA_PACKAGES := --no-install-recommends dataset-fashion-mnist fonts-noto-color-emoji unicode-data fonts-symbola \
                 tuxpaint-stamps-default iso-flags-png-320x240 iso-codes
# A real SLURM for the job-script tests (Debian's 22.05): the tests start a one-node cluster of their
# own (own munge key, config, ports and folders under a temporary directory) and stop it again.
SLURM_FILES := /usr/sbin/slurmctld /usr/sbin/slurmd /usr/bin/sbatch /usr/sbin/munged
SLURM_PACKAGES := slurmctld slurmd slurm-client munge

# $(call apt_install,FILES,PACKAGES): install PACKAGES (as root, or with sudo) unless all FILES exist.
define apt_install
	@for f in $(1); do test -f $$f || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(2); \
	fi
endef

.PHONY: test test-fast demo study study-data bench venv data slurm clean

# torch/torchvision are pinned to the tested pair (pyproject.toml allows torch >=2.3,<=2.14.1);
# everything else comes from pyproject.toml: the library and its [test] extra (= train, eval, demo).
$(VENV)/.installed: pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

data:
	$(call apt_install,$(DATA_FILES),$(DATA_PACKAGES))

slurm:
	$(call apt_install,$(SLURM_FILES),$(SLURM_PACKAGES))

# CLOOB and a CLIP baseline trained side by side on real images with unique human-written captions (the
# corpus), exported, evaluated zero-shot; the report lands in docs/demo/ and the README's demo section.
# `make demo DEMO_STEPS=5000` trains longer. The duplicate-caption stress case, reported in demo-out/report:
# `.venv/bin/python -m cloob_tools.demo --fashion-share 0.9` (or `--data fashion-emoji`).
demo: venv data
	$(VPY) -m cloob_tools.demo $(if $(DEMO_STEPS),--steps $(DEMO_STEPS)) --report docs/demo --readme README.md

# A grid of training runs with zero-shot during training (python -m cloob_tools.study): every loss of training.main
# x 3 seeds, 1200 steps each, on Fashion-MNIST + emoji (the demo's --data fashion-emoji); report in
# study-out/report.md. It prints its estimated time first; run it again to continue after an interruption.
# More or other runs: STUDY_ARGS, e.g. `make study STUDY_ARGS="--losses cloob --betas 2,4,8,16,32"` (the same
# folder, one report), or on the corpus: `STUDY_ARGS="--data DIR/manifest.json"` after
# `python -m cloob_tools.data.make_corpus --out DIR`.
study: venv data
	$(VPY) -m cloob_tools.study --out study-out $(STUDY_ARGS)

# The second set, for checking a study's result on data it was not designed on:
# `make study-data`, then `make study STUDY_ARGS="--data study-data/manifest.json --out study-stamps"`.
study-data: venv data
	$(VPY) -m cloob_tools.data.make_stamps_digits_data --out study-data

test: venv data slurm
	$(VPY) -m pytest -q

# The suite without the end-to-end runs, for quick iteration.
test-fast: venv
	$(VPY) -m pytest -q -m 'not slow'

# Loss (CLOOB direct / chunked vs ClipLoss) and training-throughput benchmarks; CUDA when present.
# Results: bench-out/*.json and the printed tables. Takes tens of minutes on 2 CPU cores.
BENCH_SIZES ?= 1024,4096,16384
bench: venv
	$(VPY) -m cloob_tools.bench_loss --sizes $(BENCH_SIZES) --dims 512,1024 --out bench-out/loss.json
	$(VPY) -m cloob_tools.bench_train --out bench-out/train.json

clean:
	rm -rf $(VENV) .pytest_cache demo-out
