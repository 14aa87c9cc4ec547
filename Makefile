# Two commands do everything on a fresh machine:
#   make book   venv + data + every notebook of _toc.yml executed with papermill + Jupyter Book -> _build/html
#   make test   venv + data + the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.reprolib-installed
PRESET ?= quick

.PHONY: book test venv data notebooks clean benchmarks

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (reprolib)" >/dev/null
	@touch $(STAMP)

# Fashion-MNIST: a configured folder, the Debian package's files, torchvision's
# download; failing all three, as root with apt-get, install the Debian package.
data: venv
	@$(PY) -m reprolib data check --no-download >/dev/null 2>&1 || \
	 $(PY) -m reprolib data check >/dev/null 2>&1 || \
	 { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	     echo "installing Debian's dataset-fashion-mnist"; \
	     apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	   fi; }
	@$(PY) -m reprolib data check

notebooks: data
	$(PY) scripts/run_notebooks.py --preset $(PRESET)

book: notebooks
	$(VENV)/bin/jupyter-book build _build/book_src --path-output . -W -n --keep-going
	@echo "The book is in _build/html/index.html"

test: data
	$(PY) -m pytest -q

benchmarks: data
	$(PY) benchmarks/step_time.py

clean:
	rm -rf _build
