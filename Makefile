# Two commands do everything: `make demo` and `make test`. Both create the virtualenv, install the
# Python packages, and install missing Debian packages when run as root (else print the command).

VENV        ?= .venv
PYTHON      ?= python3
BIN         := $(VENV)/bin
# Debian packages: one list per role in packaging/debian/ (a package a line, '#' comments), the
# same lists docs/install.md installs on real hosts. The demo and the tests run a broker; the tests
# also need a browser and a CJK font (see test.txt).
hash        := \#
deb_list     = $(shell sed -e 's/$(hash).*//' packaging/debian/$(1).txt)
SYSTEM_PKGS := $(call deb_list,broker)
TEST_PKGS   := $(call deb_list,test)

.PHONY: demo test lint typecheck unit fuzz bench screenshots system-deps test-deps venv clean

demo: system-deps venv
	$(BIN)/omnishelf demo

# The unit suite's workers spend much of their time waiting on brokers, processes and browsers (a
# fresh clone's run kept 1.4 of the 2 cores busy), so lint, the type check and the API fuzz run
# beside it, one after another in the background, instead of after it (3.2 of a fresh clone's 16.5
# min). Their output is printed once the suite is done; `make test` fails if any of them failed.
test: system-deps test-deps venv
	@mkdir -p var
	@{ $(MAKE) --no-print-directory --keep-going lint typecheck fuzz >var/checks.log 2>&1; echo $$? >var/checks.rc; } & \
	$(MAKE) --no-print-directory unit; unit=$$?; wait; \
	echo "--- lint, type check and API fuzz (var/checks.log):"; cat var/checks.log; \
	[ $$unit -eq 0 ] && [ "$$(cat var/checks.rc)" -eq 0 ]

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy .

# Three workers on two cores, a test file each at a time: most tests wait on brokers, processes and
# browsers (with two, a fresh clone's run kept 1.4 of the 2 cores busy on average), and every test
# has its own broker, port, directory and PostgreSQL schema. `pytest` alone runs serially.
# Every test's duration is in var/test-report.xml afterwards (JUnit XML).
unit: system-deps test-deps venv
	$(BIN)/pytest -n 3 --dist loadfile --durations=20 --junitxml=var/test-report.xml --ignore=tests/test_api_fuzz.py

# The API fuzz test runs on its own: schemathesis draws one test per operation, and under xdist they
# collapse into one. Its own pytest cache: it may run beside the unit suite, which writes the other.
fuzz: venv
	$(BIN)/pytest -o cache_dir=.pytest_cache/fuzz tests/test_api_fuzz.py

# The browser and app tests write their screenshots to var/screenshots/ (ignored); this runs the ones
# whose pictures the docs show and writes them over the tracked ones in docs/img/, to commit after
# looking at them (tests/docs/test_screenshots.py checks that every picture in docs/img/ has its test
# here). Some of these tests write pictures no page shows: leave those untracked.
SCREENSHOT_TESTS := tests/console/test_browser.py tests/catalogue/test_console_browser.py \
                    tests/staff/test_console_browser.py tests/kiosk/test_app.py tests/kiosk/test_station_app.py
screenshots: system-deps test-deps venv
	OMNISHELF_SCREENSHOTS=docs/img $(BIN)/pytest -q $(SCREENSHOT_TESTS)

bench: system-deps venv
	$(BIN)/python -m bench.bus
	$(BIN)/python -m bench.catalogue

venv: $(VENV)/.installed

# Reinstall when the project's metadata or its set of packages changes (an editable install only
# maps the packages that existed when it ran).
$(VENV)/.installed: pyproject.toml $(wildcard */__init__.py)
	@# A venv without a working pip is one an interrupted run left half made: start it again.
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); } || { \
	  echo "Cannot create a virtualenv: run 'sudo apt-get install python3-venv' and try again"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

define install_debian
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing Debian packages:$$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	  else \
	    echo "Missing Debian packages:$$missing"; \
	    echo "Run: sudo apt-get install --no-install-recommends$$missing"; exit 1; \
	  fi; \
	fi

endef

system-deps:
	$(call install_debian,$(SYSTEM_PKGS))

test-deps:
	$(call install_debian,$(TEST_PKGS))

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache var
