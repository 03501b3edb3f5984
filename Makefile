# deconvlab: two commands on a fresh machine, `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8000

# The embedded default data set (Imagenette) when this machine has it beside the checkout.
SHARED_DATA := $(abspath ../shared/data/imagenette)
ifeq ($(DECONVLAB_DATA),)
ifneq ($(wildcard $(SHARED_DATA)/train),)
DECONVLAB_DATA := $(SHARED_DATA)
endif
endif
export DECONVLAB_DATA

.PHONY: install run test test-py test-js browser-deps train evaluate index bench clean

# Create the virtual environment and install the package with its test extras.
# Re-runs only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Serves at once; on the first start the top-k index of the data set is built in the
# background (/api/ready says "building"), later starts open it.
run: install
	$(VENV)/bin/deconvlab serve --host $(HOST) --port $(PORT) --build-index

# Debian's Chromium for the browser tests (never a browser download).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); }
	@command -v npm >/dev/null 2>&1 && npm ci --prefix tests/browser --no-audit --no-fund --silent || echo "npm missing or failed: the browser tests skip the axe-core check"

test: install browser-deps test-py test-js

test-py: install
	$(PY) -m pytest -q -ra

test-js:
	@if [ -d frontend/tests ]; then node --test frontend/tests/; else echo "no JS tests"; fi

# Train the default model (see models/zfnet-imagenette/MODEL_CARD.md for the exact recipe).
train: install
	$(VENV)/bin/deconvlab train --out runs/zfnet-imagenette
	$(VENV)/bin/deconvlab publish --run runs/zfnet-imagenette --name zfnet-imagenette --default \
	  --command "make train"

evaluate: install
	$(VENV)/bin/deconvlab evaluate --model zfnet-imagenette --split val

# The top-k index of the default model on val (what `make run` builds on its first start);
# resumes a killed build. Several processes: .venv/bin/torchrun --nproc_per_node N -m deconvlab.cli index ...
index: install
	$(VENV)/bin/deconvlab index --model zfnet-imagenette --split val

bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
