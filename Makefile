# Thin wrappers: each target is one line of intent. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Data root: $STT_DATA if set, else ../shared/data beside the project (the development and CI
# layout), else ~/stt-data. Without DAVIS there the notebooks use a synthetic stand-in.
export STT_DATA ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),$(HOME)/stt-data)
export PYTHONUNBUFFERED := 1

.PHONY: help setup demo small test gpu full bench publish publish-gpu clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: $(STAMP)  ## create .venv with pip and install requirements.txt and the package

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: setup  ## run every notebook at `small` scale into runs/small (executed notebooks, figures, results)
	$(PY) -m stt.runner --scale small --out runs/small

small: demo  ## same as demo

test: setup  ## unit tests, then every notebook at `smoke` scale under nbval
	$(PY) -m pytest -q tests
	rm -rf build/smoke && $(PY) -m stt.runner --scale smoke --prepare-only --out build/smoke
	$(PY) -m pytest -q -p no:cacheprovider --nbval-lax build/smoke

gpu: setup  ## every notebook on one GPU, the small pipeline's data, ~20 min of training (notebooks/params/gpu.yaml)
	$(PY) -m stt.runner --scale gpu --out runs/gpu

full: setup  ## every notebook at the papers' scale (GPU; see notebooks/params/full.yaml)
	$(PY) -m stt.runner --scale full --out runs/full

bench: setup  ## speed and memory benchmarks (benchmarks/), results in runs/bench/
	mkdir -p runs/bench
	$(PY) benchmarks/propagation.py --json runs/bench/propagation.json
	$(PY) benchmarks/stt_memory.py --json runs/bench/stt_memory.json
	$(PY) benchmarks/train_step.py --json runs/bench/train_step.json
	$(PY) benchmarks/training.py --json runs/bench/training.json
	$(PY) benchmarks/summarize.py runs/bench runs/small/results/bench.md

publish:  ## regenerate the README results and figures/ from runs/small
	$(PY) -m stt.runner --publish-only --out runs/small

publish-gpu:  ## regenerate the README's gpu-scale tables from runs/gpu
	$(PY) -m stt.runner --publish-only --out runs/gpu

clean:  ## remove build artefacts (keeps .venv and runs/)
	rm -rf build .pytest_cache
