# rankboard: `make demo` (the main job) and `make test`. Both bootstrap .venv on
# a fresh machine that has python3.11 and pip, and nothing else.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard protos/*.proto)
GEN    := protos/.generated

.PHONY: all venv protos test demo lint bench clean

all: test

venv: $(STAMP)

$(STAMP): requirements/torch-cpu.txt requirements/torchrec.txt requirements/base.txt pyproject.toml
	@echo ">> creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar off -r requirements/torch-cpu.txt
	$(BIN)/pip install --progress-bar off --no-deps -r requirements/torchrec.txt
	$(BIN)/pip install --progress-bar off -r requirements/base.txt
	$(BIN)/pip install --progress-bar off --no-deps --no-build-isolation -e .
	@touch $(STAMP)

protos: $(GEN)

$(GEN): $(STAMP) $(PROTOS) protos/generate.py
	$(BIN)/python protos/generate.py
	@touch $(GEN)

test: protos
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

demo: protos
	$(BIN)/python -m rankboard.trainer.demo

lint: protos
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: protos
	$(BIN)/python benchmarks/bench_metrics.py

clean:
	rm -rf $(VENV) protos/*_pb2*.py protos/*_pb2.pyi $(GEN)
