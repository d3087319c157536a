# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= 2
SHELL := /bin/bash
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: demo test rehearsal lint lock paper-dry-run plan clean-demo

# The exact versions come from the lock files (pipeline + dev tools); the project goes on top without
# resolving anything, and pip check fails the install if the lock no longer satisfies pyproject.toml.
# Bytecode is compiled on all cores afterwards (pip compiles on one: 61 s against 34 s on 2 cores); like
# pip, compileall skips the few files of the dependencies that are not Python 3 (their tests and templates).
$(VENV)/.installed: pyproject.toml requirements/pipeline.lock requirements/dev.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -r requirements/dev.lock
	$(PY) -m compileall -qq -j 0 $$($(PY) -c "import sysconfig; print(sysconfig.get_path('purelib'))") || true
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $@

# After editing the requirements in pyproject.toml: resolve them into .venv (keeping what still fits;
# `rm -rf .venv` first to re-resolve everything), then rewrite requirements/*.lock from it.
lock:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c requirements/constraints.txt -e ".[pipeline,dev]"
	$(PY) requirements/freeze.py
	touch $(VENV)/.installed

demo: $(VENV)/.installed
	time snakemake --cores $(CORES) --configfile workflow/presets/demo.yaml
	$(PY) workflow/scripts/top_jobs.py results/benchmarks --top 10

test: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/pytest -q --durations=10

# The full dress rehearsal: every rule of the paper DAG on the 8- and 20-task benchmarks against a hub on
# 127.0.0.1 serving every source in its real layout and format (`make test` runs the 20-task benchmark
# whole and plans the 8-task one; docs/running.md, "Before you spend GPU hours").
rehearsal: $(VENV)/.installed
	MASS_REHEARSAL=full $(VENV)/bin/pytest -q -s tests/workflow/rehearsal

paper-dry-run: $(VENV)/.installed
	snakemake -n --cores all

# What the configured grid costs before running it: images per rule, GPU-hours, disk per folder, e.g.
#   make plan ARGS="--images-per-second ViT-B-32=<img/s> ViT-B-16=<img/s> ViT-L-14=<img/s>"
#   make plan ARGS="--configfile workflow/presets/demo.yaml"
plan: $(VENV)/.installed
	$(PY) workflow/scripts/plan.py $(ARGS)

clean-demo:
	rm -rf results/tiny resources/data/demo resources/descriptions/demo.txt resources/checkpoints/tiny results/tables figures/*.p* figures/*.csv results/benchmarks/*/tiny results/benchmarks/*/tiny.tsv results/benchmarks/generate_demo_task results/benchmarks/demo_descriptions
