# The README's contract: `make demo` runs the main job, `make test` runs the tests.
# Each target sets up what it needs in .venv first (only when a requirements file changed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast lint validate bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.client: requirements.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.server: requirements-server.txt $(VENV)/.client
	$(PY) -m pip install -q -r requirements-server.txt
	touch $@

# tensorflow-serving-api: TF Serving's official messages, for the tests that hold the project's
# own protos against them. Without its dependencies: it declares `tensorflow`, which would
# install beside `tensorflow-cpu`.
$(VENV)/.dev: requirements-dev.txt $(VENV)/.server
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps tensorflow-serving-api==2.21.0
	touch $@

## Local server + client.py on a sample photo; prints where the JSON and the picture are.
demo: $(VENV)/.server
	$(PY) scripts/quickstart.py

## Every test, the Docker and end-to-end ones included (CI runs exactly this).
test: $(VENV)/.dev
	$(PY) -m pytest

## The tests without Docker and without the end-to-end loop: a quick local check.
test-fast: $(VENV)/.dev
	$(PY) -m pytest -m "not docker and not e2e"

lint: $(VENV)/.dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

## Validate the Kubernetes manifests (schemas for several Kubernetes versions + our own checks).
validate: $(VENV)/.dev
	$(PY) -m deploy.validate faster_rcnn_resnet_k8s.yaml

bench: $(VENV)/.dev
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
