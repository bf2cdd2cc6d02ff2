# digest: `make demo` runs the example, `make test` runs every check. Both create .venv first.
PYTHON ?= python3
# `make demo VENV=/elsewhere/.venv` uses that venv (add `-o /elsewhere/.venv/.base` to use it as it is).
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

# The demo: fetch the sample feeds (a row each); keep Ada's next digest as a web page when she
# has one (config/preview-ada.html, outside the Maildir); send; name the emails this run wrote.
# A second run finds nothing new, says so, and says where the earlier digests are.
OUTBOX := config/outbox
PAGE   := config/preview-ada.html

demo: $(VENV)/.base
	$(DIGEST) check
	@echo
	$(DIGEST) fetch
	@echo
	@set -e; mkdir -p config/state $(OUTBOX)/new; \
	$(DIGEST) preview --subscriber ada@example.org --no-fetch --output config/state/preview-ada.html \
	    > config/state/preview-ada.txt; \
	page="of an earlier run"; \
	if grep -q '^0 entries' config/state/preview-ada.txt; then rm config/state/preview-ada.html; \
	else mv config/state/preview-ada.html $(PAGE); page="of this run"; fi; \
	ls -1 $(OUTBOX)/new > config/state/outbox-before.txt; \
	echo "$(DIGEST) send --no-fetch"; \
	$(DIGEST) send --no-fetch; \
	ls -1 $(OUTBOX)/new | comm -13 config/state/outbox-before.txt - > config/state/outbox-new.txt; \
	echo; \
	if [ -s config/state/outbox-new.txt ]; then \
	    echo "This run's digests, email files in the Maildir $(OUTBOX)/:"; \
	    while read -r file; do \
	        printf '  %s  %s\n' "$(OUTBOX)/new/$$file" "$$(grep -m1 '^To:' "$(OUTBOX)/new/$$file")"; \
	    done < config/state/outbox-new.txt; \
	    echo "Open one in a mail client (for example: thunderbird $(OUTBOX)/new/<file>)."; \
	else \
	    earlier=$$(find $(OUTBOX)/new $(OUTBOX)/cur -type f 2>/dev/null | wc -l | tr -d ' '); \
	    case $$earlier in \
	        0) earlier="No digest has been written yet";; \
	        1) earlier="The digest of an earlier run is in $(OUTBOX)/new/";; \
	        *) earlier="The $$earlier digests of earlier runs are in $(OUTBOX)/new/";; \
	    esac; \
	    echo "Nothing new arrived since the last run, so no digest was sent (each entry reaches"; \
	    echo "each subscriber once). $$earlier"; \
	    echo "(or in $(OUTBOX)/cur/ once a mail client has read them)."; \
	fi; \
	if [ -f $(PAGE) ]; then \
	    echo "Ada's digest $$page as a web page: python3 -m webbrowser file://$(CURDIR)/$(PAGE)"; \
	fi; \
	if [ -s config/state/outbox-new.txt ]; then echo "Run 'make demo' again: nothing is sent twice."; fi; \
	echo "Start over with: rm -r config/state $(OUTBOX) $(PAGE)"

bench: $(VENV)/.base
	$(BIN)/python bench/bench_send.py
	$(BIN)/python bench/bench_match.py

lint: $(VENV)/.test
	$(BIN)/ruff check pipeline tests bench docs
	$(BIN)/mypy --strict pipeline

test: lint
	$(BIN)/pytest -q

# Sample digest in headless Chromium (Debian package chromium), 600/375 px, light/dark, into docs/;
# then the reader pages (preferences, unsubscribe, vote, archive, sign-up) from a real `digest serve`
# started on a free port over a copy of the example config.
screenshots: $(VENV)/.base
	$(BIN)/python docs/screenshots.py

clean:
	rm -rf $(VENV) config/state config/outbox config/preview-ada.html .pytest_cache .mypy_cache .ruff_cache .hypothesis
