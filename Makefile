# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= 2
SHELL := /bin/bash
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: demo test lint paper-dry-run clean-demo

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	time snakemake --cores $(CORES) --configfile workflow/presets/demo.yaml
	$(PY) workflow/scripts/top_jobs.py results/benchmarks --top 10

test: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/pytest -q

paper-dry-run: $(VENV)/.installed
	snakemake -n --cores all

clean-demo:
	rm -rf results/tiny resources/data/demo resources/checkpoints/tiny results/tables figures/*.p* figures/*.csv
