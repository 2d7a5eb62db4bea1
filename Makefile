# Every target that runs code sets up .venv first; a second `make setup` only checks the stamp.
VENV  := .venv
PY    := $(VENV)/bin/python
SPACE ?= spaces/vgg_cifar100.py
ARGS  ?=

.PHONY: setup search test test-fast lint format bench clean

setup: $(VENV)/.installed

# Re-install only when the dependencies change. torch and torchvision are pinned to the pair that pip
# finds on these machines' disk (see pyproject.toml).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

search: setup
	$(PY) -m search.run $(SPACE) $(ARGS)

# Two pytest workers (pytest-xdist): an end-to-end test waits on processes starting (Python, Ray, MLflow) as much
# as it computes, so two at once use 2 cores better; the tests of one xdist_group run on one worker ("cluster":
# Slurm and the multi-node Ray, one after another). tests/conftest.py gives each test process one OpenMP thread.
JOBS  ?= 2
XDIST := -n $(JOBS) --dist loadgroup

test: setup
	$(PY) -m pytest -q $(XDIST) --durations=40 tests $(ARGS)

# The developer's loop: every test but the end-to-end searches and clusters (marked slow), on two workers too.
test-fast: setup
	$(PY) -m pytest -q $(XDIST) -m "not slow" tests $(ARGS)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: setup
	$(PY) -m bench.all $(ARGS)

clean:
	rm -rf $(VENV) runs mlruns bench/out .pytest_cache
