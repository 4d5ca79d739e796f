# rankboard: `make demo` (the main job) and `make test`. Both bootstrap .venv on
# a fresh machine that has python3.11 and pip, and nothing else.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard protos/*.proto)
GEN    := protos/.generated

.PHONY: all venv protos test demo lint bench clean serve browser-deps

all: test

venv: $(STAMP)

$(STAMP): requirements/torch-cpu.txt requirements/torchrec.txt requirements/base.txt pyproject.toml
	@echo ">> creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar off -r requirements/torch-cpu.txt
	$(BIN)/pip install --progress-bar off --no-deps -r requirements/torchrec.txt
	@echo ">> torchrec is installed --no-deps (see requirements/torchrec.txt): it wants torchmetrics==1.0.3 and fbgemm-gpu (CUDA); fbgemm-gpu-cpu and the newer torchmetrics pinned here are the tested ones, so pip is told not to warn (pip check lists the two on purpose)"
	$(BIN)/pip install --progress-bar off --no-warn-conflicts -r requirements/base.txt
	$(BIN)/pip install --progress-bar off --no-warn-conflicts --no-deps --no-build-isolation -e .
	@touch $(STAMP)

protos: $(GEN)

$(GEN): $(STAMP) $(PROTOS) protos/generate.py
	$(BIN)/python protos/generate.py
	@touch $(GEN)

# lint first (ruff check, ruff format --check, mypy), then the tests
test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

demo: protos
	$(BIN)/python -m rankboard.trainer.demo

# `make serve`: the state `make demo` left, with the dashboard at http://127.0.0.1:8000/
SERVE_DIR       ?= .demo/state
SERVE_HTTP_PORT ?= 8000
SERVE_GRPC_PORT ?= 50051
serve: protos
	@test -d "$(SERVE_DIR)" || { echo "no state in $(SERVE_DIR): run \`make demo\` first (or make serve SERVE_DIR=...)"; exit 2; }
	@echo ">> dashboard: http://127.0.0.1:$(SERVE_HTTP_PORT)/  (API: /docs; gRPC 127.0.0.1:$(SERVE_GRPC_PORT); Ctrl-C stops)"
	$(BIN)/rankboard serve --data-dir "$(SERVE_DIR)" --http-port $(SERVE_HTTP_PORT) --grpc-port $(SERVE_GRPC_PORT)

# Headless Chromium + chromedriver for the dashboard's browser test (Debian packages;
# installed only when missing, and only as root: CI). Elsewhere the test skips and says so.
browser-deps:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		echo ">> chromium and chromedriver present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else \
		echo ">> chromium/chromedriver missing: as root run apt-get install -y chromium chromium-driver"; \
	fi

# mypy's scope and settings are in pyproject.toml [tool.mypy] (plain `mypy`, no paths)
lint: protos
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: protos
	$(BIN)/python benchmarks/bench_metrics.py

clean:
	rm -rf $(VENV) protos/*_pb2*.py protos/*_pb2.pyi $(GEN) .mypy_cache
