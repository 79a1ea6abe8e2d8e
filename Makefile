# Two commands do everything on a fresh machine: `make demo` and `make test`.
# `make test-fast`: every test not marked slow (no command line started as a process), in under a minute.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast bench clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) experiments/demo/run_demo.py

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadfile  # two test processes; a file's tests share one (module fixtures)

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" -n 2  # two test processes: one per core of the 2-core machines

bench: $(VENV)/.installed
	$(PY) bench/bench.py

clean:
	rm -rf demo_output bench_output .pytest_cache
