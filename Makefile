# Two entry points on a fresh clone; each sets up .venv first if needed.
#   make seed   train the seed model (100 epochs) and print its test accuracy
#   make test   lint and run every test (real processes, Ray, Chromium included)
#   make check  lint and run the fast tier, for the edit-test loop
# The data: $SEQMNIST_DATA, else ../shared/data/mnist beside the checkout, else the download cache;
# the seed's models likewise: $SEQMNIST_SEED_MODELS, else ../shared/seed/models, else the cache.
# Tests whose files are nowhere (a fresh clone offline) are skipped; the summary says why and how to provide them.

PY := .venv/bin/python
SHARED_MNIST := $(abspath ../shared/data/mnist)
SHARED_SEED_MODELS := $(abspath ../shared/seed/models)
export SEQMNIST_DATA ?= $(if $(wildcard $(SHARED_MNIST)),$(SHARED_MNIST),)
export SEQMNIST_SEED_MODELS ?= $(if $(wildcard $(SHARED_SEED_MODELS)),$(SHARED_SEED_MODELS),)

.PHONY: seed test check lint bench bench-scripts setup notebook

setup: .venv/.done

# torch first, pinned: the CPU build lies on this machine's disk; a bare
# `pip install torch` would pull a multi-GB CUDA build.
.venv/.done: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,web,ray,onnx,tensorboard]'
	$(PY) -c 'from seqmnist.native import native_loops; native_loops()'  # compile the library (engine.cpp, scan.cpp, gate.cpp) once, now
	touch $@

seed: setup
	.venv/bin/seqmnist train --preset seed

lint: setup
	.venv/bin/ruff check src tests bench scripts

test: lint
	$(PY) -m pytest -q --durations=15

check: lint
	$(PY) -m pytest -q -m 'not slow' --durations=10

bench: setup
	.venv/bin/seqmnist bench

# Each script of bench/ at its smallest run (bench/README.md's last column): that it still works; its
# numbers then mean nothing.
bench-scripts: setup
	$(PY) bench/ab.py HEAD --rounds 1 --seconds 2
	$(PY) bench/ours.py --seconds 1
	$(PY) bench/epoch.py --epochs 1 --repeats 1
	$(PY) bench/plain_pytorch.py --epochs 1
	$(PY) bench/blank_rows.py --rows 28 --rounds 1 --batches 5 --images 500
	$(PY) bench/freed_memory.py --preset quick --steps 2 --rounds 1
	$(PY) bench/indrnn.py --task rows --layers 1 --rounds 1
	$(PY) bench/scale.py --trials 2 --epochs 1 --subset 1000

# The tutorial in JupyterLab (the notebook extra), from this venv.
notebook: setup
	$(PY) -m pip install -q -e '.[notebook]'
	.venv/bin/jupyter lab tutorials/seqmnist_tutorial.ipynb
