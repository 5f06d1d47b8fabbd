# Two commands for a newcomer: `make run` and `make test`. Both bootstrap .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

BINDIR ?= $(HOME)/.local/bin

.PHONY: run install test test-shells netns-tools test-tools lint typecheck check bench bench-forward openssh clean sandbox image seccomp-profile

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

# The shell snapshot tests (issue 19) capture zsh as well as bash and sh: a test-only need.
test-shells:
	@command -v zsh >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -qq zsh >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq zsh >/dev/null 2>&1; } || \
	    echo "could not install zsh: its shell snapshot test is skipped" >&2; \
	  else \
	    echo "zsh is not installed: its shell snapshot test is skipped (apt-get install zsh)" >&2; \
	  fi; }

# The Pool test across hosts (tests/test_pool_netns.py) makes network namespaces with `ip`
# (iproute2); where it cannot, that test is skipped with the reason.
netns-tools:
	@command -v ip >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -qq iproute2 >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq iproute2 >/dev/null 2>&1; } || \
	    echo "could not install iproute2: the namespace test will be skipped" >&2; \
	  fi; }

# The managed network tests (issue 18) drive real clients through the proxy: curl (HTTP,
# CONNECT, SOCKS5). They skip without it; install it where we can, as above.
test-tools:
	@command -v curl >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing curl (managed network tests) with apt-get" >&2; \
	    apt-get install -y -qq curl >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq curl >/dev/null 2>&1; } || \
	    echo "could not install curl: the managed network tests will skip" >&2; \
	  else \
	    echo "the managed network tests need curl (e.g. 'sudo apt-get install curl'); they skip without it" >&2; \
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

test: $(STAMP) sandbox test-shells netns-tools test-tools
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench deploy
	$(BIN)/ruff format --check src tests bench deploy

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

check: lint typecheck test

# The container image (Containerfile), from a Debian base made with mmdebstrap: no image
# registry needed. Installs podman & co. with apt-get when root. deploy/README.md says more.
image:
	deploy/image.sh build

# The seccomp profile containers need for sandboxes (deploy/seccomp/make_profile.py): the
# runtime's default from this machine plus bubblewrap's rule, in build/seccomp/ (make image
# writes it too). SECCOMP_DEFAULT=<file> starts from another runtime's default (Docker's).
seccomp-profile:
	@if [ -n "$(SECCOMP_DEFAULT)" ]; then \
	  $(PYTHON) deploy/seccomp/make_profile.py --from "$(SECCOMP_DEFAULT)"; \
	else deploy/image.sh seccomp; fi

bench: $(STAMP) openssh
	$(BIN)/python -m bench $(ARGS)
	$(BIN)/python -m bench.forward $(FORWARD_ARGS)

# Port forwarding beside `ssh -L` (bench/forward.py): a private sshd on a loopback port with
# keys generated in a temporary directory; the system's sshd and its configuration are never
# touched. OpenSSH is installed where we can (root with apt-get); otherwise its rows are skipped.
bench-forward: $(STAMP) openssh
	$(BIN)/python -m bench.forward $(ARGS)

openssh:
	@{ test -x /usr/sbin/sshd && command -v ssh >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing openssh-server and openssh-client (the ssh -L rows of the bench)" >&2; \
	    apt-get install -y -qq openssh-server openssh-client >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq openssh-server openssh-client >/dev/null 2>&1; } || \
	    echo "could not install OpenSSH: the ssh -L rows are skipped" >&2; \
	  else \
	    echo "bench: the ssh -L rows need OpenSSH (e.g. 'sudo apt-get install openssh-server openssh-client'); skipped until then" >&2; \
	  fi; }

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
