# Two commands set up everything: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip install --quiet -c constraints.txt
EXTRAS := dev,plot,data,lightning,hf

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: install demo test lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	# torch first, from the pin, so nothing that depends on it can pull a CUDA build.
	$(PIP) torch
	$(PIP) -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/dropkit demo

test: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/python -m pytest -n 2 -q

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: install
	for b in benchmarks/*.py; do $(VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
