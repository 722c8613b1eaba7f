# Two commands do everything: `make demo` and `make test`. Both create the virtualenv, install the
# Python packages, and install missing Debian packages when run as root (else print the command).

VENV        ?= .venv
PYTHON      ?= python3
BIN         := $(VENV)/bin
# Debian packages the system needs to run, and those only the tests need: Chromium for the console's
# browser tests, and a CJK font so that Chinese product names render in it (and in the screenshots
# the tests write to docs/img).
SYSTEM_PKGS := mosquitto mosquitto-clients
TEST_PKGS   := chromium fonts-wqy-microhei

.PHONY: demo test lint typecheck unit bench system-deps test-deps venv clean

demo: system-deps venv
	$(BIN)/omnishelf demo

test: system-deps test-deps venv lint typecheck unit

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy .

unit: system-deps test-deps venv
	$(BIN)/pytest

bench: system-deps venv
	$(BIN)/python -m bench.bus
	$(BIN)/python -m bench.catalogue

venv: $(VENV)/.installed

# Reinstall when the project's metadata or its set of packages changes (an editable install only
# maps the packages that existed when it ran).
$(VENV)/.installed: pyproject.toml $(wildcard */__init__.py)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
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
