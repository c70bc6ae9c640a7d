# vaecodec: `make demo` (set up .venv, code a real photo) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# glibc: keep large tensors mapped between uses (1.6-1.9x faster torch on CPU)
export GLIBC_TUNABLES := glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296
DEMO   := build/demo

.PHONY: install demo test benchmark release training-state gpu-data clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# exactly this torch first: a CPU wheel; anything else pulls a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[bench,dev]'
	touch $@

demo: install
	@mkdir -p $(DEMO)
	@$(BIN)/python -c "from skimage import data; from PIL import Image; Image.fromarray(data.astronaut()).save('$(DEMO)/astronaut.png')"
	@echo "== compress (scikit-image's 'astronaut' photo, 512x512)"
	$(BIN)/vaecodec compress $(DEMO)/astronaut.png $(DEMO)/astronaut.vae --quality 4 --force
	@echo "== decompress"
	$(BIN)/vaecodec decompress $(DEMO)/astronaut.vae $(DEMO)/astronaut-decoded.png --force
	@$(BIN)/python -c "import os, numpy as np; from PIL import Image; \
	a = np.asarray(Image.open('$(DEMO)/astronaut.png'), float); b = np.asarray(Image.open('$(DEMO)/astronaut-decoded.png'), float); \
	n = os.path.getsize('$(DEMO)/astronaut.vae'); \
	print(f'== result: {n} bytes, {8*n/(a.shape[0]*a.shape[1]):.3f} bpp, PSNR {10*np.log10(255**2/np.mean((a-b)**2)):.2f} dB')"

test: install
	$(BIN)/python -m pytest -q

benchmark: install
	$(BIN)/vaecodec benchmark --out benchmarks/results/kodak --jobs 2 --force \
	    --codecs vaecodec,vaecodec-refine,jpeg,webp,avif,jpegxl,jpeg2000

# make a checkpoint a model release (README, "Releases"): export, beat the newest release by
# >= 1 % BD-rate on the validation split, weights/<ID>/, conformance files, version bump
CHECKPOINT ?= runs/main/checkpoint.safetensors
release: install
	$(BIN)/python scripts/release.py $(CHECKPOINT)
	$(BIN)/pip install --quiet --no-deps -e .   # the package's version follows pyproject.toml

# the one compact file of training state kept in git between releases (bfloat16, ~15 MiB);
# `vaecodec train --init weights/training-state.safetensors` continues from it
training-state: install
	$(BIN)/vaecodec export $(CHECKPOINT) --state weights/training-state.safetensors

# a compact copy of the training folder (one 320² JPEG crop per image, ~15 MiB) to carry to a
# CUDA machine with scripts/gpu-train.sh; README, "Training on a GPU"
TRAIN_DATA ?= ../shared/data/train
gpu-data: install
	rm -rf .gpu/data
	$(BIN)/python -m vaecodec.datapack $(TRAIN_DATA) .gpu/data

clean:
	rm -rf build $(DEMO) .pytest_cache
