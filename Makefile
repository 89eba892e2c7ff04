# Two commands for a fresh machine:  `make demo`  and  `make test`  (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
# A nextflow already on PATH is used as it is; otherwise the pinned engine from Maven Central.
NEXTFLOW ?= $(shell command -v nextflow 2>/dev/null || echo $(CURDIR)/engine/nextflow)
export NXF_OFFLINE ?= true
export NXF_DISABLE_CHECK_LATEST := true

.PHONY: demo test env envs engine browser clean

demo: engine env
	$(VENV)/bin/python bin/aiod demo-data demo
	$(NEXTFLOW) run main.nf -profile local,demo -ansi-log false

test: engine env browser $(VENV)/.test-stamp
	AIOD_NEXTFLOW=$(NEXTFLOW) $(VENV)/bin/python -m pytest $(PYTEST_ARGS) tests

env: $(VENV)/.stamp

# Headless Chromium, for tests/test_report.py's check that the report page renders offline.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)

engine:
	@if [ "$(NEXTFLOW)" = "$(CURDIR)/engine/nextflow" ] && ! ls engine/lib/nextflow-*.jar >/dev/null 2>&1; then \
	    echo "Resolving Nextflow 24.10.0 from Maven Central into engine/lib/"; \
	    mvn -q -f engine/pom.xml dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=lib; \
	fi
	@$(NEXTFLOW) -version | grep -m1 version

# The pipeline's own environment (classical family + the pipeline steps), built with uv.
$(VENV)/.stamp: envs/classical.txt
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install -q uv
	uv venv -q --allow-existing $(VENV) --python $(PYTHON)
	VIRTUAL_ENV=$(VENV) uv pip install -q --compile-bytecode -r envs/classical.txt
	touch $@

$(VENV)/.test-stamp: $(VENV)/.stamp envs/test.txt
	VIRTUAL_ENV=$(VENV) uv pip install -q --compile-bytecode -r envs/classical.txt -r envs/test.txt
	VIRTUAL_ENV=$(VENV) uv pip install -q -e ./napari-aiod
	touch $@

# Every model family's environment (envs/<family>.txt), built once with uv into
# $(AIOD_ENVS_DIR) (default ~/.cache/aiod/envs), shared by `-profile venv` and the family tests.
envs:
	$(PYTHON) bin/aiod-env build all

clean:
	rm -rf results demo work .nextflow .nextflow.log*
