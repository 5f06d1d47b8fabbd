# Two commands for a newcomer: `make run` and `make test`. Both bootstrap .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

BINDIR ?= $(HOME)/.local/bin

.PHONY: run test lint typecheck check bench clean sandbox install

$(STAMP): pyproject.toml $(wildcard src/exec_server/*.c src/exec_server/*/*.c)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# setuptools calls `ext-modules` in pyproject.toml experimental at every build: not the user's to act on.
	PYTHONWARNINGS='ignore:`[tool.setuptools.ext-modules]`' $(BIN)/python -m pip install --quiet -e '.[dev]'
	@# Bytecode now, so a server started per session (stdio) does not compile its modules
	@# each time where PYTHONDONTWRITEBYTECODE is set.
	$(BIN)/python -m compileall -q src >/dev/null
	@touch $(STAMP)

# Sandboxing needs bubblewrap (codex's sandbox profiles are refused without it, never run
# unconfined). Install it where we can (root with apt-get); otherwise say what to install.
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing bubblewrap (sandboxing) with apt-get" >&2; \
	    apt-get install -y -qq bubblewrap >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null 2>&1; } || \
	    echo "could not install bubblewrap: sandboxed requests will be refused" >&2; \
	  else \
	    echo "exec-server: sandboxing needs bubblewrap; install it, e.g. 'sudo apt-get install bubblewrap' (Debian/Ubuntu) or 'sudo dnf install bubblewrap' (Fedora). Until then sandboxed requests are refused." >&2; \
	  fi; }

run: $(STAMP) sandbox
	@$(BIN)/exec-server $(ARGS)

# `exec-server` on PATH for this user: a link to .venv/bin/exec-server in $(BINDIR).
install: $(STAMP)
	@mkdir -p $(BINDIR)
	@ln -sfn $(CURDIR)/$(BIN)/exec-server $(BINDIR)/exec-server
	@echo "installed $(BINDIR)/exec-server -> $(CURDIR)/$(BIN)/exec-server"
	@case ":$$PATH:" in *":$(BINDIR):"*) ;; *) \
	  echo "$(BINDIR) is not on your PATH; add it, e.g.: echo 'export PATH=\"$(BINDIR):\$$PATH\"' >> ~/.profile" ;; esac

test: $(STAMP) sandbox
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

check: lint typecheck test

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
