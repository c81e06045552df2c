# Two entry points for a fresh machine (Python 3.10+):
#   make run   -> creates .venv, installs tunekit, runs the embedded-default LoRA fine-tune
#   make test  -> creates .venv, installs tunekit with test extras, runs the test suite
# TORCH_SPEC pins the torch build installed first; override it for a CUDA machine,
# e.g. `make run TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: run test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/python -m recipes.lora_finetune

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadscope --durations=15

clean:
	rm -rf $(VENV) outputs multirun
