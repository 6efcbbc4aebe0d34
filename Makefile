# Two commands set up everything: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip install --quiet -c constraints.txt
EXTRAS := dev,plot,data,lightning,hf,docs,slurm

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg
export NO_MKDOCS_2_WARNING := 1

.PHONY: install demo test test-fast docs figures lint bench dist clean slurm-up slurm-down

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
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir site
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/mypy src/dropkit
	$(VENV)/bin/python -m pytest -n 2 -q

# While editing: the suite without the tests marked `slow` (end to end, more than a few seconds
# each). `make test`, which CI runs, still runs everything.
test-fast: install
	$(VENV)/bin/python -m pytest -n 2 -q -m "not slow"

# The documentation site, into site/; strict: a broken reference or any warning fails.
docs: install
	$(VENV)/bin/mkdocs build --strict --site-dir site

# The documentation's figures, drawn by the library and a real demo run (never hand-edited):
# the schedules, and the figures of runs/demo that the demo guide embeds (run `make demo` first).
figures: install
	$(VENV)/bin/python tools/docs/figures.py schedules
	$(VENV)/bin/python tools/docs/figures.py demo runs/demo

lint: install
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/ruff format --check src tests benchmarks tools

bench: install
	for b in benchmarks/*.py; do $(VENV)/bin/python $$b || exit 1; done

# A wheel and an sdist in dist/, to install dropkit where there is no checkout (it is on no index).
dist: install
	$(VENV)/bin/python -m build --no-isolation --wheel --sdist --outdir dist .

# A single-node SLURM cluster on this machine (Debian, as root) for the submitit tests:
# slurm-up installs what is missing and starts it; slurm-down stops it, leaving no process.
slurm-up:
	tools/slurm/up.sh

slurm-down:
	tools/slurm/down.sh

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache .ruff_cache .mypy_cache
