# One command each on a fresh clone: `make test`, `make demo`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint browser demo serve bench image image-test clean

venv: $(STAMP)

# torch is pinned (an unpinned torch pulls a multi-GB CUDA build) and installed first so
# the [train] extra's pin is already satisfied.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[cpu,train,dev]'
	touch $(STAMP)

# lint-imports checks the architecture contracts in pyproject.toml (layers, what the service
# may import); a wrong import fails here with the import chain named.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# System parts the browser tests need (Debian's chromium and chromium-driver). A failure
# here is not fatal: those tests then report themselves skipped, with the reason.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
				|| echo "note: could not install chromium; the browser tests will be skipped"; \
		else echo "note: chromium missing and apt-get unavailable (not root?); the browser tests will be skipped"; fi; \
	fi

# --durations: every run (CI's included) ends with where its time went. Two test processes
# (pytest-xdist), a module's tests kept together (their servers are per module): the suite
# waits on servers and subprocesses as much as it computes (tests/fixture_models.py trains
# the shared models once for both).
test: lint browser
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25

demo: venv
	$(BIN)/python -m registry.packaging.demo

serve: venv
	$(BIN)/genreg serve

bench: venv
	$(BIN)/python benchmarks/flow.py
	$(BIN)/python benchmarks/dequantization.py
	$(BIN)/python benchmarks/vae.py
	$(BIN)/python benchmarks/gan.py
	$(BIN)/python benchmarks/serving.py

# The serving image, built here from Debian packages with a private dockerd (root, Debian):
# see docs/deploy.md. The Bento ships the newest version of every model in the store.
image: venv
	$(BIN)/genreg containerize

# Builds the image from a clean state (fresh dockerd data root, no cached base), runs it and
# compares its answers with the local service's; prints the measured times and size.
image-test: venv
	$(BIN)/python -m pytest -q -s -m image tests/test_image.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
