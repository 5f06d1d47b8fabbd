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

# Debian packages, one target each: installed with apt-get where we can (root with apt-get),
# otherwise a line says what to install and what goes without. The data: <target>_HAS, the
# shell test that the tool is there; _PACKAGES, Debian's names; _FOR, what needs it;
# _WITHOUT, what happens until it is installed. One recipe ($(APT_NEEDS) below) serves all.
APT_NEEDS := sandbox test-shells netns-tools test-tools openssh

# Sandboxing needs bubblewrap (codex's sandbox profiles are refused without it, never run
# unconfined).
sandbox_HAS := command -v bwrap
sandbox_PACKAGES := bubblewrap
sandbox_FOR := sandboxing
sandbox_WITHOUT := sandboxed requests are refused (Fedora: 'sudo dnf install bubblewrap')

# The shell snapshot tests (issue 19) capture zsh as well as bash and sh: a test-only need.
test-shells_HAS := command -v zsh
test-shells_PACKAGES := zsh
test-shells_FOR := the zsh shell snapshot test
test-shells_WITHOUT := that test is skipped

# The Pool test across hosts (tests/test_pool_netns.py) makes network namespaces with `ip`.
netns-tools_HAS := command -v ip
netns-tools_PACKAGES := iproute2
netns-tools_FOR := the network namespace tests
netns-tools_WITHOUT := those tests are skipped

# The managed network tests (issue 18) drive real clients through the proxy: curl (HTTP,
# CONNECT, SOCKS5).
test-tools_HAS := command -v curl
test-tools_PACKAGES := curl
test-tools_FOR := the managed network tests
test-tools_WITHOUT := those tests are skipped

# Port forwarding beside `ssh -L` (bench/forward.py): a private sshd, see bench-forward.
openssh_HAS := test -x /usr/sbin/sshd && command -v ssh
openssh_PACKAGES := openssh-server openssh-client
openssh_FOR := the ssh -L rows of the bench
openssh_WITHOUT := those rows are skipped

$(APT_NEEDS):
	@{ $($@_HAS); } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $($@_PACKAGES) ($($@_FOR)) with apt-get" >&2; \
	    apt-get install -y -qq $($@_PACKAGES) >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $($@_PACKAGES) >/dev/null 2>&1; } || \
	    echo "could not install $($@_PACKAGES) for $($@_FOR): $($@_WITHOUT)" >&2; \
	  else \
	    echo "exec-server: missing $($@_PACKAGES) ($($@_FOR)); install it, e.g. 'sudo apt-get install $($@_PACKAGES)' (Debian/Ubuntu). Until then $($@_WITHOUT)." >&2; \
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
# touched. OpenSSH is installed where we can (the openssh target); otherwise its rows are skipped.
bench-forward: $(STAMP) openssh
	$(BIN)/python -m bench.forward $(ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
