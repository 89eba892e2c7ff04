# Two commands for a fresh machine:  `make demo`  and  `make test`  (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
# A nextflow already on PATH is used as it is; otherwise the pinned engine from Maven Central.
NEXTFLOW ?= $(shell command -v nextflow 2>/dev/null || echo $(CURDIR)/engine/nextflow)
export NXF_OFFLINE ?= true
export NXF_DISABLE_CHECK_LATEST := true

.PHONY: demo test env envs engine browser xvfb clean

demo: engine env
	$(VENV)/bin/python bin/aiod demo-data demo
	$(NEXTFLOW) run main.nf -profile local,demo -ansi-log false

test: engine env browser xvfb $(VENV)/.test-stamp
	AIOD_NEXTFLOW=$(NEXTFLOW) $(VENV)/bin/python -m pytest $(PYTEST_ARGS) tests

env: $(VENV)/.stamp

# Headless Chromium, for tests/test_report.py's check that the report page renders offline.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)

# Xvfb and the X libraries PyQt5's xcb platform needs, for tests/test_napari_run.py's screenshot of
# napari's window (its OpenGL canvas does not start on Qt's offscreen platform).
XVFB_PACKAGES := xvfb xauth libgl1 libgl1-mesa-dri libegl1 libfontconfig1 libdbus-1-3 libx11-xcb1 \
                 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
                 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xinerama0 libxcb-xkb1
xvfb:
	@dpkg -s $(XVFB_PACKAGES) >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(XVFB_PACKAGES))

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
