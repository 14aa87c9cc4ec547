# Two commands do everything on a fresh machine:
#   make book   venv + data + every notebook of _toc.yml executed with papermill (PRESET, default quick;
#               DEVICE, default auto; PRECISION, default fp32)
#               + Jupyter Book -> _build/html + the browser check of every page (scripts/check_book.py)
#   make test   venv + data + the smoke book (notebooks executed with the smoke preset, built and checked in
#               headless Chromium; its numbers mean nothing) + the whole test suite
#               + the numerics-marked tests again under other CPU dispatches (NUMERICS_ISAS), so one machine
#               tests what users with other CPUs see
#               (measured on 2 shared cores: smoke notebooks ~9 min wall, book build ~20 s, browser check ~25 s,
#               the two extra numerics passes ~2.5 min together)
#
# Contract with tests/test_notebooks.py: when `make test` has executed every notebook with the smoke preset
# successfully, it runs pytest with REPROLIB_NOTEBOOKS_EXECUTED=1, so the notebooks are not executed twice.
# If the smoke notebooks fail, pytest runs without it (and executes them itself); `make test` fails either way.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.reprolib-installed
PRESET ?= quick
# Where the chapters' models compute (auto: CUDA when torch sees one, else the CPU) and in what precision
# (fp32, the reference; bf16 autocast on CUDA or on a CPU with native bf16, refused elsewhere).
DEVICE ?= auto
PRECISION ?= fp32
# The smoke book's pages must say that their numbers mean nothing.
SMOKE_CHECK ?= --require-text 'mean.nothing'
# CPU dispatches under which `make test` reruns the numerics-marked tests (`;`-separated settings of
# environment variables). oneDNN and ATen pick their kernels (vector width, accumulation order) from these,
# as they would on a CPU that has only AVX2, or AVX-512 without the newer extensions (VNNI, BF16, AMX).
NUMERICS_ISAS ?= ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2;ONEDNN_MAX_CPU_ISA=AVX512_CORE

.PHONY: book test test-numerics venv data notebooks book-html book-check smoke-book browser clean benchmarks

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

# NB_ARGS: extra notebook parameters, e.g. make book NB_ARGS="--param run_kd_ablation=false".
notebooks: data
	$(PY) scripts/run_notebooks.py --preset $(PRESET) --param device=$(DEVICE) --param precision=$(PRECISION) $(NB_ARGS)

book: notebooks
	$(MAKE) --no-print-directory book-html book-check

# Build _build/book_src (staged and executed by scripts/run_notebooks.py) into _build/html, from scratch.
book-html: venv
	rm -rf _build/html
	$(VENV)/bin/jupyter-book build _build/book_src --path-output . --all -W -n --keep-going
	@echo "The book is in _build/html/index.html"

# Every page in headless Chromium; a screenshot of the results page under _build/.
book-check: venv browser
	$(PY) scripts/check_book.py _build/html $(CHECK_FLAGS)

# Chromium for the browser check: Debian's package, installed as root with apt-get when missing;
# without it (and without root) scripts/check_book.py prints a SKIPPED line.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	 { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	     echo "installing Debian's chromium for the book check"; \
	     { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	       echo "apt-get could not install chromium: the browser check will be skipped"; \
	   else echo "no Chromium and no root: the browser check will be skipped"; fi; }

# The book from notebooks executed with the smoke preset (fast; every page says its numbers mean nothing).
smoke-book: data
	$(PY) scripts/run_notebooks.py --preset smoke
	$(MAKE) --no-print-directory book-html book-check CHECK_FLAGS="$(SMOKE_CHECK)"

test: data
	@status=0; \
	if $(PY) scripts/run_notebooks.py --preset smoke; then \
	  export REPROLIB_NOTEBOOKS_EXECUTED=1; \
	  $(MAKE) --no-print-directory book-html book-check CHECK_FLAGS="$(SMOKE_CHECK)" || status=1; \
	else \
	  status=1; echo "the smoke notebooks failed: pytest executes them again to report why"; \
	fi; \
	$(PY) -m pytest -q || status=1; \
	$(MAKE) --no-print-directory test-numerics || status=1; \
	exit $$status

# The numerics-marked tests (pytest -m numerics) once per setting of NUMERICS_ISAS, each with its own
# TorchInductor cache: compiled kernels cached under one dispatch must not be reused under another.
test-numerics: venv
	@status=0; isas='$(NUMERICS_ISAS)'; IFS=';'; for isa in $$isas; do IFS=' '; \
	  cache=$$(mktemp -d); start=$$(date +%s); \
	  echo "numerics tests under $$isa"; \
	  env $$isa TORCHINDUCTOR_CACHE_DIR=$$cache \
	    $(PY) -m pytest -q -m numerics -p no:cacheprovider || status=1; \
	  echo "numerics tests under $$isa: $$(( $$(date +%s) - start )) s"; rm -rf $$cache; \
	done; exit $$status

benchmarks: data
	$(PY) benchmarks/step_time.py

clean:
	rm -rf _build
