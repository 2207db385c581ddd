# The two commands of the README: `make run` and `make test`. Both set up .venv first.
SHELL := /bin/bash
# The telemetry opt-outs, from their one list (pipeline/telemetry.env: NAME=value lines)
include pipeline/telemetry.env
export $(shell sed -n 's/^\([A-Z_]*\)=.*/\1/p' pipeline/telemetry.env)
# DVC runs the stages' `python` from PATH: make it the project's.
export PATH := $(CURDIR)/.venv/bin:$(PATH)

PYTHON ?= python3.11
VENV_STAMP := .venv/.installed-$(shell cat pyproject.toml requirements.lock | md5sum | cut -c1-12)

.PHONY: setup run test test-fast lint ui experiments screenshots compare serve bento load-test bench bench-gpu docs clean

SERVE_PORT ?= 3000

setup: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: set PYTHON=/path/to/python3.11"; exit 1; }
	test -x .venv/bin/python || $(PYTHON) -m venv .venv
	.venv/bin/python -m pip install --quiet --upgrade pip
	.venv/bin/python -m pip install --quiet --constraint requirements.lock --editable '.[test]'
	rm -f .venv/.installed-*
	touch $@

run: setup
	@git rev-parse --git-dir >/dev/null 2>&1 || { echo "dvc needs a git repository: clone the project (or git init) first"; exit 1; }
	dvc repro

# The whole suite, what CI runs (about 15 min on 2 cores); the linter first.
test: lint
	python -m pytest

# The edit loop: everything but the end-to-end tests marked slow (about 2-3 min on 2 cores).
test-fast: lint
	python -m pytest -m "not slow"

lint: setup
	ruff check .
	ruff format --check .

# The link lands on the runs of params.yaml's dataset, best test accuracy first, strategy and accuracy shown.
ui: setup
	@MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/mlflow.db python -m pipeline.commands.ui_link --url http://127.0.0.1:5000
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

# The experiments of `dvc exp run` as one table that fits the terminal: the columns that answer "which strategy?",
# strategy and accuracy first (ARGS=-A: every commit's).
experiments: setup
	@python -m pipeline.commands.experiments $(ARGS)

# The README's pictures of the MLflow UI (docs/images/): four strategies trained in a temporary copy,
# shown by headless Chromium (Debian's `chromium`) with no network.
screenshots: setup
	python -m pip install --quiet --constraint requirements.lock --editable '.[test,docs]'
	python docs/screenshots.py

# Every strategy x seed at the budget of params.yaml `compare`: reports/compare.md, MLflow parent run.
compare: setup
	dvc repro prepare
	python -m pipeline.commands.compare

# The model in SERVING_MODEL (default: the registry's champion, see params.yaml `serving`).
# Keep-alive, header and connection limits are params.yaml's `serving` settings (serving/connections.py).
serve: setup
	bentoml serve serving.service:ImageClassifier --host 127.0.0.1 --port $(SERVE_PORT)

bento: setup
	bentoml build -f serving/bentofile.yaml .

# Single-image and 16-image requests against a real server, each against the model alone at its mean batch.
load-test: setup
	python -m benchmarks.load_test

# Speed against the tutorial loop and PyTorch eager, on CPU; see BENCHMARKS.md.
bench: setup
	python -m benchmarks.training
	python -m benchmarks.inference

# The same on a CUDA machine at the sizes of BENCHMARKS.md's GPU figures, then the served load test
# (which serves models/model.onnx: `make run` first).
bench-gpu: setup
	python -m benchmarks.training --device cuda --image-size 224 --images 4096 --batch-size 256 \
		--baseline-workers 8 --backbones resnet50,resnet18,efficientnet_lite0 \
		--variants ours,ours+compile,ours+nondeterministic
	python -m benchmarks.inference --device cuda --backbones resnet50,resnet18,efficientnet_lite0 --batches 1,32,64,256
	python -m benchmarks.load_test --loads 128x1,64x16 --client-processes 6

# docs/results.md and the figures of BENCHMARKS.md, from the committed metrics, reports and benchmark results.
docs: setup
	python docs/results.py

clean:
	rm -rf data/builtin data/calibration data/prepared models metrics mlflow.db .dvc/cache .dvc/tmp
