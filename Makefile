# digest: `make demo` runs the example, `make test` runs every check. Both create .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DIGEST := $(BIN)/digest --config config/digest.toml

.PHONY: demo test lint bench clean screenshots

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.base
	$(DIGEST) check
	@mkdir -p config/outbox
	$(DIGEST) preview --subscriber ada@example.org --output config/outbox/preview-ada.html
	$(DIGEST) send
	@echo
	@echo "The digests are email files in config/outbox/new/ (one per subscriber):"
	@ls -1 config/outbox/new/
	@echo "Open one in a mail client (for example: thunderbird config/outbox/new/<file>),"
	@echo "or look at Ada's digest as a web page (written by 'digest preview' before the send):"
	@echo "  python3 -m webbrowser file://$(CURDIR)/config/outbox/preview-ada.html"
	@echo "Run 'make demo' again: nothing is sent twice. Start over with: rm -r config/state config/outbox"

bench: $(VENV)/.base
	$(BIN)/python bench/bench_send.py
	$(BIN)/python bench/bench_match.py

lint: $(VENV)/.test
	$(BIN)/ruff check pipeline tests bench docs
	$(BIN)/mypy --strict pipeline

test: lint
	$(BIN)/pytest -q

# Sample digest in headless Chromium (Debian package chromium), 600/375 px, light/dark, into docs/.
screenshots: $(VENV)/.base
	$(BIN)/python docs/screenshots.py

clean:
	rm -rf $(VENV) config/state config/outbox .pytest_cache .mypy_cache .ruff_cache .hypothesis
