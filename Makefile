# cirlab: `make demo` runs the main job, `make test` the test suite. Both install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cirlab-setup
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup browser wordnet styles demo lint test test-fast bench clean

setup: $(STAMP)

# torch is installed first and pinned: the CPU wheel on this machine's disk. Installing anything
# that depends on torch before it would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

# the web page's tests drive Debian's chromium through Playwright (no browser download)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@test -x /usr/bin/chromium || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# text augmentation's synonyms read WordNet's database from Debian's wordnet-base (cirlab/data/wordnet.py)
wordnet:
	@test -f /usr/share/wordnet/index.noun || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wordnet-base >/dev/null; }

# EmojiEdit's other art sets from npm into the environment: Fluent Emoji (MIT; SVG, rasterised by rsvg-convert)
# and Noto Emoji (Apache 2.0; PNG, from emoji-datasource-google)
FLUENT := $(VENV)/npm/node_modules/fluentui-emoji/icons
NOTO := $(VENV)/npm/node_modules/emoji-datasource-google/img/google/64
styles: setup
	@test -x /usr/bin/rsvg-convert || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq librsvg2-bin >/dev/null; }
	@test -d $(FLUENT) -a -d $(NOTO) || npm install --prefix $(VENV)/npm --no-save --no-audit --no-fund --loglevel=error \
		fluentui-emoji@1.3.0 @iconify-json/fluent-emoji-flat@1.2.6 emoji-datasource-google@16.0.0

demo: setup wordnet
	$(VENV)/bin/cirlab demo

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

# One pytest worker more than the cores (pytest-xdist), each with one torch thread (tests/conftest.py): about a
# quarter of the suite's time waits on servers, ranks and a browser, which the extra worker fills (CONTRIBUTING.md
# has the timings). --dist worksteal: a worker that runs out of tests takes queued ones from
# another; with the default (load), the tests queued behind the longest one (the demo) waited for it.
WORKERS = $$(( $$(nproc) + 1 ))

test: setup browser wordnet styles lint
	$(PY) -m pytest -q -n $(WORKERS) --dist worksteal --durations=15

test-fast: setup browser wordnet styles
	$(PY) -m pytest -q -n $(WORKERS) --dist worksteal -m "not slow"

bench: setup
	$(PY) benchmarks/encode_throughput.py

clean:
	rm -rf demo_out .pytest_cache test-artifacts
