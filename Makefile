# Two commands do everything on a fresh machine: `make demo` (set-up + the main job) and
# `make test` (set-up + the test suite). `make setup` alone installs.
PYTHON ?= python3
PIP = $(PYTHON) -m pip
# CPU build here; on a GPU machine install the CUDA build of torch first (see README), then `make setup`.
TORCH ?= torch==2.13.0
STAMP = .cache/setup.stamp
# the offline data: image-text pairs (openclipart, Noto emoji) and classification sets
DEBIAN_PACKAGES = openclipart-png openclipart-svg fonts-noto-color-emoji unicode-data dataset-fashion-mnist \
	fonts-symbola ruby-gemojione fonts-noto-core tuxpaint-stamps-default
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# the large meta-training corpus: the Iconify icon sets (npm; see docs/DATA.md), pinned
ICONIFY = @iconify/json@2.2.553
ICONIFY_DIR = .cache/npm/node_modules/@iconify/json

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	dpkg -s $(DEBIAN_PACKAGES) >/dev/null 2>&1 || { $(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(DEBIAN_PACKAGES); }
	command -v npm >/dev/null 2>&1 || { $(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm; }
	[ -f $(ICONIFY_DIR)/collections.json ] || npm install -q --prefix .cache/npm --no-audit --no-fund $(ICONIFY)
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[test]"
	# only the CLIP BPE vocabulary file of open_clip_torch is used (its code would pull torchvision);
	# animal-mnist's own loader imports tensorflow, we read its data files
	$(PIP) install -q --no-deps "open_clip_torch>=2.20" "animal-mnist>=0.4"
	mkdir -p .cache && touch $(STAMP)

demo: setup
	$(PYTHON) -m gramprompt.cli demo

test: setup
	$(PYTHON) -m pytest

bench: setup
	$(PYTHON) benchmarks/bench_text_truncation.py
	$(PYTHON) benchmarks/bench_feature_cache.py
	$(PYTHON) benchmarks/bench_chc.py
	$(PYTHON) benchmarks/bench_meta_step.py --threads 1
	$(PYTHON) benchmarks/bench_paper_scale.py --threads 1
	$(PYTHON) benchmarks/bench_tar_read.py
	$(PYTHON) benchmarks/bench_trunk.py

clean:
	rm -rf .cache runs build *.egg-info
