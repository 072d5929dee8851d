# The two commands: `make demo` runs the platform, `make test` runs lint, types and the whole test suite.
# Both create the virtual environment and install everything on first use. `make check` is the quick loop:
# lint, types and the unit and pipeline tiers (no broker, Delta, Spark or demo tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PATH := $(HOME)/.cargo/bin:$(PATH)  # cargo builds the native extension (native/)

.PHONY: demo test check lint install bench clean browser

demo: $(VENV)/.installed
	$(BIN)/sdg demo

test: lint browser
	$(BIN)/python -m pytest

browser:  # Debian's chromium, for the console's browser test (Playwright drives it; it downloads no browser)
	@command -v chromium >/dev/null || $(SUDO) sh -c 'apt-get install -y -q chromium >/dev/null || \
		(apt-get update -q && apt-get install -y -q chromium >/dev/null)'

check: lint
	$(BIN)/python -m pytest -m "not integration"

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(VENV)/.installed
	$(BIN)/python bench/broker.py

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml native/Cargo.toml native/src/lib.rs
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' ./native
	$(BIN)/sdg broker install
	touch $@

clean:
	-$(BIN)/sdg broker stop
	rm -rf $(VENV) .sdg
